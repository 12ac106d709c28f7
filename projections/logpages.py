"""Reading the log in large packed pages, for the bulk readers (rebuild, audit, diff catch-up).

redis-py's pure-Python reply parser costs more than everything else a rebuild or an audit does per event
(about 20 µs for an entry of seven elements). A small read-only script returns a page as ONE string of
length-prefixed fields (``<len>:<bytes>`` for id, seq, type and body of each entry), which Python splits in
about a microsecond per entry. The fields are returned exactly as stored (a missing one as empty), so the
auditor still sees every byte. Needs EVAL rights (operator/admin connections); the live projector, whose ACL
role has no scripting, reads with :func:`eventstore.log.read_after`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

import redis

from eventstore.envelope import StoredEvent
from eventstore.keys import Keys
from eventstore.log import LogCorrupted

PAGE = 500

_SCRIPT = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local out = {}
local n = 0
for i = 1, #rows do
  local fields = rows[i][2]
  local seq, kind, body = '', '', ''
  for j = 1, #fields, 2 do
    local name = fields[j]
    if name == 'seq' then seq = fields[j + 1]
    elseif name == 'type' then kind = fields[j + 1]
    elseif name == 'body' then body = fields[j + 1] end
  end
  local id = rows[i][1]
  n = n + 1
  out[n] = #id .. ':' .. id .. #seq .. ':' .. seq .. #kind .. ':' .. kind .. #body .. ':'
  n = n + 1
  out[n] = body
end
return {#rows, table.concat(out)}
"""

RawEntry = tuple[str, bytes, bytes, bytes]
T = TypeVar("T")
PREFETCH_DEPTH = 3


class PageReader:
    """Packed XRANGE pages of the log (one script registration per client)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, page: int = PAGE) -> None:
        self._script = client.register_script(_SCRIPT)
        self._keys = keys
        self.page = page

    def page_after(self, after_seq: int, *, count: int | None = None, last: int | None = None) -> list[RawEntry]:
        """Up to ``count`` raw entries with stream id after ``<after_seq>-0`` (and at most ``<last>-0``)."""
        return self._page(f"({after_seq}-0", "+" if last is None else f"{last}-0", count or self.page)[0]

    def _page(self, start: str, end: str, count: int) -> tuple[list[RawEntry], int]:
        rows, packed = self._script(keys=[self._keys.events], args=[start, end, count])
        return unpack(packed), int(rows)

    def raw_pages(self, start: str = "-", last: int | None = None) -> Iterator[list[RawEntry]]:
        """Pages of raw entries in stream order from ``start`` (an XRANGE bound) to ``last`` or the end."""
        end = "+" if last is None else f"{last}-0"
        while True:
            page, rows = self._page(start, end, self.page)
            if page:
                yield page
            if rows < self.page:
                return
            start = "(" + page[-1][0]

    def entries(self) -> Iterator[RawEntry]:
        """Every entry in stream order; the next page is fetched while this one is processed."""
        for page in prefetch(self.raw_pages()):
            yield from page

    def event_pages(self, after_seq: int, last: int | None = None) -> Iterator[list[StoredEvent]]:
        """Pages of events after ``after_seq`` (prefetched), for a rebuild or a catch-up."""
        for page in prefetch(self.raw_pages(f"({after_seq}-0", last)):
            yield [_stored(*entry) for entry in page]

    def events_after(self, after_seq: int, *, count: int | None = None, last: int | None = None) -> list[StoredEvent]:
        """Like :func:`eventstore.log.read_after`, for bulk readers."""
        return [_stored(*entry) for entry in self.page_after(after_seq, count=count, last=last)]


def _stored(entry_id: str, seq: bytes, kind: bytes, body: bytes) -> StoredEvent:
    try:
        return StoredEvent(entry_id=entry_id, seq=int(seq), type=kind.decode(), body=body)
    except (ValueError, UnicodeDecodeError) as error:
        raise LogCorrupted(f"log entry {entry_id!r} is malformed: {error!r}") from error


_END = object()


def prefetch(items: Iterator[T], depth: int = PREFETCH_DEPTH) -> Iterator[T]:
    """Produce ``items`` in a helper thread, up to ``depth`` ahead (Redis works while Python parses)."""
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            slots.put(error)

    thread = threading.Thread(target=produce, name="log-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()


def unpack(packed: bytes) -> list[RawEntry]:
    """Split ``<len>:<bytes>`` fields, four per entry."""
    out: list[RawEntry] = []
    append = out.append
    find = packed.find
    pos = 0
    end = len(packed)
    while pos < end:
        fields = []
        for _ in range(4):
            colon = find(b":", pos)
            size = int(packed[pos:colon])
            pos = colon + 1 + size
            fields.append(packed[colon + 1:pos])
        append((fields[0].decode(), fields[1], fields[2], fields[3]))
    return out
