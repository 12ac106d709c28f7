"""What ``bankctl init`` creates: the data directory, its keys, and the admin account 0 (DESIGN §8, §9).

Why each step is create-if-missing: an init interrupted half way can simply be run again; nothing that
exists (a master key above all) is ever overwritten. The admin account is opened by appending
``AccountOpened`` + ``CredentialsRegistered`` through the normal append script with operator rights, so the
log, not a side channel, is the source of truth for it too.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from auth_zkp.principal import ADMIN_ACCOUNT_ID
from commands.state import AccountState
from eventstore.append import AccountWrite, Appender, AppendStatus, PreparedCommand, PreparedEvent
from eventstore.envelope import encode_envelope, utc_timestamp
from eventstore.keyfiles import create_private_file
from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault, create_master_key
from eventstore.seals import create_signing_key
from eventstore.transport import create_transport_key

INIT_COMMAND_ID = "init-admin-account-0"
INIT_ACTOR = "operator:init"


class AlreadyInitialised(RuntimeError):
    """The admin account exists already."""


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def ensure_master_key(path: Path) -> bool:
    """True when a new key was written."""
    if path.exists():
        return False
    create_master_key(path)
    return True


def ensure_signing_key(private_path: Path) -> bool:
    """Ed25519 key for the sealer's checkpoints (``signing.key`` 0600, ``signing.pub`` beside it)."""
    if private_path.exists():
        return False
    create_signing_key(private_path)
    return True


def ensure_transport_key(path: Path) -> bool:
    """X25519 key the handlers open sealed personal data with (see eventstore.transport)."""
    if path.exists():
        return False
    create_transport_key(path)
    return True


def ensure_server_id(path: Path) -> str:
    """A random id bound into every login proof, so a proof for one bank is worthless at another."""
    if not path.exists():
        create_private_file(path, f"bank-{secrets.token_hex(16)}\n".encode())
    return path.read_text().strip()


def read_server_id(data_dir: Path) -> str:
    return (data_dir / "server_id").read_text().strip()


def admin_exists(client: redis.Redis, keys: Keys) -> bool:
    return bool(client.exists(keys.account(ADMIN_ACCOUNT_ID)))


def _prepared_event(event_type: str, data: dict[str, Any], occurred_at: str) -> PreparedEvent:
    prefix, suffix = encode_envelope(
        event_id=uuid.uuid4().hex, event_type=event_type, accounts=(ADMIN_ACCOUNT_ID,), versions=(1,),
        command_id=INIT_COMMAND_ID, actor=INIT_ACTOR, occurred_at=occurred_at, data=data,
    )
    return PreparedEvent(event_type, prefix, suffix)


def open_admin_account(
    client: redis.Redis, *, keys: Keys, vault: PersonalDataVault, credential: Mapping[str, Any],
    now: datetime | None = None,
) -> int:
    """Append the admin account's events and state; returns the seq of the last event.

    ``credential`` has the shape of ``commands.models.Credential``; ``X`` is sealed before it is stored.
    """
    if admin_exists(client, keys):
        raise AlreadyInitialised("the bank is already initialised (account 0 exists)")
    vault.create_data_key(ADMIN_ACCOUNT_ID)
    sealed_key = vault.seal(ADMIN_ACCOUNT_ID, "public_key", credential["public_key"])
    occurred_at = utc_timestamp(now or datetime.now(UTC))
    state = AccountState(account_id=ADMIN_ACCOUNT_ID, version=1, status="open", role="admin",
                         cred_salt=credential["salt"], cred_kdf=orjson.dumps(dict(credential["kdf"])).decode(),
                         cred_key=sealed_key)
    events = [
        _prepared_event("AccountOpened", {"account": ADMIN_ACCOUNT_ID, "role": "admin", "sms_opt_in": False},
                        occurred_at),
        _prepared_event("CredentialsRegistered",
                        {"account": ADMIN_ACCOUNT_ID, "salt": credential["salt"], "kdf": dict(credential["kdf"]),
                         "public_key": sealed_key}, occurred_at),
    ]
    command = PreparedCommand(
        outcome_key=keys.command_outcome(INIT_COMMAND_ID),
        accounts=[AccountWrite(keys.account(ADMIN_ACCOUNT_ID), 0, state.to_fields())],
        events=events,
        reply_prefix=b'{"ok":true,"account":0,"seq":',
        reply_suffix=b"}",
    )
    [result] = Appender(client, keys=keys).append([command])
    if result.status is not AppendStatus.OK:
        raise AlreadyInitialised(f"the bank is already initialised ({result.status.value})")
    return result.last_seq
