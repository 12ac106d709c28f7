"""The append script's contract, run identically on fakeredis and a real redis-server (DESIGN §5)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.append import (
    AccountWrite,
    Appender,
    AppendError,
    AppendStatus,
    PreparedCommand,
    PreparedEvent,
)
from eventstore.envelope import SCHEMA_VERSION, canonical_json, encode_envelope
from eventstore.keys import Keys
from eventstore.log import LogFollower, iterate, last_seq, read_range


def _event(keys: Keys, command_id: str, account: int, version: int, amount: int) -> PreparedEvent:
    prefix, suffix = encode_envelope(
        event_id=f"{command_id:0>32}", event_type="MoneyDeposited", accounts=(account,), versions=(version,),
        command_id=command_id, actor="customer:1", occurred_at="2026-11-24T00:00:00.000000Z",
        data={"account": account, "amount": amount},
    )
    return PreparedEvent("MoneyDeposited", prefix, suffix)


def _deposit(keys: Keys, command_id: str, account: int, expected: int, balance: int) -> PreparedCommand:
    return PreparedCommand(
        outcome_key=keys.command_outcome(command_id),
        accounts=[AccountWrite(keys.account(account), expected, {"version": expected + 1, "balance": balance})],
        events=[_event(keys, command_id, account, expected + 1, 100)],
        reply_prefix=b'{"ok":true,"seq":',
        reply_suffix=b"}",
    )


def test_appends_assign_gapless_seq_and_store_the_outcome(any_redis, keys):
    appender = Appender(any_redis, keys=keys)
    results = appender.append([_deposit(keys, "a", 1, 0, 100), _deposit(keys, "b", 1, 1, 200)])
    assert [(r.status, r.last_seq) for r in results] == [(AppendStatus.OK, 1), (AppendStatus.OK, 2)]
    assert last_seq(any_redis, keys) == 2
    events = read_range(any_redis, keys, 1)
    assert [e.seq for e in events] == [1, 2]
    body = orjson.loads(events[1].body)
    assert body["seq"] == 2 and canonical_json(body) == events[1].body
    assert any_redis.get(keys.command_outcome("b")) == b'{"ok":true,"seq":2}'
    assert results[1].stored is None and _deposit(keys, "b", 1, 1, 200).reply_for(results[1]) == b'{"ok":true,"seq":2}'
    assert any_redis.hget(keys.account(1), "balance") == b"200"


def test_duplicate_command_returns_first_outcome_and_appends_nothing(any_redis, keys):
    appender = Appender(any_redis, keys=keys)
    appender.append([_deposit(keys, "a", 1, 0, 100)])
    retry = _deposit(keys, "a", 1, 1, 200)
    [result] = appender.append([retry])
    assert result.status is AppendStatus.DUPLICATE
    assert result.stored == b'{"ok":true,"seq":1}' and retry.reply_for(result) == b'{"ok":true,"seq":1}'
    assert last_seq(any_redis, keys) == 1


def test_version_conflict_writes_nothing_and_chains_through_the_batch(any_redis, keys):
    appender = Appender(any_redis, keys=keys)
    appender.append([_deposit(keys, "a", 1, 0, 100)])
    # Decided against version 0 (stale) and then a second command decided on top of it: the second must not
    # apply although its expected version 1 matches (its balance assumed the first one's effect).
    results = appender.append([_deposit(keys, "b", 1, 0, 100), _deposit(keys, "c", 1, 1, 200),
                               _deposit(keys, "d", 2, 0, 100)])
    assert [r.status for r in results] == [AppendStatus.CONFLICT, AppendStatus.CONFLICT, AppendStatus.OK]
    assert any_redis.hget(keys.account(1), "balance") == b"100"
    assert any_redis.exists(keys.command_outcome("b")) == 0


def test_rejection_stores_outcome_without_event(any_redis, keys):
    appender = Appender(any_redis, keys=keys)
    command = PreparedCommand(keys.command_outcome("x"), [AccountWrite(keys.account(5), 0)],
                              [], b'{"ok":false}', None)
    [result] = appender.append([command])
    assert result == type(result)(AppendStatus.REJECTED, 0)
    assert any_redis.xlen(keys.events) == 0 if any_redis.exists(keys.events) else True
    assert any_redis.get(keys.command_outcome("x")) == b'{"ok":false}'


def test_bad_arguments_fail_before_any_write(any_redis, keys):
    appender = Appender(any_redis, keys=keys)
    good = _deposit(keys, "a", 1, 0, 100)
    script_keys, args = appender.encode([good, _deposit(keys, "b", 2, 0, 100)])
    # The second command's last event field is missing: the whole batch must be refused, the first included.
    with pytest.raises(AppendError):
        appender.run_encoded(script_keys, args[:-1])
    assert last_seq(any_redis, keys) == 0
    assert any_redis.get(keys.command_outcome("a")) is None


def test_iterate_and_follow_the_head(any_redis, keys):
    appender = Appender(any_redis, keys=keys)
    appender.append([_deposit(keys, f"c{i}", 1, i, 100 * (i + 1)) for i in range(25)])
    assert [e.seq for e in iterate(any_redis, keys, page=7)] == list(range(1, 26))
    assert [e.seq for e in LogFollower(any_redis, keys).read_after(20)] == [21, 22, 23, 24, 25]
    assert [e.seq for e in read_range(any_redis, keys, 3, 5)] == [3, 4, 5]


def test_the_script_writes_only_the_log_and_the_write_side_state(any_redis, keys):
    # Requests, replies and their acknowledgements belong to the request bus (another Redis in production):
    # the script must not touch them, or they would cost the log's Redis a disk sync.
    appender = Appender(any_redis, keys=keys)
    appender.append([_deposit(keys, "a", 1, 0, 100), _deposit(keys, "b", 2, 5, 100)])
    appender.append([_deposit(keys, "a", 1, 0, 100)])
    written = {k.decode() for k in any_redis.keys("*")}
    assert written == {keys.events, keys.seq, keys.account(1), keys.command_outcome("a")}


def test_versions_chain_through_a_batch_whatever_the_fields(any_redis, keys):
    # Later commands see the versions the batch left: a rejection (no fields), a write without "version",
    # one, two and many fields (the script's fast paths), and an account that never had a version field.
    appender = Appender(any_redis, keys=keys)
    account = keys.account(1)
    rejection = PreparedCommand(keys.command_outcome("r"), [AccountWrite(account, 0)], [],
                                b'{"ok":false}', None)
    untouched = PreparedCommand(keys.command_outcome("n"),
                                [AccountWrite(account, 0, {"note": "x"}), AccountWrite(keys.account(2), 0)],
                                [_event(keys, "n", 1, 0, 1)], b"n", None)
    one = _deposit(keys, "one", 1, 0, 0)._replace(accounts=[AccountWrite(account, 0, {"version": 1})])
    many = _deposit(keys, "many", 1, 1, 0)._replace(
        accounts=[AccountWrite(account, 1, {"a": 1, "version": 2, "b": "", "c": 3})])
    stale = _deposit(keys, "stale", 1, 1, 5)
    fresh = _deposit(keys, "fresh", 1, 2, 300)
    results = appender.append([rejection, untouched, one, many, stale, fresh])
    assert [r.status for r in results] == [AppendStatus.REJECTED, AppendStatus.OK, AppendStatus.OK, AppendStatus.OK,
                                           AppendStatus.CONFLICT, AppendStatus.CONFLICT]
    assert any_redis.hgetall(account) == {b"note": b"x", b"version": b"2", b"a": b"1", b"b": b"", b"c": b"3"}
    assert appender.append([fresh])[0].status is AppendStatus.OK  # the poisoning lasts one batch only
    assert any_redis.hget(account, "version") == b"3"


@pytest.mark.parametrize("count", ["-1", "1.5", "x", "nan"])
def test_counts_must_be_non_negative_integers(any_redis, keys, count):
    appender = Appender(any_redis, keys=keys)
    script_keys, args = appender.encode([_deposit(keys, "a", 1, 0, 100), _deposit(keys, "b", 2, 0, 100)])
    # the command count, the first command's n_accounts and n_fields, the second command's n_events and n_fields
    for position in (1, 2, 8, 17, 22):
        with pytest.raises(AppendError):
            appender.run_encoded(script_keys, [*args[:position], count, *args[position + 1:]])
    assert last_seq(any_redis, keys) == 0
    assert any_redis.get(keys.command_outcome("a")) is None


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(event_type=_TEXT, accounts=st.lists(st.integers(0, 2**40), max_size=3),
       versions=st.lists(st.integers(0, 2**40), max_size=3), command_id=_TEXT.filter(bool), actor=_TEXT,
       data=st.dictionaries(_TEXT, _JSON, max_size=4), seq=st.integers(1, 2**53))
def test_an_event_encoded_around_its_seq_is_the_canonical_body_of_the_whole_envelope(
        event_type, accounts, versions, command_id, actor, data, seq):
    """Prefix, seq and suffix joined are canonical JSON of the whole envelope of DESIGN §4, for any content."""
    occurred_at = "2026-11-25T00:00:00.000000Z"
    prefix, suffix = encode_envelope(event_id="e" * 32, event_type=event_type, accounts=tuple(accounts),
                                     versions=versions, command_id=command_id, actor=actor, occurred_at=occurred_at,
                                     data=data)
    envelope = {"event_id": "e" * 32, "type": event_type, "schema": SCHEMA_VERSION, "seq": seq, "accounts": accounts,
                "versions": versions, "command_id": command_id, "correlation_id": command_id,
                "causation_id": command_id, "actor": actor, "occurred_at": occurred_at, "data": data}
    assert prefix + str(seq).encode() + suffix == canonical_json(envelope)
