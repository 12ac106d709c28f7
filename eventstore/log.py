"""Reading the log: by seq range, all of it, or following its head (DESIGN §4, §6).

Every entry's stream id is ``<seq>-0``, so a seq range is an XRANGE and "everything after seq N" is an XREAD
from ``N-0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import redis

from eventstore.direct import DirectConnection, single_stream_raw
from eventstore.envelope import StoredEvent, parse_utc_timestamp
from eventstore.keys import Keys

DEFAULT_PAGE = 1000


class LogCorrupted(RuntimeError):
    """An entry that cannot be a log entry (missing fields, non-integer seq)."""


def _decode_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StoredEvent:
    try:
        seq = int(fields[b"seq"])
        event_type = fields[b"type"].decode()
        body = fields[b"body"]
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise LogCorrupted(f"log entry {entry_id!r} is malformed: {error!r}") from error
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return StoredEvent(entry_id=entry, seq=seq, type=event_type, body=body)


_LAYOUT = (b"seq", b"type", b"body")


def _decode_flat(entry_id: bytes | str, flat: list[bytes] | None) -> StoredEvent:
    """An entry as XREAD returns it (``[field, value, ...]``). The append script always writes ``seq``, ``type``,
    ``body`` in that order, so they are read by position, without a dict per entry (three followers read every
    event); any other layout takes the general path, which checks it."""
    if flat is not None and len(flat) == 6 and (flat[0], flat[2], flat[4]) == _LAYOUT:
        try:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            return StoredEvent(entry, int(flat[1]), flat[3].decode(), flat[5])
        except (ValueError, UnicodeDecodeError) as error:
            raise LogCorrupted(f"log entry {entry_id!r} is malformed: {error!r}") from error
    values = iter(flat or ())
    return _decode_entry(entry_id, dict(zip(values, values, strict=False)))


def last_seq(client: redis.Redis, keys: Keys) -> int:
    """The last seq handed out by the append script (0 for an empty log)."""
    value = client.get(keys.seq)
    return int(value) if value is not None else 0


def head(client: redis.Redis, keys: Keys) -> tuple[int, str | None]:
    """The seq of the newest entry and its ``occurred_at`` (``(0, None)`` for an empty log)."""
    raw = client.xrevrange(keys.events, max="+", min="-", count=1)
    if not raw:
        return 0, None
    stored = _decode_entry(*raw[0])
    return stored.seq, stored.payload().get("occurred_at")


def read_range(
    client: redis.Redis, keys: Keys, first_seq: int, last: int | None = None, *, count: int = DEFAULT_PAGE
) -> list[StoredEvent]:
    """Up to ``count`` entries with ``first_seq <= seq <= last``, in log order."""
    high = "+" if last is None else f"{last}-0"
    raw = client.xrange(keys.events, min=f"{max(first_seq, 1)}-0", max=high, count=count)
    return [_decode_entry(entry_id, fields) for entry_id, fields in raw]


def oldest_unapplied_age_s(client: redis.Redis, keys: Keys, checkpoint: int, *, now: datetime) -> float | None:
    """How long the first event after ``checkpoint`` has been waiting at ``now``: a reader's lag in seconds.

    Why not the head's event time minus the checkpoint's: after a quiet pause that difference counts the pause
    as lag (a database one fresh event behind would read ten seconds late). ``0.0`` when nothing is waiting,
    ``None`` when the waiting event has no readable time.
    """
    found = read_range(client, keys, checkpoint + 1, checkpoint + 1, count=1)
    if not found:
        return 0.0
    occurred = parse_utc_timestamp(found[0].payload().get("occurred_at"))
    return None if occurred is None else max(0.0, (now - occurred).total_seconds())


def iterate(
    client: redis.Redis, keys: Keys, first_seq: int = 1, *, page: int = DEFAULT_PAGE
) -> Iterator[StoredEvent]:
    """Every entry from ``first_seq`` to the head as of each page read."""
    next_min = f"{max(first_seq, 1)}-0"
    while True:
        raw = client.xrange(keys.events, min=next_min, max="+", count=page)
        if not raw:
            return
        for entry_id, fields in raw:
            yield _decode_entry(entry_id, fields)
        last_id = raw[-1][0]
        next_min = "(" + (last_id.decode() if isinstance(last_id, bytes) else last_id)
        if len(raw) < page:
            return


class LogFollower:
    """Following the head: entries after a seq, on one direct connection kept between reads."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._direct = DirectConnection(client)
        self._stream = keys.events

    def read_after(
        self, after_seq: int, *, count: int = DEFAULT_PAGE, block_ms: int | None = None
    ) -> list[StoredEvent]:
        """Entries strictly after ``after_seq``; with ``block_ms`` waits up to that long for the first one."""
        command: list[str | int] = ["XREAD", "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        response = self._direct.call(*command, "STREAMS", self._stream, f"{after_seq}-0")
        return [_decode_flat(entry_id, flat) for entry_id, flat in single_stream_raw(response)]

    def release(self) -> None:
        """Give the connection back to the client's pool."""
        self._direct.release()
