"""Seals: the running chain, Ed25519 signatures, key files, and the sealer worker."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_events import EventFactory
from hypothesis import given
from hypothesis import strategies as st

from eventstore.log import iterate
from eventstore.sealer import Sealer
from eventstore.seals import (
    GENESIS,
    LEAF_BYTES,
    Seal,
    create_signing_key,
    extend_chain,
    last_seal,
    load_public_key,
    load_signing_key,
    public_key_path,
    read_seals,
    sign_seal,
    verify_seal,
)
from eventstore.worker import FatalWorkerError


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=20), st.data())
def test_chain_changes_when_any_body_changes(bodies, data):
    def chain(items):
        value = GENESIS
        for body in items:
            value = extend_chain(value, hashlib.sha256(body).digest())
        return value

    index = data.draw(st.integers(0, len(bodies) - 1))
    altered = list(bodies)
    altered[index] = altered[index] + b"x"
    assert chain(bodies) != chain(altered)
    assert chain(bodies) == chain(list(bodies))


def _seal(key, **changes):
    fields = {"seq": 3, "first_seq": 1, "chain": os.urandom(32), "leaves": os.urandom(3 * LEAF_BYTES),
              "signed_at": "2026-11-24T00:00:00.000000Z"}
    fields.update(changes)
    return sign_seal(key, **fields)


@pytest.mark.parametrize("field", ["seq", "first_seq", "chain", "leaves", "signed_at", "key_id", "signature"])
def test_any_change_to_a_seal_breaks_its_signature(field):
    key = Ed25519PrivateKey.generate()
    seal = _seal(key)
    assert verify_seal(key.public_key(), seal)
    record = seal.to_json()
    if field in ("seq",):
        record[field] = 4
    elif field == "first_seq":
        record[field] = 2
    elif field == "leaves":
        record[field] = ("00" if record[field][:2] != "00" else "11") + record[field][2:]
    elif field == "chain":
        record[field] = "00" * 32
    elif field == "signature":
        record[field] = ("00" if record[field][:2] != "00" else "11") + record[field][2:]
    else:
        record[field] = record[field][:-1] + ("0" if record[field][-1] != "0" else "1")
    assert not verify_seal(key.public_key(), Seal.from_json(record))


def test_a_seal_does_not_verify_with_another_key():
    seal = _seal(Ed25519PrivateKey.generate())
    assert not verify_seal(Ed25519PrivateKey.generate().public_key(), seal)


def test_key_files_round_trip_and_are_private(tmp_path):
    path = tmp_path / "signing.key"
    private = create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(path).public_key().public_bytes_raw() == private.public_key().public_bytes_raw()
    assert load_public_key(public_key_path(path)).public_bytes_raw() == private.public_key().public_bytes_raw()
    with pytest.raises(FileExistsError):
        create_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        load_signing_key(path)


def test_raw_32_byte_keys_are_accepted(tmp_path):
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "signing.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private.private_bytes_raw())
    assert load_signing_key(path).private_bytes_raw() == private.private_bytes_raw()


def test_sealer_seals_every_n_events_with_the_chain_of_the_log(fake_redis, keys):
    factory = EventFactory(fake_redis, keys)
    factory.open_admin()
    accounts = factory.open_accounts(5)
    factory.random_traffic(accounts, 120)
    key = Ed25519PrivateKey.generate()
    sealer = Sealer(fake_redis, keys=keys, private_key=key, block_ms=None, every_events=50, every_s=3600)
    while sealer.poll_once():
        pass
    seals = [Seal.from_fields(fields) for _id, fields in read_seals(fake_redis, keys)]
    assert [s.seq for s in seals] == list(range(50, factory.last_seq + 1, 50))[: len(seals)]
    assert all(verify_seal(key.public_key(), s) for s in seals)
    chain = GENESIS
    for event in iterate(fake_redis, keys):
        chain = extend_chain(chain, hashlib.sha256(event.body).digest())
        if event.seq == seals[-1].seq:
            assert chain.hex() == seals[-1].chain
    sealer.seal()  # the rest, as on the one-second timer
    assert last_seal(fake_redis, keys).seq == factory.last_seq


def test_sealer_resumes_from_its_last_seal_and_refuses_a_foreign_one(fake_redis, keys):
    factory = EventFactory(fake_redis, keys)
    factory.open_admin()
    factory.open_accounts(3)
    key = Ed25519PrivateKey.generate()
    first = Sealer(fake_redis, keys=keys, private_key=key, block_ms=None, every_s=0)
    first.poll_once()
    sealed = last_seal(fake_redis, keys)
    assert sealed is not None and sealed.seq == factory.last_seq
    factory.open_accounts(2)
    second = Sealer(fake_redis, keys=keys, private_key=key, block_ms=None, every_s=0)
    second.poll_once()
    newest = last_seal(fake_redis, keys)
    assert newest.first_seq == sealed.seq + 1 and newest.seq == factory.last_seq
    stranger = Sealer(fake_redis, keys=keys, private_key=Ed25519PrivateKey.generate(), block_ms=None)
    with pytest.raises(FatalWorkerError):
        stranger.poll_once()


def test_sealer_stops_on_a_gap(fake_redis, keys):
    factory = EventFactory(fake_redis, keys)
    factory.open_admin()
    factory.open_accounts(3)
    fake_redis.xdel(keys.events, "3-0")
    sealer = Sealer(fake_redis, keys=keys, private_key=Ed25519PrivateKey.generate(), block_ms=None)
    with pytest.raises(FatalWorkerError, match="expected seq 3"):
        sealer.poll_once()


def test_after_losing_redis_the_sealer_seals_only_what_the_log_still_holds(fake_redis, keys, monkeypatch):
    """A Redis that comes back without (or with other) events than the sealer had read must not get them sealed.

    The sealer keeps the chain of what it read since its last seal in memory. After a lost connection it starts
    again from the last seal Redis holds, so a seal always describes the log as it is.
    """
    import redis

    factory = EventFactory(fake_redis, keys)
    factory.open_admin()
    factory.open_accounts(3)
    key = Ed25519PrivateKey.generate()
    sealer = Sealer(fake_redis, keys=keys, private_key=key, block_ms=None, every_events=10_000, every_s=3600)
    sealer.poll_once()
    sealer.seal()
    sealed = last_seal(fake_redis, keys).seq
    factory.open_accounts(2)
    assert sealer.poll_once() > 0  # read, not sealed yet
    # Redis restarts holding other events after the seal (a lost tail, appended again by the handlers).
    entries = fake_redis.xrange(keys.events)
    fake_redis.delete(keys.events)
    for entry_id, fields in entries:
        if int(fields[b"seq"]) > sealed:
            fields = {**fields, b"body": fields[b"body"] + b" "}
        fake_redis.xadd(keys.events, fields, id=entry_id)
    real_read = sealer.follower.read_after
    calls = []

    def read_once_lost(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        return real_read(*args, **kwargs)

    monkeypatch.setattr(sealer.follower, "read_after", read_once_lost)
    with pytest.raises(redis.ConnectionError):
        sealer.poll_once()
    while sealer.poll_once():
        pass
    sealer.seal()
    newest = last_seal(fake_redis, keys)
    assert newest.seq == factory.last_seq and newest.first_seq == sealed + 1
    chain = GENESIS
    for event in iterate(fake_redis, keys):
        chain = extend_chain(chain, hashlib.sha256(event.body).digest())
    assert chain.hex() == newest.chain


def test_at_the_head_the_sealer_pauses_between_reads(fake_redis, keys):
    factory = EventFactory(fake_redis, keys)
    factory.open_admin()
    factory.open_accounts(3)
    pauses: list[float] = []
    sealer = Sealer(fake_redis, keys=keys, private_key=Ed25519PrivateKey.generate(), block_ms=None, every_s=3600,
                    linger_s=0.1, sleep=pauses.append)
    assert sealer.poll_once() == factory.last_seq and pauses == [0.1]
    assert sealer.poll_once() == 0 and pauses == [0.1]
