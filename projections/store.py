"""Writing a batch of events into a projection database: one SQLite transaction with its checkpoint.

Used by the live projector, the rebuild and the offline catch-up of ``projections diff``, so all three produce
byte-identical rows. The batch is checked to continue the checkpoint without a gap; a checkpoint that moved
underneath (a rebuild swapped the database in) is reported, not overwritten.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from eventstore.envelope import StoredEvent
from projections.apply import AccountRow, ApplyError, Opener, RowChanges, apply_event
from projections.schema import ACCOUNT_COLUMNS, TRANSACTION_COLUMNS, read_checkpoint

# Column names are constants of this package, never input: S608 does not apply.
_LOAD_ACCOUNT = f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts WHERE id = ?"  # noqa: S608
_UPSERT_ACCOUNT = (f"INSERT OR REPLACE INTO accounts ({', '.join(ACCOUNT_COLUMNS)}) "  # noqa: S608
                   f"VALUES ({', '.join('?' * len(ACCOUNT_COLUMNS))})")
_INSERT_TRANSACTION = (f"INSERT INTO transactions ({', '.join(TRANSACTION_COLUMNS)}) "  # noqa: S608
                       f"VALUES ({', '.join('?' * len(TRANSACTION_COLUMNS))})")
_LOAD_ACCOUNTS = f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts WHERE id IN ({{}})"  # noqa: S608
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_PRELOAD_CHUNK = 500  # below SQLite's limit of bound parameters
SEALED_EVENT_TYPES = frozenset({"AccountOpened", "ProfileUpdated"})


class GapError(ApplyError):
    """The events do not continue the checkpoint one seq at a time."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    checkpoint: int
    applied: int
    erased: tuple[int, ...] = ()
    moved: bool = False


def account_loader(conn: sqlite3.Connection, preload: Iterable[int] = ()) -> Callable[[int], AccountRow | None]:
    """Rows by id; the ``preload`` ids are read up front with a few ``IN`` queries instead of one query each."""
    known: dict[int, AccountRow | None] = {}
    wanted = sorted(set(preload))
    for start in range(0, len(wanted), _PRELOAD_CHUNK):
        chunk = wanted[start:start + _PRELOAD_CHUNK]
        known.update(dict.fromkeys(chunk))
        query = _LOAD_ACCOUNTS.format(", ".join("?" * len(chunk)))
        for row in conn.execute(query, chunk):
            known[row[0]] = AccountRow(*row)

    def load(account_id: int) -> AccountRow | None:
        if account_id in known:
            return known[account_id]
        row = conn.execute(_LOAD_ACCOUNT, (account_id,)).fetchone()
        return None if row is None else AccountRow(*row)

    return load


def touched_accounts(decoded: Sequence[tuple[int, dict]]) -> set[int]:
    """Every account the batch's events name (the envelope's ``accounts``)."""
    out: set[int] = set()
    for _seq, body in decoded:
        accounts = body.get("accounts")
        if isinstance(accounts, list):
            out.update(a for a in accounts if isinstance(a, int))
    return out


def sealed_accounts(decoded: Sequence[tuple[int, dict]]) -> set[int]:
    """Accounts whose personal data this batch must open (so their data keys can be fetched in one go)."""
    return {body["data"]["account"] for _seq, body in decoded
            if body.get("type") in SEALED_EVENT_TYPES and isinstance(body.get("data", {}).get("account"), int)}


def decode_batch(events: Sequence[StoredEvent], after_seq: int) -> list[tuple[int, dict]]:
    """Decoded bodies, checked for gapless seq, ``<seq>-0`` ids and a body that agrees with its entry."""
    out = []
    expected = after_seq + 1
    loads = orjson.loads
    for event in events:
        if event.seq != expected or event.entry_id != f"{expected}-0":
            raise GapError(f"expected seq {expected}, the log has {event.seq} (entry {event.entry_id})")
        try:
            body = loads(event.body)
        except orjson.JSONDecodeError as error:
            raise ApplyError(f"seq {event.seq}: body is not JSON: {error}") from error
        if body.get("seq") != event.seq or body.get("type") != event.type:
            raise ApplyError(f"seq {event.seq}: body says seq {body.get('seq')} type {body.get('type')!r}")
        out.append((event.seq, body))
        expected += 1
    return out


def write_batch(
    conn: sqlite3.Connection, events: Sequence[StoredEvent], *, expected_checkpoint: int, open_pii: Opener,
    prefetch_pii: Callable[[Iterable[int]], None] | None = None,
) -> BatchResult:
    """Apply ``events`` (which must start at ``expected_checkpoint + 1``) in one transaction.

    ``prefetch_pii(accounts)`` is given the accounts whose personal data the batch opens, before it is applied:
    the vault fetches their data keys in one round trip instead of one each.
    """
    decoded = decode_batch(events, expected_checkpoint)
    if prefetch_pii is not None:
        sealed = sealed_accounts(decoded)
        if sealed:
            prefetch_pii(sealed)
    conn.execute("BEGIN IMMEDIATE")
    try:
        checkpoint = read_checkpoint(conn)
        if checkpoint != expected_checkpoint:
            conn.execute("ROLLBACK")
            return BatchResult(checkpoint=checkpoint, applied=0, moved=True)
        changes = RowChanges(account_loader(conn, touched_accounts(decoded)))
        for seq, body in decoded:
            apply_event(changes, seq, body, open_pii)
        if changes.accounts:
            conn.executemany(_UPSERT_ACCOUNT, [row.as_tuple() for row in changes.accounts.values()])
        if changes.transactions:
            conn.executemany(_INSERT_TRANSACTION, changes.transactions)
        last_seq, last_body = decoded[-1] if decoded else (checkpoint, None)
        conn.executemany(_SET_META, [("checkpoint", str(last_seq))]
                         + ([("checkpoint_at", last_body["occurred_at"])] if last_body else []))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return BatchResult(checkpoint=last_seq, applied=len(decoded), erased=tuple(changes.erased))
