"""AuthService: the two-step login, its rejections, decoys for unknown accounts, lock-out and sessions."""

from __future__ import annotations

import os

import orjson
import pytest

from auth_zkp import schnorr
from auth_zkp.client_proof import make_credential, make_proof, prove_from_start
from auth_zkp.kdf import DEFAULT_PARAMS, KdfParams, derive_secret
from auth_zkp.login import AUTH_REQUEST_TYPES, AuthService, pop_lock_event
from auth_zkp.principal import Principal
from auth_zkp.sessions import AuthenticatedSession, SessionStore, SessionToken, client_token, new_exchange_key
from eventstore.pii import PersonalDataVault

FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
SERVER = "bank-test-server"
NOW = 1_800_000_000.0
ALICE, BOB = 1, 2
ALICE_PW, BOB_PW = "alice's long password", "bob's long password"


def register(client, keys, vault, account_id, password, *, role="customer", status="open"):
    credential = make_credential(password, FAST)
    vault.create_data_key(account_id)
    client.hset(keys.account(account_id), mapping={
        "version": 1, "balance": 0, "status": status, "role": role, "erased": 0, "sms": 0,
        "cred_salt": credential["salt"], "cred_kdf": orjson.dumps(credential["kdf"]).decode(),
        "cred_key": vault.seal(account_id, "public_key", credential["public_key"]),
    })
    return credential


@pytest.fixture
def bank(any_redis, keys):
    vault = PersonalDataVault(any_redis, keys=keys, master_key=os.urandom(32))
    sessions = SessionStore(any_redis, keys=keys, master_key=vault.master_key)
    service = AuthService(any_redis, keys=keys, vault=vault, server_id=SERVER, sessions=sessions)
    register(any_redis, keys, vault, ALICE, ALICE_PW)
    register(any_redis, keys, vault, BOB, BOB_PW)
    register(any_redis, keys, vault, 0, "the admin's password", role="admin")
    return service, sessions, vault


def start(service, account, now=NOW):
    reply = service.handle("LoginStart", {"account": account}, None, now)
    assert reply["ok"] is True
    return reply


def finish(service, account, proof, now=NOW):
    """LoginFinish with a fresh exchange key; a successful reply gains the client's ``token``."""
    private, public = new_exchange_key()
    reply = service.handle("LoginFinish", {"account": account, **proof, "session_public": public.hex()}, None, now)
    if reply.get("ok"):
        reply["token"] = client_token(private, public, reply["session_id"], bytes.fromhex(reply["server_public"]))
    return reply


def as_session(sessions, token):
    """What the handler passes to AuthService once a request's MAC checked out."""
    principal = sessions.resolve_token(token)
    return AuthenticatedSession(SessionToken.parse(token).session_id, principal) if principal else None


def login(service, account, password, now=NOW):
    return finish(service, account, prove_from_start(password, account, start(service, account, now)), now)


def test_request_types():
    assert {"LoginStart", "LoginFinish", "Logout"} <= AUTH_REQUEST_TYPES


def test_successful_login_creates_a_hashed_session(bank, any_redis, keys):
    service, sessions, _ = bank
    reply = login(service, ALICE, ALICE_PW)
    assert reply == {"ok": True, "token": reply["token"], "session_id": reply["session_id"],
                     "server_public": reply["server_public"], "account": ALICE, "role": "customer"}
    principal = sessions.resolve_token(reply["token"])
    assert principal is not None and principal.account_id == ALICE and principal.role == "customer"
    stored = any_redis.get(keys.session(reply["session_id"]))
    assert stored is not None and SessionToken.parse(reply["token"]).key not in stored  # only wrapped
    assert login(service, 0, "the admin's password")["role"] == "admin"


def test_login_start_reply_shape(bank):
    service, _, _ = bank
    reply = start(service, ALICE)
    assert set(reply) == {"ok", "challenge_id", "nonce", "salt", "kdf", "server_id"}
    assert reply["server_id"] == SERVER and len(bytes.fromhex(reply["nonce"])) == 32
    assert reply["kdf"] == FAST.to_dict()


