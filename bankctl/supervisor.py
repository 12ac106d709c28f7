"""Local process supervision for ``bankctl up`` / ``down`` / ``status`` (DESIGN §1, §9).

``up`` runs the supervisor in the foreground: it starts the embedded redis-server (unless ``BANKCTL_REDIS_URL``
is set), then every worker as a child process running ``python -m bankctl.cli worker <kind> --name <name>``,
restarts a worker that dies (with a backoff), and on SIGINT/SIGTERM stops the workers (SIGTERM, wait, SIGKILL)
and then Redis. ``up --detach`` starts that same foreground supervisor as a background process and returns once
every worker reports a heartbeat. The pids live in ``<data_dir>/run/state.json`` so ``down`` and ``status``
can find them from another shell.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from bankctl.config import Settings
from bankctl.embedded_redis import RedisProcess, start_bus, start_redis

STATE_FILE = "state.json"
STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 60.0
MAX_RESTART_DELAY_S = 30.0
WORKER_MODULES = {
    "handler": "commands.handler",
    "projector": "projections.projector",
    "notifier": "notifier.worker",
    "sealer": "eventstore.sealer",
}


class SupervisorError(RuntimeError):
    """``up``/``down`` cannot proceed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    name: str
    kind: str
    args: tuple[str, ...] = ()


@dataclass
class RunState:
    """What ``down`` and ``status`` need to know about a running bank (``run/state.json``)."""

    supervisor_pid: int
    redis_url: str
    redis_pid: int | None = None
    bus_url: str = ""
    bus_pid: int | None = None
    workers: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    started_at: float = field(default_factory=time.time)


