"""Personal data in transit: sealed to the bank's transport key before it enters Redis (DESIGN §8).

Requests travel through the ``{bank}:commands`` stream, which Redis also writes to its append-only file; a
plaintext SSN there would outlive the request. So ``bankctl`` seals the personal fields of a request with a
libsodium sealed box (X25519 + XSalsa20-Poly1305, anonymous sender) to the bank's public transport key, which
the handlers publish in ``{bank}:transport_key``; only a handler, holding the private key file, can open it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import redis
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from eventstore.keyfiles import create_private_file, read_private_file
from eventstore.keys import Keys

SEALED_FIELD = "sealed"
MAX_SEALED_BYTES = 8192


class TransportError(ValueError):
    """A sealed payload that cannot be opened or is not a JSON object of strings and booleans."""


def create_transport_key(path: Path) -> None:
    """Write a new X25519 private key with mode 0600; refuses to overwrite one."""
    create_private_file(path, bytes(PrivateKey.generate()))


def load_transport_key(path: Path) -> PrivateKey:
    return PrivateKey(read_private_file(path))


def publish_public_key(client: redis.Redis, keys: Keys, private_key: PrivateKey) -> None:
    client.set(keys.transport_key, bytes(private_key.public_key).hex())


def fetch_public_key(client: redis.Redis, keys: Keys) -> PublicKey:
    raw = client.get(keys.transport_key)
    if raw is None:
        raise TransportError("the bank has not published its transport key yet: is a handler running?")
    return PublicKey(bytes.fromhex(raw.decode()))


def seal_fields(public_key: PublicKey, fields: dict[str, Any]) -> str:
    """The fields as one sealed, base64 string for the request payload's ``sealed`` member."""
    return base64.b64encode(SealedBox(public_key).encrypt(orjson.dumps(fields))).decode()


def open_fields(private_key: PrivateKey, sealed: object) -> dict[str, Any]:
    if not isinstance(sealed, str) or len(sealed) > MAX_SEALED_BYTES:
        raise TransportError("sealed personal data must be a base64 string of at most 8 KiB")
    try:
        fields = orjson.loads(SealedBox(private_key).decrypt(base64.b64decode(sealed, validate=True)))
    except (CryptoError, ValueError, orjson.JSONDecodeError) as error:
        raise TransportError("sealed personal data could not be opened") from error
    if not isinstance(fields, dict) or SEALED_FIELD in fields:
        raise TransportError("sealed personal data must be a JSON object")
    return fields


def unseal_payload(private_key: PrivateKey | None, payload: dict[str, Any]) -> dict[str, Any]:
    """Merge a request's sealed fields into its payload (a plain payload passes through unchanged)."""
    if SEALED_FIELD not in payload:
        return payload
    if private_key is None:
        raise TransportError("this handler has no transport key to open sealed personal data")
    opened = open_fields(private_key, payload[SEALED_FIELD])
    clash = set(opened) & set(payload)
    if clash:
        raise TransportError(f"field sent both sealed and in clear: {sorted(clash)}")
    merged = {k: v for k, v in payload.items() if k != SEALED_FIELD}
    merged.update(opened)
    return merged
