"""Session tokens: random, stored only as their SHA-256 with a TTL, revocable (DESIGN §8)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import orjson
import redis

from auth_zkp.principal import Principal
from eventstore.keys import Keys

SESSION_TTL_S = 8 * 3600
TOKEN_BYTES = 32


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, ttl_s: int = SESSION_TTL_S) -> None:
        self._client = client
        self._keys = keys
        self._ttl_s = ttl_s

    def create(self, principal: Principal) -> str:
        """A new token; only its hash is stored."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        record = orjson.dumps({"account": principal.account_id, "role": principal.role})
        self._client.set(self._keys.session(token_hash(token)), record, ex=self._ttl_s)
        return token

    def revoke(self, token: str) -> bool:
        return bool(self._client.delete(self._keys.session(token_hash(token))))

    def revoke_all_for(self, account_id: int) -> None:
        """Used when a password changes or an account closes (scan is fine: rare operator-side path)."""
        for key in self._client.scan_iter(match=self._keys.session("*"), count=1000):
            raw = self._client.get(key)
            if raw and orjson.loads(raw).get("account") == account_id:
                self._client.delete(key)

    def resolve_many(self, tokens: Sequence[str | None]) -> list[Principal | None]:
        """One MGET for a whole batch of requests (a batch usually repeats few tokens)."""
        distinct = sorted({t for t in tokens if t and len(t) <= 256})
        if not distinct:
            return [None] * len(tokens)
        raws = self._client.mget([self._keys.session(token_hash(t)) for t in distinct])
        found: dict[str, Principal] = {}
        for token, raw in zip(distinct, raws, strict=True):
            if raw is not None:
                record = orjson.loads(raw)
                found[token] = Principal(account_id=int(record["account"]), role=record["role"])
        return [found.get(t) if t else None for t in tokens]

    def resolve(self, token: str | None) -> Principal | None:
        return self.resolve_many([token])[0]
