"""The projector on fakeredis: appliers, gapless batches, erasure, deleted and swapped database files."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import fakeredis
import pytest
from helpers_events import EventFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault
from eventstore.worker import FatalWorkerError
from projections.apply import AccountRow, ApplyError, RowChanges, apply_event, mask_phone, mask_ssn
from projections.compare import checksums
from projections.database import ProjectionDatabase
from projections.projector import LINGER_FROM_EVENTS, Projector
from projections.rebuild import rebuild
from projections.schema import WAL_CHECKPOINT_PAGES, connect, read_checkpoint


def _project(client, keys, vault, path, *, batch=1000):
    projector = Projector(client, keys=keys, db=ProjectionDatabase(path), vault=vault, batch=batch, block_ms=None)
    while projector.poll_once():
        pass
    return projector


def _row(**changes):
    base = dict(id=1, role="customer", status="open", balance=100, first_name="A", last_name="B", phone="***1234",
                ssn_masked="***-**-1234", sms_opt_in=0, opened_at="t", closed_at=None, erased=0, version=1)
    base.update(changes)
    return AccountRow(**base)


def _body(event_type, data, *, seq=2, accounts=(1,), versions=(2,)):
    return {"type": event_type, "seq": seq, "event_id": "e" * 32, "occurred_at": "t2", "accounts": list(accounts),
            "versions": list(versions), "data": data}


def test_masks_keep_only_the_last_four_digits():
    assert mask_phone("+15551234567") == "***4567"
    assert mask_ssn("123-45-6789") == "***-**-6789"
    assert mask_phone("[erased]") == "[erased]"


def test_applier_refuses_a_balance_that_does_not_add_up():
    changes = RowChanges(lambda account: _row() if account == 1 else None)
    with pytest.raises(ApplyError, match="seq 2"):
        apply_event(changes, 2, _body("MoneyDeposited", {"account": 1, "amount": 50, "balance_after": 151}), None)
    changes = RowChanges(lambda account: _row() if account == 1 else None)
    apply_event(changes, 2, _body("MoneyDeposited", {"account": 1, "amount": 50, "balance_after": 150}), None)
    assert changes.accounts[1].balance == 150 and changes.accounts[1].version == 2
    assert changes.transactions == [(2, 1, "e" * 32, "deposit", 50, None, 150, "t2")]


@pytest.mark.parametrize("body", [
    _body("MoneyWithdrawn", {"account": 1, "amount": 150, "balance_after": -50}),
    _body("MoneyDeposited", {"account": 9, "amount": 1, "balance_after": 1}, accounts=(9,)),
    _body("AccountClosed", {"account": 1}),
    _body("Mystery", {"account": 1}),
    _body("MoneyDeposited", {"account": 1, "amount": 1, "balance_after": 101}, versions=(0,)),
])
def test_applier_refuses_impossible_events(body):
    with pytest.raises(ApplyError):
        apply_event(RowChanges(lambda account: _row() if account == 1 else None), 2, body, None)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 6), st.integers(0, 120), st.integers(0, 10_000), st.sampled_from([7, 64, 1000]))
def test_projection_matches_the_write_side_for_any_traffic(accounts, commands, seed, batch):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    keys = Keys()
    factory = EventFactory(client, keys)
    opened = factory.open_accounts(accounts)
    factory.random_traffic(opened, commands, seed=seed)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as work:
        projector = _project(client, keys, factory.vault, Path(work) / "db.db", batch=batch)
        conn = projector.db.writer
        assert read_checkpoint(conn) == factory.last_seq
        rows = dict(conn.execute("SELECT id, balance FROM accounts").fetchall())
        assert rows == {a: factory.states[a].balance for a in opened}
        versions = dict(conn.execute("SELECT id, version FROM accounts").fetchall())
        assert versions == {a: factory.states[a].version for a in opened}
        for account in opened:
            last = conn.execute("SELECT balance_after FROM transactions WHERE account = ? ORDER BY seq DESC LIMIT 1",
                                (account,)).fetchone()
            assert (last[0] if last else 0) == rows[account]
        projector.db.close()


def test_gap_stops_the_projector_without_moving_the_checkpoint(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    factory.open_accounts(3)
    fake_redis.xdel(keys.events, "4-0")
    projector = Projector(fake_redis, keys=keys, db=ProjectionDatabase(tmp_path / "db.db"), vault=factory.vault,
                          block_ms=None)
    with pytest.raises(FatalWorkerError, match="expected seq 4"):
        projector.poll_once()
    assert read_checkpoint(projector.db.writer) == 0


def test_an_event_that_does_not_apply_stops_the_projector(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    [account] = factory.open_accounts(1)
    factory.deposit(account, 500)
    projector = _project(fake_redis, keys, factory.vault, tmp_path / "db.db")
    checkpoint = projector.checkpoint
    fake_redis.xadd(keys.events, {"seq": checkpoint + 1, "type": "MoneyDeposited", "body": b"{}"},
                    id=f"{checkpoint + 1}-0")
    with pytest.raises(FatalWorkerError):
        projector.poll_once()
    assert read_checkpoint(projector.db.writer) == checkpoint


def test_erasure_masks_everything_and_a_rebuild_agrees(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    first, second = factory.open_accounts(2)
    factory.update_profile(first, phone="+15550001111", first_name="Zed")
    factory.deposit(first, 1000)
    factory.withdraw(first, 1000)
    live = _project(fake_redis, keys, factory.vault, tmp_path / "live.db")
    row = live.db.writer.execute("SELECT first_name, phone, ssn_masked FROM accounts WHERE id = ?", (first,)).fetchone()
    assert row[0] == "Zed" and row[1] == "***1111" and row[2].startswith("***-**-")
    factory.close(first)
    factory.erase(first)
    live.poll_once()
    row = live.db.writer.execute(
        "SELECT first_name, last_name, phone, ssn_masked, erased FROM accounts WHERE id = ?", (first,)).fetchone()
    assert row == ("[erased]", "[erased]", "[erased]", "[erased]", 1)
    other = live.db.writer.execute("SELECT first_name FROM accounts WHERE id = ?", (second,)).fetchone()
    assert other[0] != "[erased]"
    rebuild(fake_redis, keys, factory.vault, tmp_path / "rebuilt.db")
    assert checksums(connect(tmp_path / "rebuilt.db")) == checksums(live.db.writer)


def test_deleted_database_is_recreated_and_rebuilt_from_seq_1(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    accounts = factory.open_accounts(4)
    factory.random_traffic(accounts, 50)
    path = tmp_path / "database1.db"
    projector = _project(fake_redis, keys, factory.vault, path)
    before = checksums(projector.db.writer)
    path.unlink()
    assert not projector.is_live()
    while projector.poll_once():
        pass
    assert path.exists() and projector.counters["reopened"] >= 2
    assert checksums(projector.db.writer) == before


def test_corrupt_database_is_set_aside_and_rebuilt(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    factory.open_accounts(3)
    path = tmp_path / "database1.db"
    path.write_bytes(b"this is not a database" * 300)
    projector = _project(fake_redis, keys, factory.vault, path)
    assert projector.checkpoint == factory.last_seq
    assert list(tmp_path.glob("database1.db.corrupt-*"))


def test_rebuild_swaps_in_under_a_live_projector(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    accounts = factory.open_accounts(5)
    factory.random_traffic(accounts, 80)
    path = tmp_path / "database1.db"
    live = _project(fake_redis, keys, factory.vault, path)
    reader = sqlite3.connect(path)  # another reader with the file open during the swap
    reader.execute("BEGIN")
    assert reader.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()[0] == str(factory.last_seq)
    reader.execute("COMMIT")
    live.db.writer.execute("UPDATE accounts SET balance = balance + 1")  # damage that a rebuild must repair
    result = rebuild(fake_redis, keys, factory.vault, path)
    assert result.swapped == "backup" and result.checkpoint == factory.last_seq
    factory.random_traffic(accounts, 30, seed=99)
    while live.poll_once():
        pass
    fresh = rebuild(fake_redis, keys, factory.vault, tmp_path / "fresh.db")
    assert fresh.checkpoint == factory.last_seq
    assert checksums(live.db.writer) == checksums(connect(tmp_path / "fresh.db"))
    assert checksums(reader) == checksums(live.db.writer)
    assert live.db.writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert live.db.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 6), st.integers(0, 120), st.integers(0, 10_000), st.sampled_from([1, 3, 100_000]),
       st.sampled_from([3, 50, 5000]), st.floats(0, 1))
def test_a_bulk_load_writes_exactly_the_live_projectors_rows(accounts, commands, seed, rows_in_memory, page, split):
    """However it is paged, split into passes or made to spill its account rows, a bulk load equals the live path."""
    import tempfile
    from pathlib import Path
    from unittest.mock import patch

    from projections import store
    from projections.rebuild import catch_up
    from projections.schema import create_indexes

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    keys = Keys()
    factory = EventFactory(client, keys)
    opened = factory.open_accounts(accounts, sms=True)
    factory.random_traffic(opened, commands, seed=seed)
    factory.update_profile(opened[0], first_name="Ann", phone="+15550001111")
    factory.erase(opened[-1])
    factory.random_traffic(opened[:-1], commands // 2, seed=seed + 1)
    with tempfile.TemporaryDirectory() as work:
        live = _project(client, keys, factory.vault, Path(work) / "live.db", batch=64)
        bulk = connect(Path(work) / "bulk.db", live=False)
        middle = int(factory.last_seq * split)
        with patch.object(store, "BULK_ROWS_IN_MEMORY", rows_in_memory):
            assert catch_up(bulk, client, keys, factory.vault, checkpoint=0, until=middle, batch=page) == middle
            assert catch_up(bulk, client, keys, factory.vault, checkpoint=middle, batch=page) == factory.last_seq
        create_indexes(bulk)
        assert checksums(bulk) == checksums(live.db.writer)
        assert read_checkpoint(bulk) == factory.last_seq
        bulk.close()
        live.db.close()


def test_a_bulk_load_refuses_a_database_at_another_checkpoint(fake_redis, keys, tmp_path):
    from projections.rebuild import catch_up

    factory = EventFactory(fake_redis, keys)
    factory.open_accounts(3)
    conn = connect(tmp_path / "bulk.db", live=False)
    catch_up(conn, fake_redis, keys, factory.vault, checkpoint=0, until=2)
    with pytest.raises(ApplyError, match="expected checkpoint 1"):
        catch_up(conn, fake_redis, keys, factory.vault, checkpoint=1)
    assert read_checkpoint(conn) == 2


def _roll_back_and_rewrite(client, keys, keep: int) -> None:
    """The log loses everything after ``keep`` (a failover to a lagging replica) and the entry after it is
    appended again with other contents, as a handler re-deciding a lost command would."""
    entries = client.xrange(keys.events)
    client.delete(keys.events)
    for entry_id, fields in entries[:keep]:
        client.xadd(keys.events, fields, id=entry_id)
    entry_id, fields = entries[keep]
    client.xadd(keys.events, {**fields, b"body": fields[b"body"].replace(b'"occurred_at":"', b'"occurred_at":"0')},
                id=entry_id)


@pytest.mark.parametrize("rewrite", [True, False])
def test_a_projector_stops_when_the_log_lost_what_its_database_applied(fake_redis, keys, tmp_path, rewrite):
    factory = EventFactory(fake_redis, keys)
    factory.open_admin()
    [account] = factory.open_accounts(1)
    factory.deposit(account, 500)
    path = tmp_path / "database1.db"
    _project(fake_redis, keys, factory.vault, path)
    head = factory.last_seq
    assert _project(fake_redis, keys, factory.vault, path).checkpoint == head, "a restart on an intact log goes on"
    if rewrite:
        _roll_back_and_rewrite(fake_redis, keys, head - 1)
    else:
        fake_redis.xdel(keys.events, f"{head}-0")  # the tail is gone, nothing re-appended yet
    with pytest.raises(FatalWorkerError, match=f"seq {head}, which this database applied"):
        _project(fake_redis, keys, factory.vault, path)


class _FailingCommit:
    """A connection whose next COMMIT fails (a full disk, an I/O error) after the batch was applied in memory."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_batch_that_did_not_commit_leaves_no_trace_in_the_rows_the_projector_keeps(fake_redis, keys, tmp_path):
    """The projector keeps its account rows between batches; a batch that failed must not leave its changes there."""
    factory = EventFactory(fake_redis, keys)
    accounts = factory.open_accounts(4)
    factory.random_traffic(accounts, 40, seed=1)
    live = _project(fake_redis, keys, factory.vault, tmp_path / "live.db")
    assert live.rows.rows  # warm: the next batch reads no account row from the file
    checkpoint = live.checkpoint
    factory.random_traffic(accounts, 40, seed=2)
    writer = live.db.writer
    live.db._writer = _FailingCommit(writer)
    with pytest.raises(sqlite3.OperationalError):
        live.poll_once()
    live.db._writer = writer
    assert read_checkpoint(writer) == checkpoint == live.checkpoint
    while live.poll_once():
        pass
    fresh = rebuild(fake_redis, keys, factory.vault, tmp_path / "fresh.db")
    assert live.checkpoint == fresh.checkpoint == factory.last_seq
    assert checksums(writer) == checksums(connect(tmp_path / "fresh.db"))


