"""The command handler on fakeredis, driven through poll_once (DESIGN §5, §6)."""

from __future__ import annotations

import orjson
import pytest

from auth_zkp.login import ProofCheck
from commands.decide import Reason
from eventstore.log import last_seq
from eventstore.pii import ERASED
from tests.helpers_bank import (
    admin_session,
    balances_from_log,
    drain,
    log_payloads,
    make_handler,
    open_accounts,
    open_payload,
    run_command,
    session_for,
    submit,
    take_reply,
)


@pytest.fixture
def handler(fake_redis, keys):
    return make_handler(fake_redis, keys)


def test_money_commands_reply_with_balance_and_seq(fake_redis, keys, handler):
    [a, b] = open_accounts(fake_redis, keys, handler, 2)
    assert (a, b) == (1, 2)
    me = session_for(fake_redis, keys, a)
    deposit = run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 10_000}, me,
                          command_id="dep-1")
    assert deposit == {"ok": True, "command_id": "dep-1", "account": a, "balance_cents": 10_000,
                       "balance": "100.00", "seq": deposit["seq"]}
    assert deposit["seq"] == last_seq(fake_redis, keys)
    withdraw = run_command(fake_redis, keys, handler, "Withdraw", {"account": a, "amount": 1_050}, me)
    assert withdraw["balance"] == "89.50" and withdraw["seq"] == deposit["seq"] + 1
    transfer = run_command(fake_redis, keys, handler, "Transfer", {"account": a, "to": b, "amount": 950}, me)
    assert transfer["ok"] and transfer["to"] == b and transfer["balance"] == "80.00"
    assert "to_balance" not in orjson.dumps(transfer).decode()
    events = log_payloads(fake_redis, keys)
    moved = [e for e in events if e["type"] == "MoneyTransferred"]
    assert len(moved) == 1 and moved[0]["data"]["to_balance_after"] == 950
    assert moved[0]["actor"] == f"customer:{a}" and moved[0]["command_id"] == transfer["command_id"]
    assert moved[0]["accounts"] == [a, b] and moved[0]["versions"] == [4, 2]
    assert balances_from_log(events) == {a: 8_000, b: 950}
    assert fake_redis.xlen(keys.commands) == 0, "processed requests are deleted from the request stream"


@pytest.mark.parametrize(
    ("request_type", "payload", "code"),
    [
        ("Withdraw", {"account": 1, "amount": 10_001}, Reason.INSUFFICIENT_FUNDS),
        ("Transfer", {"account": 1, "to": 1, "amount": 1}, Reason.SAME_ACCOUNT),
        ("Transfer", {"account": 1, "to": 99, "amount": 1}, Reason.UNKNOWN_ACCOUNT),
        ("Transfer", {"account": 1, "to": 2, "amount": 1}, Reason.ACCOUNT_CLOSED),
        ("Deposit", {"account": 2, "amount": 1}, Reason.ACCOUNT_CLOSED),
    ],
)
def test_rejections_append_nothing_and_are_stored_as_outcome(fake_redis, keys, handler, request_type, payload, code):
    [a, b] = open_accounts(fake_redis, keys, handler, 2)
    admin = admin_session(fake_redis, keys)
    assert run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 10_000}, admin)["ok"]
    assert run_command(fake_redis, keys, handler, "CloseAccount", {"account": b}, admin)["ok"]
    before = last_seq(fake_redis, keys)
    session = session_for(fake_redis, keys, a) if request_type == "Transfer" else admin
    reply = run_command(fake_redis, keys, handler, request_type, payload, session, command_id="cmd-x")
    assert reply["ok"] is False and reply["code"] == code and reply["command_id"] == "cmd-x" and reply["message"]
    assert last_seq(fake_redis, keys) == before
    assert orjson.loads(fake_redis.get(keys.command_outcome("cmd-x"))) == reply


