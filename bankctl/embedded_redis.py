"""Start and stop a private ``redis-server`` (the embedded one of ``bankctl up``, and the test suite's).

It listens on a unix socket inside its own directory (no TCP port unless asked), keeps an AOF with
``appendfsync always`` so an acknowledged command is on disk, and runs in the foreground as our child.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

START_TIMEOUT_S = 15.0


class RedisUnavailable(RuntimeError):
    """redis-server is not installed or did not come up."""


class TruncatedAof(RedisUnavailable):
    """redis-server refused to load an AOF whose last write was cut short (``aof-load-truncated no``)."""


TRUNCATED_AOF_MARK = "Unexpected end of file reading the append only file"
AOF_DIR = "appendonlydir"  # Redis 7's default appenddirname
AOF_MANIFEST = "appendonly.aof.manifest"
AOF_REPAIRED_MARK = "bankctl: repaired the AOF's cut-short tail"


@dataclass
class RedisProcess:
    directory: Path
    socket: Path
    process: subprocess.Popen[bytes] | None
    port: int = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM makes redis-server flush and exit)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RedisUnavailable("redis-server is not installed (Debian: apt-get install redis-server)")
    return found


def config_lines(directory: Path, socket: Path, *, port: int, fsync: str | None, acl_file: Path | None) -> list[str]:
    """``fsync`` None: nothing is persisted at all (the request bus, see :func:`start_bus`)."""
    lines = [
        f"dir {directory}",
        f"unixsocket {socket}",
        "unixsocketperm 700",
        f"port {port}",
        "bind 127.0.0.1",
    ]
    if fsync is None:
        lines.append("appendonly no")
    else:
        lines += [
            "appendonly yes",
            f"appendfsync {fsync}",
            # An AOF rewrite forks and writes the whole dataset to disk; on this class of disk it made every fsync
            # of the live AOF wait (measured: commands stalled up to 300 ms when the 64 MB default triggered it).
            # The log is never trimmed, so a rewrite saves little: let the AOF reach 1 GB first (then doubling).
            "auto-aof-rewrite-min-size 1gb",
            # A crash in the middle of writing a script's effects (a MULTI ... EXEC block in the AOF) leaves a
            # partial block at the end. With the default ``aof-load-truncated yes`` Redis 7.0 cuts only the
            # partial last command and keeps the dangling MULTI: the next writes are appended inside it, and the
            # restart after that replays the never-acknowledged partial block with them (its XADDs take the seqs,
            # the later ones fail). Seen in a chaos run: two events read by the sealer and the notifier were
            # replaced after the second restart. Refusing to load, then repairing with redis-check-aof (which cuts
            # back to before the MULTI), keeps only what was acknowledged. See :func:`repair_truncated_aof`.
            "aof-load-truncated no",
        ]
    lines += [
        'save ""',
        "daemonize no",
        f"logfile {directory / 'redis.log'}",
        "protected-mode yes",
    ]
    if acl_file is not None:
        lines.append(f"aclfile {acl_file}")
    return lines


def start_redis(
    directory: Path,
    *,
    port: int = 0,
    fsync: str | None = "always",
    acl_file: Path | None = None,
    wait_password: tuple[str, str] | None = None,
) -> RedisProcess:
    """Start redis-server with its data and socket in ``directory``; returns once it answers PING.

    ``wait_password`` is the (user, password) to PING with when the default user is disabled by ACLs.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket = directory / "redis.sock"
    conf = directory / "redis.conf"
    conf.write_text("\n".join(config_lines(directory, socket, port=port, fsync=fsync, acl_file=acl_file)) + "\n")
    os.chmod(conf, 0o600)
    return _launch(directory, socket, port=port, wait_password=wait_password)


def _launch(directory: Path, socket: Path, *, port: int, wait_password: tuple[str, str] | None) -> RedisProcess:
    """Run redis-server on ``directory/redis.conf`` until it answers PING; an AOF whose tail a crash cut short is
    repaired (:func:`repair_truncated_aof`) and the server started once more."""
    try:
        return _start_once(directory, socket, port=port, wait_password=wait_password)
    except TruncatedAof:
        repair_truncated_aof(directory)
        return _start_once(directory, socket, port=port, wait_password=wait_password)


