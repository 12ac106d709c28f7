"""Direct round trips (eventstore.direct): replies in order, errors after the whole round trip, no stale replies."""

from __future__ import annotations

import pytest
import redis

from bankctl.embedded_redis import RedisProcess
from eventstore.direct import DirectConnection, single_stream_entries
from eventstore.log import LogCorrupted, LogFollower


def test_replies_come_back_in_order(any_redis: redis.Redis) -> None:
    direct = DirectConnection(any_redis)
    replies = direct.execute([("SET", "a", "1"), ("INCRBY", "a", 41), ("MGET", "a", "missing"), ("RPUSH", "l", b"x")])
    assert replies == [b"OK", 42, [b"42", None], 1]
    assert direct.call("GET", "a") == b"42"
    assert direct.execute([]) == []


def test_an_error_reply_is_raised_after_the_round_trip_and_the_connection_stays_in_step(any_redis: redis.Redis) -> None:
    direct = DirectConnection(any_redis)
    any_redis.set("text", "abc")
    with pytest.raises(redis.ResponseError):
        direct.execute([("INCR", "counter"), ("INCR", "text"), ("INCR", "counter")])
    assert any_redis.get("counter") == b"2"  # the commands after the failing one ran too
    assert direct.call("GET", "counter") == b"2"  # and their replies were consumed, not left for this call
    with pytest.raises(redis.exceptions.NoScriptError):
        direct.call("EVALSHA", "0" * 40, 0)
    assert direct.call("GET", "text") == b"abc"


@pytest.mark.redis_server
def test_a_reply_that_timed_out_is_never_taken_for_the_next_one(redis_server: RedisProcess) -> None:
    client = redis.Redis(unix_socket_path=str(redis_server.socket), socket_timeout=0.3)
    client.flushall()
    direct = DirectConnection(client)
    with pytest.raises(redis.TimeoutError):
        direct.call("BLPOP", "late", 1)  # the server answers after 1 s, the client gives up after 0.3 s
    client.rpush("late", b"stale")  # would complete the abandoned BLPOP on the old connection
    client.set("fresh", b"value")
    assert direct.call("GET", "fresh") == b"value"
    client.close()


@pytest.mark.redis_server
@pytest.mark.parametrize("protocol", [2, 3])
def test_stream_entries_read_the_same_in_both_protocols(redis_server: RedisProcess, protocol: int) -> None:
    client = redis.Redis(unix_socket_path=str(redis_server.socket), protocol=protocol)
    client.flushall()
    first = client.xadd("s", {b"a": b"1", b"b": b"2"}).decode()
    second = client.xadd("s", {b"c": b""}).decode()
    client.xgroup_create("s", "g", id="0")
    direct = DirectConnection(client)
    reply = direct.call("XREADGROUP", "GROUP", "g", "me", "COUNT", 10, "STREAMS", "s", ">")
    assert single_stream_entries(reply) == [(first, {b"a": b"1", b"b": b"2"}), (second, {b"c": b""})]
    assert single_stream_entries(direct.call("XREADGROUP", "GROUP", "g", "me", "BLOCK", 10, "STREAMS", "s", ">")) == []
    client.xdel("s", first)  # deleted while pending: the pending read returns it without fields
    reply = direct.call("XREADGROUP", "GROUP", "g", "me", "STREAMS", "s", "0")
    assert single_stream_entries(reply) == [(first, {}), (second, {b"c": b""})]
    client.close()


@pytest.mark.redis_server
def test_a_released_connection_goes_back_to_the_pool(redis_server: RedisProcess, keys) -> None:
    pool = redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection, path=str(redis_server.socket),
                                max_connections=2)
    client = redis.Redis(connection_pool=pool)
    client.flushall()
    client.xadd(keys.events, {b"seq": b"1", b"type": b"MoneyDeposited", b"body": b"{}"}, id="1-0")
    for _ in range(20):  # each follower checks a connection out and gives it back: two are enough for all
        follower = LogFollower(client, keys)
        assert [event.seq for event in follower.read_after(0)] == [1]
        follower.release()
    held = DirectConnection(client)
    assert held.call("PING") in (b"PONG", True)
    held.release()
    assert client.ping()
    client.close()


def test_the_log_follower_reads_any_field_order_and_refuses_malformed_entries(any_redis: redis.Redis, keys) -> None:
    any_redis.xadd(keys.events, {b"seq": b"1", b"type": b"MoneyDeposited", b"body": b"{}"}, id="1-0")
    any_redis.xadd(keys.events, {b"body": b"{2}", b"type": b"MoneyWithdrawn", b"seq": b"2"}, id="2-0")
    events = LogFollower(any_redis, keys).read_after(0)
    assert [(e.entry_id, e.seq, e.type, e.body) for e in events] == [
        ("1-0", 1, "MoneyDeposited", b"{}"), ("2-0", 2, "MoneyWithdrawn", b"{2}")]
    for fields in ({b"seq": b"x", b"type": b"T", b"body": b"{}"}, {b"seq": b"3", b"type": b"T"},
                   {b"seq": b"3", b"type": b"\xff", b"body": b"{}"}):
        any_redis.delete(keys.events)
        any_redis.xadd(keys.events, fields, id="3-0")
        with pytest.raises(LogCorrupted):
            LogFollower(any_redis, keys).read_after(0)
