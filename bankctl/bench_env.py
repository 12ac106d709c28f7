"""A throw-away bank for benchmarks: its own redis-server (AOF always), its request bus (a second redis-server
that persists nothing, as ``bankctl up`` runs it) and worker processes in a temp dir.

Benchmarks never touch a running bank: everything lives under a fresh directory and is killed at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from auth_zkp.principal import Principal
from auth_zkp.sessions import SessionStore
from bankctl.embedded_redis import RedisProcess, restart, start_bus, start_redis
from eventstore.keys import Keys
from eventstore.pii import create_master_key, load_master_key
from eventstore.seals import create_signing_key

WORKER_START_TIMEOUT_S = 30.0


@dataclass
class BenchBank:
    """A running throw-away bank."""

    root: Path
    redis: RedisProcess
    bus: RedisProcess | None = None  # None: requests go through the log's Redis
    keys: Keys = field(default_factory=Keys)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    worker_args: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def client(self) -> redis.Redis:
        """The log's Redis: events, write-side state, sessions, seals."""
        return redis.Redis(unix_socket_path=str(self.redis.socket), socket_timeout=30)

    @property
    def bus_server(self) -> RedisProcess:
        return self.bus if self.bus is not None else self.redis

    def bus_client(self) -> redis.Redis:
        """The request bus: commands, queries, replies, heartbeats."""
        return redis.Redis(unix_socket_path=str(self.bus_server.socket), socket_timeout=30)

    def env(self) -> dict[str, str]:
        return {**os.environ, "BANKCTL_REDIS_URL": self.redis.url, "BANKCTL_BUS_URL": self.bus_server.url,
                "BANKCTL_DATA_DIR": str(self.data_dir), "BANKCTL_LOG_LEVEL": "WARNING"}

    def start_worker(self, name: str, *args: str) -> None:
        command = [sys.executable, "-m", "bankctl.cli", "--data-dir", str(self.data_dir), "worker", *args,
                   "--name", name]
        log = open(self.root / f"{name}.log", "ab")
        self.worker_args[name] = args
        self.workers[name] = subprocess.Popen(command, env=self.env(), stdout=log, stderr=log,
                                              stdin=subprocess.DEVNULL, process_group=0)

    def wait_for_heartbeats(self) -> None:
        client = self.bus_client()
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            missing = [name for name in self.workers if not client.exists(self.keys.worker(name))]
            dead = [name for name, proc in self.workers.items() if proc.poll() is not None]
            if dead:
                logs = {name: (self.root / f"{name}.log").read_text()[-1500:] for name in dead}
                raise RuntimeError(f"bench workers died at start: {logs}")
            if not missing:
                return
            time.sleep(0.05)
        raise RuntimeError(f"bench workers never reported a heartbeat: {missing}")

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart_worker(self, name: str) -> None:
        """Start a (killed or exited) worker again with the arguments it was first started with."""
        old = self.workers.pop(name, None)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"worker {name} is still running")
        self.start_worker(name, *self.worker_args[name])

    def kill_redis(self) -> None:
        """SIGKILL redis-server, as a crash would (the AOF keeps what was fsynced)."""
        self.redis.kill()

    def restart_redis(self) -> None:
        """A new redis-server on the same directory, AOF and socket; workers reconnect by themselves."""
        self.redis = restart(self.redis)

    def kill_bus(self) -> None:
        """SIGKILL the request bus: every request, reply and heartbeat in it is gone."""
        assert self.bus is not None, "this bank has no separate bus"
        self.bus.kill()

    def restart_bus(self) -> None:
        """A new, empty bus on the same socket; workers recreate their groups, clients resend."""
        assert self.bus is not None, "this bank has no separate bus"
        self.bus = restart(self.bus)

    def sessions(self) -> SessionStore:
        """Sessions made on the bank's side, wrapped with the bank's master key like a login's."""
        return SessionStore(self.client(), keys=self.keys, master_key=load_master_key(self.data_dir / "master.key"))

    def admin_session(self) -> str:
        return self.sessions().create(Principal(account_id=0, role="admin"))

    def customer_session(self, account_id: int) -> str:
        return self.sessions().create(Principal(account_id=account_id, role="customer"))

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.redis.stop()
        if self.bus is not None:
            self.bus.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_bench_bank(*, handlers: int = 2, projectors: int = 0, notifier: bool = False, sealer: bool = False,
                     fsync: str = "always", separate_bus: bool = True) -> BenchBank:
    root = Path(tempfile.mkdtemp(prefix="bankctl-bench-"))
    data = root / "data"
    data.mkdir(mode=0o700)
    create_master_key(data / "master.key")
    if sealer:
        create_signing_key(data / "signing.key")
    (data / "server_id").write_text(secrets.token_hex(16))
    bank = BenchBank(root=root, redis=start_redis(root / "redis", fsync=fsync))
    try:
        if separate_bus:
            bank.bus = start_bus(root / "bus")
        for i in range(1, handlers + 1):
            bank.start_worker(f"handler-{i}", "handler")
        for i in range(1, projectors + 1):
            bank.start_worker(f"projector-{i}", "projector", "--db", str(data / f"database{i}.db"))
        if notifier:
            bank.start_worker("notifier", "notifier")
        if sealer:
            bank.start_worker("sealer", "sealer")
        bank.wait_for_heartbeats()
    except BaseException:
        bank.close()
        raise
    return bank
