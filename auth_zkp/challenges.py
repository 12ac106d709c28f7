"""Single-use login challenges (DESIGN §8).

Why: a proof is bound to one challenge (random id and nonce). Consuming it with GETDEL is atomic, so of two
handlers racing on a replayed proof at most one sees the challenge. The Redis TTL cleans up; the expiry time
in the record is what is enforced, against the ``now`` the caller passes (deterministic in tests).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass

import orjson
import redis

from eventstore.keys import Keys

CHALLENGE_TTL_S = 60
NONCE_BYTES = 32
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str
    account_id: int
    nonce: bytes
    expires_at: float


def is_challenge_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


class ChallengeStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, ttl_s: int = CHALLENGE_TTL_S) -> None:
        self._client = client
        self._keys = keys
        self._ttl_s = ttl_s

    def issue(self, account_id: int, now: float) -> Challenge:
        challenge = Challenge(secrets.token_hex(16), account_id, os.urandom(NONCE_BYTES), now + self._ttl_s)
        record = orjson.dumps({"account": account_id, "nonce": challenge.nonce.hex(),
                               "expires_at": challenge.expires_at})
        self._client.set(self._keys.challenge(challenge.challenge_id), record, ex=self._ttl_s + 5)
        return challenge

    def consume(self, challenge_id: object, now: float) -> Challenge | None:
        """The challenge if it existed and had not expired; it is gone afterwards either way."""
        if not is_challenge_id(challenge_id):
            return None
        assert isinstance(challenge_id, str)
        raw = self._client.getdel(self._keys.challenge(challenge_id))
        if raw is None:
            return None
        record = orjson.loads(raw)
        if now > float(record["expires_at"]):
            return None
        return Challenge(challenge_id, int(record["account"]), bytes.fromhex(record["nonce"]),
                         float(record["expires_at"]))
