"""Encryption of personal data with per-customer data keys (DESIGN §8: crypto-shredding).

Each customer has a random 256-bit data key, stored in Redis only wrapped (AES-GCM) by the bank's master key.
Fields are sealed with AES-GCM under the data key with associated data ``"<account>:<field>"``, so a
ciphertext moved to another account or field fails to open. Deleting the wrapped data key makes every copy of
that customer's personal data unreadable while the log itself stays intact and verifiable.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventstore.keyfiles import create_private_file, read_private_file
from eventstore.keys import Keys
from eventstore.worker import FatalWorkerError

SEALED_PREFIX = "pii1:"
ERASED = "[erased]"
MASTER_KEY_BYTES = 32
PREFETCH_CHUNK = 1000


class DataKeyMissing(LookupError):
    """The customer's data key is gone (erased) or was never created."""


class DataKeyUnreadable(FatalWorkerError):
    """A wrapped data key fails authentication: a master key that is not the bank's, or a tampered key.

    A worker stops with this message rather than skip the customer's data or guess (a bare ``InvalidTag`` from
    the cipher said neither which account nor what to check).
    """

    def __init__(self, account_id: int) -> None:
        super().__init__(f"the data key of account {account_id} does not open with this master key: is master.key "
                         "the bank's own, and was the key in Redis changed?")


def create_master_key(path: Path) -> None:
    """Write a new random master key with mode 0600; refuses to overwrite an existing one."""
    create_private_file(path, os.urandom(MASTER_KEY_BYTES))


def load_master_key(path: Path) -> bytes:
    """Read the master key, refusing a file that other users could read."""
    key = read_private_file(path)
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"{path} does not hold a {MASTER_KEY_BYTES}-byte key")
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PersonalDataVault:
    """Creates, unwraps and destroys data keys, and seals or opens personal fields."""

    def __init__(self, client: redis.Redis, *, keys: Keys, master_key: bytes) -> None:
        self._client = client
        self._keys = keys
        self._master = AESGCM(master_key)
        self._master_key = master_key
        self._cache: dict[int, bytes] = {}

    @property
    def master_key(self) -> bytes:
        """For components that derive their own keys from it (session key wrapping)."""
        return self._master_key

    def _wrap_aad(self, account_id: int) -> bytes:
        return f"dek:{account_id}".encode()

    def create_data_key(self, account_id: int) -> bytes:
        """Create and store the data key of a new customer (idempotent: an existing key is kept)."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        wrapped = nonce + self._master.encrypt(nonce, data_key, self._wrap_aad(account_id))
        if not self._client.set(self._keys.data_key(account_id), wrapped, nx=True):
            return self.data_key(account_id)
        self._cache[account_id] = data_key
        return data_key

    def data_key(self, account_id: int) -> bytes:
        cached = self._cache.get(account_id)
        if cached is not None:
            return cached
        wrapped = self._client.get(self._keys.data_key(account_id))
        if wrapped is None:
            raise DataKeyMissing(f"no data key for account {account_id}")
        data_key = self._unwrap(account_id, wrapped)
        self._cache[account_id] = data_key
        return data_key

    def _unwrap(self, account_id: int, wrapped: bytes) -> bytes:
        try:
            return self._master.decrypt(wrapped[:12], wrapped[12:], self._wrap_aad(account_id))
        except InvalidTag as error:
            raise DataKeyUnreadable(account_id) from error

    def prefetch(self, account_ids: Iterable[int]) -> None:
        """Fetch and unwrap the data keys of many accounts in one MGET (a missing key stays missing: erased)."""
        wanted = sorted({a for a in account_ids if a not in self._cache})
        for start in range(0, len(wanted), PREFETCH_CHUNK):
            chunk = wanted[start:start + PREFETCH_CHUNK]
            for account_id, wrapped in zip(chunk, self._client.mget([self._keys.data_key(a) for a in chunk]),
                                           strict=True):
                if wrapped is not None:
                    self._cache[account_id] = self._unwrap(account_id, wrapped)

    def destroy_data_key(self, account_id: int) -> None:
        """Crypto-shred: after this no copy of the customer's sealed fields can be opened."""
        self._client.delete(self._keys.data_key(account_id))
        self._cache.pop(account_id, None)

    def forget_cached(self, account_id: int) -> None:
        self._cache.pop(account_id, None)

    def seal(self, account_id: int, field: str, plaintext: str) -> str:
        nonce = os.urandom(12)
        aad = f"{account_id}:{field}".encode()
        sealed = AESGCM(self.data_key(account_id)).encrypt(nonce, plaintext.encode(), aad)
        return SEALED_PREFIX + _b64(nonce + sealed)

    def open(self, account_id: int, field: str, sealed: str) -> str:
        """The plaintext, or :data:`ERASED` when the data key is gone."""
        if not sealed.startswith(SEALED_PREFIX):
            raise ValueError(f"field {field} of account {account_id} is not sealed")
        try:
            data_key = self.data_key(account_id)
        except DataKeyMissing:
            return ERASED
        raw = _unb64(sealed[len(SEALED_PREFIX) :])
        try:
            return AESGCM(data_key).decrypt(raw[:12], raw[12:], f"{account_id}:{field}".encode()).decode()
        except InvalidTag as error:
            raise ValueError(f"field {field} of account {account_id} failed authentication") from error