def _lingering_projector(fake_redis, keys, tmp_path, events: int, **lingers: float) -> tuple[Projector, float]:
    factory = EventFactory(fake_redis, keys)
    [account] = factory.open_accounts(1)
    live = Projector(fake_redis, keys=keys, db=ProjectionDatabase(tmp_path / "db.db"), vault=factory.vault,
                     block_ms=None)
    while live.poll_once():
        pass
    for name, seconds in (lingers or {"linger_s": 60.0}).items():
        setattr(live, name, seconds)
    for _ in range(events):
        factory.deposit(account, 1)
    assert (events >= LINGER_FROM_EVENTS) == (factory.last_seq - live.checkpoint >= LINGER_FROM_EVENTS)
    return live, time.monotonic()


def test_a_busy_log_makes_the_projector_linger_until_a_query_waits(fake_redis, keys, tmp_path):
    live, began = _lingering_projector(fake_redis, keys, tmp_path, LINGER_FROM_EVENTS)
    lingered = threading.Event()

    def query_waits() -> None:
        lingered.set()
        time.sleep(0.5)  # a query arrives while the projector lingers
        live.hurry.set()

    threading.Thread(target=query_waits, daemon=True).start()
    assert live.poll_once() == LINGER_FROM_EVENTS
    assert lingered.is_set() and 0.4 < time.monotonic() - began < 30  # it waited, and not the whole 60 s
    assert not live.hurry.is_set()