def test_wrong_password(bank):
    service, _, _ = bank
    reply = login(service, ALICE, "not alice's password")
    assert reply["ok"] is False and reply["code"] == "invalid_proof"


def test_replayed_proof_same_challenge(bank):
    service, _, _ = bank
    proof = prove_from_start(ALICE_PW, ALICE, start(service, ALICE))
    assert finish(service, ALICE, proof)["ok"] is True
    assert finish(service, ALICE, proof)["code"] == "invalid_proof"


def test_replayed_proof_with_a_fresh_challenge(bank):
    service, _, _ = bank
    proof = prove_from_start(ALICE_PW, ALICE, start(service, ALICE))
    assert finish(service, ALICE, proof)["ok"] is True
    fresh = start(service, ALICE)
    assert finish(service, ALICE, {**proof, "challenge_id": fresh["challenge_id"]})["code"] == "invalid_proof"


@pytest.mark.parametrize("field", ["commitment", "response", "challenge_id"])
def test_tampered_fields(bank, field):
    service, _, _ = bank
    first = start(service, ALICE)
    proof = prove_from_start(ALICE_PW, ALICE, first)
    if field == "challenge_id":
        tampered = start(service, ALICE)["challenge_id"]
    elif field == "commitment":
        tampered = schnorr.base_mult(424242).hex()
    else:
        r = int.from_bytes(bytes.fromhex(proof["response"]), "little")
        tampered = ((r + 1) % schnorr.L).to_bytes(32, "little").hex()
    assert finish(service, ALICE, {**proof, field: tampered})["code"] == "invalid_proof"


def test_proof_for_another_account(bank):
    service, _, _ = bank
    # Alice proves her own password against a challenge, then claims to be Bob with it.
    proof = prove_from_start(ALICE_PW, ALICE, start(service, ALICE))
    assert finish(service, BOB, proof)["code"] == "invalid_proof"
    # A challenge issued for Bob, answered with Alice's secret and account id in the transcript.
    challenge = start(service, BOB)
    proof = prove_from_start(ALICE_PW, ALICE, {**challenge, "salt": start(service, ALICE)["salt"]})
    assert finish(service, BOB, proof)["code"] == "invalid_proof"


def test_proof_for_another_server_id(bank):
    service, _, _ = bank
    challenge = start(service, ALICE)
    proof = prove_from_start(ALICE_PW, ALICE, {**challenge, "server_id": "bank-evil"})
    assert finish(service, ALICE, proof)["code"] == "invalid_proof"


def test_expired_challenge(bank):
    service, _, _ = bank
    challenge = start(service, ALICE, now=NOW)
    proof = prove_from_start(ALICE_PW, ALICE, challenge)
    assert finish(service, ALICE, proof, now=NOW + 61)["code"] == "invalid_proof"


def test_challenge_is_consumed_even_by_a_failed_attempt(bank):
    service, _, _ = bank
    challenge = start(service, ALICE)
    good = prove_from_start(ALICE_PW, ALICE, challenge)
    assert finish(service, ALICE, {**good, "response": "00" * 32})["code"] == "invalid_proof"
    assert finish(service, ALICE, good)["code"] == "invalid_proof"


def _secret_for(service, account, password, challenge):
    return derive_secret(password, bytes.fromhex(challenge["salt"]), KdfParams.from_dict(challenge["kdf"]))


