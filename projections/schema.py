"""The SQLite read model: tables, pragmas and the checkpoint (DESIGN §1, §6).

Personal data is stored only masked (phone ``***4567``, SSN ``***-**-1234``) or, for names, as shown to the
customer; after ``CustomerDataErased`` every personal column holds ``[erased]``. The checkpoint (last applied
seq) lives in ``meta`` and is written in the same transaction as the rows it covers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
PAGE_SIZE = 4096
BUSY_TIMEOUT_MS = 30_000
WAL_CHECKPOINT_PAGES = 250

DDL = (
    """CREATE TABLE IF NOT EXISTS accounts (
        id INTEGER PRIMARY KEY,
        role TEXT NOT NULL,
        status TEXT NOT NULL,
        balance INTEGER NOT NULL,
        first_name TEXT,
        last_name TEXT,
        phone TEXT,
        ssn_masked TEXT,
        sms_opt_in INTEGER NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        erased INTEGER NOT NULL,
        version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS transactions (
        seq INTEGER NOT NULL,
        account INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        amount INTEGER NOT NULL,
        counterparty INTEGER,
        balance_after INTEGER NOT NULL,
        occurred_at TEXT NOT NULL,
        PRIMARY KEY (seq, account)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
# Secondary indexes: a bulk load (rebuild) builds them once at the end, a sorted pass instead of an insert per row.
INDEXES = ("CREATE INDEX IF NOT EXISTS transactions_by_account ON transactions (account, seq)",)

ACCOUNT_COLUMNS = ("id", "role", "status", "balance", "first_name", "last_name", "phone", "ssn_masked",
                   "sms_opt_in", "opened_at", "closed_at", "erased", "version")
TRANSACTION_COLUMNS = ("seq", "account", "event_id", "kind", "amount", "counterparty", "balance_after",
                       "occurred_at")
CHECKSUM_TABLES = {"accounts": ("id",), "transactions": ("seq", "account")}


class DatabaseUnusable(RuntimeError):
    """The file is not a projection database (corrupt, foreign or from a newer schema)."""


def connect(path: Path, *, live: bool = True, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) a projection database.

    ``live``: WAL with ``synchronous=NORMAL`` (a crash loses at most the last transactions, never consistency;
    the checkpoint rolls back with them). Otherwise (a rebuild into a private temp file) no journal and no
    fsync until the caller's final fsync.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        if live:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint every 250 pages (1 MB). A checkpoint writes the pages out and fsyncs the file, and Redis's
            # fsync of the log queues behind that burst on the same disk: whole bank at 2,000 commands/s (medians
            # of five runs, alternating): p99 9.13 / 8.67 / 8.30 ms at 1,000 pages (SQLite's default), 6.75 /
            # 7.40 / 7.42 at 250, 6.71 at 100; 10,000 pages (40 MB bursts) had given 8-20 ms in session 8.
            # Batched runs: 250 pages cost nothing measurable (110.8 / 111.1 us of CPU per command against 111.8
            # / 113.9), 100 pages cost 2-3 us more per command (the same hot pages copied more often).
            # synchronous=OFF did as well for the p99 (6.35 / 6.16), but a power loss could then leave a database
            # corrupt rather than merely a few transactions behind.
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        else:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        ensure_schema(conn, indexes=live)
    except sqlite3.DatabaseError as error:
        conn.close()
        raise DatabaseUnusable(f"{path}: {error}") from error
    return conn


def ensure_schema(conn: sqlite3.Connection, *, indexes: bool = True) -> None:
    """Tables (and, unless a bulk load will add them later with :func:`create_indexes`, the indexes)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise DatabaseUnusable(f"schema version {version} is newer than this code ({SCHEMA_VERSION})")
    if version == SCHEMA_VERSION:
        if indexes:
            create_indexes(conn)  # idempotent: a database built by an interrupted bulk load gets them here
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in DDL + (INDEXES if indexes else ()):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('checkpoint', '0')")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def create_indexes(conn: sqlite3.Connection) -> None:
    for statement in INDEXES:
        conn.execute(statement)


def read_checkpoint(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
    return int(row[0]) if row else 0


def read_checkpoint_digest(conn: sqlite3.Connection) -> str | None:
    """SHA-256 (hex) of the body of the event at the checkpoint; ``None`` before the first event."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'checkpoint_digest'").fetchone()
    return row[0] if row else None


def open_readonly(path: Path) -> sqlite3.Connection:
    """For audits and status: never creates the file, never writes (``DatabaseUnusable`` if absent/bad)."""
    if not path.exists():
        raise DatabaseUnusable(f"{path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.close()
            raise DatabaseUnusable(f"{path} is not a projection database of schema {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as error:
        raise DatabaseUnusable(f"{path}: {error}") from error
    return conn
