"""bankctl init / login / whoami / password change / logout end to end, against a real redis-server with ACLs.

The real command handler serves in a thread, connected as the ``handler`` ACL user.
"""

from __future__ import annotations

import os
import stat
import threading
import time

import orjson
import pytest
from click.testing import CliRunner

from bankctl.acl import acl_file_path, credentials
from bankctl.embedded_redis import start_bus, start_redis
from bankctl.profile import load_session
from commands.handler import CommandHandler, build_handler
from eventstore.keys import Keys
from eventstore.log import read_range

pytestmark = pytest.mark.redis_server
ADMIN_PW = "an admin password"


def _serve(handler: CommandHandler, stop: threading.Event) -> None:
    while not stop.is_set():
        handler.poll_once(block_ms=100)


@pytest.fixture
def bank_dir(tmp_path, monkeypatch, needs_redis_server):
    monkeypatch.delenv("BANKCTL_REDIS_URL", raising=False)
    monkeypatch.delenv("BANKCTL_PROFILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("BANKCTL_DATA_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


def run(*args: str, stdin: str | None = None, profile: str = "default") -> tuple[int, dict]:
    from bankctl.cli import cli

    result = CliRunner().invoke(cli, ["--profile", profile, *args, "--json"], input=stdin)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, (orjson.loads(lines[-1]) if lines else {"_output": result.output})


def test_init_login_whoami_change_logout(bank_dir):
    code, out = run("init", "--admin-password-stdin", stdin=ADMIN_PW + "\n")
    assert code == 0, out
    for name in ("master.key", "signing.key"):
        assert stat.S_IMODE(os.stat(bank_dir / name).st_mode) == 0o600
    assert (bank_dir / "signing.pub").exists() and (bank_dir / "server_id").exists()
    code, again = run("init", "--admin-password-stdin", stdin=ADMIN_PW + "\n")
    assert code == 2, again

    keys = Keys()
    handle = start_redis(bank_dir / "redis", acl_file=acl_file_path(bank_dir),
                         wait_password=credentials(bank_dir, "admin"))
    bus_handle = start_bus(bank_dir / "bus", acl_file=acl_file_path(bank_dir),
                           wait_password=credentials(bank_dir, "admin"))
    stop = threading.Event()
    worker = None
    try:
        user, password = credentials(bank_dir, "handler")
        client = handle.client(username=user, password=password, socket_timeout=10)
        events = read_range(client, keys, 1)
        assert [e.type for e in events] == ["AccountOpened", "CredentialsRegistered"]
        assert ADMIN_PW.encode() not in b"".join(e.body for e in events)
        bus = bus_handle.client(username=user, password=password, socket_timeout=10)
        handler = build_handler(client, data_dir=bank_dir, name="handler-test", bus=bus)
        sessions = handler.sessions
        worker = threading.Thread(target=_serve, args=(handler, stop), daemon=True)
        worker.start()

        code, out = run("login", "--account", "0", "--password-stdin", stdin="wrong password\n")
        assert code == 4 and out["code"] == "invalid_proof"
        code, out = run("whoami")
        assert code == 4

        began = time.perf_counter()
        code, out = run("login", "--account", "0", "--password-stdin", stdin=ADMIN_PW + "\n")
        elapsed = time.perf_counter() - began
        assert code == 0 and out == {"ok": True, "account": 0, "role": "admin", "profile": "default"}, out
        print(f"in-process login took {elapsed * 1000:.0f} ms")
        saved = load_session("default")
        assert saved is not None and saved.account_id == 0 and "token" not in out
        code, out = run("whoami")
        assert code == 0 and out["account"] == 0 and out["role"] == "admin"

        new_pw = "a brand new admin password"
        code, out = run("password", "change", "--password-stdin", stdin=f"not the old one\n{new_pw}\n")
        assert code == 4, out
        code, out = run("password", "change", "--password-stdin", stdin=f"{ADMIN_PW}\n{new_pw}\n")
        assert code == 0 and out["changed"] is True, out
        code, out = run("whoami")
        assert code == 0, out  # the session was renewed with the new password
        code, out = run("login", "--account", "0", "--password-stdin", stdin=ADMIN_PW + "\n", profile="old")
        assert code == 4
        code, out = run("login", "--account", "0", "--password-stdin", stdin=new_pw + "\n", profile="other")
        assert code == 0

        token = load_session("default").token
        code, out = run("logout")
        assert code == 0 and load_session("default") is None
        assert sessions.resolve_token(token) is None
        assert run("whoami")[0] == 4
        assert run("logout")[0] == 4
    finally:
        stop.set()
        if worker is not None:
            worker.join(5)
        handle.stop()
        bus_handle.stop()


def test_init_refuses_short_or_empty_admin_password(bank_dir):
    assert run("init", "--admin-password-stdin", stdin="short\n")[0] == 2
    assert run("init", "--admin-password-stdin", stdin="\n")[0] == 2
    assert run("init", "--admin-password-stdin", stdin=ADMIN_PW + "\n")[0] == 0


def test_no_password_option_exists(bank_dir):
    code, _ = run("login", "--account", "1", "--password", "x")
    assert code == 2
