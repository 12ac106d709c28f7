"""The projector's handle on its SQLite file, shared with its query thread.

The file can disappear (an operator deletes it) or be replaced (restored from a copy): the handle compares the
inode at the path with the one it opened and, if they differ, closes every connection *before* opening the
path again, and removes a leftover ``-wal``/``-shm`` of the old file first, so an old write-ahead log is never
paired with a new database. A file SQLite cannot read is moved aside (``.corrupt-<time>``) and a fresh one is
created: the projector then rebuilds it from seq 1 while the other database serves reads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from projections.schema import DatabaseUnusable, connect, read_checkpoint

log = logging.getLogger("bank.projector.db")

SIDE_FILES = ("-wal", "-shm", "-journal")


def side_file(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


class ProjectionDatabase:
    """Two connections to one file (writer for the projector, reader for queries) that follow the path."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self.generation = 0
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._inode: int | None = None

    def _open(self) -> None:
        if not self.path.exists():
            for suffix in SIDE_FILES:
                side_file(self.path, suffix).unlink(missing_ok=True)
        try:
            writer = connect(self.path, live=True, check_same_thread=False)
            writer.execute("SELECT count(*) FROM accounts").fetchone()
        except (DatabaseUnusable, sqlite3.DatabaseError) as error:
            self._quarantine(error)
            writer = connect(self.path, live=True, check_same_thread=False)
        self._writer = writer
        self._reader = connect(self.path, live=True, check_same_thread=False)
        self._reader.execute("PRAGMA query_only=ON")
        self._inode = os.stat(self.path).st_ino
        self.generation += 1
        log.info("%s opened at checkpoint %d", self.path, read_checkpoint(writer))

    def _quarantine(self, error: Exception) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("%s is unusable (%s): moved to %s; rebuilding from seq 1", self.path, error, aside)
        os.replace(self.path, aside)
        for suffix in SIDE_FILES:
            side = side_file(self.path, suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))

    def close(self) -> None:
        with self.lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error as error:
                        log.warning("closing %s: %s", self.path, error)
            self._reader = self._writer = None
            self._inode = None

    def path_is_current(self) -> bool:
        """True when the path still names the file the connections have open."""
        try:
            return self._inode is not None and os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            return False

    def ensure_current(self) -> bool:
        """Reopen if the file was deleted or replaced; True when it (re)opened."""
        with self.lock:
            if self._writer is not None and self.path_is_current():
                return False
            if self._writer is not None:
                log.warning("%s was deleted or replaced: reopening", self.path)
            self.close()
            self._open()
            return True

    def reopen_fresh(self, error: Exception) -> None:
        """After an unreadable page: set the file aside and start an empty one."""
        with self.lock:
            self.close()
            if self.path.exists():
                self._quarantine(error)
            self._open()

    @property
    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            self.ensure_current()
        assert self._writer is not None
        return self._writer

    @property
    def reader(self) -> sqlite3.Connection:
        """Use only while holding :attr:`lock`."""
        if self._reader is None:
            self.ensure_current()
        assert self._reader is not None
        return self._reader
