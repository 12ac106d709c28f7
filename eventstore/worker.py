"""The worker loop every process shares: heartbeat, graceful shutdown, connection-error retry (DESIGN §6).

A worker is an object with ``poll_once() -> int`` (one non-blocking-or-briefly-blocking iteration, returning
how much it did) and ``counters``. :class:`WorkerRunner` wraps it: the first SIGTERM/SIGINT finishes the batch
in hand and exits 0, the second exits at once; connection errors are logged and retried with a delay; the
heartbeat hash ``{bank}:worker:<name>`` carries pid, kind, counters and a TTL, and is removed on the way out.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import redis

from eventstore.gc_pause import paused_gc
from eventstore.keys import Keys

log = logging.getLogger("bank.worker")

HEARTBEAT_EVERY_S = 1.0
HEARTBEAT_TTL_S = 10
RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 5.0


class Worker(Protocol):
    kind: str
    counters: dict[str, int]

    def poll_once(self) -> int: ...


class FatalWorkerError(RuntimeError):
    """Stop the worker with a clear message and a non-zero exit (never skip over the cause)."""

    exit_code = 1


class WorkerRunner:
    def __init__(
        self,
        worker: Worker,
        *,
        client: redis.Redis,
        keys: Keys,
        name: str,
        burst: bool = False,
        extra_status: Callable[[], dict[str, str | int]] | None = None,
    ) -> None:
        self.worker = worker
        self.client = client
        self.keys = keys
        self.name = name
        self.burst = burst
        self.extra_status = extra_status
        self._stop_requested = False
        self._last_heartbeat = 0.0

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stop_requested:
            log.warning("%s: second signal, exiting at once", self.name)
            os._exit(130)
        log.info("%s: signal %d, finishing the batch in hand", self.name, signum)
        self._stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def heartbeat(self, *, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        fields: dict[str, str | int | float] = {
            "kind": self.worker.kind, "pid": os.getpid(), "host": socket.gethostname(), "beat": now,
        }
        fields.update({f"n_{k}": v for k, v in self.worker.counters.items()})
        if self.extra_status:
            fields.update(self.extra_status())
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.worker(self.name), mapping=fields)
        pipe.expire(self.keys.worker(self.name), HEARTBEAT_TTL_S)
        pipe.execute()

    def _iterate(self) -> int:
        """One ``poll_once`` with the cyclic collector paused: it collects between iterations only.

        Why: an iteration's objects (a projector's 4,000 decoded events and their rows, the notifier's messages)
        live until it ends, and a collection in the middle walks them all, finds nothing to free, and moves them
        to an older generation to be walked again. After the iteration reference counting has freed them, and the
        allocation count that triggers the next collection is back to what really lives on (the workers make no
        reference cycles on their hot paths). Measured with the collector's callbacks, a projector catching up on
        197,200 events: 135 young and 12 middle collections, 4-5 us per event (a tenth of its CPU), against 3
        young ones with the pause.
        """
        with paused_gc():
            return self.worker.poll_once()

    def run(self) -> int:
        """Loop until stopped (or, in burst mode, until an iteration finds nothing to do)."""
        delay = RETRY_DELAY_S
        exit_code = 0
        # Everything built so far (modules, schemas, clients) lives as long as the process: moved out of the
        # collector's reach, a full collection no longer walks it (measured 20-25 ms pauses in a handler before).
        gc.freeze()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        try:
            while not self._stop_requested:
                try:
                    done = self._iterate()
                    self.heartbeat()
                    delay = RETRY_DELAY_S
                    if self.burst and done == 0:
                        break
                except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as error:
                    log.warning("%s: redis unavailable (%s); retrying in %.1fs", self.name, error, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY_S)
                except redis.BusyLoadingError:
                    time.sleep(delay)
        except FatalWorkerError as error:
            log.error("%s: stopping: %s", self.name, error)
            exit_code = error.exit_code
        finally:
            log.info("%s: stopped; counters %s", self.name, self.worker.counters)
            try:
                self.client.delete(self.keys.worker(self.name))
            except redis.RedisError:
                pass
        return exit_code


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between two young-generation collections (Python's default: 700). A worker's batch builds
thousands of short-lived dicts and tuples (decoded events, prepared commands); with the default, the collector
ran several times per batch and moved objects still in use to older generations, to be walked again later.
Measured with a probe on the collector's callbacks during a projector's catch-up: 4-5% of the handlers' and
the projector's CPU with the default, 1.5-2% with this."""

BACKGROUND_NICE_ENV = "BANKCTL_BACKGROUND_NICE"
DEFAULT_BACKGROUND_NICE = 10
"""The projectors' apply loops: they serve reads, so they stay within a second of the head under load."""
LAST_IN_LINE_NICE = 19
"""The notifier and the sealer: nobody reads from them, so on a saturated host they wait until the burst is over."""


def yield_cpu_to_commands(environ: Mapping[str, str] | None = None, *, default: int = DEFAULT_BACKGROUND_NICE) -> int:
    """Lower the calling thread's CPU priority (``nice``) by ``default``, or by ``BANKCTL_BACKGROUND_NICE`` when
    it is set (``0`` turns it off); returns by how much.

    For the followers (projectors, notifier, sealer), which only have to keep up with the log's head: when the
    host is busy, the command path (Redis, the handlers) runs first and the followers catch up in the gaps. The
    projectors take :data:`DEFAULT_BACKGROUND_NICE` (their reads must stay fresh), the notifier and the sealer
    :data:`LAST_IN_LINE_NICE`: an SMS or a seal a second later costs nobody anything, and on two cores their
    CPU is about a sixth of a command's. Measured with the whole bank batched (alternating runs): notifier and
    sealer at 19 instead of 10, +7% commands/s, projector lag unchanged, the notifier's catch-up after a burst
    0.3 s longer.

    On Linux ``nice`` moves the calling thread and the threads it starts later, so a projector calls this after
    starting its query thread: queries keep the normal priority. Niceness only ranks threads of one scheduling
    group: with the kernel's autogroups (one per session) a worker in a session of its own would get a whole
    share whatever its niceness. The supervisor and the bench therefore keep every worker in the session they
    run in (a process group each, for signals); under systemd, ``Nice=`` or ``CPUWeight=`` on the follower
    units does the same. Measured with the whole bank on 2 cores, batched: 15,500 to 18,500 commands/s from the
    same code, one session against one per worker.
    """
    raw = (os.environ if environ is None else environ).get(BACKGROUND_NICE_ENV, "")
    try:
        amount = int(raw) if raw.strip() else default
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", BACKGROUND_NICE_ENV, raw, default)
        amount = default
    amount = max(0, min(19, amount))
    if amount:
        os.nice(amount)
    return amount


def configure_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("BANKCTL_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
