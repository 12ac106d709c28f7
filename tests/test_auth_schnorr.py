"""Schnorr proof over edwards25519: known answers against libsodium, a frozen transcript, and rejections."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from nacl import bindings as sodium
from nacl.signing import SigningKey

from auth_zkp import schnorr
from auth_zkp.client_proof import make_proof

ROOT = Path(__file__).resolve().parent.parent

SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]
NON_CANONICAL = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]

# Frozen login transcript (changing the transcript layout or hashing breaks every stored client: bump v1).
FROZEN_X = schnorr.scalar_from_hash(bytes(range(64)))
FROZEN = {
    "x": 0x572D0E474B5E0DA7A932112C3D46159CCE628540DB62350A0372DF082623C7A,
    "X": "f9302fcb3a2937cff4950e4c6272340e171b0a65ed680d8fca72087ab4da078d",
    "context_sha256": "4b2174c29e7d7e062968f30b6c813042e4195d39180b6bbacd41acf468601ef9",
    "V": "169e9754198c7990a2f5c6a810c42bca753de77f02f19846ff82fa88b8219944",
    "c": 0x214BB0AA5A06B33629725ACD10BBDE45352842EC251CBA362911FFCC53558B6,
    "r": "42614c39cafef6cea0c86d752c6cca23d141e670f14d7f47f5f0bd73372a1402",
}


def _statement(x: int = FROZEN_X, **changes) -> schnorr.Statement:
    fields = {"public_key": schnorr.public_key(x), "account_id": 7, "server_id": "bank-test",
              "challenge_id": "0" * 32, "nonce": bytes(range(32))}
    fields.update(changes)
    return schnorr.Statement(**fields)


def test_base_point_and_order_match_libsodium():
    assert schnorr.base_mult(1) == schnorr.BASE_POINT
    assert sodium.crypto_core_ed25519_scalar_reduce(schnorr.L.to_bytes(64, "little")) == bytes(32)
    assert sodium.crypto_core_ed25519_scalar_reduce((schnorr.L + 5).to_bytes(64, "little")) == (5).to_bytes(32,
                                                                                                          "little")


def test_public_key_matches_ed25519_rfc8032_vector():
    """RFC 8032 §7.1 test 1: our unclamped base multiplication of the clamped scalar gives the same A."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    expected = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    scalar = int.from_bytes(h, "little") % schnorr.L
    assert schnorr.base_mult(scalar).hex() == expected
    assert bytes(SigningKey(seed).verify_key).hex() == expected


@pytest.mark.parametrize("a,b", [(1, 2), (12345, 2**200 + 17), (schnorr.L - 1, 2)])
def test_group_operations_agree_with_libsodium(a, b):
    ga, gb = schnorr.base_mult(a), schnorr.base_mult(b)
    total = (a + b) % schnorr.L
    assert schnorr.point_add(ga, gb) == schnorr.base_mult(total)
    assert schnorr.point_add(ga, gb) == sodium.crypto_core_ed25519_add(ga, gb)
    product = sodium.crypto_core_ed25519_scalar_mul(a.to_bytes(32, "little"), b.to_bytes(32, "little"))
    assert schnorr.point_mult(b, ga) == schnorr.base_mult(int.from_bytes(product, "little"))
    assert schnorr.point_mult(b, ga) == sodium.crypto_scalarmult_ed25519_noclamp(b.to_bytes(32, "little"), ga)


@pytest.mark.parametrize("encoded", SMALL_ORDER + NON_CANONICAL)
def test_rejects_small_order_and_non_canonical_points(encoded):
    assert not schnorr.is_valid_point(bytes.fromhex(encoded))


def test_small_order_list_really_is_small_order():
    identity = schnorr.IDENTITY
    for encoded in SMALL_ORDER:
        p = bytes.fromhex(encoded)
        p2 = sodium.crypto_core_ed25519_add(p, p)
        p4 = sodium.crypto_core_ed25519_add(p2, p2)
        assert sodium.crypto_core_ed25519_add(p4, p4) == identity


def test_rejects_point_with_torsion_component_and_garbage():
    mixed = sodium.crypto_core_ed25519_add(schnorr.base_mult(5), bytes.fromhex(SMALL_ORDER[1]))
    assert not schnorr.is_valid_point(mixed)
    assert not schnorr.is_valid_point(b"\x02" + bytes(31))  # not on the curve
    assert not schnorr.is_valid_point(schnorr.base_mult(5)[:31])
    assert schnorr.is_valid_point(schnorr.base_mult(5))