def public_url(url: str) -> str:
    """The URL without its credentials (safe to print and to store in the state file)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}"


def state_path(settings: Settings) -> Path:
    return settings.run_dir / STATE_FILE


def read_state(settings: Settings) -> RunState | None:
    try:
        raw = json.loads(state_path(settings).read_text())
        return RunState(**raw)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_state(settings: Settings, state: RunState) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = state_path(settings).with_suffix(".tmp")
    temp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True))
    os.replace(temp, state_path(settings))


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited already
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def default_specs(settings: Settings) -> list[WorkerSpec]:
    return [
        WorkerSpec("handler-1", "handler"),
        WorkerSpec("handler-2", "handler"),
        WorkerSpec("projector-1", "projector", ("--db", str(settings.database_path(1)))),
        WorkerSpec("projector-2", "projector", ("--db", str(settings.database_path(2)))),
        WorkerSpec("notifier", "notifier"),
        WorkerSpec("sealer", "sealer"),
    ]


def import_problem(kind: str) -> str | None:
    """Why a worker kind cannot run here (its module is missing or has no ``main``), or ``None``."""
    module_name = WORKER_MODULES[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return f"{module_name} is not importable ({error})"
    if not callable(getattr(module, "main", None)):
        return f"{module_name} has no main()"
    return None


def worker_command(settings: Settings, spec: WorkerSpec) -> list[str]:
    return [*bankctl_command(settings), "worker", spec.kind, "--name", spec.name, *spec.args]


def bankctl_command(settings: Settings) -> list[str]:
    """``bankctl`` with the settings that must reach a child process (data dir, Redis and bus URLs)."""
    command = [sys.executable, "-m", "bankctl.cli", "--data-dir", str(settings.data_dir)]
    if settings.redis_url_override:
        command += ["--redis-url", settings.redis_url_override]
    if settings.bus_url_override:
        command += ["--bus-url", settings.bus_url_override]
    return command


def _acl_file(settings: Settings) -> tuple[Path | None, tuple[str, str] | None]:
    try:
        from bankctl.acl import acl_file_path, credentials
    except ImportError:
        return None, None
    path = acl_file_path(settings.data_dir)
    if not path.exists():
        return None, None
    return path, credentials(settings.data_dir, "admin")


class Supervisor:
    """Starts, watches and stops one local bank."""

    def __init__(self, settings: Settings, *, say: Callable[[str], None] = print,
                 specs: Iterable[WorkerSpec] | None = None) -> None:
        self.settings = settings
        self.say = say
        self.specs = list(specs) if specs is not None else default_specs(settings)
        self.redis: RedisProcess | None = None
        self.bus: RedisProcess | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self.next_start: dict[str, float] = {}
        self.state: RunState | None = None
        self._stopping = False

    # ---------------------------------------------------------------- starting

    def start(self) -> RunState:
        settings = self.settings
        if not settings.master_key_path.exists():
            raise SupervisorError(f"{settings.data_dir} is not initialised: run 'bankctl init' first")
        running = read_state(settings)
        if running is not None and pid_alive(running.supervisor_pid) and running.supervisor_pid != os.getpid():
            raise SupervisorError(f"the bank is already up (supervisor pid {running.supervisor_pid}); "
                                  "'bankctl down' stops it")
        settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        skipped = {}
        runnable = []
        for spec in self.specs:
            problem = import_problem(spec.kind)
            if problem:
                skipped[spec.name] = problem
                self.say(f"warning: not starting {spec.name}: {problem}")
            else:
                runnable.append(spec)
        self.specs = runnable
        self.state = RunState(supervisor_pid=os.getpid(), redis_url=public_url(settings.redis_url("client")),
                              bus_url=public_url(settings.bus_url("client")), skipped=skipped)
        try:
            acl_file, admin = _acl_file(settings)
            if settings.embedded:
                self.redis = start_redis(settings.redis_dir, fsync="always", acl_file=acl_file, wait_password=admin)
                self.state.redis_pid = self.redis.pid
            if settings.embedded_bus:
                self.bus = start_bus(settings.bus_dir, acl_file=acl_file, wait_password=admin)
                self.state.bus_pid = self.bus.pid
            for spec in self.specs:
                self._spawn(spec)
            write_state(settings, self.state)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.state.ready = True
        write_state(settings, self.state)
        return self.state

    def _spawn(self, spec: WorkerSpec) -> None:
        assert self.state is not None
        log_path = self.settings.run_dir / f"{spec.name}.log"
        with open(log_path, "ab") as log:
            child = subprocess.Popen(worker_command(self.settings, spec), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=log, process_group=0)
        self.children[spec.name] = child
        self.state.workers[spec.name] = child.pid
        self.state.logs[spec.name] = str(log_path)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every worker's heartbeat exists; a worker that exits meanwhile is an error with its log tail."""
        client = self.settings.connect_bus("admin")  # heartbeats are on the bus
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                for name, child in self.children.items():
                    if child.poll() is not None:
                        raise SupervisorError(f"{name} exited with {child.returncode} while starting:\n"
                                              + _tail(self.settings.run_dir / f"{name}.log"))
                if self._stopping:
                    raise SupervisorError("interrupted while starting")
                missing = [n for n in self.children if not client.exists(self.settings.keys.worker(n))]
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise SupervisorError(f"no heartbeat from {', '.join(missing)} within {timeout_s:.0f}s")
                time.sleep(0.1)
        finally:
            client.close()

    # ---------------------------------------------------------------- watching

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM ask for a clean stop (installed before anything starts, so none is orphaned)."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def watch(self) -> int:
        """Foreground loop: restart workers that die, until SIGINT/SIGTERM; then stop everything."""
        self.install_signal_handlers()
        try:
            while not self._stopping:
                self._restart_dead()
                time.sleep(0.2)
        finally:
            self.stop()
        return 0

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self._stopping = True

    def _restarted(self, server: RedisProcess | None, message: str) -> RedisProcess | None:
        """A new server on the same directory for one that exited (the log's from its AOF, the bus empty)."""
        if server is None or server.process is None or server.process.poll() is None:
            return server
        self.say(message)
        from bankctl.embedded_redis import restart

        acl_file, admin = _acl_file(self.settings)
        return restart(server, wait_password=admin) if acl_file else restart(server)

    def _restart_dead(self) -> None:
        log_server = self._restarted(self.redis, "redis-server exited; restarting it from its AOF")
        bus = self._restarted(self.bus, "the request bus exited; restarting it empty (clients resend what was "
                                        "in flight)")
        if log_server is not self.redis or bus is not self.bus:
            self.redis, self.bus = log_server, bus
            assert self.state is not None
            self.state.redis_pid = log_server.pid if log_server else None
            self.state.bus_pid = bus.pid if bus else None
            write_state(self.settings, self.state)
        now = time.monotonic()
        for spec in self.specs:
            child = self.children.get(spec.name)
            if child is None or child.poll() is None:
                continue
            if spec.name not in self.next_start:
                count = self.restarts.get(spec.name, 0)
                delay = min(2.0 ** count, MAX_RESTART_DELAY_S)
                self.say(f"{spec.name} exited with {child.returncode}; restarting in {delay:.0f}s")
                self.next_start[spec.name] = now + delay
            elif now >= self.next_start[spec.name]:
                del self.next_start[spec.name]
                self.restarts[spec.name] = self.restarts.get(spec.name, 0) + 1
                self._spawn(spec)
                assert self.state is not None
                write_state(self.settings, self.state)

    # ---------------------------------------------------------------- stopping

    def stop(self) -> None:
        """SIGTERM every worker (they finish their batch), wait, SIGKILL stragglers, then stop Redis."""
        stop_processes(list(self.children.values()))
        self.children.clear()
        for server in (self.redis, self.bus):
            if server is not None:
                server.stop()
        self.redis = self.bus = None
        state = read_state(self.settings)
        if state is not None and state.supervisor_pid == os.getpid():
            state_path(self.settings).unlink(missing_ok=True)


