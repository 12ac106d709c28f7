"""The write-side state load: the plain-HMGET path for a few accounts reads exactly what the script reads."""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.state_loader import FIELDS, SCRIPT_FROM, StateLoader
from eventstore.direct import DirectConnection
from eventstore.keys import Keys

_VALUES = {
    b"version": st.integers(0, 10**6).map(lambda n: str(n).encode()),
    b"balance": st.integers(0, 10**12).map(lambda n: str(n).encode()),
    b"status": st.sampled_from([b"open", b"closed", b""]),
    b"role": st.sampled_from([b"customer", b"admin", b""]),
    b"erased": st.sampled_from([b"0", b"1", b""]),
    b"sms": st.sampled_from([b"0", b"1"]),
    b"cred_salt": st.text("0123456789abcdef", max_size=8).map(str.encode),
    b"cred_kdf": st.sampled_from([b"", b'{"m":131072}']),
    b"cred_key": st.text("abcXYZ_-", max_size=8).map(str.encode),
}
# An account hash: missing altogether, or version and balance with any subset of the other fields.
_HASH = st.none() | st.fixed_dictionaries(
    {b"version": _VALUES[b"version"], b"balance": _VALUES[b"balance"]},
    optional={name: strategy for name, strategy in _VALUES.items() if name not in (b"version", b"balance")})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_HASH, min_size=1, max_size=SCRIPT_FROM + 2))
def test_loads_in_a_callers_round_trip_read_what_the_script_reads(any_redis: redis.Redis, keys: Keys, hashes) -> None:
    any_redis.flushdb()
    ids = list(range(1, len(hashes) + 1))
    for account, fields in zip(ids, hashes, strict=True):
        if fields is not None:
            any_redis.hset(keys.account(account), mapping=fields)
    loader = StateLoader(any_redis, keys=keys)
    direct = DirectConnection(any_redis)
    for size in range(1, len(ids) + 1):
        wanted = ids[:size]
        ordered, commands = loader.commands(wanted)
        results = direct.execute([("GET", "before"), *commands, ("GET", "after")])
        assert results.pop(0) is None
        assert loader.take(ordered, results) == loader.load(wanted)  # load() always runs the script
        assert results == [None]  # took exactly its own replies
    assert all(name in FIELDS for fields in hashes if fields for name in fields)
