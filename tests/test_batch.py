"""Batch requests: many commands in one signed entry, each decided, deduplicated and answered on its own."""

from __future__ import annotations

import secrets

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.client import Request, batch_request, batch_results
from commands.decide import Reason
from commands.requests import MAX_BATCH_COMMANDS
from eventstore.log import last_seq
from tests.helpers_bank import (
    admin_session,
    balances_from_log,
    drain,
    log_payloads,
    make_handler,
    open_accounts,
    session_for,
    take_reply,
)


@pytest.fixture
def handler(any_redis, keys):
    return make_handler(any_redis, keys)


def send_batch(client, keys, requests: list[Request], session: str | None, *, request_id: str | None = None) -> str:
    request_id = request_id or secrets.token_hex(16)
    client.xadd(keys.commands, batch_request(requests, session=session).fields(request_id))
    return request_id


def money(request_type: str, **payload: int) -> Request:
    return Request(request_type, {"type": request_type, **payload})


def test_a_batch_gets_one_reply_with_every_outcome_in_order(any_redis, keys, handler):
    [a, b] = open_accounts(any_redis, keys, handler, 2, deposit_cents=1_000)
    me = session_for(any_redis, keys, a)
    commands = [money("Deposit", account=a, amount=500), money("Transfer", account=a, to=b, amount=1_200),
                money("Withdraw", account=a, amount=1_000), money("Transfer", account=a, to=a, amount=1)]
    request_id = send_batch(any_redis, keys, commands, me)
    drain(handler)
    reply = take_reply(any_redis, keys, request_id)
    assert reply is not None and any_redis.llen(keys.reply(request_id)) == 0, "exactly one reply for the batch"
    results = batch_results(reply, len(commands))
    assert [r["ok"] for r in results] == [True, True, False, False]
    assert [r["command_id"] for r in results] == [c.command_id for c in commands]
    assert [r.get("balance_cents") for r in results[:2]] == [1_500, 300]
    assert results[2]["code"] == Reason.INSUFFICIENT_FUNDS and results[3]["code"] == Reason.SAME_ACCOUNT
    assert results[0]["seq"] < results[1]["seq"]
    assert balances_from_log(log_payloads(any_redis, keys)) == {a: 300, b: 2_200}
    assert any_redis.xlen(keys.commands) == 0, "the batch entry is acknowledged and deleted once settled"


def test_an_invalid_member_is_refused_alone(any_redis, keys, handler):
    [a] = open_accounts(any_redis, keys, handler, 1)
    me = session_for(any_redis, keys, a)
    good = money("Deposit", account=a, amount=700)
    request = batch_request([good, money("Deposit", account=a, amount=5)], session=me)
    request.payload["commands"][1]["command"]["amount"] = -5  # past the client's own checks
    request.payload["commands"].append({"command_id": "pw", "command": {"type": "ChangePassword", "account": a}})
    request.payload["commands"].append("not an object")
    request_id = secrets.token_hex(16)
    any_redis.xadd(keys.commands, request.fields(request_id))
    drain(handler)
    results = take_reply(any_redis, keys, request_id)["results"]
    assert results[0]["ok"] and [r["code"] for r in results[1:]] == ["malformed_request"] * 3
    assert "amount" in results[1]["message"] and "type must be one of" in results[2]["message"]
    assert balances_from_log(log_payloads(any_redis, keys)) == {a: 700}


def test_a_resent_batch_applies_nothing_twice(any_redis, keys, handler):
    [a, b] = open_accounts(any_redis, keys, handler, 2, deposit_cents=10_000)
    me = session_for(any_redis, keys, a)
    commands = [money("Transfer", account=a, to=b, amount=100 * (i + 1)) for i in range(10)]  # 5,500 in all
    first = send_batch(any_redis, keys, commands, me)
    drain(handler)
    seq = last_seq(any_redis, keys)
    again = send_batch(any_redis, keys, commands, me)  # the client timed out and sends the same commands again
    drain(handler)
    assert take_reply(any_redis, keys, first) == take_reply(any_redis, keys, again)
    assert last_seq(any_redis, keys) == seq
    assert balances_from_log(log_payloads(any_redis, keys)) == {a: 4_500, b: 15_500}