def test_frozen_login_transcript():
    assert FROZEN_X == FROZEN["x"]
    statement = _statement()
    assert statement.public_key.hex() == FROZEN["X"]
    assert hashlib.sha256(statement.context_bytes()).hexdigest() == FROZEN["context_sha256"]
    proof = make_proof(FROZEN_X, account_id=7, server_id="bank-test", challenge_id="0" * 32,
                       nonce=bytes(range(32)), entropy=bytes(32))
    assert proof == {"challenge_id": "0" * 32, "commitment": FROZEN["V"], "response": FROZEN["r"]}
    assert schnorr.challenge_scalar(statement, bytes.fromhex(FROZEN["V"])) == FROZEN["c"]
    assert schnorr.verify(statement, schnorr.Proof(bytes.fromhex(FROZEN["V"]), bytes.fromhex(FROZEN["r"])))


def test_transcript_is_length_prefixed():
    a = _statement(server_id="ab", challenge_id="c" * 32)
    b = _statement(server_id="a", challenge_id="bc" + "c" * 31)
    assert a.context_bytes() != b.context_bytes()


def test_prove_and_verify_roundtrip_with_hedged_nonce():
    statement = _statement()
    one, two = schnorr.prove(FROZEN_X, statement), schnorr.prove(FROZEN_X, statement)
    assert one.commitment != two.commitment  # fresh randomness every time
    assert schnorr.verify(statement, one) and schnorr.verify(statement, two)


@pytest.mark.parametrize(
    "changes",
    [{"account_id": 8}, {"server_id": "bank-other"}, {"challenge_id": "1" * 32}, {"nonce": bytes(32)},
     {"public_key": schnorr.public_key(12345)}],
)
def test_proof_is_bound_to_its_statement(changes):
    proof = schnorr.prove(FROZEN_X, _statement())
    assert not schnorr.verify(_statement(**changes), proof)


def test_tampered_commitment_or_response_fail():
    statement = _statement()
    proof = schnorr.prove(FROZEN_X, statement)
    r = int.from_bytes(proof.response, "little")
    assert not schnorr.verify(statement, schnorr.Proof(proof.commitment, ((r + 1) % schnorr.L).to_bytes(32, "little")))
    assert not schnorr.verify(statement, schnorr.Proof(schnorr.base_mult(99), proof.response))
    flipped = bytearray(proof.commitment)
    flipped[3] ^= 1
    assert not schnorr.verify(statement, schnorr.Proof(bytes(flipped), proof.response))


def test_response_at_or_above_order_is_rejected():
    statement = _statement()
    proof = schnorr.prove(FROZEN_X, statement)
    r = int.from_bytes(proof.response, "little")
    # r + L is the same residue: a verifier that reduced it would accept; ours must not.
    assert not schnorr.verify(statement, schnorr.Proof(proof.commitment, (r + schnorr.L).to_bytes(32, "little")))
    assert not schnorr.verify(statement, schnorr.Proof(proof.commitment, schnorr.L.to_bytes(32, "little")))
    assert not schnorr.verify(statement, schnorr.Proof(proof.commitment, bytes(32)))
    assert not schnorr.verify(statement, schnorr.Proof(proof.commitment, b"\xff" * 32))


@pytest.mark.parametrize("encoded", SMALL_ORDER)
def test_small_order_commitment_or_key_is_rejected(encoded):
    point = bytes.fromhex(encoded)
    statement = _statement()
    proof = schnorr.prove(FROZEN_X, statement)
    assert not schnorr.verify(statement, schnorr.Proof(point, proof.response))
    assert not schnorr.verify(_statement(public_key=point), schnorr.Proof(proof.commitment, proof.response))


def test_identity_trick_with_zero_key_cannot_pass():
    """With X = identity any r with V = r·G would verify; the identity key is refused first."""
    statement = _statement(public_key=schnorr.IDENTITY)
    assert not schnorr.verify(statement, schnorr.Proof(schnorr.base_mult(5), (5).to_bytes(32, "little")))


def test_out_of_range_secrets_are_refused():
    with pytest.raises(schnorr.InvalidScalar):
        schnorr.public_key(0)
    with pytest.raises(schnorr.InvalidScalar):
        schnorr.prove(schnorr.L, _statement())


SECURITY_SOURCES = [*sorted((ROOT / "auth_zkp").glob("*.py")),
                    *(ROOT / "bankctl" / name for name in ("acl.py", "profile.py", "cmd_auth.py", "bootstrap.py"))]


@pytest.mark.parametrize("path", SECURITY_SOURCES, ids=lambda p: p.name)
def test_no_random_module_in_security_code(path):
    text = path.read_text()
    assert not re.search(r"^\s*(import random\b|from random\b)", text, re.MULTILINE)
    assert "random." not in text.replace("os.urandom", "")
