"""Signed checkpoints of the log: a running SHA-256 chain over the events' digests, signed with Ed25519.

``chain_0`` is 32 zero bytes and ``chain_n = sha256(chain_{n-1} || sha256(body_n))`` (raw bytes, not hex).
A seal at ``seq`` carries ``chain_seq`` and the first 8 bytes of every event digest since the previous seal
(``leaves``), so an auditor who finds a chain mismatch can name the exact event that changed. The signature
covers a canonical message with a domain tag, the key id, the seq range, the chain and the SHA-256 of the
leaves: nothing in a seal can be altered without breaking it.

Key files: ``signing.key`` holds the private key as PKCS#8 PEM (mode 0600), ``signing.pub`` the public key as
SubjectPublicKeyInfo PEM. :func:`load_signing_key` and :func:`load_public_key` also accept a raw 32-byte key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eventstore.envelope import canonical_json
from eventstore.keyfiles import create_private_file, read_private_file
from eventstore.keys import Keys

GENESIS = bytes(32)
LEAF_BYTES = 8
SEAL_DOMAIN = b"fintech-fortress/seal/v1\n"


def extend_chain(chain: bytes, event_digest: bytes) -> bytes:
    """One link: ``sha256(chain || digest)`` over raw 32-byte values."""
    return hashlib.sha256(chain + event_digest).digest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_path(signing_key_path: Path) -> Path:
    return signing_key_path.with_suffix(".pub")


def create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Write a new private key (PEM, 0600) and its public key next to it; refuses to overwrite."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    create_private_file(path, pem)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_key_path(path).write_bytes(public_pem)
    return private


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """PEM (PKCS#8) or raw 32 bytes; refuses a file other users could read."""
    data = read_private_file(path)
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public key from ``signing.pub`` (PEM or raw 32 bytes), or derived from a private key file."""
    data = path.read_bytes()
    if len(data) == 32 and path.suffix == ".pub":
        return Ed25519PublicKey.from_public_bytes(data)
    if b"PRIVATE KEY" in data or len(data) == 32:
        return load_signing_key(path).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} does not hold an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class Seal:
    """One signed checkpoint: events ``first_seq..seq`` with the chain after ``seq``."""

    seq: int
    first_seq: int
    chain: str
    leaves: bytes
    signed_at: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        return seal_message(self.seq, self.first_seq, self.chain, self.leaves, self.signed_at, self.key_id)

    def to_fields(self) -> dict[str, str | bytes]:
        return {
            "seq": str(self.seq), "first_seq": str(self.first_seq), "chain": self.chain, "leaves": self.leaves,
            "signed_at": self.signed_at, "key_id": self.key_id, "signature": self.signature,
        }

    def to_json(self) -> dict[str, str | int]:
        return {
            "seq": self.seq, "first_seq": self.first_seq, "chain": self.chain, "leaves": self.leaves.hex(),
            "signed_at": self.signed_at, "key_id": self.key_id, "signature": self.signature,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Seal:
        """Raises ``KeyError``/``ValueError`` on a malformed entry."""
        return cls(
            seq=int(fields[b"seq"]), first_seq=int(fields[b"first_seq"]), chain=fields[b"chain"].decode(),
            leaves=bytes(fields[b"leaves"]), signed_at=fields[b"signed_at"].decode(),
            key_id=fields[b"key_id"].decode(), signature=fields[b"signature"].decode(),
        )

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> Seal:
        return cls(
            seq=int(record["seq"]), first_seq=int(record["first_seq"]),  # type: ignore[call-overload]
            chain=str(record["chain"]), leaves=bytes.fromhex(str(record["leaves"])),
            signed_at=str(record["signed_at"]), key_id=str(record["key_id"]), signature=str(record["signature"]),
        )


def seal_message(seq: int, first_seq: int, chain: str, leaves: bytes, signed_at: str, kid: str) -> bytes:
    """The exact bytes that are signed (domain tag + canonical JSON)."""
    return SEAL_DOMAIN + canonical_json(
        {"chain": chain, "first_seq": first_seq, "key_id": kid, "leaves_sha256": hashlib.sha256(leaves).hexdigest(),
         "seq": seq, "signed_at": signed_at}
    )


def sign_seal(
    private_key: Ed25519PrivateKey, *, seq: int, first_seq: int, chain: bytes, leaves: bytes, signed_at: str
) -> Seal:
    kid = key_id(private_key.public_key())
    chain_hex = chain.hex()
    signature = private_key.sign(seal_message(seq, first_seq, chain_hex, leaves, signed_at, kid)).hex()
    return Seal(seq=seq, first_seq=first_seq, chain=chain_hex, leaves=leaves, signed_at=signed_at, key_id=kid,
                signature=signature)


def verify_seal(public_key: Ed25519PublicKey, seal: Seal) -> bool:
    """True when the signature is valid for this key and the leaves have the right length."""
    if seal.key_id != key_id(public_key):
        return False
    if len(seal.leaves) != LEAF_BYTES * (seal.seq - seal.first_seq + 1):
        return False
    try:
        public_key.verify(bytes.fromhex(seal.signature), seal.message())
    except (InvalidSignature, ValueError):
        return False
    return True


def read_seals(client: redis.Redis, keys: Keys) -> list[tuple[str, Mapping[bytes, bytes]]]:
    """Every seal entry as stored (entry id and raw fields), oldest first."""
    out: list[tuple[str, Mapping[bytes, bytes]]] = []
    start = "-"
    while True:
        page = client.xrange(keys.seals, min=start, max="+", count=1000)
        for entry_id, fields in page:
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields))
        if len(page) < 1000:
            return out
        start = "(" + out[-1][0]


def last_seal(client: redis.Redis, keys: Keys) -> Seal | None:
    raw = client.xrevrange(keys.seals, max="+", min="-", count=1)
    if not raw:
        return None
    return Seal.from_fields(raw[0][1])
