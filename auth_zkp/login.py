"""Server side of the zero-knowledge login (DESIGN §8): challenge, proof check, lock-out, session.

The command handler routes requests whose type is in :data:`AUTH_REQUEST_TYPES` to :meth:`AuthService.handle`
and RPUSHes the returned dict as the reply, after popping ``_lock_event`` (see :func:`pop_lock_event`) and
appending an ``AccountLocked`` event with it.

Why the decoy: an unknown (or erased) account gets a salt derived by HMAC from a server secret, the default
KDF parameters and a decoy ``X``, so LoginStart replies look alike and LoginFinish does the same work and
fails the same way as a wrong password. Failures are counted for unknown ids too, so "locked" leaks nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from auth_zkp import schnorr
from auth_zkp.challenges import ChallengeStore
from auth_zkp.kdf import DEFAULT_PARAMS, SALT_BYTES
from auth_zkp.lockout import Lockout
from auth_zkp.principal import Principal
from auth_zkp.sessions import AuthenticatedSession, KeyExchangeError, SessionStore
from eventstore.keys import Keys
from eventstore.pii import ERASED, PersonalDataVault

AUTH_REQUEST_TYPES = frozenset({"LoginStart", "LoginFinish", "Logout", "WhoAmI"})
"""Request types the handler hands to :class:`AuthService` (no session needed for the first two)."""

LOCK_EVENT_KEY = "_lock_event"
MAX_ACCOUNT_ID = 10**12
INVALID_PROOF_MESSAGE = "wrong account number or password"
_HEX64 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


def decoy_secret_key(keys: Keys) -> str:
    """Redis key of the server secret behind decoy salts (shared by all handlers so decoys are stable)."""
    return keys.auth_secret


def pop_lock_event(reply: dict[str, Any]) -> dict[str, Any] | None:
    """Remove and return the ``AccountLocked`` event data the handler must append (never sent to clients)."""
    return reply.pop(LOCK_EVENT_KEY, None)


def iso_utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _account_id(value: object) -> int | None:
    if type(value) is not int or not 0 <= value <= MAX_ACCOUNT_ID:  # bool is not an account
        return None
    return value


def _hex32(value: object) -> bytes | None:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        return None
    return bytes.fromhex(value)


@dataclass(frozen=True, slots=True)
class Verifier:
    """What LoginStart shows and LoginFinish checks against; ``real`` is False for a decoy."""

    salt: str
    kdf: dict[str, Any]
    public_key: bytes
    role: str
    real: bool


@dataclass(frozen=True, slots=True)
class ProofCheck:
    ok: bool
    code: str = ""
    message: str = ""
    role: str = ""
    lock_event: dict[str, Any] | None = None


class AuthService:
    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        vault: PersonalDataVault,
        server_id: str,
        sessions: SessionStore,
        challenge_ttl_s: int | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._vault = vault
        self._server_id = server_id
        self._sessions = sessions
        self._challenges = (ChallengeStore(client, keys=keys) if challenge_ttl_s is None
                            else ChallengeStore(client, keys=keys, ttl_s=challenge_ttl_s))
        self._lockout = Lockout(client, keys=keys)
        self._decoy_secret: bytes | None = None

    # -- request routing ------------------------------------------------------------------------------------

    def handle(self, request_type: str, payload: dict[str, Any], session: AuthenticatedSession | None,
               now: float) -> dict:
        """Answer a login request; ``session`` is the caller's, already authenticated by the handler."""
        if not isinstance(payload, dict):
            return _invalid("payload must be an object")
        if request_type == "LoginStart":
            return self.login_start(payload, now)
        if request_type == "LoginFinish":
            return self.login_finish(payload, now)
        if request_type == "Logout":
            return self.logout(session)
        if request_type == "WhoAmI":
            return self.whoami(session)
        return _invalid(f"unknown request type {request_type!r}")

    def login_start(self, payload: Mapping[str, Any], now: float) -> dict[str, Any]:
        account_id = _account_id(payload.get("account"))
        if account_id is None:
            return _invalid("account must be an account number")
        verifier = self._verifier(account_id)
        challenge = self._challenges.issue(account_id, now)
        return {"ok": True, "challenge_id": challenge.challenge_id, "nonce": challenge.nonce.hex(),
                "salt": verifier.salt, "kdf": verifier.kdf, "server_id": self._server_id}

    def login_finish(self, payload: Mapping[str, Any], now: float) -> dict[str, Any]:
        account_id = _account_id(payload.get("account"))
        if account_id is None:
            return _invalid("account must be an account number")
        check = self.check_proof(account_id, payload, now)
        if not check.ok:
            reply: dict[str, Any] = {"ok": False, "code": check.code, "message": check.message}
            if check.lock_event is not None:
                reply[LOCK_EVENT_KEY] = check.lock_event
            return reply
        try:
            client_public = bytes.fromhex(str(payload.get("session_public", "")))
            principal = Principal(account_id=account_id, role=check.role)  # type: ignore[arg-type]
            session_id, server_public = self._sessions.create_exchanged(principal, client_public)
        except (ValueError, KeyExchangeError):
            return _invalid("session_public must be a 32-byte X25519 public key (hex)")
        return {"ok": True, "session_id": session_id, "server_public": server_public.hex(), "account": account_id,
                "role": check.role}

    def logout(self, session: AuthenticatedSession | None) -> dict[str, Any]:
        if session is None:
            return {"ok": False, "code": "unauthenticated", "message": "not logged in"}
        self._sessions.revoke(session.session_id)
        return {"ok": True}

    def whoami(self, session: AuthenticatedSession | None) -> dict[str, Any]:
        if session is None:
            return {"ok": False, "code": "unauthenticated", "message": "session expired or revoked: log in again"}
        return {"ok": True, "account": session.principal.account_id, "role": session.principal.role}

    # -- proofs ---------------------------------------------------------------------------------------------

    def verify_password_proof(self, account_id: int, proof: dict) -> bool:
        """For ChangePassword: a proof made with the current password against a LoginStart challenge.

        Counts as a login attempt (a failure counts towards the lock, a lock refuses). Use
        :meth:`check_proof` instead to also get the ``AccountLocked`` event data.
        """
        return self.check_proof(account_id, proof, time.time()).ok

    def check_proof(self, account_id: int, proof: Mapping[str, Any], now: float) -> ProofCheck:
        challenge = self._challenges.consume(proof.get("challenge_id"), now)
        locked = self._lockout.locked_until(account_id, now)
        if locked is not None:
            return ProofCheck(False, "locked", f"too many failed attempts: try again after {iso_utc(locked)}")
        verifier = self._verifier(account_id)
        commitment = _hex32(proof.get("commitment"))
        response = _hex32(proof.get("response"))
        valid = False
        if challenge is not None and challenge.account_id == account_id and commitment and response:
            statement = schnorr.Statement(verifier.public_key, account_id, self._server_id,
                                          challenge.challenge_id, challenge.nonce)
            valid = schnorr.verify(statement, schnorr.Proof(commitment, response))
        if valid and verifier.real:
            self._lockout.record_success(account_id)
            return ProofCheck(True, role=verifier.role)
        outcome = self._lockout.record_failure(account_id, now)
        if outcome.locked_until is None:
            return ProofCheck(False, "invalid_proof", INVALID_PROOF_MESSAGE)
        event = None
        if verifier.real:
            event = {"account": account_id, "until": iso_utc(outcome.locked_until), "failures": outcome.failures}
        return ProofCheck(False, "locked",
                          f"too many failed attempts: try again after {iso_utc(outcome.locked_until)}",
                          lock_event=event)

    # -- verifiers ------------------------------------------------------------------------------------------

    def _verifier(self, account_id: int) -> Verifier:
        status, role, erased, salt, kdf, sealed = self._client.hmget(
            self._keys.account(account_id), ["status", "role", "erased", "cred_salt", "cred_kdf", "cred_key"])
        if status in (b"open", b"closed") and erased != b"1" and salt and kdf and sealed:
            public_key = self._open_public_key(account_id, sealed.decode())
            if public_key is not None:
                return Verifier(salt.decode(), orjson.loads(kdf), public_key,
                                (role or b"customer").decode(), True)
        return self._decoy(account_id)

    def _open_public_key(self, account_id: int, sealed: str) -> bytes | None:
        try:
            opened = self._vault.open(account_id, "public_key", sealed)
        except ValueError:
            log.warning("credential of account %d cannot be opened; treating it as absent", account_id)
            return None
        if opened == ERASED:
            return None
        public_key = _hex32(opened)
        return public_key if public_key is not None and schnorr.is_valid_point(public_key) else None

    def _decoy(self, account_id: int) -> Verifier:
        secret = self._secret()
        salt = hmac.new(secret, b"salt:%d" % account_id, hashlib.sha256).digest()[:SALT_BYTES]
        x = schnorr.scalar_from_hash(hmac.new(secret, b"x:%d" % account_id, hashlib.sha512).digest()) or 1
        return Verifier(salt.hex(), DEFAULT_PARAMS.to_dict(), schnorr.public_key(x), "customer", False)

    def _secret(self) -> bytes:
        if self._decoy_secret is None:
            key = decoy_secret_key(self._keys)
            self._client.set(key, os.urandom(32), nx=True)
            stored = self._client.get(key)
            assert stored is not None
            self._decoy_secret = stored
        return self._decoy_secret


def _invalid(message: str) -> dict[str, Any]:
    return {"ok": False, "code": "invalid_request", "message": message}
