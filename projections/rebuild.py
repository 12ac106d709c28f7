"""Rebuild a projection database from seq 1 while the system runs, then swap it in atomically.

The new database is built in a private temp file next to the target (no journal, no fsync: if the rebuild
dies, the temp file is simply discarded), caught up to the head, and then copied over the live file with
SQLite's online backup in ONE step: the copy is a single write transaction on the live database, so every
reader sees either the old or the new database, never a half-built one, and the write-ahead log of the live
file stays consistent. (Renaming a new file over a database in WAL mode could pair it with the old file's
``-wal``/``-shm`` and corrupt it; the backup API avoids that.) The live projector finds its checkpoint moved
and continues from the new one. When the target does not exist yet, the fsynced temp file is renamed into place.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis

from eventstore.gc_pause import paused_gc
from eventstore.keys import Keys
from eventstore.log_pages import PageReader
from projections.database import SIDE_FILES, side_file
from projections.schema import BUSY_TIMEOUT_MS, connect, create_indexes
from projections.store import BulkLoad

REBUILD_BATCH = 5000
CATCH_UP_PASSES = 5


class PersonalData(Protocol):
    def open(self, account_id: int, field: str, sealed: str) -> str: ...

    def forget_cached(self, account_id: int) -> None: ...

    def prefetch(self, account_ids: Iterable[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class RebuildResult:
    path: Path
    checkpoint: int
    events: int
    seconds: float
    swapped: str  # "backup" into a live file, or "rename" when there was none

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def catch_up(
    conn: sqlite3.Connection,
    client: redis.Redis,
    keys: Keys,
    pii: PersonalData,
    *,
    checkpoint: int,
    until: int | None = None,
    batch: int = REBUILD_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Apply events after ``checkpoint`` (up to ``until`` or the head) to a private database in one transaction.

    Returns the new checkpoint. ``conn`` must have no other writer (a rebuild's temp file, a diff's snapshot).
    """
    load = BulkLoad(conn, checkpoint=checkpoint, open_pii=pii.open, prefetch_pii=pii.prefetch)
    try:
        with paused_gc():
            for events in PageReader(client, keys, page=batch).event_pages(checkpoint, until):
                for account in load.apply(events):
                    pii.forget_cached(account)
                if progress is not None:
                    progress(load.checkpoint)
        return load.commit()
    except BaseException:
        load.abort()
        raise


def temp_path_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.rebuild-{os.getpid()}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(built: sqlite3.Connection, built_path: Path, target: Path) -> str:
    """Make ``target`` hold exactly what ``built`` holds, atomically for every reader."""
    if target.exists():
        live = sqlite3.connect(str(target), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            live.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            built.backup(live, pages=-1)
        finally:
            live.close()
        built.close()
        built_path.unlink(missing_ok=True)
        return "backup"
    built.close()
    _fsync_file(built_path)
    for suffix in SIDE_FILES:
        side_file(target, suffix).unlink(missing_ok=True)
    os.replace(built_path, target)
    _fsync_dir(target.parent)
    return "rename"


def rebuild(
    client: redis.Redis,
    keys: Keys,
    pii: PersonalData,
    target: Path,
    *,
    batch: int = REBUILD_BATCH,
    progress: Callable[[int], None] | None = None,
) -> RebuildResult:
    """Build ``target`` from seq 1 in a temp file and swap it in."""
    started = time.perf_counter()
    target = Path(target)
    temp = temp_path_for(target)
    temp.unlink(missing_ok=True)
    conn = connect(temp, live=False)
    try:
        checkpoint = catch_up(conn, client, keys, pii, checkpoint=0, batch=batch, progress=progress)
        for _ in range(CATCH_UP_PASSES):  # the log grew while we built: follow it closer before the swap
            newer = catch_up(conn, client, keys, pii, checkpoint=checkpoint, batch=batch)
            if newer == checkpoint:
                break
            checkpoint = newer
        create_indexes(conn)  # after the bulk load: one sorted pass
        how = swap_in(conn, temp, target)
    except BaseException:
        conn.close()
        temp.unlink(missing_ok=True)
        raise
    return RebuildResult(path=target, checkpoint=checkpoint, events=checkpoint,
                         seconds=time.perf_counter() - started, swapped=how)