def test_duplicate_command_id_returns_first_outcome_once(fake_redis, keys, handler):
    [a] = open_accounts(fake_redis, keys, handler, 1)
    me = session_for(fake_redis, keys, a)
    first = run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 500}, me, command_id="same")
    again = run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 500}, me, command_id="same")
    assert again == first
    # Two copies in one batch: the second is settled by the script as a duplicate.
    r1 = submit(fake_redis, keys, "Deposit", {"account": a, "amount": 7}, me, command_id="twice")
    r2 = submit(fake_redis, keys, "Deposit", {"account": a, "amount": 7}, me, command_id="twice")
    drain(handler)
    assert take_reply(fake_redis, keys, r1) == take_reply(fake_redis, keys, r2)
    deposits = [e for e in log_payloads(fake_redis, keys) if e["type"] == "MoneyDeposited"]
    assert [e["data"]["amount"] for e in deposits] == [500, 7]


def test_a_batch_sees_its_own_earlier_effects(fake_redis, keys, handler):
    [a, b] = open_accounts(fake_redis, keys, handler, 2)
    me = session_for(fake_redis, keys, a)
    ids = [
        submit(fake_redis, keys, "Deposit", {"account": a, "amount": 300}, me),
        submit(fake_redis, keys, "Transfer", {"account": a, "to": b, "amount": 200}, me),
        submit(fake_redis, keys, "Withdraw", {"account": a, "amount": 100}, me),
        submit(fake_redis, keys, "Withdraw", {"account": a, "amount": 1}, me),
    ]
    assert handler.poll_once(block_ms=None) == 4
    replies = [take_reply(fake_redis, keys, r) for r in ids]
    assert [r["ok"] for r in replies] == [True, True, True, False]
    assert replies[3]["code"] == Reason.INSUFFICIENT_FUNDS
    assert [r["seq"] for r in replies[:3]] == [5, 6, 7]
    assert handler.counters["batches"] >= 1


def test_unauthenticated_and_forbidden_requests_store_nothing(fake_redis, keys, handler):
    [a, b] = open_accounts(fake_redis, keys, handler, 2)
    before = last_seq(fake_redis, keys)
    no_session = run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 1}, None,
                             command_id="c1")
    bogus = run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 1}, "not-a-token",
                        command_id="c2")
    other = run_command(fake_redis, keys, handler, "Withdraw", {"account": b, "amount": 1},
                        session_for(fake_redis, keys, a), command_id="c3")
    customer_opens = run_command(fake_redis, keys, handler, "OpenAccount", open_payload(5),
                                 session_for(fake_redis, keys, a), command_id="c4")
    admin_transfers = run_command(fake_redis, keys, handler, "Transfer", {"account": a, "to": b, "amount": 1},
                                  admin_session(fake_redis, keys), command_id="c5")
    assert [r["code"] for r in (no_session, bogus)] == ["unauthenticated", "unauthenticated"]
    assert [r["code"] for r in (other, customer_opens, admin_transfers)] == ["not_permitted"] * 3
    assert last_seq(fake_redis, keys) == before
    assert not any(fake_redis.exists(keys.command_outcome(f"c{i}")) for i in range(1, 6))


def test_personal_data_is_sealed_everywhere(fake_redis, keys, handler):
    admin = admin_session(fake_redis, keys)
    payload = open_payload(7)
    reply = run_command(fake_redis, keys, handler, "OpenAccount", payload, admin)
    account = reply["account"]
    run_command(fake_redis, keys, handler, "UpdateProfile",
                {"account": account, "phone": "+15559876543", "last_name": "Renamed"}, admin)
    secrets_ = [payload["ssn"], payload["phone"], payload["first_name"], "+15559876543", "Renamed",
                payload["credential"]["public_key"]]
    dump = b""
    for key in fake_redis.scan_iter(count=1000):
        kind = fake_redis.type(key)
        if kind == b"stream":
            dump += repr(fake_redis.xrange(key)).encode()
        elif kind == b"hash":
            dump += repr(fake_redis.hgetall(key)).encode()
        elif kind == b"string":
            dump += fake_redis.get(key) or b""
        elif kind == b"list":
            dump += repr(fake_redis.lrange(key, 0, -1)).encode()
    for secret in secrets_:
        assert secret.encode() not in dump, secret
    opened = next(e for e in log_payloads(fake_redis, keys) if e["type"] == "AccountOpened")
    assert handler.vault.open(account, "ssn", opened["data"]["ssn"]) == payload["ssn"]
    stored_key = fake_redis.hget(keys.account(account), "cred_key").decode()
    assert handler.vault.open(account, "public_key", stored_key) == payload["credential"]["public_key"]


