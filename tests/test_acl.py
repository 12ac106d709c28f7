"""Least-privilege ACL users on a real redis-server (DESIGN §8)."""

from __future__ import annotations

import os
import stat

import orjson
import pytest
import redis

from auth_zkp.client_proof import make_credential, prove_from_start
from auth_zkp.kdf import KdfParams
from auth_zkp.login import AuthService
from auth_zkp.principal import Principal
from auth_zkp.sessions import AuthenticatedSession, SessionStore, new_exchange_key
from bankctl.acl import ROLES, acl_file_path, credentials, write_acl_file
from bankctl.embedded_redis import start_redis
from eventstore.append import AccountWrite, Appender, AppendStatus, PreparedCommand, PreparedEvent
from eventstore.envelope import encode_envelope
from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault
from notifier.lease import NotifierLease

pytestmark = pytest.mark.redis_server
FAST = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory, needs_redis_server):
    data_dir = tmp_path_factory.mktemp("acl-bank")
    acl_file = write_acl_file(data_dir)
    handle = start_redis(data_dir / "redis", fsync="everysec", acl_file=acl_file,
                         wait_password=credentials(data_dir, "admin"))
    yield data_dir, handle
    handle.stop()


@pytest.fixture
def connect(acl_server):
    data_dir, handle = acl_server
    opened = []

    def _connect(role: str) -> redis.Redis:
        user, password = credentials(data_dir, role)
        client = handle.client(username=user, password=password, socket_timeout=10)
        opened.append(client)
        return client

    _connect("admin").flushall()
    yield _connect
    for client in opened:
        client.close()


def _deposit_command(keys: Keys, command_id: str) -> PreparedCommand:
    prefix, suffix = encode_envelope(event_id=f"{command_id:0>32}", event_type="MoneyDeposited", accounts=(1,),
                                     versions=(1,), command_id=command_id, actor="customer:1",
                                     occurred_at="2026-11-24T00:00:00.000000Z", data={"account": 1, "amount": 5})
    return PreparedCommand(keys.command_outcome(command_id),
                           [AccountWrite(keys.account(1), 0, {"version": 1, "balance": 5})],
                           [PreparedEvent("MoneyDeposited", prefix, suffix)], b'{"ok":true,"seq":', b"}")


def test_secret_files_are_private_and_acl_has_no_plaintext(acl_server):
    data_dir, _ = acl_server
    secrets_dir = data_dir / "secrets"
    assert stat.S_IMODE(os.stat(secrets_dir).st_mode) == 0o700
    acl_text = acl_file_path(data_dir).read_text()
    for role in ROLES:
        path = secrets_dir / f"{role}.password"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert credentials(data_dir, role)[1] not in acl_text
    assert stat.S_IMODE(os.stat(acl_file_path(data_dir)).st_mode) == 0o600
    # Re-running keeps the passwords.
    before = credentials(data_dir, "client")
    write_acl_file(data_dir)
    assert credentials(data_dir, "client") == before


def test_default_user_is_disabled(acl_server):
    _, handle = acl_server
    with pytest.raises(redis.RedisError):
        handle.client().set("{bank}:x", 1)


