"""Client side of the zero-knowledge login: derive ``x``, register a credential, answer a challenge.

Runs inside ``bankctl`` only: the password and ``x`` never leave the process; what is sent is the salt,
the KDF parameters and ``X`` (registration) or ``V`` and ``r`` (login).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from auth_zkp import schnorr
from auth_zkp.challenges import is_challenge_id
from auth_zkp.kdf import DEFAULT_PARAMS, KdfParams, derive_secret, new_salt

_SALT = re.compile(r"[0-9a-f]{32,64}")
_NONCE = re.compile(r"[0-9a-f]{64}")


class BadServerReply(ValueError):
    """The LoginStart reply is malformed (or asks for absurd KDF parameters)."""


def make_credential(password: str, params: KdfParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """A new verifier for registration or a password change (shape of ``commands.models.Credential``)."""
    salt = new_salt()
    x = derive_secret(password, salt, params)
    return {"salt": salt.hex(), "kdf": params.to_dict(), "public_key": schnorr.public_key(x).hex()}


def make_proof(
    x: int, *, account_id: int, server_id: str, challenge_id: str, nonce: bytes, entropy: bytes | None = None
) -> dict[str, str]:
    """The proof dict LoginFinish (and ChangePassword's ``proof``) expects."""
    statement = schnorr.Statement(schnorr.public_key(x), account_id, server_id, challenge_id, nonce)
    proof = schnorr.prove(x, statement, entropy=entropy)
    return {"challenge_id": challenge_id, "commitment": proof.commitment.hex(), "response": proof.response.hex()}


def prove_from_start(password: str, account_id: int, start: Mapping[str, Any]) -> dict[str, str]:
    """Answer a LoginStart reply with a proof of knowing ``password``."""
    salt, params, challenge_id, nonce, server_id = _parse_start(start)
    x = derive_secret(password, salt, params)
    return make_proof(x, account_id=account_id, server_id=server_id, challenge_id=challenge_id, nonce=nonce)


def _parse_start(start: Mapping[str, Any]) -> tuple[bytes, KdfParams, str, bytes, str]:
    salt, nonce, challenge_id = start.get("salt"), start.get("nonce"), start.get("challenge_id")
    server_id, kdf = start.get("server_id"), start.get("kdf")
    if not isinstance(salt, str) or not _SALT.fullmatch(salt):
        raise BadServerReply("bad salt")
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise BadServerReply("bad nonce")
    if not is_challenge_id(challenge_id):
        raise BadServerReply("bad challenge id")
    if not isinstance(server_id, str) or not 0 < len(server_id) <= 128:
        raise BadServerReply("bad server id")
    if not isinstance(kdf, Mapping):
        raise BadServerReply("bad kdf parameters")
    try:
        params = KdfParams.from_dict(kdf)
    except ValueError as error:
        raise BadServerReply(str(error)) from error
    assert isinstance(challenge_id, str)
    return bytes.fromhex(salt), params, challenge_id, bytes.fromhex(nonce), server_id