def test_close_revokes_sessions_and_erase_shreds_the_data_key(fake_redis, keys, handler):
    [a] = open_accounts(fake_redis, keys, handler, 1)
    admin = admin_session(fake_redis, keys)
    customer = session_for(fake_redis, keys, a)
    refused = run_command(fake_redis, keys, handler, "EraseCustomer", {"account": a}, admin)
    assert refused["code"] == Reason.ACCOUNT_NOT_CLOSED and fake_redis.exists(keys.data_key(a))
    assert run_command(fake_redis, keys, handler, "CloseAccount", {"account": a}, admin)["ok"]
    assert handler.sessions.resolve_token(customer) is None
    erased = run_command(fake_redis, keys, handler, "EraseCustomer", {"account": a}, admin, command_id="erase")
    assert erased["ok"] and not fake_redis.exists(keys.data_key(a))
    opened = next(e for e in log_payloads(fake_redis, keys) if e["type"] == "AccountOpened")
    handler.vault.forget_cached(a)
    assert handler.vault.open(a, "ssn", opened["data"]["ssn"]) == ERASED
    assert run_command(fake_redis, keys, handler, "EraseCustomer", {"account": a}, admin,
                       command_id="erase") == erased


def test_close_and_erase_are_answered_only_after_their_side_effects(fake_redis, keys, handler):
    """A client that reads "erased" or "closed" must never still find the data key or a live session."""
    [a] = open_accounts(fake_redis, keys, handler, 1)
    admin = admin_session(fake_redis, keys)
    customer = session_for(fake_redis, keys, a)
    replies_seen_by_side_effects: list[int] = []
    real_destroy, real_revoke = handler.vault.destroy_data_key, handler.sessions.revoke_all_for

    def replies_waiting() -> int:
        return sum(fake_redis.llen(key) for key in fake_redis.scan_iter(match=keys.reply("*")))

    def destroy(account):
        replies_seen_by_side_effects.append(replies_waiting())
        real_destroy(account)

    def revoke(account):
        replies_seen_by_side_effects.append(replies_waiting())
        real_revoke(account)

    handler.vault.destroy_data_key, handler.sessions.revoke_all_for = destroy, revoke
    closed = submit(fake_redis, keys, "CloseAccount", {"account": a}, admin, command_id="close")
    drain(handler)
    assert take_reply(fake_redis, keys, closed)["ok"] and handler.sessions.resolve_token(customer) is None
    erased = submit(fake_redis, keys, "EraseCustomer", {"account": a}, admin, command_id="erase")
    drain(handler)
    assert take_reply(fake_redis, keys, erased)["ok"] and not fake_redis.exists(keys.data_key(a))
    assert replies_seen_by_side_effects == [0, 0]
    # a resend is answered with the first outcome, again after redoing the (now idempotent) side effect
    again = submit(fake_redis, keys, "EraseCustomer", {"account": a}, admin, command_id="erase")
    drain(handler)
    assert take_reply(fake_redis, keys, again)["ok"] and replies_seen_by_side_effects == [0, 0, 0]


def test_conflict_with_another_writer_is_redecided(fake_redis, keys, handler):
    [a] = open_accounts(fake_redis, keys, handler, 1, deposit_cents=1_000)
    other = make_handler(fake_redis, keys, name="handler-2")
    me = session_for(fake_redis, keys, a)
    real_send = handler.appender.send
    sneaked = []

    def append_after_a_rival(commands):
        if not sneaked:  # another handler settles a withdrawal between our load and our append
            sneaked.append(run_command(fake_redis, keys, other, "Withdraw", {"account": a, "amount": 600}, me))
        return real_send(commands)

    handler.appender.send = append_after_a_rival  # type: ignore[method-assign]
    first = submit(fake_redis, keys, "Withdraw", {"account": a, "amount": 300}, me)
    second = submit(fake_redis, keys, "Withdraw", {"account": a, "amount": 200}, me)
    drain(handler)
    replies = [take_reply(fake_redis, keys, first), take_reply(fake_redis, keys, second)]
    assert sneaked[0]["ok"] and [r["ok"] for r in replies] == [True, False]
    assert replies[1]["code"] == Reason.INSUFFICIENT_FUNDS
    assert handler.counters["conflicts"] == 2
    assert balances_from_log(log_payloads(fake_redis, keys)) == {a: 100}
    assert fake_redis.hget(keys.account(a), "balance") == b"100"


