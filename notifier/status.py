"""What operators ask about the notifier: how far behind it is and what it gave up on (``bankctl status``)."""

from __future__ import annotations

from typing import Any

import redis

from eventstore.keys import Keys
from eventstore.log import last_seq
from notifier.lease import active_notifier, read_checkpoint

DEAD_NAME = "notifier"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def notifier_status(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """``checkpoint``: every event up to it is settled; ``lag``: events after it (read or not); ``active``: the
    notifier holding the lease, ``None`` when none is running."""
    head = last_seq(client, keys)
    checkpoint = read_checkpoint(client, keys)
    return {"head_seq": head, "checkpoint": checkpoint, "lag": max(head - checkpoint, 0),
            "active": active_notifier(client, keys), "dead_letters": int(client.xlen(keys.dead(DEAD_NAME)))}


def dead_letters(client: redis.Redis, keys: Keys, *, limit: int = 50) -> list[dict[str, str]]:
    """The newest dead letters first (ids, codes and reasons; they hold no phone numbers or texts)."""
    rows = client.xrevrange(keys.dead(DEAD_NAME), count=limit)
    return [{"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items() if not _text(k).startswith("f:")}}
            for entry_id, fields in rows]
