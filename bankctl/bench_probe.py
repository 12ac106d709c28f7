"""What ``bankctl bench`` observes besides the clients: worker memory, Redis memory, projector lag, work split.

Everything here only reads: ``/proc/<pid>/status`` for resident memory, ``/proc/<pid>/stat`` for CPU time,
``INFO memory`` for Redis, the projectors' SQLite checkpoints (read-only) against the log head for lag, and the
workers' heartbeat counters.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from eventstore.envelope import parse_utc_timestamp
from eventstore.keys import Keys
from eventstore.log import head as log_head
from eventstore.log import oldest_unapplied_age_s

LAG_SAMPLE_EVERY_S = 0.1


def resident_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of a process in KiB; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (``/proc/<pid>/stat``); 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used per command by each process over some runs: where the time of a command goes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used = dict.fromkeys(pids, 0.0)
        self.commands = 0
        self.wall_s = 0.0
        self._start: dict[str, float] = {}
        self._began = 0.0

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._began = time.monotonic()

    def stop(self, commands: int) -> None:
        """End a run of ``commands`` commands (call once the followers have caught up: their work counts too)."""
        self.wall_s += time.monotonic() - self._began
        for name, pid in self.pids.items():
            self.used[name] += cpu_seconds(pid) - self._start[name]
        self.commands += commands

    def rows(self) -> list[dict[str, Any]]:
        """Microseconds of CPU per command by process and their share of the whole, then the whole."""
        total = sum(self.used.values())
        cores = total / self.wall_s if self.wall_s else 0.0
        used = {**self.used, f"all (cores busy: {cores:.2f})": total}
        return [{"process": name, "us_per_command": round(seconds / self.commands * 1e6, 1) if self.commands else 0.0,
                 "share": round(seconds / total, 3) if total else 0.0} for name, seconds in used.items()]


def redis_used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def head(client: redis.Redis, keys: Keys) -> tuple[int, datetime | None]:
    """The last seq of the log and when its event occurred."""
    seq, occurred_at = log_head(client, keys)
    return seq, parse_utc_timestamp(occurred_at)


def checkpoint(path: Path) -> int | None:
    """A projector database's checkpoint (read-only); ``None`` when unreadable."""
    from projections.schema import DatabaseUnusable, open_readonly, read_checkpoint

    try:
        conn = open_readonly(path)
    except DatabaseUnusable:
        return None
    try:
        return read_checkpoint(conn)
    except Exception:  # noqa: BLE001 - a database being created or swapped: skip this sample
        return None
    finally:
        conn.close()


@dataclass
class LagSampler:
    """Samples every projector's lag behind the log head in a thread while a load runs.

    Lag in events is ``head - checkpoint``; lag in seconds is the age of the oldest event the database has
    not applied (0 when caught up): how stale a read from it can be. (The event time of the head minus that of
    the checkpoint, which ``bankctl projections status`` shows, counts the quiet time before a burst as lag: a
    sample taken just after the burst's first append, before the projector woke, read as the whole pause.)
    """

    client: redis.Redis
    keys: Keys
    databases: dict[str, Path]
    events: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(LAG_SAMPLE_EVERY_S):
            try:
                head_seq, _ = head(self.client, self.keys)
            except redis.RedisError:
                continue
            for name, path in self.databases.items():
                seq = checkpoint(path)
                if seq is None:
                    continue
                lag = max(0, head_seq - seq)
                self.events.setdefault(name, []).append(lag)
                self.seconds.setdefault(name, []).append(self._oldest_unapplied_age(seq) if lag else 0.0)

    def _oldest_unapplied_age(self, checkpoint_seq: int) -> float:
        try:
            age = oldest_unapplied_age_s(self.client, self.keys, checkpoint_seq, now=datetime.now(UTC))
        except redis.RedisError:
            return 0.0
        return age or 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in self.databases:
            events, seconds = self.events.get(name, []), self.seconds.get(name, [])
            out[name] = {
                "samples": len(events),
                "max_events": max(events, default=0),
                "median_events": statistics.median(events) if events else 0,
                "max_s": max(seconds, default=0.0),
                "median_s": statistics.median(seconds) if seconds else 0.0,
            }
        return out


def wait_caught_up(client: redis.Redis, keys: Keys, databases: dict[str, Path], timeout_s: float = 60.0) -> float:
    """Seconds until every projector reached the current head (raises on timeout)."""
    began = time.monotonic()
    target, _ = head(client, keys)
    while time.monotonic() - began < timeout_s:
        done = [checkpoint(p) for p in databases.values()]
        if all(seq is not None and seq >= target for seq in done):
            return time.monotonic() - began
        time.sleep(0.05)
    raise RuntimeError(f"projectors did not reach seq {target} within {timeout_s:.0f}s")


def worker_counters(client: redis.Redis, keys: Keys, name: str) -> dict[str, int]:
    """A worker's ``n_*`` heartbeat counters (e.g. how much each handler processed)."""
    raw = client.hgetall(keys.worker(name))
    out = {}
    for key, value in raw.items():
        text = key.decode()
        if text.startswith("n_"):
            try:
                out[text[2:]] = int(value)
            except ValueError:
                continue
    return out


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def process_rows(pids: dict[str, int]) -> list[dict[str, Any]]:
    """Resident memory of each process, in MiB."""
    rows = []
    for name, pid in pids.items():
        found = resident_kib(pid)
        rows.append({"process": name, "rss_mib": round(found.get("VmRSS", 0) / 1024, 1),
                     "peak_rss_mib": round(found.get("VmHWM", 0) / 1024, 1)})
    return rows