def test_a_batch_without_a_valid_session_is_refused_and_acknowledged(any_redis, keys, handler):
    [a] = open_accounts(any_redis, keys, handler, 1)
    other = session_for(any_redis, keys, a + 1000)
    request_id = send_batch(any_redis, keys, [money("Deposit", account=a, amount=1)] * 1, None)
    denied_id = send_batch(any_redis, keys, [money("Withdraw", account=a, amount=1)], other)
    seq = last_seq(any_redis, keys)
    drain(handler)
    assert take_reply(any_redis, keys, request_id)["results"][0]["code"] == Reason.UNAUTHENTICATED
    assert take_reply(any_redis, keys, denied_id)["results"][0]["code"] == Reason.NOT_PERMITTED
    assert last_seq(any_redis, keys) == seq and any_redis.xlen(keys.commands) == 0


def test_an_oversized_batch_is_dead_lettered_with_its_personal_fields_masked(any_redis, keys, handler):
    [a] = open_accounts(any_redis, keys, handler, 1)
    me = session_for(any_redis, keys, a)
    request = batch_request([money("Deposit", account=a, amount=1)], session=me)
    request.payload["commands"] = [{"command_id": f"c{i}", "command": {"type": "UpdateProfile", "account": a,
                                                                        "phone": "+15550001111"}}
                                   for i in range(MAX_BATCH_COMMANDS + 1)]
    request_id = secrets.token_hex(16)
    any_redis.xadd(keys.commands, request.fields(request_id))
    drain(handler)
    reply = take_reply(any_redis, keys, request_id)
    assert reply["ok"] is False and reply["code"] == "malformed_request" and "at most" in reply["message"]
    [(_, dead)] = any_redis.xrange(keys.dead("commands"))
    assert b"+15550001111" not in b"".join(dead.values())


def test_conflicts_across_append_chunks_never_apply_a_stale_decision(fake_redis, keys):
    """A rival writes the source account while a long batch is appended chunk by chunk: every command is settled
    exactly once, on the balance it really saw."""
    handler = make_handler(fake_redis, keys, append_chunk=4)
    [a, b] = open_accounts(fake_redis, keys, handler, 2, deposit_cents=2_000)
    rival = make_handler(fake_redis, keys, name="handler-2")
    me = session_for(fake_redis, keys, a)
    real_send = handler.appender.send
    calls = []

    def send_after_a_rival(commands):
        calls.append(len(commands))
        if len(calls) == 2:  # between two chunks of the same batch, the other handler moves the money
            rival_id = send_batch(fake_redis, keys, [money("Withdraw", account=a, amount=1_500)], me)
            drain(rival)
            assert take_reply(fake_redis, keys, rival_id)["results"][0]["ok"]
        return real_send(commands)

    handler.appender.send = send_after_a_rival  # type: ignore[method-assign]
    commands = [money("Withdraw", account=a, amount=100) for _ in range(12)]
    request_id = send_batch(fake_redis, keys, commands, me)
    drain(handler)
    results = take_reply(fake_redis, keys, request_id)["results"]
    accepted = sum(1 for r in results if r["ok"])
    assert accepted == 5, "2,000 - 1,500 leaves room for exactly five withdrawals of 100"
    assert all(r["code"] == Reason.INSUFFICIENT_FUNDS for r in results if not r["ok"])
    assert balances_from_log(log_payloads(fake_redis, keys)) == {a: 0, b: 2_000}
    assert handler.counters["conflicts"] > 0


