"""Consumer-group plumbing shared by every worker that reads a stream in a group (DESIGN §6).

Names follow what the calls do: ``ensure``, ``read_new``, ``read_own_pending``, ``autoclaim``, ``ack``,
``dead_letter``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from eventstore.direct import DirectConnection, single_stream_entries

Entry = tuple[str, dict[bytes, bytes]]

MAX_DEAD_LETTER_FIELD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Claimed:
    entries: list[Entry]
    next_start: str
    delivery_counts: dict[str, int]


def _entries(raw: Sequence) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in raw:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        out.append((eid, fields or {}))
    return out


def dead_letter_record(
    stream: str, entry_id: str, consumer: str, fields: Mapping[bytes, bytes], reason: str
) -> dict[str | bytes, bytes | str]:
    """What a dead-letter stream keeps of an entry: where it came from, who gave up and why, and its fields
    (without passwords or secrets, each cut to :data:`MAX_DEAD_LETTER_FIELD`) under ``f:<name>``."""
    record: dict[str | bytes, bytes | str] = {
        "reason": reason[:1000],
        "origin_stream": stream,
        "origin_id": entry_id,
        "consumer": consumer,
    }
    for name, value in fields.items():
        if name in (b"password", b"secret"):
            continue
        record[b"f:" + name] = value[:MAX_DEAD_LETTER_FIELD]
    return record


class ConsumerGroup:
    """One consumer's view of a stream read in a group."""

    def __init__(self, client: redis.Redis, *, stream: str, group: str, consumer: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._direct = DirectConnection(client)  # read_new is every worker's hot loop

    def ensure(self, start_id: str = "0") -> None:
        """Create the group (and the stream) if missing; an existing group is success."""
        try:
            self.client.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read_new(self, *, count: int, block_ms: int | None) -> list[Entry]:
        command: list[str | int] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        return single_stream_entries(self._direct.call(*command, "STREAMS", self.stream, ">"))

    def read_own_pending(self, *, count: int) -> list[Entry]:
        """Entries delivered to this consumer name but never acknowledged (a restart after a crash)."""
        response = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        if not response:
            return []
        # Entries deleted from the stream while pending come back with empty fields; they are dropped by ack.
        return _entries(response[0][1])

    def autoclaim(self, *, min_idle_ms: int, count: int, start: str = "0-0") -> Claimed:
        """Take over entries idle longer than ``min_idle_ms`` from any consumer, with their delivery counts."""
        response = self.client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=min_idle_ms, start_id=start, count=count
        )
        next_start = response[0].decode() if isinstance(response[0], bytes) else response[0]
        entries = _entries(response[1])
        counts: dict[str, int] = {}
        if entries:
            pending = self.client.xpending_range(
                self.stream, self.group, min=entries[0][0], max=entries[-1][0], count=len(entries) + 16,
                consumername=self.consumer,
            )
            for row in pending:
                mid = row["message_id"]
                counts[mid.decode() if isinstance(mid, bytes) else mid] = int(row["times_delivered"])
        return Claimed(entries=entries, next_start=next_start, delivery_counts=counts)

    def ack(self, entry_ids: Sequence[str], *, delete: bool = False) -> None:
        """Acknowledge; with ``delete`` also remove the entries (request streams hold no data past use)."""
        if not entry_ids:
            return
        commands: list[tuple[str, ...]] = [("XACK", self.stream, self.group, *entry_ids)]
        if delete:
            commands.append(("XDEL", self.stream, *entry_ids))
        self._direct.execute(commands)

    def dead_letter(
        self, dead_stream: str, entry_id: str, fields: Mapping[bytes, bytes], reason: str, *, delete: bool = False,
        store: redis.Redis | None = None,
    ) -> None:
        """Park an entry with the reason, then acknowledge it: one poison message never stops a worker.

        ``store`` keeps the dead letter on another (durable) Redis than the group's: it is written there first,
        so a crash in between parks the entry twice rather than never.
        """
        record = dead_letter_record(self.stream, entry_id, self.consumer, fields, reason)
        pipe = self.client.pipeline(transaction=True)
        if store is None or store is self.client:
            pipe.xadd(dead_stream, record, maxlen=100_000, approximate=True)
        else:
            store.xadd(dead_stream, record, maxlen=100_000, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)
        if delete:
            pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def pending_summary(self) -> dict[str, int]:
        """Pending entries per consumer (for ``bankctl status``)."""
        try:
            info = self.client.xpending(self.stream, self.group)
        except redis.ResponseError:
            return {}
        out: dict[str, int] = {}
        for row in info.get("consumers", []) or []:
            name = row["name"].decode() if isinstance(row["name"], bytes) else row["name"]
            out[name] = int(row["pending"])
        return out