@pytest.mark.parametrize("point", ["01" + "00" * 31, "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                                   "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"])
def test_identity_and_small_order_commitments(bank, point):
    service, _, _ = bank
    challenge = start(service, ALICE)
    proof = prove_from_start(ALICE_PW, ALICE, challenge)
    assert finish(service, ALICE, {**proof, "commitment": point})["code"] == "invalid_proof"


def test_response_not_below_group_order(bank):
    service, _, _ = bank
    challenge = start(service, ALICE)
    proof = prove_from_start(ALICE_PW, ALICE, challenge)
    r = int.from_bytes(bytes.fromhex(proof["response"]), "little")
    assert finish(service, ALICE, {**proof, "response": (r + schnorr.L).to_bytes(32, "little").hex()})["code"] \
        == "invalid_proof"


@pytest.mark.parametrize("payload", [{"account": "1"}, {"account": True}, {"account": -1}, {}])
def test_malformed_requests(bank, payload):
    service, _, _ = bank
    assert service.handle("LoginStart", payload, None, NOW)["ok"] is False
    assert service.handle("LoginFinish", payload, None, NOW)["ok"] is False


def test_malformed_proof_fields_are_invalid_proofs(bank):
    service, _, _ = bank
    challenge = start(service, ALICE)
    for bad in ({"commitment": "zz"}, {"response": None}, {"challenge_id": "../../etc"}, {"commitment": "AB" * 32}):
        proof = {"challenge_id": challenge["challenge_id"], "commitment": "11" * 32, "response": "22" * 32, **bad}
        assert finish(service, ALICE, proof)["code"] == "invalid_proof"


def test_unknown_account_gets_a_stable_decoy(bank):
    service, _, _ = bank
    one, two = start(service, 999), start(service, 999)
    assert set(one) == set(start(service, ALICE))
    assert one["salt"] == two["salt"] and one["challenge_id"] != two["challenge_id"]
    assert one["salt"] != start(service, 998)["salt"]
    assert one["kdf"] == DEFAULT_PARAMS.to_dict()
    x = schnorr.scalar_from_hash(os.urandom(64))
    proof = make_proof(x, account_id=999, server_id=SERVER, challenge_id=one["challenge_id"],
                       nonce=bytes.fromhex(one["nonce"]))
    reply = finish(service, 999, proof)
    wrong = login(service, ALICE, "wrong password here")
    assert set(reply) == set(wrong) and reply["code"] == wrong["code"] and reply["message"] == wrong["message"]


def test_decoy_is_shared_between_handlers(bank, any_redis, keys):
    service, sessions, vault = bank
    other = AuthService(any_redis, keys=keys, vault=vault, server_id=SERVER, sessions=sessions)
    assert start(service, 4242)["salt"] == start(other, 4242)["salt"]


def test_lockout_after_five_failures_with_growing_delay(bank):
    service, _, _ = bank
    for attempt in range(4):
        reply = login(service, ALICE, "wrong password!", now=NOW + attempt)
        assert reply["code"] == "invalid_proof" and pop_lock_event(reply) is None
    fifth = login(service, ALICE, "wrong password!", now=NOW + 4)
    assert fifth["code"] == "locked"
    event = pop_lock_event(fifth)
    assert event == {"account": ALICE, "until": "2027-01-15T08:05:04Z", "failures": 5}
    assert "_lock_event" not in fifth
    # Even the right password is refused while locked; Bob is unaffected.
    assert login(service, ALICE, ALICE_PW, now=NOW + 10)["code"] == "locked"
    assert login(service, BOB, BOB_PW, now=NOW + 10)["ok"] is True
    assert login(service, ALICE, ALICE_PW, now=NOW + 4 + 301)["ok"] is True
    # A second lock lasts twice as long.
    later = NOW + 1000
    for attempt in range(5):
        reply = login(service, ALICE, "wrong password!", now=later + attempt)
    assert reply["code"] == "locked"
    assert pop_lock_event(reply)["until"] == "2027-01-15T08:26:44Z"  # later + 4 + 600 s
    assert login(service, ALICE, ALICE_PW, now=later + 4 + 599)["code"] == "locked"


def test_failures_outside_the_window_do_not_lock(bank):
    service, _, _ = bank
    for attempt in range(8):
        assert login(service, ALICE, "wrong password!", now=NOW + attempt * 300)["code"] == "invalid_proof"


def test_unknown_accounts_lock_too_but_without_an_event(bank):
    service, _, _ = bank
    for attempt in range(5):
        x = schnorr.scalar_from_hash(os.urandom(64))
        challenge = start(service, 777, now=NOW + attempt)
        proof = make_proof(x, account_id=777, server_id=SERVER, challenge_id=challenge["challenge_id"],
                           nonce=bytes.fromhex(challenge["nonce"]))
        reply = finish(service, 777, proof, now=NOW + attempt)
    assert reply["code"] == "locked" and pop_lock_event(reply) is None


def test_logout_revokes_and_whoami(bank):
    service, sessions, _ = bank
    token = login(service, ALICE, ALICE_PW)["token"]
    session = as_session(sessions, token)
    assert service.handle("WhoAmI", {}, session, NOW) == {"ok": True, "account": ALICE, "role": "customer"}
    assert service.handle("Logout", {}, session, NOW) == {"ok": True}
    assert sessions.resolve_token(token) is None
    assert as_session(sessions, token) is None
    assert service.handle("Logout", {}, None, NOW)["ok"] is False


def test_revoking_an_account_ends_all_its_sessions_and_no_other(any_redis, keys):
    sessions = SessionStore(any_redis, keys=keys, master_key=os.urandom(32), ttl_s=600)
    mine = [sessions.create(Principal(5, "customer")) for _ in range(3)]
    login_token = client_token(*_exchanged_login(sessions, 5))
    theirs = [sessions.create(Principal(6, "customer")), sessions.create(Principal(0, "admin"))]
    assert sessions.revoke_token(mine[0])  # a logout before: its id stays in the index, harmlessly
    for _ in range(2):  # twice: revoking an account without sessions is a no-op
        sessions.revoke_all_for(5)
        assert all(sessions.resolve_token(t) is None for t in [*mine, login_token])
        assert all(sessions.resolve_token(t) is not None for t in theirs)
    assert not any_redis.exists(keys.account_sessions(5))
    assert 0 < any_redis.ttl(keys.account_sessions(6)) <= 600  # the index expires with its newest session
    fresh = sessions.create(Principal(5, "customer"))  # a later login works as before
    assert sessions.resolve_token(fresh) == Principal(5, "customer")


def _exchanged_login(sessions: SessionStore, account: int) -> tuple[bytes, bytes, str, bytes]:
    private, public = new_exchange_key()
    session_id, server_public = sessions.create_exchanged(Principal(account, "customer"), public)
    return private, public, session_id, server_public


def test_verify_password_proof_for_change_password(bank):
    service, _, _ = bank
    proof = prove_from_start(ALICE_PW, ALICE, start(service, ALICE))
    assert service.verify_password_proof(ALICE, proof) is True
    assert service.verify_password_proof(ALICE, proof) is False  # single use
    assert service.verify_password_proof(BOB, prove_from_start(ALICE_PW, BOB, start(service, BOB))) is False
    assert service.verify_password_proof(ALICE, {}) is False


def test_erased_or_unsealed_credentials_behave_as_unknown(bank, any_redis, keys):
    service, _, vault = bank
    real_salt = start(service, BOB)["salt"]
    vault.destroy_data_key(BOB)
    assert start(service, BOB)["salt"] != real_salt
    assert login(service, BOB, BOB_PW)["code"] == "invalid_proof"
    any_redis.hset(keys.account(ALICE), "cred_key", schnorr.base_mult(3).hex())  # plaintext X: refused
    assert login(service, ALICE, ALICE_PW)["code"] == "invalid_proof"


def test_no_secret_reaches_redis(bank, any_redis):
    service, _, _ = bank
    challenge = start(service, ALICE)
    x = _secret_for(service, ALICE, ALICE_PW, challenge)
    reply = finish(service, ALICE, prove_from_start(ALICE_PW, ALICE, challenge))
    login(service, ALICE, "a wrong password")
    needles = [ALICE_PW.encode(), schnorr.scalar_to_bytes(x).hex().encode(), schnorr.scalar_to_bytes(x),
               SessionToken.parse(reply["token"]).key, reply["token"].encode(), schnorr.public_key(x).hex().encode()]
    for key in any_redis.scan_iter(count=1000):
        kind = any_redis.type(key)
        if kind == b"string":
            values = [any_redis.get(key)]
        elif kind == b"hash":
            values = [v for pair in any_redis.hgetall(key).items() for v in pair]
        else:
            values = []
        for blob in [key, *values]:
            for needle in needles:
                assert needle not in blob, (key, needle)
