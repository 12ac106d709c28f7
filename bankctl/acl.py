"""Least-privilege ACL users for the embedded redis-server (DESIGN §8).

Why: a bug or a stolen password in one process must not let it rewrite the log. Each role gets only the
commands and keys it needs; the ``client`` user (what ``bankctl`` uses for requests) may only add requests
and read its own replies, never touch the log, account state, seals, sessions or data keys. The default user
is disabled. Passwords are random, stored one per role in ``<data_dir>/secrets/<role>.password`` (0600, in a
0700 directory); the ACL file holds only their SHA-256 (``#<hash>``), so it leaks no password.

Redis 7 syntax: ``%R~`` is a read-only key pattern; ``( ... )`` is a selector, an extra independent set of
permissions, used so that e.g. the client's XADD applies only to the request streams and its DEL only to
reply keys.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from eventstore.keyfiles import create_private_file
from eventstore.keys import Keys

# The default user is switched off (no connection can use it: it has no password and cannot log in), but it
# keeps every permission: Redis 7.0 replays an AOF's MULTI/EXEC blocks (which is how Lua script effects are
# persisted) as the default user and re-checks its ACL at EXEC, silently dropping whole transactions when the
# default user lacks rights (redis/redis#14541, fixed only in later releases). With "-@all" here a restart
# would lose every appended event.
DEFAULT_USER_LINE = "user default off resetpass ~* &* +@all"
ROLES = ("handler", "projector", "notifier", "sealer", "client", "admin")
ACL_FILE_NAME = "redis.acl"
_CONNECTION = "+ping +hello +client|setname +client|getname +client|id +client|info"
_STREAM_GROUP = ("+xreadgroup +xack +xautoclaim +xclaim +xpending +xgroup|create +xgroup|createconsumer "
                 "+xinfo|groups +xinfo|consumers +xinfo|stream")
_SAFE_READ = "+@read -@dangerous"


def role_rules(role: str, keys: Keys) -> str:
    """The ACL rules (everything after ``user <name> on #<hash>``) of one role."""
    p = keys.prefix
    if role == "client":
        return (f"resetkeys resetchannels -@all {_CONNECTION} +xadd ~{p}commands ~{p}queries "
                f"(~{p}reply:* +blpop +lpop +del) (%R~{p}transport_key +get)")
    if role == "handler":
        own = " ".join(f"~{p}{name}" for name in (
            "events", "seq", "account_ids", "commands", "acct:*", "cmd:*", "reply:*", "dead:*", "worker:*",
            "sess:*", "chal:*", "fail:*", "dek:*", "auth:*", "transport_key"))
        # The log is written only by XADD inside the append script; XDEL/XTRIM only on the request stream.
        return (f"resetkeys resetchannels -@all {_CONNECTION} {own} +@read +@write +@stream +@hash +@string "
                f"+@list +@keyspace +@scripting +@transaction -@dangerous -@admin +scan -xdel -xtrim -xsetid "
                f"(~{p}commands +xdel +xtrim)")
    if role == "projector":
        return (f"resetkeys resetchannels -@all {_CONNECTION} {_SAFE_READ} %R~{p}events %R~{p}seq %R~{p}sess:* "
                f"%R~{p}dek:* %R~{p}acct:* ~{p}queries ~{p}reply:* ~{p}dead:* ~{p}worker:* "
                f"{_STREAM_GROUP} +xadd +xdel +xtrim +rpush +expire +hset +del +@transaction")
    if role == "notifier":
        # The log read-only (its lease and checkpoint are keys of its own; the group info is read once, to
        # start where the consumer group of older notifiers left off); its bookkeeping keys in a selector,
        # with the scripts that take the lease and move the checkpoint.
        return (f"resetkeys resetchannels -@all {_CONNECTION} %R~{p}events +xread +xrange +xlen +xinfo|groups "
                f"+xpending (%R~{p}dek:* %R~{p}seq +get +mget +exists) "
                f"(~{p}dead:* ~{p}worker:* ~{p}notifier:* ~{p}notify:* ~{p}sms:* {_SAFE_READ} +@write +@stream "
                f"+@hash +@string +@list +@keyspace +@transaction +evalsha +eval +script|load)")
    if role == "sealer":
        return (f"resetkeys resetchannels -@all {_CONNECTION} {_SAFE_READ} %R~{p}events %R~{p}seq ~{p}seals "
                f"~{p}worker:* +xadd +hset +expire +del +@transaction")
    if role == "admin":
        return "resetkeys resetchannels ~* &* +@all"
    raise ValueError(f"unknown role {role!r}")


def password_path(secrets_dir: Path, role: str) -> Path:
    return secrets_dir / f"{role}.password"


def acl_file_path(data_dir: Path) -> Path:
    return data_dir / "secrets" / ACL_FILE_NAME


def _write_private(path: Path, text: str) -> None:
    create_private_file(path, text.encode())


def ensure_secrets(secrets_dir: Path, roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """Random passwords per role, created once (existing ones are kept, so re-running init is harmless)."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(secrets_dir, 0o700)
    passwords = {}
    for role in roles:
        path = password_path(secrets_dir, role)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(32) + "\n")
        passwords[role] = path.read_text().strip()
    return passwords


def acl_lines(passwords: Mapping[str, str], keys: Keys) -> list[str]:
    lines = [DEFAULT_USER_LINE]
    for role, password in passwords.items():
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines.append(f"user {role} on #{digest} {role_rules(role, keys)}")
    return lines


def write_acl_file(data_dir: Path, keys: Keys | None = None) -> Path:
    """Create the role secrets (if missing) and (re)write the ACL file; returns its path (for ``aclfile``)."""
    passwords = ensure_secrets(data_dir / "secrets")
    path = acl_file_path(data_dir)
    temp = path.with_suffix(".tmp")
    temp.unlink(missing_ok=True)
    _write_private(temp, "\n".join(acl_lines(passwords, keys or Keys())) + "\n")
    os.replace(temp, path)
    return path


def credentials(data_dir: Path, role: str) -> tuple[str, str]:
    """``(user, password)`` of a role, e.g. for ``start_redis(wait_password=...)``."""
    return role, password_path(data_dir / "secrets", role).read_text().strip()
