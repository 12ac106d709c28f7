"""The last seq this profile wrote, for read-your-writes (DESIGN §7: queries carry ``min_seq``).

Kept beside the saved session as ``<profile>.seq`` (JSON ``{"server_id", "seq"}``), bound to the bank's server
id so a value from another (or a re-initialised) bank never makes every read wait. Only ever increases.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _path(profile: str) -> Path:
    from bankctl.profile import session_path

    session = session_path(profile)
    return session.with_name(f"{profile}.seq")


def recall(profile: str, server_id: str) -> int:
    """The remembered seq for this bank, or 0."""
    try:
        record = json.loads(_path(profile).read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(record, dict) or record.get("server_id") != server_id:
        return 0
    seq = record.get("seq")
    return seq if isinstance(seq, int) and seq > 0 else 0


def remember(profile: str, server_id: str, seq: int) -> None:
    """Store ``seq`` if it is newer (best effort: a read-only config dir only costs read-your-writes)."""
    if seq <= recall(profile, server_id):
        return
    path = _path(profile)
    if not path.parent.is_dir():
        return
    try:
        fd, temp = tempfile.mkstemp(prefix=".seq-", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"server_id": server_id, "seq": seq}))
        os.replace(temp, path)
    except OSError:
        return