def _handler_with_a_rival(redis_client, keys, credited_before_appends):
    """A handler appending one command per call, two accounts with 10.00 each, and a rival handler that deposits
    one cent into ``credited_before_appends(a, b)[n]`` just before the handler's append number ``n`` (0-based)."""
    handler = make_handler(redis_client, keys, append_chunk=1)
    [a, b] = open_accounts(redis_client, keys, handler, 2, deposit_cents=1_000)
    rival = make_handler(redis_client, keys, name="handler-2")
    admin = admin_session(redis_client, keys)
    credited = credited_before_appends(a, b)
    real_send = handler.appender.send
    appends = 0

    def send(commands):
        nonlocal appends
        if appends < len(credited):
            rival_id = send_batch(redis_client, keys, [money("Deposit", account=credited[appends], amount=1)], admin)
            drain(rival)
            assert take_reply(redis_client, keys, rival_id)["results"][0]["ok"]
        appends += 1
        return real_send(commands)

    handler.appender.send = send  # type: ignore[method-assign]
    return handler, a, b


def test_a_version_matching_by_coincidence_in_a_later_chunk_is_not_applied(fake_redis, keys):
    """X (a transfer) conflicts on its target; then a rival bumps the source once, so the next chunk's command,
    decided as if X had applied, expects exactly the source's new version. It must be decided again, not applied
    on a balance that never existed."""
    # before X: the target moves; before Y: the source moves once
    handler, a, b = _handler_with_a_rival(fake_redis, keys, lambda a, b: [b, a])
    me = session_for(fake_redis, keys, a)
    request_id = send_batch(fake_redis, keys, [money("Transfer", account=a, to=b, amount=600),
                                               money("Withdraw", account=a, amount=400),
                                               money("Deposit", account=a, amount=1)], me)  # 3 > 2 chunks: split
    drain(handler)
    events = log_payloads(fake_redis, keys)
    for event in events:  # every balance_after the log states is the balance replayed up to that event
        replayed = balances_from_log(events[: events.index(event) + 1])
        if event["type"] == "MoneyWithdrawn":
            assert event["data"]["balance_after"] == replayed[event["data"]["account"]]
    assert take_reply(fake_redis, keys, request_id)["results"][2]["balance_cents"] == balances_from_log(events)[a]


def test_after_a_conflict_on_a_recipient_the_rest_of_the_batch_is_not_decided_again(fake_redis, keys):
    """A transfer conflicts because the other handler credited its recipient. Decided again it leaves the sender's
    account as before, so the later commands (already decided on top of it) are appended as decided the first
    time: only the transfer is decided twice, and every balance the log states is still the replayed one."""
    handler, a, b = _handler_with_a_rival(fake_redis, keys, lambda a, b: [b])
    me = session_for(fake_redis, keys, a)
    decided_before = handler.counters["events"]
    request_id = send_batch(fake_redis, keys, [money("Transfer", account=a, to=b, amount=600)]
                            + [money("Withdraw", account=a, amount=100) for _ in range(3)], me)
    drain(handler)
    results = take_reply(fake_redis, keys, request_id)["results"]
    assert all(r["ok"] for r in results) and results[-1]["balance_cents"] == 100
    assert handler.counters["conflicts"] > 0
    assert handler.counters["events"] - decided_before == 4 + 1, "four events appended, the transfer decided twice"
    events = log_payloads(fake_redis, keys)
    for event in events:
        replayed = balances_from_log(events[: events.index(event) + 1])
        if event["type"] == "MoneyTransferred":
            assert event["data"]["to_balance_after"] == replayed[b] == 1_000 + 1 + 600
        if event["type"] == "MoneyWithdrawn":
            assert event["data"]["balance_after"] == replayed[a]


