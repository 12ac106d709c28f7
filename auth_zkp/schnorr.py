"""Schnorr proof of knowledge of a discrete log over the prime-order subgroup of edwards25519 (DESIGN §8).

Why this shape: the password never leaves the client; the server holds only ``X = x·G`` and checks a
non-interactive proof made Fiat-Shamir style over a transcript that binds everything the proof is *for*
(group, ``X``, account, server, challenge id and nonce, commitment), so a proof cannot be replayed against
another challenge, account or server. Group arithmetic is libsodium's (via PyNaCl); points are checked to be
canonical, on the curve, in the prime-order subgroup and not of small order before any use.

Proof: prover picks ``k``, sends ``V = k·G`` and ``r = k + c·x mod L`` where ``c = H(transcript)``;
verifier checks ``r·G == V + c·X``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass

from nacl import bindings as sodium
from nacl.exceptions import RuntimeError as SodiumRuntimeError

GROUP_NAME = b"edwards25519-prime-order-subgroup/libsodium"
DOMAIN_TAG = b"fintech-fortress/login-proof/v1"
NONCE_TAG = b"fintech-fortress/prover-nonce/v1"

L = 2**252 + 27742317777372353535851937790883648493
"""Order of the prime-order subgroup (and of the base point)."""

POINT_BYTES = 32
SCALAR_BYTES = 32
IDENTITY = bytes([1]) + bytes(31)
BASE_POINT = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")


class InvalidPoint(ValueError):
    """Not a canonical encoding of a non-identity point of the prime-order subgroup."""


class InvalidScalar(ValueError):
    """Not a canonical nonzero scalar below L."""


# -- group and scalar primitives (thin wrappers so every check lives in one place) ---------------------------


def is_valid_point(point: bytes) -> bool:
    """Canonical, on the curve, in the main subgroup, not small order (so never the identity)."""
    return (
        isinstance(point, bytes)
        and len(point) == POINT_BYTES
        and point != IDENTITY
        and bool(sodium.crypto_core_ed25519_is_valid_point(point))
    )


def check_point(point: bytes) -> bytes:
    if not is_valid_point(point):
        raise InvalidPoint("not a valid point of the prime-order subgroup")
    return point


def scalar_from_bytes(raw: bytes) -> int:
    """A canonical little-endian scalar in ``[1, L)``; anything else is refused, never reduced."""
    if not isinstance(raw, bytes) or len(raw) != SCALAR_BYTES:
        raise InvalidScalar("scalar must be 32 bytes")
    value = int.from_bytes(raw, "little")
    if not 0 < value < L:
        raise InvalidScalar("scalar out of range")
    return value


def scalar_to_bytes(value: int) -> bytes:
    if not 0 <= value < L:
        raise InvalidScalar("scalar out of range")
    return value.to_bytes(SCALAR_BYTES, "little")


def scalar_from_hash(digest64: bytes) -> int:
    """Reduce a 64-byte hash mod L (libsodium's reduce: uniform enough for a 252-bit group)."""
    assert len(digest64) == 64
    return int.from_bytes(sodium.crypto_core_ed25519_scalar_reduce(digest64), "little")


def base_mult(scalar: int) -> bytes:
    """``scalar·G`` without clamping (the scalar is already in ``[1, L)``)."""
    return sodium.crypto_scalarmult_ed25519_base_noclamp(scalar_to_bytes(scalar))


def point_mult(scalar: int, point: bytes) -> bytes:
    """``scalar·P``; libsodium refuses small-order inputs and an identity result."""
    return sodium.crypto_scalarmult_ed25519_noclamp(scalar_to_bytes(scalar), check_point(point))


def point_add(p: bytes, q: bytes) -> bytes:
    return sodium.crypto_core_ed25519_add(p, q)


# -- transcript ------------------------------------------------------------------------------------------------


def _frame(parts: Iterable[bytes]) -> bytes:
    """Length-prefix every part (8-byte big-endian) so no two different transcripts encode alike."""
    out = bytearray()
    for part in parts:
        out += len(part).to_bytes(8, "big")
        out += part
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Statement:
    """What a proof is about: the public key and the context it is bound to."""

    public_key: bytes
    account_id: int
    server_id: str
    challenge_id: str
    nonce: bytes

    def context_bytes(self) -> bytes:
        return _frame(
            [
                DOMAIN_TAG,
                GROUP_NAME,
                self.public_key,
                str(self.account_id).encode(),
                self.server_id.encode(),
                self.challenge_id.encode(),
                self.nonce,
            ]
        )


def challenge_scalar(statement: Statement, commitment: bytes) -> int:
    """The Fiat-Shamir challenge ``c = H(domain, group, X, account, server, challenge id, nonce, V) mod L``."""
    return scalar_from_hash(hashlib.sha512(statement.context_bytes() + _frame([commitment])).digest())


@dataclass(frozen=True, slots=True)
class Proof:
    commitment: bytes
    response: bytes


def _hedged_nonce(secret: int, statement: Statement, entropy: bytes) -> int:
    """``k = H(x, context, fresh randomness)``: safe if either the RNG or the secret-derived part is sound."""
    seed = _frame([NONCE_TAG, scalar_to_bytes(secret), statement.context_bytes(), entropy])
    return scalar_from_hash(hashlib.sha512(seed).digest())


def prove(secret: int, statement: Statement, *, entropy: bytes | None = None) -> Proof:
    """Prove knowledge of ``secret`` with ``secret·G == statement.public_key``.

    ``entropy`` is for known-answer tests only; normally 32 fresh bytes from the OS are mixed in.
    """
    if not 0 < secret < L:
        raise InvalidScalar("secret out of range")
    k = _hedged_nonce(secret, statement, os.urandom(32) if entropy is None else entropy)
    if k == 0:  # probability 2^-252; refuse rather than leak x
        raise InvalidScalar("degenerate nonce")
    commitment = base_mult(k)
    c = challenge_scalar(statement, commitment)
    response = (k + c * secret) % L
    return Proof(commitment=commitment, response=scalar_to_bytes(response))


def verify(statement: Statement, proof: Proof) -> bool:
    """True only for a valid proof; every malformed input is simply ``False`` (no exception, no detail)."""
    try:
        check_point(statement.public_key)
        check_point(proof.commitment)
        r = scalar_from_bytes(proof.response)
        c = challenge_scalar(statement, proof.commitment)
        if c == 0:
            return False
        left = base_mult(r)
        right = point_add(proof.commitment, point_mult(c, statement.public_key))
    except (InvalidPoint, InvalidScalar, SodiumRuntimeError, ValueError, TypeError):
        return False
    return hmac.compare_digest(left, right)


def public_key(secret: int) -> bytes:
    """``X = x·G``."""
    if not 0 < secret < L:
        raise InvalidScalar("secret out of range")
    return base_mult(secret)