def test_persistent_conflict_gives_up_with_a_conflict_reply(fake_redis, keys, handler):
    [a] = open_accounts(fake_redis, keys, handler, 1)
    me = session_for(fake_redis, keys, a)
    real_send = handler.appender.send

    def always_stale(commands):
        fake_redis.hincrby(keys.account(a), "version", 1)
        return real_send(commands)

    handler.appender.send = always_stale  # type: ignore[method-assign]
    reply = run_command(fake_redis, keys, handler, "Deposit", {"account": a, "amount": 1}, me)
    assert reply["code"] == "conflict" and handler.counters["conflicts"] == handler.config.max_rounds
    # The give-up is the command id's one outcome: a resend cannot apply it later.
    assert orjson.loads(fake_redis.get(keys.command_outcome(reply["command_id"]))) == reply
    assert not any(e["type"] == "MoneyDeposited" for e in log_payloads(fake_redis, keys)[-1:])


class FakeAuth:
    """Stands in for auth_zkp.login.AuthService (engineer C's contract)."""

    def __init__(self) -> None:
        self.calls = []

    def handle(self, request_type, payload, session, now):
        self.calls.append((request_type, payload, session))
        if request_type == "LoginFinish":
            return {"ok": False, "code": "invalid_proof", "message": "wrong password",
                    "_lock_event": {"account": payload["account"], "until": "2026-01-01T00:00:00Z", "failures": 5}}
        return {"ok": True, "challenge_id": "c" * 32}

    def check_proof(self, account, proof, now):
        if proof.get("valid") == "yes":
            return ProofCheck(True, role="customer")
        if proof.get("valid") == "lock":
            return ProofCheck(False, "locked", "too many failed attempts",
                              lock_event={"account": account, "until": "2026-01-01T00:00:00Z", "failures": 5})
        return ProofCheck(False, "invalid_proof", "wrong account number or password")


def test_login_requests_go_to_the_auth_service_and_a_lockout_is_an_event(fake_redis, keys, handler):
    [a] = open_accounts(fake_redis, keys, handler, 1)
    auth = FakeAuth()
    handler.auth = auth
    start = run_command(fake_redis, keys, handler, "LoginStart", {"account": a}, None)
    assert start == {"ok": True, "challenge_id": "c" * 32}
    finish = run_command(fake_redis, keys, handler, "LoginFinish", {"account": a}, None)
    assert finish == {"ok": False, "code": "invalid_proof", "message": "wrong password"}
    locked = log_payloads(fake_redis, keys)[-1]
    assert locked["type"] == "AccountLocked" and locked["actor"] == "system:login"
    assert locked["data"] == {"account": a, "until": "2026-01-01T00:00:00Z", "failures": 5}
    assert [c[0] for c in auth.calls] == ["LoginStart", "LoginFinish"]


def test_change_password_needs_a_valid_proof(fake_redis, keys, handler):
    [a] = open_accounts(fake_redis, keys, handler, 1)
    handler.auth = FakeAuth()
    me = session_for(fake_redis, keys, a)
    new = open_payload(1)["credential"]
    bad = run_command(fake_redis, keys, handler, "ChangePassword",
                      {"account": a, "credential": new, "proof": {"valid": "no"}}, me)
    assert bad["code"] == "invalid_proof"
    seq = last_seq(fake_redis, keys)
    locked = run_command(fake_redis, keys, handler, "ChangePassword",
                         {"account": a, "credential": new, "proof": {"valid": "lock"}}, me)
    assert locked["code"] == "locked" and last_seq(fake_redis, keys) == seq + 1
    assert log_payloads(fake_redis, keys)[-1]["type"] == "AccountLocked"
    good = run_command(fake_redis, keys, handler, "ChangePassword",
                       {"account": a, "credential": new, "proof": {"valid": "yes"}}, me)
    assert good["ok"], good
    assert handler.sessions.resolve_token(me) is None
    changed = log_payloads(fake_redis, keys)[-1]
    assert changed["type"] == "PasswordChanged" and changed["data"]["public_key"].startswith("pii1:")