def test_a_crash_before_the_reply_is_answered_from_the_stored_outcomes(any_redis, keys, handler):
    [a] = open_accounts(any_redis, keys, handler, 1)
    me = session_for(any_redis, keys, a)
    commands = [money("Deposit", account=a, amount=100 + i) for i in range(5)]
    request_id = send_batch(any_redis, keys, commands, me)
    real_finish = handler._finish

    def crash(batch):
        raise ConnectionError("killed after the append, before the reply")

    handler._finish = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        handler.poll_once(block_ms=None)
    seq = last_seq(any_redis, keys)
    handler._finish = real_finish  # type: ignore[method-assign]
    drain(handler)  # the restarted handler reads its own pending entry first
    results = take_reply(any_redis, keys, request_id)["results"]
    assert [r["ok"] for r in results] == [True] * 5 and last_seq(any_redis, keys) == seq
    assert results[-1]["balance_cents"] == sum(100 + i for i in range(5))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.tuples(st.sampled_from(["Deposit", "Withdraw", "Transfer"]),
                                  st.integers(min_value=1, max_value=3_000)), min_size=1, max_size=40),
       chunk=st.integers(min_value=1, max_value=8))
def test_a_batch_settles_like_the_same_commands_one_by_one(fake_redis, keys, amounts, chunk):
    """Property: whatever the chunking, a batch ends where the same commands sent one at a time end."""
    fake_redis.flushall()
    handler = make_handler(fake_redis, keys, append_chunk=chunk)
    [a, b] = open_accounts(fake_redis, keys, handler, 2, deposit_cents=5_000)
    me = session_for(fake_redis, keys, a)
    commands = [money(kind, account=a, amount=amount) if kind != "Transfer"
                else money(kind, account=a, to=b, amount=amount) for kind, amount in amounts]
    request_id = send_batch(fake_redis, keys, commands, me)
    drain(handler)
    results = take_reply(fake_redis, keys, request_id)["results"]
    balance, moved = 5_000, 0
    for (kind, amount), result in zip(amounts, results, strict=True):
        expected_ok = kind == "Deposit" or amount <= balance
        assert result["ok"] is expected_ok
        if expected_ok:
            balance += amount if kind == "Deposit" else -amount
            moved += amount if kind == "Transfer" else 0
            assert result["balance_cents"] == balance
    assert balances_from_log(log_payloads(fake_redis, keys)) == {a: balance, b: 5_000 + moved}
    assert orjson.loads(fake_redis.get(keys.command_outcome(commands[0].command_id))) == results[0]


def test_the_handler_survives_a_redis_that_forgot_its_scripts(any_redis, keys, handler):
    """A restarted Redis (or SCRIPT FLUSH) answers NOSCRIPT to the state load and to the append: both recover."""
    [a] = open_accounts(any_redis, keys, handler, 1)
    me = session_for(any_redis, keys, a)
    any_redis.script_flush()
    request_id = send_batch(any_redis, keys, [money("Deposit", account=a, amount=250)], me)
    drain(handler)
    assert take_reply(any_redis, keys, request_id)["results"][0]["balance_cents"] == 250


def test_a_poll_takes_a_bounded_number_of_batched_commands(fake_redis, keys):
    """A poll reads few batch entries, so it stays short: one entry before the handler has seen their size (after
    a start or a takeover), then as many as ``commands_per_poll`` commands' worth."""
    handler = make_handler(fake_redis, keys, commands_per_poll=400)
    [a] = open_accounts(fake_redis, keys, handler, 1)
    handler = make_handler(fake_redis, keys, name="handler-2", commands_per_poll=400)  # a fresh start
    me = session_for(fake_redis, keys, a)
    request_ids = [send_batch(fake_redis, keys, [money("Deposit", account=a, amount=1) for _ in range(100)], me)
                   for _ in range(6)]
    polls = []
    while settled := handler.poll_once(block_ms=None):
        polls.append(settled)
    assert polls == [1, 4, 1]
    assert all(r["ok"] for request_id in request_ids for r in take_reply(fake_redis, keys, request_id)["results"])
    assert balances_from_log(log_payloads(fake_redis, keys)) == {a: 600}
