"""Query serving: authorization, reply formats, min_seq, and read-your-writes through a real query server."""

from __future__ import annotations

import threading

import orjson
import pytest
from helpers_events import EventFactory

from auth_zkp.principal import Principal
from auth_zkp.sessions import SessionStore
from commands.client import BankClient, Request
from projections.database import ProjectionDatabase
from projections.projector import Projector
from projections.queries import QueryServer, QueryThread


class Bank:
    """A projected bank on one Redis with a query server (driven by hand or by threads)."""

    def __init__(self, client, keys, path):
        self.client, self.keys = client, keys
        self.factory = EventFactory(client, keys)
        self.factory.open_admin()
        self.accounts = self.factory.open_accounts(3)
        self.factory.deposit(self.accounts[0], 12_30)
        self.factory.transfer(self.accounts[0], self.accounts[1], 2_30)
        self.db = ProjectionDatabase(path)
        self.projector = Projector(client, keys=keys, db=self.db, vault=self.factory.vault, block_ms=None)
        self.catch_up()
        self.server = QueryServer(client, keys=keys, db=self.db, consumer="p1", ready=self.projector.is_live,
                                  master_key=self.factory.master_key, changed=self.projector.changed, wait_s=0.05)
        sessions = SessionStore(client, keys=keys, master_key=self.factory.master_key)
        self.admin = sessions.create(Principal(0, "admin"))
        self.customer = sessions.create(Principal(self.accounts[0], "customer"))

    def catch_up(self):
        while self.projector.poll_once():
            pass
        self.projector.poll_once()

    def ask(self, query_type, payload=None, session=None, min_seq=0):
        request = Request(type=query_type, payload=payload or {}, session=session, min_seq=min_seq)
        request_id = f"q{id(request)}"
        self.client.xadd(self.keys.queries, request.fields(request_id))
        self.server.poll_once()
        popped = self.client.lpop(self.keys.reply(request_id))
        return None if popped is None else orjson.loads(popped)


@pytest.fixture
def bank(fake_redis, keys, tmp_path):
    return Bank(fake_redis, keys, tmp_path / "database1.db")


def test_customer_reads_own_balance_and_history(bank):
    reply = bank.ask("balance", session=bank.customer)
    assert reply["ok"] and reply["balance"] == "10.00" and reply["balance_cents"] == 10_00
    assert reply["seq"] == bank.factory.last_seq
    history = bank.ask("history", {"limit": 5}, session=bank.customer)["transactions"]
    assert [(t["kind"], t["amount"], t["balance_after"]) for t in history] == [
        ("transfer_out", "2.30", "10.00"), ("deposit", "12.30", "12.30")]
    assert history[0]["counterparty"] == bank.accounts[1]


@pytest.mark.parametrize("query_type,payload,session_name,code", [
    ("balance", {"account": 2}, "customer", "not_permitted"),
    ("account_list", {}, "customer", "not_permitted"),
    ("tx_list", {}, "customer", "not_permitted"),
    ("balance", {}, None, "unauthenticated"),
    ("balance", {}, "bogus", "unauthenticated"),
    ("balance", {"account": "1"}, "customer", "invalid_request"),
    ("history", {"limit": -1}, "customer", "invalid_request"),
    ("launch_missiles", {}, "admin", "invalid_request"),
    ("balance", {"account": 99}, "admin", "unknown_account"),
])
def test_refusals(bank, query_type, payload, session_name, code):
    session = {"customer": bank.customer, "admin": bank.admin, "bogus": "x" * 40, None: None}[session_name]
    reply = bank.ask(query_type, payload, session=session)
    assert reply["ok"] is False and reply["code"] == code, reply


def test_admin_lists_accounts_and_transactions_with_masked_data(bank):
    accounts = bank.ask("account_list", session=bank.admin)["accounts"]
    assert [a["account"] for a in accounts] == [0, *bank.accounts]
    customer = accounts[1]
    assert customer["phone"].startswith("***") and customer["ssn"].startswith("***-**-")
    assert customer["first_name"] == f"First{bank.accounts[0]}"
    shown = bank.ask("account_show", {"account": bank.accounts[0]}, session=bank.admin)
    assert shown["balance"] == "10.00" and shown["status"] == "open"
    txs = bank.ask("tx_list", {"limit": 2}, session=bank.admin)["transactions"]
    assert {(t["account"], t["kind"]) for t in txs} == {(bank.accounts[0], "transfer_out"),
                                                        (bank.accounts[1], "transfer_in")}


def test_min_seq_beyond_the_checkpoint_times_out_then_is_served(bank):
    seq = bank.factory.deposit(bank.accounts[0], 1_00)
    assert not bank.server.hurry.is_set()
    reply = bank.ask("balance", session=bank.customer, min_seq=seq)
    assert reply["code"] == "timeout"
    assert bank.server.hurry.is_set()  # the projector is told to stop lingering: someone waits for its next batch
    bank.catch_up()
    reply = bank.ask("balance", session=bank.customer, min_seq=seq)
    assert reply["balance"] == "11.00" and reply["seq"] >= seq


def test_a_projector_behind_the_head_takes_no_queries(bank):
    bank.factory.deposit(bank.accounts[0], 1_00)
    bank.projector.live = False
    assert bank.ask("balance", session=bank.customer) is None  # left for the other projector
    bank.catch_up()
    bank.server._last_claim = 0.0
    bank.client.xclaim(bank.keys.queries, "readers", "p1", 0,
                       [e[0] for e in bank.client.xrange(bank.keys.queries)], idle=10_000)
    bank.server.poll_once()
    assert bank.client.xlen(bank.keys.queries) == 0


def test_read_your_writes_1000_times_through_the_query_server(real_redis, keys, tmp_path):
    """Deposit, then read history with min_seq = the deposit's seq, 1,000 times in a row."""
    factory = EventFactory(real_redis, keys)
    [account] = factory.open_accounts(1)
    db = ProjectionDatabase(tmp_path / "database1.db")
    projector = Projector(real_redis, keys=keys, db=db, vault=factory.vault, block_ms=200)
    server = QueryServer(real_redis, keys=keys, db=db, consumer="p1", ready=projector.is_live,
                         master_key=factory.master_key, changed=projector.changed)
    stop = threading.Event()

    def project():
        while not stop.is_set():
            projector.poll_once()

    worker = threading.Thread(target=project, daemon=True)
    worker.start()
    queries = QueryThread(server, name="queries")
    queries.start()
    session = SessionStore(real_redis, keys=keys, master_key=factory.master_key).create(Principal(account, "customer"))
    client = BankClient(real_redis, keys=keys, timeout_s=10)
    try:
        for i in range(1000):
            seq = factory.deposit(account, 1 + i)
            reply = client.query(Request(type="history", payload={"limit": 1}, session=session, min_seq=seq))
            assert reply["ok"], reply
            assert reply["transactions"][0]["seq"] == seq, (i, reply)
    finally:
        stop.set()
        queries.stop()
        worker.join(timeout=5)
        db.close()


def test_queries_are_served_again_once_a_restarted_bus_forgot_the_group(bank):
    assert bank.ask("balance", session=bank.customer)["ok"]
    bank.client.delete(bank.keys.queries)  # the bus persists nothing: after a restart, no stream and no group
    replies = [bank.ask("balance", session=bank.customer) for _ in range(3)]
    assert replies[-1] is not None and replies[-1]["ok"], replies
