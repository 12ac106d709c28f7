"""Argon2id known answer (RFC 9106) and the password -> scalar derivation."""

from __future__ import annotations

import pytest

from auth_zkp import schnorr
from auth_zkp.client_proof import make_credential
from auth_zkp.kdf import DEFAULT_PARAMS, KdfParams, argon2id, derive_secret, password_problem
from commands.models import Credential

FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


def test_argon2id_rfc9106_vector():
    """RFC 9106 §5.3: Argon2id, m=32 KiB, t=3, p=4, with secret and associated data."""
    tag = argon2id(b"\x01" * 32, b"\x02" * 16, memory_kib=32, iterations=3, lanes=4, length=32,
                   secret=b"\x03" * 8, ad=b"\x04" * 12)
    assert tag.hex() == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


def test_password_is_nfc_normalised():
    salt = b"s" * 16
    composed, decomposed = "caf\u00e9-passw0rd", "cafe\u0301-passw0rd"
    assert derive_secret(composed, salt, FAST) == derive_secret(decomposed, salt, FAST)


def test_secret_depends_on_salt_password_and_parameters():
    x = derive_secret("correct horse", b"a" * 16, FAST)
    assert 0 < x < schnorr.L
    assert x != derive_secret("correct horse", b"b" * 16, FAST)
    assert x != derive_secret("correct horsf", b"a" * 16, FAST)
    assert x != derive_secret("correct horse", b"a" * 16, KdfParams(memory_kib=8 * 1024, iterations=2, lanes=1))


def test_short_salt_and_empty_password_refused():
    with pytest.raises(ValueError):
        derive_secret("pw-long-enough", b"short", FAST)
    with pytest.raises(ValueError):
        derive_secret("", b"a" * 16, FAST)


@pytest.mark.parametrize(
    "raw",
    [{"algorithm": "argon2i", "memory_kib": 8192, "iterations": 1, "lanes": 1},
     {"algorithm": "argon2id", "memory_kib": 4 * 1024 * 1024, "iterations": 1, "lanes": 1},
     {"algorithm": "argon2id", "memory_kib": 8192, "iterations": 0, "lanes": 1},
     {"algorithm": "argon2id", "memory_kib": 8192, "iterations": 1, "lanes": True},
     {"algorithm": "argon2id", "memory_kib": "8192", "iterations": 1, "lanes": 1}],
)
def test_absurd_parameters_from_a_server_are_refused(raw):
    with pytest.raises(ValueError):
        KdfParams.from_dict(raw)


def test_credential_has_the_stored_shape():
    credential = make_credential("correct horse battery", FAST)
    model = Credential.model_validate(credential)
    assert len(bytes.fromhex(model.salt)) >= 16
    assert schnorr.is_valid_point(bytes.fromhex(model.public_key))
    assert KdfParams.from_dict(DEFAULT_PARAMS.to_dict()) == DEFAULT_PARAMS
    Credential.model_validate({**credential, "kdf": DEFAULT_PARAMS.to_dict()})


def test_two_registrations_of_one_password_differ():
    assert make_credential("same password", FAST) != make_credential("same password", FAST)


def test_password_policy():
    assert password_problem("short") is not None
    assert password_problem(" " * 12) is not None
    assert password_problem("long enough") is None