def stop_processes(children: list[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def _terminate_pid(pid: int, must_contain: tuple[str, ...], timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM a process we started (checked by its command line, against pid reuse), then SIGKILL if needed."""
    if not pid_alive(pid) or not any(word in _cmdline(pid) for word in must_contain):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def shut_down(settings: Settings) -> dict[str, Any]:
    """``bankctl down``: ask the supervisor to stop everything; clean up after a supervisor that died."""
    state = read_state(settings)
    if state is None:
        return {"ok": True, "stopped": [], "message": "nothing is running"}
    stopped = []
    if _terminate_pid(state.supervisor_pid, ("bankctl",), timeout_s=STOP_TIMEOUT_S + 10):
        stopped.append("supervisor")
    for name, pid in state.workers.items():  # only still alive if the supervisor could not stop them
        if _terminate_pid(pid, ("bankctl",)):
            stopped.append(name)
    if state.redis_pid and _terminate_pid(state.redis_pid, ("redis-server",)):
        stopped.append("redis")
    if state.bus_pid and _terminate_pid(state.bus_pid, ("redis-server",)):
        stopped.append("bus")
    state_path(settings).unlink(missing_ok=True)
    return {"ok": True, "stopped": stopped, "message": "stopped"}


def start_detached(settings: Settings, timeout_s: float = READY_TIMEOUT_S) -> RunState:
    """Run the foreground supervisor in the background; return once it reports every worker ready."""
    settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = bankctl_command(settings)
    log_path = settings.run_dir / "supervisor.log"
    with open(log_path, "ab") as log:
        child = subprocess.Popen([*command, "up"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout_s + 10
    while time.monotonic() < deadline:
        state = read_state(settings)
        if state is not None and state.supervisor_pid == child.pid and state.ready:
            return state
        if child.poll() is not None:
            raise SupervisorError(f"the supervisor exited with {child.returncode}:\n{_tail(log_path)}")
        time.sleep(0.1)
    child.terminate()
    raise SupervisorError(f"the bank did not become ready within {timeout_s:.0f}s; see {log_path}")


def bank_status(settings: Settings, client: redis.Redis, bus: redis.Redis) -> dict[str, Any]:
    """Workers alive (heartbeats), pending per handler, log length, last seq (``bus`` may be ``client``)."""
    from eventstore.log import last_seq
    from notifier.status import notifier_status

    keys = settings.keys
    workers = {}
    for key in sorted(bus.scan_iter(match=keys.worker("*"), count=1000)):
        name = key.decode().split(":worker:", 1)[1]
        raw = {k.decode(): v.decode(errors="replace") for k, v in bus.hgetall(key).items()}
        age = time.time() - float(raw.get("beat", "0") or 0)
        workers[name] = {"kind": raw.get("kind", "?"), "pid": int(raw.get("pid", "0") or 0),
                         "alive": age < 10, "beat_age_s": round(age, 1),
                         "counters": {k[2:]: int(v) for k, v in raw.items() if k.startswith("n_") and v.isdigit()}}
    try:
        pending = {row["name"].decode(): int(row["pending"])
                   for row in bus.xinfo_consumers(keys.commands, "handlers")}
    except redis.ResponseError:
        pending = {}
    log_length = client.xlen(keys.events) if client.exists(keys.events) else 0
    state = read_state(settings)
    return {
        "ok": True,
        "redis": public_url(settings.redis_url("client")),
        "bus": public_url(settings.bus_url("client")),
        "supervisor_pid": state.supervisor_pid if state and pid_alive(state.supervisor_pid) else None,
        "workers": workers,
        "skipped": state.skipped if state else {},
        "pending": pending,
        "log_length": log_length,
        "last_seq": last_seq(client, keys),
        "commands_waiting": bus.xlen(keys.commands) if bus.exists(keys.commands) else 0,
        "notifier": notifier_status(client, keys),
    }
