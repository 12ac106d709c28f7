"""Failover between handlers without sleeping: XCLAIM ... IDLE backdates entries (DESIGN §6, §10)."""

from __future__ import annotations

import pytest
import redis

from tests.helpers_bank import (
    balances_from_log,
    drain,
    log_payloads,
    make_handler,
    open_accounts,
    session_for,
    submit,
    take_reply,
)


def _deposits(client, keys, account, n, prefix="d"):
    me = session_for(client, keys, account)
    return [submit(client, keys, "Deposit", {"account": account, "amount": 1}, me, command_id=f"{prefix}{i}")
            for i in range(n)]


def test_idle_entries_of_a_dead_handler_are_taken_over(any_redis, keys):
    survivor = make_handler(any_redis, keys, name="handler-2")
    [a] = open_accounts(any_redis, keys, survivor, 1)
    request_ids = _deposits(any_redis, keys, a, 5)
    dead = make_handler(any_redis, keys, name="handler-1").group
    taken = dead.read_new(count=3, block_ms=None)  # handler-1 read three, then died before settling them
    assert len(taken) == 3
    # Not idle long enough yet: the survivor serves only the two unread ones.
    survivor._last_claim = 0.0
    assert survivor.poll_once(block_ms=None) == 2
    any_redis.xclaim(keys.commands, "handlers", "handler-1", 0, [e for e, _ in taken], idle=60_000)
    survivor._last_claim = 0.0
    assert survivor.poll_once(block_ms=None) == 3
    assert all(take_reply(any_redis, keys, r)["ok"] for r in request_ids)
    assert balances_from_log(log_payloads(any_redis, keys)) == {a: 5}
    assert not any_redis.xpending(keys.commands, "handlers")["pending"]
    assert survivor.counters["claimed"] == 3


def test_a_restarted_handler_settles_its_own_pending_entries_first(any_redis, keys):
    handler = make_handler(any_redis, keys)
    [a] = open_accounts(any_redis, keys, handler, 1)
    request_ids = _deposits(any_redis, keys, a, 4)
    handler.group.read_new(count=10, block_ms=None)  # read, then "crashed"
    restarted = make_handler(any_redis, keys)
    polls = []
    while settled := restarted.poll_once(block_ms=None):
        polls.append(settled)
    assert sum(polls) == 4 and len(polls) <= 2, "one entry until the handler has seen their size, then the rest"
    assert [take_reply(any_redis, keys, r)["balance_cents"] for r in request_ids] == [1, 2, 3, 4]


def test_a_crash_between_the_append_and_the_reply_replays_as_duplicates(any_redis, keys):
    """The script writes only the log; replies and acknowledgements follow on the bus. A crash in between leaves
    the requests pending: the replay answers each with its stored outcome and applies nothing again."""
    handler = make_handler(any_redis, keys)
    [a] = open_accounts(any_redis, keys, handler, 1)
    request_ids = _deposits(any_redis, keys, a, 3)

    def lose_connection(batch):
        raise redis.ConnectionError("connection lost after the append")

    handler._finish = lose_connection  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        handler.poll_once(block_ms=None)
    assert [take_reply(any_redis, keys, r) for r in request_ids] == [None, None, None]
    assert any_redis.xpending(keys.commands, "handlers")["pending"] == 3
    del handler._finish
    drain(handler)
    assert handler.counters["dups"] == 3
    assert [take_reply(any_redis, keys, r)["balance_cents"] for r in request_ids] == [1, 2, 3]
    assert any_redis.xpending(keys.commands, "handlers")["pending"] == 0
    assert balances_from_log(log_payloads(any_redis, keys)) == {a: 3}


def test_a_crash_before_a_side_effect_replays_the_command_as_a_duplicate(any_redis, keys):
    """Closing revokes sessions after the append; until then the request stays pending, so a crash redoes it."""
    handler = make_handler(any_redis, keys)
    [a] = open_accounts(any_redis, keys, handler, 1)
    customer = session_for(any_redis, keys, a)
    [request_id] = [submit(any_redis, keys, "CloseAccount", {"account": a}, session_for(any_redis, keys, 0, "admin"))]

    def lose_connection(batch):
        raise redis.ConnectionError("connection lost after the append")

    handler._finish = lose_connection  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        handler.poll_once(block_ms=None)
    assert any_redis.xpending(keys.commands, "handlers")["pending"] == 1
    assert handler.sessions.resolve_token(customer) is not None  # the side effect did not happen yet
    del handler._finish
    drain(handler)
    assert handler.counters["dups"] == 1
    assert handler.sessions.resolve_token(customer) is None
    assert take_reply(any_redis, keys, request_id)["ok"] is True
    assert any_redis.xlen(keys.commands) == 0


def test_two_handlers_in_one_group_both_serve(any_redis, keys):
    one = make_handler(any_redis, keys, name="handler-1", batch_size=4)
    two = make_handler(any_redis, keys, name="handler-2", batch_size=4)
    [a] = open_accounts(any_redis, keys, one, 1)
    request_ids = _deposits(any_redis, keys, a, 16)
    while one.poll_once(block_ms=None) + two.poll_once(block_ms=None):
        pass
    assert one.counters["processed"] > 1 and two.counters["processed"] > 0
    assert sorted(take_reply(any_redis, keys, r)["balance_cents"] for r in request_ids) == list(range(1, 17))
