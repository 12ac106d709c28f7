"""Deterministic checksums of projection databases, and the first row where two of them differ.

A checksum is SHA-256 over every row of a table in primary-key order, each row encoded as canonical JSON.
Two live databases are compared at the same seq: each is copied with SQLite's backup API (a consistent
snapshot), the copy that is behind is caught up to the other's checkpoint with the same applier code, and the
copies are checksummed. The live files are never written.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from eventstore.keys import Keys
from projections.rebuild import PersonalData, catch_up
from projections.schema import CHECKSUM_TABLES, connect, open_readonly, read_checkpoint


def _rows(conn: sqlite3.Connection, table: str) -> Iterator[tuple[Any, ...]]:
    order = ", ".join(CHECKSUM_TABLES[table])
    yield from conn.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608 - fixed table names


def table_checksum(conn: sqlite3.Connection, table: str) -> tuple[str, int]:
    """``(sha256 hex, row count)`` of one table."""
    digest = hashlib.sha256()
    count = 0
    dumps = orjson.dumps
    for row in _rows(conn, table):
        digest.update(dumps(row))
        digest.update(b"\n")
        count += 1
    return digest.hexdigest(), count


def checksums(conn: sqlite3.Connection) -> dict[str, Any]:
    """Checkpoint and per-table checksums, read in one snapshot."""
    conn.execute("BEGIN")
    try:
        out: dict[str, Any] = {"checkpoint": read_checkpoint(conn), "tables": {}}
        for table in CHECKSUM_TABLES:
            sha, count = table_checksum(conn, table)
            out["tables"][table] = {"sha256": sha, "rows": count}
    finally:
        conn.execute("COMMIT")
    return out


def first_difference(a: sqlite3.Connection, b: sqlite3.Connection, table: str) -> dict[str, Any] | None:
    """The first row (in key order) present or different in only one of the two tables."""
    width = len(CHECKSUM_TABLES[table])
    rows_a, rows_b = _rows(a, table), _rows(b, table)
    row_a, row_b = next(rows_a, None), next(rows_b, None)
    while row_a is not None or row_b is not None:
        if row_a == row_b:
            row_a, row_b = next(rows_a, None), next(rows_b, None)
            continue
        key_a = row_a[:width] if row_a is not None else None
        key_b = row_b[:width] if row_b is not None else None
        if key_a is not None and (key_b is None or key_a < key_b):
            return {"table": table, "key": list(key_a), "a": list(row_a), "b": None}  # type: ignore[arg-type]
        if key_b is not None and (key_a is None or key_b < key_a):
            return {"table": table, "key": list(key_b), "a": None, "b": list(row_b)}  # type: ignore[arg-type]
        return {"table": table, "key": list(key_a), "a": list(row_a), "b": list(row_b)}  # type: ignore[arg-type]
    return None


@dataclass
class DiffReport:
    seq: int
    a: dict[str, Any]
    b: dict[str, Any]
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences and self.a["tables"] == self.b["tables"]

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "equal": self.equal, "seq": self.seq, "database1": self.a, "database2": self.b,
                "differences": self.differences}


def snapshot(source: Path, dest: Path) -> sqlite3.Connection:
    """A consistent private copy of a (possibly live) projection database."""
    src = open_readonly(source)
    try:
        copy = sqlite3.connect(str(dest), isolation_level=None)
        src.backup(copy)
    finally:
        src.close()
    copy.close()
    return connect(dest, live=False)


def diff_databases(
    path_a: Path,
    path_b: Path,
    *,
    client: redis.Redis | None = None,
    keys: Keys | None = None,
    pii: PersonalData | None = None,
) -> DiffReport:
    """Compare two databases at the same seq (catching the one behind up, which needs ``client`` and ``pii``)."""
    with tempfile.TemporaryDirectory(prefix="bank-diff-") as work:
        a = snapshot(path_a, Path(work) / "a.db")
        b = snapshot(path_b, Path(work) / "b.db")
        try:
            seq_a, seq_b = read_checkpoint(a), read_checkpoint(b)
            if seq_a != seq_b:
                if client is None or keys is None or pii is None:
                    raise ValueError(f"checkpoints differ ({seq_a} vs {seq_b}) and no log to catch up from")
                behind, target = (a, seq_b) if seq_a < seq_b else (b, seq_a)
                reached = catch_up(behind, client, keys, pii, checkpoint=min(seq_a, seq_b), until=target)
                if reached != target:
                    raise ValueError(f"could not catch up to seq {target} (log ends at {reached})")
            report = DiffReport(seq=max(seq_a, seq_b), a=checksums(a), b=checksums(b))
            for table in CHECKSUM_TABLES:
                if report.a["tables"][table] != report.b["tables"][table]:
                    difference = first_difference(a, b, table)
                    if difference is not None:
                        report.differences.append(difference)
            return report
        finally:
            a.close()
            b.close()