def test_client_cannot_touch_the_log_or_state(connect, keys):
    client = connect("client")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.xadd(keys.events, {"seq": 1, "type": "MoneyDeposited", "body": "{}"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.hset(keys.account(1), "balance", 10**9)
    for forbidden in (lambda: client.xrange(keys.events), lambda: client.get(keys.session("x")),
                      lambda: client.xadd(keys.seals, {"a": 1}), lambda: client.delete(keys.commands),
                      lambda: client.xadd(keys.reply("x"), {"a": 1}), lambda: client.get(keys.data_key(1)),
                      lambda: client.set(keys.seq, 0), lambda: client.flushall(), lambda: client.keys("*"),
                      lambda: client.xtrim(keys.commands, maxlen=0), lambda: client.rpush(keys.reply("x"), "{}")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_client_can_send_requests_and_read_replies(connect, keys):
    client = connect("client")
    assert client.xadd(keys.commands, {"type": "Deposit"}, maxlen=1000, approximate=True)
    assert client.xadd(keys.queries, {"type": "balance"})
    connect("admin").rpush(keys.reply("abc"), b'{"ok":true}', b"second")
    assert client.blpop([keys.reply("abc")], timeout=1) == (keys.reply("abc").encode(), b'{"ok":true}')
    assert client.lpop(keys.reply("abc")) == b"second"
    assert client.delete(keys.reply("abc")) == 0


def test_handler_can_append_and_run_the_login(connect, keys):
    handler = connect("handler")
    [result] = Appender(handler, keys=keys).append([_deposit_command(keys, "c1")])
    assert result.status is AppendStatus.OK
    handler.xgroup_create(keys.commands, "handlers", id="0", mkstream=True)
    handler.xreadgroup("handlers", "h1", {keys.commands: ">"}, count=10)
    vault = PersonalDataVault(handler, keys=keys, master_key=os.urandom(32))
    vault.create_data_key(7)
    credential = make_credential("a long password", FAST)
    handler.hset(keys.account(7), mapping={"version": 1, "status": "open", "role": "customer",
                                           "cred_salt": credential["salt"],
                                           "cred_kdf": orjson.dumps(credential["kdf"]).decode(),
                                           "cred_key": vault.seal(7, "public_key", credential["public_key"])})
    sessions = SessionStore(handler, keys=keys, master_key=vault.master_key)
    service = AuthService(handler, keys=keys, vault=vault, server_id="bank-acl", sessions=sessions)
    start = service.handle("LoginStart", {"account": 7}, None, 1e9)
    _private, public = new_exchange_key()
    reply = service.handle("LoginFinish", {"account": 7, **prove_from_start("a long password", 7, start),
                                           "session_public": public.hex()}, None, 1e9)
    assert reply["ok"] is True
    for _ in range(5):
        start = service.handle("LoginStart", {"account": 7}, None, 1e9)
        wrong = service.handle("LoginFinish", {"account": 7, **prove_from_start("wrong password", 7, start)}, None,
                               1e9)
    assert wrong["code"] == "locked"
    session = AuthenticatedSession(reply["session_id"], Principal(7, "customer"))
    assert service.handle("Logout", {}, session, 1e9) == {"ok": True}
    entry = handler.xadd(keys.commands, {"type": "x"})
    assert handler.xdel(keys.commands, entry) == 1
    for forbidden in (lambda: handler.xtrim(keys.events, maxlen=0), lambda: handler.xdel(keys.events, "1-0"),
                      lambda: handler.xadd(keys.seals, {"a": 1})):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    with pytest.raises(redis.exceptions.NoPermissionError):
        handler.flushall()


def test_projector_reads_the_log_but_cannot_write_it(connect, keys):
    Appender(connect("admin"), keys=keys).append([_deposit_command(keys, "c2")])
    projector = connect("projector")
    assert len(projector.xread({keys.events: "0"}, count=10)[0][1]) == 1
    projector.xgroup_create(keys.queries, "readers", id="0", mkstream=True)
    projector.xreadgroup("readers", "p1", {keys.queries: ">"}, count=10)
    projector.rpush(keys.reply("q"), b"{}")
    request = connect("client").xadd(keys.queries, {"type": "balance"})
    assert projector.xdel(keys.queries, request) == 1
    for forbidden in (lambda: projector.xadd(keys.events, {"a": 1}), lambda: projector.hset(keys.account(1), "a", 1),
                      lambda: projector.set(keys.seq, 5), lambda: projector.delete(keys.events)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_notifier_and_sealer(connect, keys):
    Appender(connect("admin"), keys=keys).append([_deposit_command(keys, "c3")])
    notifier = connect("notifier")
    assert len(notifier.xread({keys.events: "0-0"}, count=10)[0][1]) == 1
    lease = NotifierLease(notifier, keys=keys, name="n1")
    assert lease.hold() == 0 and lease.hold(1) == 1, "its lease and checkpoint, through their script"
    notifier.hset(keys.worker("notifier"), "beat", 1)
    for write_to_the_log in (lambda: notifier.xadd(keys.events, {"a": 1}),
                             lambda: notifier.xtrim(keys.events, maxlen=0),
                             lambda: notifier.xgroup_create(keys.events, "notifier", id="0")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write_to_the_log()
    sealer = connect("sealer")
    assert sealer.xrange(keys.events)
    assert sealer.xadd(keys.seals, {"upto": 1})
    with pytest.raises(redis.exceptions.NoPermissionError):
        sealer.xadd(keys.events, {"a": 1})


def test_appended_events_survive_a_restart_with_acls(tmp_path, keys, needs_redis_server):
    """Redis 7.0 replays AOF transactions as the default user: it must stay off but keep its rights."""
    from bankctl.embedded_redis import restart

    acl_file = write_acl_file(tmp_path)
    admin = credentials(tmp_path, "admin")
    handle = start_redis(tmp_path / "redis", acl_file=acl_file, wait_password=admin)
    try:
        user, password = credentials(tmp_path, "handler")
        client = handle.client(username=user, password=password)
        Appender(client, keys=keys).append([_deposit_command(keys, "persist")])
        client.close()
        handle.stop()
        handle = restart(handle, wait_password=admin)
        client = handle.client(username=user, password=password)
        assert client.xlen(keys.events) == 1
        assert client.hget(keys.account(1), "balance") == b"5"
        client.close()
    finally:
        handle.stop()
