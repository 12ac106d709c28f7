"""No password, secret x, session token or SSN anywhere the bank writes (issue 4).

A real bank (init, up, login, open, deposit, transfer, history, erase-free) runs a scenario through the CLI;
then every place it wrote is scanned byte for byte: every Redis key's value (a keyspace dump), the Redis
append-only files, both SQLite databases, the outbox, and every worker's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from auth_zkp.kdf import KdfParams, derive_secret
from auth_zkp.schnorr import scalar_to_bytes
from bankctl.profile import load_session

ADMIN_PASSWORD = "correct horse battery staple"
ALICE_PASSWORD = "Alice's very own secret"
BOB_PASSWORD = "bob-password-1234"
SSN = "123-45-6789"


def _bankctl(env: dict[str, str], *args: str, stdin: str | None = None, profile: str = "default") -> str:
    result = subprocess.run([sys.executable, "-m", "bankctl.cli", *args], input=stdin, text=True,
                            capture_output=True, env={**env, "BANKCTL_PROFILE": profile}, timeout=120)
    assert result.returncode == 0, f"bankctl {' '.join(args)}: {result.stderr}"
    return result.stdout


def _keyspace_dump(client: redis.Redis) -> bytes:
    """Every key and every value, whatever its type."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        out.append(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for _id, fields in client.xrange(key):
                for field, value in fields.items():
                    out += [field, value]
    return b"\n".join(out)


@pytest.fixture
def scenario(tmp_path: Path, needs_redis_server):
    data = tmp_path / "data"
    env = {**os.environ, "BANKCTL_DATA_DIR": str(data), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "BANKCTL_LOG_LEVEL": "DEBUG"}
    env.pop("BANKCTL_REDIS_URL", None)
    _bankctl(env, "init", "--admin-password-stdin", stdin=ADMIN_PASSWORD + "\n")
    _bankctl(env, "up", "--detach")
    try:
        _bankctl(env, "login", "--account", "0", "--password-stdin", stdin=ADMIN_PASSWORD + "\n", profile="admin")
        _bankctl(env, "account", "open", "--ssn", SSN, "--phone", "+15551230001", "--first-name", "Alice",
                 "--last-name", "Archer", "--sms", "--password-stdin", stdin=ALICE_PASSWORD + "\n", profile="admin")
        _bankctl(env, "account", "open", "--ssn", "234-56-7890", "--phone", "+15551230002", "--first-name", "Bob",
                 "--last-name", "Baker", "--no-sms", "--password-stdin", stdin=BOB_PASSWORD + "\n",
                 profile="admin")
        _bankctl(env, "login", "--account", "1", "--password-stdin", stdin=ALICE_PASSWORD + "\n", profile="alice")
        _bankctl(env, "deposit", "100.00", profile="alice")
        _bankctl(env, "transfer", "2", "40.00", profile="alice")
        _bankctl(env, "history", profile="alice")
        _bankctl(env, "account", "list", profile="admin")
        _bankctl(env, "account", "show", "1", profile="admin")
        os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
        tokens = [load_session(p).token for p in ("admin", "alice")]
        admin_password = (data / "secrets" / "admin.password").read_text().strip()
        secret_client = redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"), username="admin",
                                    password=admin_password)
        salt = bytes.fromhex(secret_client.hget("{bank}:acct:1", "cred_salt").decode())
        kdf = KdfParams.from_dict(json.loads(secret_client.hget("{bank}:acct:1", "cred_kdf")))
        x = derive_secret(ALICE_PASSWORD, salt, kdf)
        dump = _keyspace_dump(secret_client)
        yield {"data": data, "tokens": tokens, "x": x, "dump": dump}
    finally:
        _bankctl(env, "down")
        os.environ.pop("XDG_CONFIG_HOME", None)


def _forbidden(scenario: dict) -> dict[str, list[bytes]]:
    x = scenario["x"]
    return {
        "password": [p.encode() for p in (ADMIN_PASSWORD, ALICE_PASSWORD, BOB_PASSWORD)],
        "SSN": [SSN.encode(), SSN.replace("-", "").encode()],
        "session token": [t.encode() for t in scenario["tokens"]],
        "secret x": [scalar_to_bytes(x), scalar_to_bytes(x).hex().encode(), str(x).encode()],
    }


def _written_files(data: Path) -> list[Path]:
    """Everything the bank wrote that is not a key file (the AOF, databases, outbox, worker logs)."""
    skip = {"master.key", "signing.key", "signing.pub", "server_id"}
    return [p for p in data.rglob("*") if p.is_file() and p.name not in skip and "secrets" not in p.parts]


def test_no_secret_in_redis_keyspace_databases_outbox_or_logs(scenario):
    files = _written_files(scenario["data"])
    names = {p.name for p in files}
    assert {"database1.db", "database2.db", "outbox.jsonl"} <= names, names
    assert any(p.suffix == ".log" for p in files)
    places = {"redis keyspace": scenario["dump"]} | {str(p): p.read_bytes() for p in files}
    leaks = [(what, place) for what, needles in _forbidden(scenario).items()
             for place, blob in places.items() for needle in needles if needle in blob]
    assert not leaks, f"secrets found: {leaks}"
