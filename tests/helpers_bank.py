"""Shared helpers for tests that drive the write path: sessions, requests, handlers in and out of process.

Other engineers' tests may import these; they depend only on the public contracts (request fields, reply keys,
``bankctl worker handler``).
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import redis
from nacl.public import PrivateKey

from auth_zkp.principal import Principal
from auth_zkp.sessions import SessionStore
from commands.client import Request
from commands.handler import CommandHandler, HandlerConfig
from eventstore.keys import Keys
from eventstore.log import iterate
from eventstore.pii import PersonalDataVault, load_master_key
from eventstore.transport import create_transport_key, publish_public_key

ROOT = Path(__file__).resolve().parent.parent
TEST_MASTER_KEY = bytes(range(32))
TEST_TRANSPORT_KEY = PrivateKey(bytes(range(32, 64)))


def credential() -> dict[str, Any]:
    """A well-formed (not login-capable) credential for accounts opened in tests."""
    return {"salt": secrets.token_hex(16), "kdf": {"memory_kib": 8192, "iterations": 1, "lanes": 1},
            "public_key": secrets.token_hex(32)}


def open_payload(n: int = 1, *, sms: bool = False) -> dict[str, Any]:
    return {"ssn": f"123-45-{6000 + n % 4000:04d}", "phone": f"+1555000{n % 10000:04d}", "first_name": f"Ann{n}",
            "last_name": "Tester", "sms_opt_in": sms, "credential": credential()}


def session_for(client: redis.Redis, keys: Keys, account: int, role: str = "customer") -> str:
    return SessionStore(client, keys=keys, master_key=TEST_MASTER_KEY).create(Principal(account, role))  # type: ignore[arg-type]


def admin_session(client: redis.Redis, keys: Keys) -> str:
    return session_for(client, keys, 0, "admin")


def make_handler(client: redis.Redis, keys: Keys, name: str = "handler-1", *, bus: redis.Redis | None = None,
                 **config: Any) -> CommandHandler:
    vault = PersonalDataVault(client, keys=keys, master_key=TEST_MASTER_KEY)
    publish_public_key(bus or client, keys, TEST_TRANSPORT_KEY)
    return CommandHandler(client, bus=bus, keys=keys, vault=vault, name=name, server_id="test-server",
                          config=HandlerConfig(**config), transport_key=TEST_TRANSPORT_KEY)


def submit(client: redis.Redis, keys: Keys, request_type: str, payload: dict[str, Any], session: str | None,
           *, command_id: str | None = None) -> str:
    """XADD one request; returns its request id (the reply key's suffix)."""
    request = Request(request_type, payload, session, **({"command_id": command_id} if command_id else {}))
    request_id = secrets.token_hex(16)
    client.xadd(keys.commands, request.fields(request_id))
    return request_id


def take_reply(client: redis.Redis, keys: Keys, request_id: str) -> dict[str, Any] | None:
    raw = client.lpop(keys.reply(request_id))
    return None if raw is None else orjson.loads(raw)


def drain(handler: CommandHandler, rounds: int = 50) -> None:
    """Poll without blocking until an iteration finds nothing (fakeredis ignores BLOCK)."""
    for _ in range(rounds):
        if handler.poll_once(block_ms=None) == 0:
            return
    raise AssertionError("handler did not drain")


def run_command(client: redis.Redis, keys: Keys, handler: CommandHandler, request_type: str,
                payload: dict[str, Any], session: str | None, **kwargs: Any) -> dict[str, Any]:
    request_id = submit(client, keys, request_type, payload, session, **kwargs)
    drain(handler)
    reply = take_reply(client, keys, request_id)
    assert reply is not None, "no reply"
    return reply


def open_accounts(client: redis.Redis, keys: Keys, handler: CommandHandler, n: int, *,
                  deposit_cents: int = 0) -> list[int]:
    admin = admin_session(client, keys)
    accounts = []
    for i in range(n):
        reply = run_command(client, keys, handler, "OpenAccount", open_payload(i), admin)
        assert reply["ok"], reply
        accounts.append(reply["account"])
        if deposit_cents:
            reply = run_command(client, keys, handler, "Deposit", {"account": reply["account"],
                                                                   "amount": deposit_cents}, admin)
            assert reply["ok"], reply
    return accounts


def log_payloads(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [event.payload() for event in iterate(client, keys)]


def balances_from_log(payloads: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Replay money events: the balance of every account as the log says."""
    out: dict[int, int] = {}
    for body in payloads:
        data = body["data"]
        kind = body["type"]
        if kind == "AccountOpened":
            out.setdefault(data["account"], 0)
        elif kind == "MoneyDeposited":
            out[data["account"]] += data["amount"]
        elif kind == "MoneyWithdrawn":
            out[data["account"]] -= data["amount"]
        elif kind == "MoneyTransferred":
            out[data["from"]] -= data["amount"]
            out[data["to"]] += data["amount"]
    return out


# ---------------------------------------------------------------------- processes on a real redis-server


def make_data_dir(path: Path) -> Path:
    """A data dir with the files a worker needs (master key 0600, server id)."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "master.key").exists():  # the same key as in-process handlers, so sessions work for both
        fd = os.open(path / "master.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(TEST_MASTER_KEY)
    (path / "server_id").write_text("test-server\n")
    if not (path / "transport.key").exists():
        create_transport_key(path / "transport.key")
    return path


def vault_for(client: redis.Redis, keys: Keys, data_dir: Path) -> PersonalDataVault:
    return PersonalDataVault(client, keys=keys, master_key=load_master_key(data_dir / "master.key"))


def start_worker(redis_url: str, data_dir: Path, kind: str, name: str, *extra: str,
                 log_path: Path | None = None, bus_url: str | None = None) -> subprocess.Popen[bytes]:
    """``bankctl worker <kind> --name <name>`` as a child process (its own process group)."""
    env = {**os.environ, "BANKCTL_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    env.pop("BANKCTL_REDIS_URL", None)
    env.pop("BANKCTL_BUS_URL", None)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    bus = ["--bus-url", bus_url] if bus_url else []
    return subprocess.Popen(
        [sys.executable, "-m", "bankctl.cli", "--data-dir", str(data_dir), "--redis-url", redis_url, *bus,
         "worker", kind, "--name", name, *extra],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
    )


def wait_for_heartbeat(client: redis.Redis, keys: Keys, names: Iterable[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        pending = {name for name in pending if not client.exists(keys.worker(name))}
        if pending:
            time.sleep(0.05)
    assert not pending, f"no heartbeat from {sorted(pending)}"


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout_s)


# ---------------------------------------------------------------------- load with safe resends


class LoadDriver:
    """Keeps up to ``window`` requests in flight; resends a request with its same ``command_id`` (and a fresh
    request id) when no reply came within ``resend_after_s``, as a client that timed out would.

    ``replies`` maps command id -> every reply received for it (resends may legitimately produce several, all
    equal); connection errors (Redis restarting) are survived and counted.
    """

    def __init__(self, client: redis.Redis, keys: Keys, *, window: int = 200, resend_after_s: float = 4.0) -> None:
        self.client = client
        self.keys = keys
        self.window = window
        self.resend_after_s = resend_after_s
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.resends = 0
        self.connection_errors = 0
        self._inflight: dict[str, tuple[Request, float]] = {}  # request_id -> (request, sent at)

    def _send(self, requests: list[Request]) -> None:
        pipe = self.client.pipeline(transaction=False)
        now = time.monotonic()
        for request in requests:
            request_id = secrets.token_hex(16)
            pipe.xadd(self.keys.commands, request.fields(request_id))
            self._inflight[request_id] = (request, now)
        pipe.execute()

    def _collect(self) -> int:
        ids = list(self._inflight)
        pipe = self.client.pipeline(transaction=False)
        for request_id in ids:
            pipe.lpop(self.keys.reply(request_id))
        got = 0
        now = time.monotonic()
        stale: list[Request] = []
        for request_id, raw in zip(ids, pipe.execute(), strict=True):
            request, sent_at = self._inflight[request_id]
            if raw is not None:
                del self._inflight[request_id]
                self.replies.setdefault(request.command_id, []).append(orjson.loads(raw))
                got += 1
            elif request.command_id in self.replies:  # another copy was answered already
                del self._inflight[request_id]
            elif now - sent_at > self.resend_after_s:
                del self._inflight[request_id]
                stale.append(request)
        if stale:
            self.resends += len(stale)
            self._send(stale)
        return got

    def run(self, requests: list[Request], *, deadline_s: float = 120.0,
            on_progress: Any = None) -> dict[str, dict[str, Any]]:
        """Send everything, wait for every reply; returns the first reply per command id."""
        todo = list(reversed(requests))
        deadline = time.monotonic() + deadline_s
        while (todo or self._inflight) and time.monotonic() < deadline:
            try:
                room = self.window - len(self._inflight)
                if room > 0 and todo:
                    self._send([todo.pop() for _ in range(min(room, len(todo)))])
                if not self._collect():
                    time.sleep(0.005)
            except (redis.ConnectionError, redis.TimeoutError):
                self.connection_errors += 1
                time.sleep(0.1)
            if on_progress is not None:
                on_progress(self)
        missing = [r.command_id for r in requests if r.command_id not in self.replies]
        assert not missing, f"{len(missing)} commands never got a reply (e.g. {missing[:3]})"
        return {command_id: replies[0] for command_id, replies in self.replies.items()}


def random_transfers(accounts: list[int], sessions: dict[int, str], count: int, *, seed: int) -> list[Request]:
    """``count`` transfers between random pairs of ``accounts``, each by its source's customer."""
    rng = random.Random(seed)  # noqa: S311 - a workload, not security
    requests = []
    for _ in range(count):
        source, target = rng.sample(accounts, 2)
        requests.append(Request("Transfer", {"account": source, "to": target, "amount": rng.randint(1, 900)},
                                sessions[source]))
    return requests


def check_exactly_once(client: redis.Redis, keys: Keys, replies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every accepted command is exactly one event, every refused one none; equal replies to resends."""
    events = log_payloads(client, keys)
    per_command: dict[str, int] = {}
    for body in events:
        per_command[body["command_id"]] = per_command.get(body["command_id"], 0) + 1
    for command_id, reply in replies.items():
        expected = 1 if reply["ok"] else 0
        assert per_command.get(command_id, 0) == expected, (command_id, reply, per_command.get(command_id))
    assert [body["seq"] for body in events] == list(range(1, len(events) + 1)), "seq must be gapless"
    return events


def check_money(client: redis.Redis, keys: Keys, events: list[dict[str, Any]], accounts: Iterable[int]) -> int:
    """Write-side balances equal the log's replay, none negative; returns the total."""
    replayed = balances_from_log(events)
    total = 0
    for account in accounts:
        stored = int(client.hget(keys.account(account), "balance") or 0)
        assert stored == replayed.get(account, 0) >= 0, (account, stored, replayed.get(account))
        total += stored
    for body in events:
        data = body["data"]
        for name in ("balance_after", "from_balance_after", "to_balance_after"):
            assert data.get(name, 0) >= 0, body
    return total