def test_a_quiet_log_never_gets_the_busy_pause(fake_redis, keys, tmp_path):
    live, began = _lingering_projector(fake_redis, keys, tmp_path, LINGER_FROM_EVENTS - 1)
    assert live.poll_once() == LINGER_FROM_EVENTS - 1
    assert time.monotonic() - began < 30


def test_a_quiet_log_makes_the_projector_pause_briefly_unless_a_query_waits(fake_redis, keys, tmp_path):

    live, began = _lingering_projector(fake_redis, keys, tmp_path, 3, linger_s=60.0, quiet_linger_s=0.3)
    assert live.poll_once() == 3
    assert 0.25 < time.monotonic() - began < 30  # the short pause, not the long one

    (tmp_path / "again").mkdir()
    other = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    live, _ = _lingering_projector(other, keys, tmp_path / "again", 3, quiet_linger_s=60.0)
    threading.Timer(0.2, live.hurry.set).start()  # a query waits for the next seq
    began = time.monotonic()
    assert live.poll_once() == 3
    assert time.monotonic() - began < 30


def test_a_projector_given_another_master_key_stops_and_says_so(fake_redis, keys, tmp_path):
    factory = EventFactory(fake_redis, keys)
    factory.open_accounts(2)
    stranger = PersonalDataVault(fake_redis, keys=keys, master_key=os.urandom(32))
    projector = Projector(fake_redis, keys=keys, db=ProjectionDatabase(tmp_path / "db.db"), vault=stranger,
                          block_ms=None)
    with pytest.raises(FatalWorkerError, match="does not open with this master key"):
        projector.poll_once()
    assert read_checkpoint(projector.db.writer) == 0