def _start_once(directory: Path, socket: Path, *, port: int, wait_password: tuple[str, str] | None) -> RedisProcess:
    log = directory / "redis.log"
    log_offset = log.stat().st_size if log.exists() else 0
    process = subprocess.Popen(
        [redis_server_binary(), str(directory / "redis.conf")], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    handle = RedisProcess(directory=directory, socket=socket, process=process, port=port)
    wait_until_ready(handle, wait_password=wait_password, log_offset=log_offset)
    return handle


def repair_truncated_aof(directory: Path) -> str:
    """Cut the AOF back to its last complete write with ``redis-check-aof --fix``; returns the tool's report.

    Safe for the log: with ``appendfsync always`` Redis answers a write, and shows it to any reader, only after
    the whole of it is written and synced, so a tail that a crash cut short was never acknowledged nor read.
    The tool cuts an unterminated MULTI block whole, where Redis's own ``aof-load-truncated`` does not.
    """
    tool = shutil.which("redis-check-aof")
    if not tool:
        raise RedisUnavailable("the AOF's last write was cut short and redis-check-aof is not installed "
                               "(Debian: apt-get install redis-tools)")
    manifest = directory / AOF_DIR / AOF_MANIFEST
    result = subprocess.run([tool, "--fix", str(manifest)], input="y\n", capture_output=True, text=True,
                            check=False, timeout=600)
    report = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RedisUnavailable(f"redis-check-aof could not repair {manifest}: {report[-1000:]}")
    with (directory / "redis.log").open("a") as log:
        log.write(f"{AOF_REPAIRED_MARK} with redis-check-aof --fix: {report[-500:]}\n")
    return report


def aof_repairs(directory: Path) -> int:
    """How many times :func:`repair_truncated_aof` cut this server's AOF (from its ``redis.log``)."""
    log = directory / "redis.log"
    return log.read_text(errors="replace").count(AOF_REPAIRED_MARK) if log.exists() else 0


def start_bus(directory: Path, *, port: int = 0, acl_file: Path | None = None,
              wait_password: tuple[str, str] | None = None) -> RedisProcess:
    """The request bus: a redis-server that persists nothing.

    Requests, replies and heartbeats are worth nothing after a restart (a client resends with the same command
    id, a worker beats again), so they need no disk sync; with ``appendfsync always`` on the log's Redis they
    cost three of the four syncs on a command's path (measured: 1 client, 1,011 commands/s with one Redis).
    """
    return start_redis(directory, port=port, fsync=None, acl_file=acl_file, wait_password=wait_password)


def wait_until_ready(handle: RedisProcess, *, wait_password: tuple[str, str] | None = None,
                     log_offset: int = 0) -> None:
    """Wait for PING; ``log_offset``: where this start's lines begin in ``redis.log`` (to tell why it exited)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if handle.process is not None and handle.process.poll() is not None:
            log = handle.directory / "redis.log"
            tail = log.read_bytes()[log_offset:].decode(errors="replace")[-2000:] if log.exists() else ""
            kind = TruncatedAof if TRUNCATED_AOF_MARK in tail else RedisUnavailable
            raise kind(f"redis-server exited with {handle.process.returncode}: {tail}")
        try:
            kwargs: dict[str, object] = {"socket_timeout": 2}
            if wait_password:
                kwargs["username"], kwargs["password"] = wait_password
            client = handle.client(**kwargs)
            if client.ping():
                # AOF rewrite-on-load may still be running; PING answering means it accepts commands.
                client.close()
                return
        except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError, redis.ResponseError) as error:
            last_error = error
        time.sleep(0.02)
    handle.kill()
    raise RedisUnavailable(f"redis-server did not answer within {START_TIMEOUT_S}s: {last_error!r}")


def restart(handle: RedisProcess, *, wait_password: tuple[str, str] | None = None) -> RedisProcess:
    """Start a new server on the same directory (and so the same AOF and socket)."""
    return _launch(handle.directory, handle.socket, port=handle.port, wait_password=wait_password)
