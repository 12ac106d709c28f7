"""What operators ask about the notifier: how far behind it is and what it gave up on (``bankctl status``)."""

from __future__ import annotations

from typing import Any

import redis

from eventstore.keys import Keys
from eventstore.log import last_seq

GROUP = "notifier"
DEAD_NAME = "notifier"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def notifier_status(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """``lag``: events not yet delivered to any notifier; ``pending``: delivered, not yet acknowledged."""
    head = last_seq(client, keys)
    group: dict[str, Any] | None = None
    try:
        for row in client.xinfo_groups(keys.events):
            if _text(row["name"]) == GROUP:
                group = row
    except redis.ResponseError:
        group = None
    dead = int(client.xlen(keys.dead(DEAD_NAME)))
    if group is None:
        return {"group": False, "head_seq": head, "lag": head, "pending": 0, "dead_letters": dead,
                "consumers": {}}
    delivered = int(_text(group["last-delivered-id"]).split("-", 1)[0])
    pending = client.xpending(keys.events, GROUP)
    consumers = {_text(row["name"]): int(row["pending"]) for row in pending.get("consumers") or []}
    return {"group": True, "head_seq": head, "delivered_seq": delivered, "lag": max(head - delivered, 0),
            "pending": int(group["pending"]), "dead_letters": dead, "consumers": consumers}


def dead_letters(client: redis.Redis, keys: Keys, *, limit: int = 50) -> list[dict[str, str]]:
    """The newest dead letters first (ids, codes and reasons; they hold no phone numbers or texts)."""
    rows = client.xrevrange(keys.dead(DEAD_NAME), count=limit)
    return [{"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items() if not _text(k).startswith("f:")}}
            for entry_id, fields in rows]
