"""The projector worker: follows the log into one SQLite read model and serves queries from it (DESIGN §6, §7).

``poll_once`` XREADs after the checkpoint, checks the seq is gapless and applies the batch in one transaction
with the new checkpoint. A gap or an event that does not apply stops the worker (``FatalWorkerError``): it
never skips. A deleted or replaced file is noticed and reopened (a new file is rebuilt from seq 1); a
checkpoint that moved underneath (``projections rebuild`` swapped a new database in) is adopted.

The process also runs a :class:`projections.queries.QueryServer` thread on its own Redis and SQLite
connections; it takes queries only while this projector is at the head of the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import redis

from eventstore.connection import MAX_BLOCK_MS, connect, connect_bus
from eventstore.keys import KEYS, Keys
from eventstore.log import LogFollower, read_range
from eventstore.pii import PersonalDataVault, load_master_key
from eventstore.worker import FatalWorkerError, WorkerRunner, configure_logging, yield_cpu_to_commands
from projections.apply import ApplyError, Opener
from projections.database import ProjectionDatabase
from projections.schema import read_checkpoint, read_checkpoint_digest
from projections.store import RowCache, body_digest, write_batch

log = logging.getLogger("bank.projector")

LIVE_BATCH = 4000
"""Most events one transaction applies. A projector behind the head (under a burst) catches up in big
transactions: each commit rewrites every page it touched (account rows, the history index, spread over the whole
file), so fewer commits write fewer pages per event. Measured: 4,000 instead of 1,000 cut the projector's CPU per
event by 10-15% (catch-up and whole bank, alternating runs); the lag during a burst stayed under 0.6 s on a slow
host."""
LIVE_BLOCK_MS = 1000
LINGER_FROM_EVENTS = 64
"""A live read that brought at least this many events means the log is busy: wait ``LINGER_S`` before the next."""
LINGER_S = 0.025
QUIET_LINGER_S = 0.005
"""After a smaller live read: a few events per read cost the CPU of a whole wake-up each (see ``_linger``)."""


class Projector:
    """Applies the log to one database, batch by batch."""

    kind = "projector"

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        db: ProjectionDatabase,
        vault: PersonalDataVault,
        batch: int = LIVE_BATCH,
        block_ms: int | None = LIVE_BLOCK_MS,
        linger_s: float = 0.0,
        quiet_linger_s: float = 0.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.follower = LogFollower(client, keys)  # the head, on a direct connection (see eventstore.direct)
        self.db = db
        self.vault = vault
        self.batch = batch
        self.block_ms = block_ms
        self.linger_s = linger_s
        self.quiet_linger_s = quiet_linger_s
        self.hurry = threading.Event()  # set by a query that waits for a seq this database has not reached
        self.rows = RowCache()  # this process is the file's only writer between reopenings
        self.counters: dict[str, int] = {"events": 0, "batches": 0, "reopened": 0}
        self.checkpoint = 0
        self.live = False
        self.changed = threading.Condition()
        self._generation = -1
        self._check_log = True  # at start, after a reopened file and after losing Redis: see _check_log_holds

    @property
    def open_pii(self) -> Opener:
        return self.vault.open

    def is_live(self) -> bool:
        """At the head as of the last read, on a file that is still in place (queries are served only then)."""
        return self.live and self.db.path_is_current()

    def _sync_with_file(self) -> None:
        if self.db.ensure_current() or self.db.generation != self._generation:
            self._generation = self.db.generation
            self.checkpoint = read_checkpoint(self.db.writer)
            self.live = False
            self.rows.clear()
            self.counters["reopened"] += 1
            self._check_log = True

    def _check_log_holds(self) -> None:
        """Stop if the log no longer holds, at the checkpoint, the event this database applied there.

        Why: following the head assumes the log only grows. A Redis that lost acknowledged writes (a failover to
        a replica that lagged, a restored backup) would have the handlers append different events at the same
        seqs, and this database would silently disagree with the log forever. Checked when following starts
        and after every lost connection; a rebuild (``bankctl projections rebuild``) is the way back.
        """
        self._check_log = False
        expected = read_checkpoint_digest(self.db.writer)
        if self.checkpoint == 0 or not expected:
            return
        found = read_range(self.client, self.keys, self.checkpoint, self.checkpoint, count=1)
        if not found or body_digest(found[0].body) != expected:
            what = "no longer holds" if not found else "holds a different event at"
            raise FatalWorkerError(
                f"{self.db.path}: the log {what} seq {self.checkpoint}, which this database applied (was the log "
                "rolled back?); rebuild it with 'bankctl projections rebuild'")

    def poll_once(self) -> int:
        self._sync_with_file()
        block = self.block_ms if self.live else None
        try:
            if self._check_log:
                self._check_log_holds()
            events = self.follower.read_after(self.checkpoint, count=self.batch, block_ms=block)
        except (redis.ConnectionError, redis.TimeoutError):
            self._check_log = True  # Redis may come back with less than it had
            raise
        if not events:
            self.live = True
            return 0
        try:
            result = write_batch(self.db.writer, events, expected_checkpoint=self.checkpoint,
                                 open_pii=self.open_pii, prefetch_pii=self.vault.prefetch, cache=self.rows)
        except ApplyError as error:
            raise FatalWorkerError(f"{self.db.path}: {error}") from error
        except sqlite3.IntegrityError as error:
            raise FatalWorkerError(f"{self.db.path}: rows contradict the checkpoint: {error}") from error
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:
            self.db.reopen_fresh(error)
            return 0
        if result.moved:
            log.warning("%s: checkpoint moved from %d to %d underneath (rebuild swapped in); continuing",
                        self.db.path, self.checkpoint, result.checkpoint)
            self.checkpoint = result.checkpoint
            self.live = False
            return 0
        for account in result.erased:
            self.vault.forget_cached(account)
        self.checkpoint = result.checkpoint
        self.live = len(events) < self.batch
        self.counters["events"] += result.applied
        self.counters["batches"] += 1
        with self.changed:
            self.changed.notify_all()
        if self.live:
            self._linger(self.linger_s if result.applied >= LINGER_FROM_EVENTS else self.quiet_linger_s)
        return result.applied

    def _linger(self, seconds: float) -> None:
        """Let the next batch fill up a little before reading it; a query waiting for it cuts the wait short.

        Why: a batch's cost is mostly per touched page and per wake-up, not per event. Under load, fuller
        batches rewrite each account and index page once for more events (measured: 15-20% less CPU per event
        at 1,000 events per batch than at 100). At 2,000 commands/s, reading after every append woke each
        projector for two to four events at a time; a 5 ms pause cut its CPU by about 30%, and that CPU goes
        to the command path. Read-your-writes is not slower: a query waiting for a later seq sets ``hurry``.
        """
        if seconds > 0 and not self.hurry.is_set():
            self.hurry.wait(seconds)
        self.hurry.clear()


def resolve_db_path(data_dir: Path, db_path: str | Path | None) -> Path:
    """A bare file name (``--db database1.db``) is taken inside the data directory, any other path as given."""
    if db_path is None:
        return Path(data_dir) / "database1.db"
    path = Path(db_path)
    if not path.is_absolute() and len(path.parts) == 1:
        return Path(data_dir) / path
    return path.resolve()


def main(
    *,
    redis_url: str,
    bus_url: str | None = None,
    data_dir: Path,
    name: str = "projector-1",
    db_path: str | Path | None = None,
    keys: Keys = KEYS,
    serve_queries: bool = True,
    **_options: object,
) -> int:
    from projections.queries import QueryServer, QueryThread

    configure_logging()
    data_dir = Path(data_dir)
    path = resolve_db_path(data_dir, db_path)
    try:
        master_key = load_master_key(data_dir / "master.key")
    except (OSError, ValueError) as error:
        log.error("cannot load the master key: %s", error)
        return 1
    client = connect(redis_url)
    bus = connect_bus(bus_url, log_url=redis_url, log_client=client)
    db = ProjectionDatabase(path)
    projector = Projector(client, keys=keys, db=db,
                          vault=PersonalDataVault(client, keys=keys, master_key=master_key),
                          block_ms=min(LIVE_BLOCK_MS, MAX_BLOCK_MS), linger_s=LINGER_S, quiet_linger_s=QUIET_LINGER_S)
    thread: QueryThread | None = None
    if serve_queries:
        # the query thread has connections of its own
        server = QueryServer(connect(redis_url), bus=connect(bus_url or redis_url), keys=keys, db=db,
                             consumer=name, ready=projector.is_live, master_key=master_key,
                             changed=projector.changed, hurry=projector.hurry)
        thread = QueryThread(server, name=f"{name}-queries")
        thread.start()
    yield_cpu_to_commands()  # after the query thread started: only this thread, the one applying the log, yields
    runner = WorkerRunner(projector, client=bus, keys=keys, name=name,
                          extra_status=lambda: {"checkpoint": projector.checkpoint, "db": str(path),
                                                "live": int(projector.live)})
    runner.install_signal_handlers()
    try:
        return runner.run()
    finally:
        if thread is not None:
            thread.stop()
        db.close()
