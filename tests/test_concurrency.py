"""8 concurrent clients doing random transfers among 10 accounts, two handler processes (real redis-server).

Seeded property test: for every seed, no balance is ever negative, the total is conserved, and every accepted
transfer is exactly one MoneyTransferred event (a refused one, none).
"""

from __future__ import annotations

import random
import threading

import pytest

from commands.client import Request
from tests.helpers_bank import (
    LoadDriver,
    check_exactly_once,
    check_money,
    make_data_dir,
    make_handler,
    open_accounts,
    session_for,
    start_worker,
    stop_process,
    wait_for_heartbeat,
)

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

CLIENTS = 8
ACCOUNTS = 10
START_CENTS = 2_000


@pytest.fixture
def bank(private_redis, keys, tmp_path):
    client = private_redis.client(socket_timeout=10)
    data_dir = make_data_dir(tmp_path / "data")
    accounts = open_accounts(client, keys, make_handler(client, keys, name="setup"), ACCOUNTS,
                             deposit_cents=START_CENTS)
    handlers = [start_worker(private_redis.url, data_dir, "handler", f"handler-{i}") for i in (1, 2)]
    try:
        wait_for_heartbeat(client, keys, ["handler-1", "handler-2"])
        yield private_redis, client, accounts
    finally:
        for process in handlers:
            stop_process(process)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_random_transfers_conserve_money(bank, keys, seed):
    server, client, accounts = bank
    sessions = {a: session_for(client, keys, a) for a in accounts}
    results: list[dict] = [{} for _ in range(CLIENTS)]
    errors: list[BaseException] = []

    def one_client(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        # Amounts up to the whole starting balance: overdrafts and races on hot accounts are common.
        requests = [Request("Transfer", {"account": (s := rng.choice(accounts)), "to": rng.choice(accounts),
                                         "amount": rng.randint(1, START_CENTS)}, sessions[s]) for _ in range(150)]
        try:
            own = server.client(socket_timeout=10)
            results[index] = LoadDriver(own, keys, window=rng.choice([1, 4, 32])).run(requests, deadline_s=90)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    replies = {c: r for per_client in results for c, r in per_client.items()}
    assert len(replies) == CLIENTS * 150
    accepted = {c for c, r in replies.items() if r["ok"]}
    refused = {r["code"] for r in replies.values() if not r["ok"]}
    assert accepted and refused <= {"insufficient_funds", "same_account", "conflict"}
    events = check_exactly_once(client, keys, replies)
    transfers = [e for e in events if e["type"] == "MoneyTransferred"]
    assert {e["command_id"] for e in transfers} == accepted and len(transfers) == len(accepted)
    assert check_money(client, keys, events, accounts) == ACCOUNTS * START_CENTS
