"""The notifier worker: follows ``{bank}:events`` from its checkpoint and texts account holders (DESIGN §1, §6).

One notifier is active at a time: the holder of the lease (``notifier.lease``); any others stand by and take over
within :data:`notifier.lease.LEASE_MS` of its death. One iteration of the active one (:meth:`Notifier.poll_once`):
read the events after the last one read, bring the contact directory up to them, turn events into messages, send
the due ones through the sender, classify failures, and move the checkpoint (renewing the lease in the same
script) to just before the oldest event with a message still waiting.

Why it is safe to kill at any moment: an event is behind the checkpoint only once every message it called for is
recorded in the dedupe ledger, and the outbox write is reconciled with the ledger (see
``notifier.senders.OutboxSender``), so an event read again after a restart or a takeover never produces a second
outbox line or SMS. Messages waiting for a retry hold the checkpoint back, and the worker stops reading new events
when too many messages wait (a bounded queue). Banking never waits for this process: it only reads the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from eventstore.connection import MAX_BLOCK_MS, connect, connect_bus
from eventstore.envelope import StoredEvent
from eventstore.groups import dead_letter_record
from eventstore.keys import KEYS, Keys
from eventstore.log import LogFollower, last_seq
from eventstore.pii import PersonalDataVault, load_master_key
from eventstore.worker import (
    LAST_IN_LINE_NICE,
    FatalWorkerError,
    WorkerRunner,
    configure_logging,
    yield_cpu_to_commands,
)
from notifier.delivery import (
    Failure,
    Ledger,
    Message,
    MessageKey,
    RetryPolicy,
    Status,
    Verdict,
    classify,
    fatal_exit_code,
    message_key,
)
from notifier.directory import ContactDirectory, ContactUnreadable, DirectoryGap
from notifier.lease import LEASE_MS, NotifierLease, active_notifier, position_of_legacy_group
from notifier.senders import Sender, SenderNotConfigured, sender_from_env
from notifier.status import DEAD_NAME
from notifier.templates import notices_for, recipients

log = logging.getLogger("bank.notifier")

READ_COUNT = 1000
BLOCK_MS = 100
SAVE_EVERY_S = 0.1
"""The checkpoint is written at most this often (with the lease's renewal): a restart re-reads at most this much."""
RENEW_EVERY_S = LEASE_MS / 4000
"""The lease is renewed at least this often, so a busy iteration or a slow Redis never lets it lapse."""
STANDBY_POLL_S = 0.25
"""How often a standby notifier looks whether the lease is free."""
MAX_WAITING = 5000
"""Messages waiting for a retry; above this no new events are read (they wait safely in the log)."""
LINGER_S = 0.05
"""After a read that found the notifier at the head, wait this long before the next: see :meth:`Notifier._linger`."""

assert BLOCK_MS < MAX_BLOCK_MS and BLOCK_MS / 1000 < RENEW_EVERY_S


@dataclass(slots=True)
class _Job:
    message: Message
    attempts: int = 0
    due: float = 0.0


class Notifier:
    """The worker object that :class:`eventstore.worker.WorkerRunner` drives."""

    kind = "notifier"

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        vault: PersonalDataVault,
        sender: Sender,
        name: str,
        policy: RetryPolicy | None = None,
        read_count: int = READ_COUNT,
        block_ms: int | None = BLOCK_MS,
        lease_ms: int = LEASE_MS,
        max_waiting: int = MAX_WAITING,
        clock: Callable[[], float] = time.monotonic,
        linger_s: float = 0.0,
        standby_poll_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``block_ms`` is how long a read waits for new events (``None``: not at all, as in tests);
        ``lease_ms`` how long this notifier stays the active one without renewing (see ``notifier.lease``)."""
        self.client = client
        self.keys = keys
        self.sender = sender
        self.name = name
        self.policy = policy or RetryPolicy()
        self.read_count = read_count
        self.block_ms = block_ms
        self.max_waiting = max_waiting
        self.clock = clock
        self.linger_s = linger_s
        self.standby_poll_s = standby_poll_s
        self._sleep = sleep
        self.lease = NotifierLease(client, keys=keys, name=name, lease_ms=lease_ms)
        self.follower = LogFollower(client, keys)
        self.directory = ContactDirectory(vault)
        self.ledger = Ledger(client, keys=keys)
        self.dead_stream = keys.dead(DEAD_NAME)
        self._jobs: dict[MessageKey, _Job] = {}
        self._open: dict[int, set[MessageKey]] = {}  # by seq, in log order: the first holds the checkpoint back
        self.active = False
        self._cursor = 0  # the last seq read
        self._saved = 0  # the checkpoint as last written
        self._next_renewal = 0.0
        self._next_save = 0.0
        self.counters: dict[str, int] = {
            "events": 0, "sent": 0, "duplicates": 0, "skipped": 0, "retries": 0, "dead": 0, "takeovers": 0,
        }

    # -- the lease ------------------------------------------------------------------------------------------

    def _take_over(self, now: float) -> bool:
        """Become the active notifier if the lease is free; start after the stored checkpoint."""
        if active_notifier(self.client, self.keys) not in (None, self.name):
            return False
        # Bring the directory to the head before taking the lease: on a long log the first catch-up takes
        # seconds, which must not run on the lease's clock. Once active, only what came meanwhile is left.
        self._catch_up(last_seq(self.client, self.keys))
        stored = self.lease.hold()
        if stored is None:
            return False
        if not self.client.exists(self.keys.notifier_checkpoint):  # the first notifier, or one before the lease
            stored = self.lease.hold(position_of_legacy_group(self.client, self.keys))
            if stored is None:
                return False
        self.active = True
        self.counters["takeovers"] += 1
        self._cursor = self._saved = stored
        self._next_renewal = now + RENEW_EVERY_S
        self._next_save = now + SAVE_EVERY_S
        self._catch_up(last_seq(self.client, self.keys))
        log.info("%s: active notifier from seq %d", self.name, stored)
        return True

    def checkpoint(self) -> int:
        """Every event up to this seq is settled: before the oldest one with a message still waiting."""
        return next(iter(self._open)) - 1 if self._open else self._cursor

    def _save(self, *, force: bool = False) -> None:
        """Write the checkpoint when it moved (at most every ``SAVE_EVERY_S``) and renew the lease; a lease lost
        meanwhile (this process was frozen past its expiry) makes this notifier stand by."""
        now = self.clock()
        checkpoint = self.checkpoint()
        moved = checkpoint != self._saved and (force or now >= self._next_save)
        if not moved and now < self._next_renewal:
            return
        if self.lease.hold(checkpoint if moved else None) is None:
            log.warning("%s: another notifier holds the lease now; standing by", self.name)
            self._stand_by()
            return
        self._next_renewal = now + RENEW_EVERY_S
        if moved:
            self._saved = checkpoint
            self._next_save = now + SAVE_EVERY_S

    def _stand_by(self) -> None:
        self.active = False
        self._jobs.clear()
        self._open.clear()

    def stop(self) -> None:
        """At a clean stop: write the checkpoint and hand the lease back, so a standby takes over at once."""
        if not self.active:
            return
        self._save(force=True)
        if self.active:
            self.lease.release()
            self._stand_by()

    # -- reading ---------------------------------------------------------------------------------------------

    def _read(self, now: float) -> list[StoredEvent]:
        if len(self._jobs) >= self.max_waiting:
            return []
        block = self.block_ms if not self._has_due(now) else None
        return self.follower.read_after(self._cursor, count=self.read_count, block_ms=block)

    def _has_due(self, now: float) -> bool:
        return any(job.due <= now for job in self._jobs.values())

    # -- turning events into messages -------------------------------------------------------------------------

    def _catch_up(self, upto_seq: int) -> None:
        try:
            self.directory.catch_up(self.client, self.keys, upto_seq)
        except DirectoryGap as error:
            raise FatalWorkerError(f"contact directory cannot follow the log: {error}") from error

    def _admit(self, events: Sequence[StoredEvent], now: float) -> None:
        try:  # the events just read are the log itself: the directory takes them as they are
            self.directory.apply_entries((event.seq, event.type, event.body) for event in events)
        except DirectoryGap as error:
            raise FatalWorkerError(f"contact directory cannot follow the log: {error}") from error
        readable: list[tuple[StoredEvent, dict[str, Any], tuple[int, ...]]] = []
        for event in events:
            self._cursor = event.seq
            self.counters["events"] += 1
            try:
                payload = orjson.loads(event.body)
                readable.append((event, payload, recipients(payload["type"], payload["data"])))
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as error:
                self._unreadable(event, error)
        self.directory.prefetch_phones({account for *_, accounts in readable for account in accounts})
        jobs = self._jobs
        for event, payload, accounts in readable:
            if not accounts:
                continue
            seq, entry_id = event.seq, event.entry_id
            try:
                event_id = str(payload["event_id"])
                event_type, occurred_at = str(payload["type"]), str(payload["occurred_at"])
                phones = self._phones(accounts, seq, event_id, event_type, entry_id, occurred_at)
                notices = notices_for(event_type, payload["data"], occurred_at, only=phones) if phones else []
            except (KeyError, TypeError, ValueError) as error:
                self._unreadable(event, error)
                continue
            waiting: set[MessageKey] = set()
            for account, text in notices:
                message = Message(event_id, account, seq, event_type, entry_id, occurred_at, phones[account], text)
                key = message_key(message)
                if key not in jobs:
                    jobs[key] = _Job(message, due=now)
                waiting.add(key)
            if waiting:
                self._open[seq] = waiting

    def _phones(self, accounts: tuple[int, ...], seq: int, event_id: str, event_type: str, entry_id: str,
                occurred_at: str) -> dict[int, str]:
        """The numbers to text about one event, by account; the others are counted as skipped (or dead-lettered
        when their number cannot be opened). Texts are then built only for these accounts."""
        phones: dict[int, str] = {}
        for account in accounts:
            try:
                phone = self.directory.phone_for(account, seq)
            except ContactUnreadable as error:
                message = Message(event_id, account, seq, event_type, entry_id, occurred_at, "", "")
                self._dead(message, Failure(Verdict.PERMANENT, "contact_unreadable", str(error)), 0)
                continue
            if phone is None:
                self.counters["skipped"] += 1
            else:
                phones[account] = phone
        return phones

    def _unreadable(self, event: StoredEvent, error: Exception) -> None:
        """Park an event no message can be made of (its id and the reason; the event stays in the log)."""
        log.error("%s: unreadable event %s dead-lettered: %r", self.name, event.entry_id, error)
        record = dead_letter_record(self.keys.events, event.entry_id, self.name, {b"type": event.type.encode()},
                                    f"unreadable event: {error!r}")
        self.client.xadd(self.dead_stream, record, maxlen=100_000, approximate=True)
        self.counters["dead"] += 1

    # -- sending -------------------------------------------------------------------------------------------------

    def _dead(self, message: Message, failure: Failure, attempts: int) -> None:
        log.warning("%s: dead-lettering message for event %s account %s: %s", self.name, message.event_id,
                    message.account, failure.reason)
        self.ledger.record_dead(message, failure, dead_stream=self.dead_stream, attempts=attempts,
                                consumer=self.name)
        self.counters["dead"] += 1

    def _resolve(self, key: MessageKey) -> None:
        job = self._jobs.pop(key, None)
        if job is None:
            return
        seq = job.message.seq
        waiting = self._open.get(seq)
        if waiting is None:
            return
        waiting.discard(key)
        if not waiting:
            del self._open[seq]

    def _deliver(self, now: float) -> int:
        # In log order without sorting: jobs are added as events are read, in seq order, and never added again.
        due = [job for job in self._jobs.values() if job.due <= now]
        if not due:
            return 0
        due = due[: self.sender.max_batch]
        outcomes = self.sender.send([job.message for job in due], self.ledger)
        fatal: Failure | None = None
        for outcome in outcomes:
            key = message_key(outcome.message)
            job = self._jobs.get(key)
            if job is None:
                continue
            if outcome.status is Status.SENT:
                self.counters["sent"] += 1
                self._resolve(key)
            elif outcome.status is Status.DUPLICATE:
                self.counters["duplicates"] += 1
                self._resolve(key)
            elif outcome.status is Status.BUSY:
                job.due = now + self.policy.busy_wait_s
            elif outcome.status is Status.FAILED:
                assert outcome.error is not None
                failure = classify(outcome.error)
                if failure.verdict is Verdict.FATAL:
                    fatal = fatal or failure
                elif failure.verdict is Verdict.PERMANENT:
                    self._dead(job.message, failure, job.attempts + 1)
                    self._resolve(key)
                else:
                    job.attempts += 1
                    if job.attempts >= self.policy.max_attempts:
                        gave_up = Failure(Verdict.TRANSIENT, failure.code,
                                          f"gave up after {job.attempts} attempts: {failure.reason}")
                        self._dead(job.message, gave_up, job.attempts)
                        self._resolve(key)
                    else:
                        self.counters["retries"] += 1
                        job.due = now + self.policy.delay(job.attempts)
                        log.warning("%s: transient failure (%s), attempt %d of %d, retrying in %.1fs",
                                    self.name, failure.reason, job.attempts, self.policy.max_attempts,
                                    job.due - now)
        if fatal is not None:
            error = FatalWorkerError(f"{fatal.reason}. Fix TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN / "
                                     f"TWILIO_FROM_NUMBER and restart; the checkpoint stays before these events")
            error.exit_code = fatal_exit_code(fatal)
            raise error
        return len(outcomes)

    def poll_once(self) -> int:
        """One iteration: take the lease if free (or stand by), read, admit, deliver what is due, move the
        checkpoint; returns how much it did."""
        now = self.clock()
        if not self.active and not self._take_over(now):
            if self.standby_poll_s > 0:
                self._sleep(self.standby_poll_s)
            return 0
        events = self._read(now)
        if events:
            self._admit(events, now)
        try:
            sent = self._deliver(now)
        except FatalWorkerError:  # keep what is settled: the fixed restart starts at the failed message
            self._save(force=True)
            raise
        self._save(force=not events)  # at the head the checkpoint is written at once, under load in steps
        if self.active and 0 < len(events) < self.read_count:
            self._linger()
        return len(events) + sent

    def _linger(self) -> None:
        """At the head of the log, let the next events gather for a moment before reading them.

        Why: every batch costs a wake-up and several round trips to the log's Redis (the read, the ledger, the
        checkpoint) whatever its size. Read after every append, at 2,000 commands/s the notifier
        woke for a few events at a time; with this pause its CPU halved (measured), and that CPU goes to the command
        path. An SMS a few hundredths of a second later costs nobody anything. A backlog (a full read) is read
        without pause.
        """
        if self.linger_s > 0:
            self._sleep(self.linger_s)

    @property
    def waiting(self) -> int:
        """Messages not yet delivered (due now or waiting for a retry)."""
        return len(self._jobs)

    def status(self) -> dict[str, str | int]:
        return {"sender": self.sender.kind, "waiting": self.waiting, "directory_seq": self.directory.applied_seq,
                "active": int(self.active), "checkpoint": self._saved}


def main(
    *, redis_url: str, bus_url: str | None = None, data_dir: Path, name: str, burst: bool = False, keys: Keys = KEYS,
    environ: Mapping[str, str] | None = None, **_options: object,
) -> int:
    """Run one notifier until stopped; returns the exit code (0 clean stop, 2 bad configuration, 4 auth)."""
    configure_logging()
    yield_cpu_to_commands(environ, default=LAST_IN_LINE_NICE)  # an SMS may wait a moment; a command should not
    data_dir = Path(data_dir)
    try:
        master_key = load_master_key(data_dir / "master.key")
    except (OSError, ValueError) as error:
        log.error("%s: cannot load the master key: %s", name, error)
        return 2
    try:
        sender = sender_from_env(os.environ if environ is None else environ, data_dir=data_dir, owner=name)
    except SenderNotConfigured as error:
        log.error("%s: %s", name, error)
        return error.exit_code
    client = connect(redis_url)
    vault = PersonalDataVault(client, keys=keys, master_key=master_key)
    worker = Notifier(client, keys=keys, vault=vault, sender=sender, name=name, linger_s=LINGER_S,
                      standby_poll_s=STANDBY_POLL_S)
    log.info("%s: notifier starting (sender %s)", name, sender.kind)
    bus = connect_bus(bus_url, log_url=redis_url, log_client=client)  # heartbeats
    runner = WorkerRunner(worker, client=bus, keys=keys, name=name, burst=burst, extra_status=worker.status)
    runner.install_signal_handlers()
    try:
        return runner.run()
    finally:
        try:
            worker.stop()
        except redis.RedisError as error:  # the lease then expires by itself
            log.warning("%s: could not hand the lease back: %s", name, error)
        sender.close()


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifier.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("BANKCTL_REDIS_URL"),
                        help="Redis URL [env BANKCTL_REDIS_URL]")
    parser.add_argument("--bus-url", default=os.environ.get("BANKCTL_BUS_URL"),
                        help="Redis URL of the request bus, for heartbeats [env BANKCTL_BUS_URL; default: --redis-url]")
    parser.add_argument("--data-dir", default=os.environ.get("BANKCTL_DATA_DIR", "./var"),
                        help="data directory with master.key and the outbox [env BANKCTL_DATA_DIR]")
    parser.add_argument("--name", default=f"notifier-{socket.gethostname()}",
                        help="lease holder and heartbeat name (unique per process)")
    parser.add_argument("--burst", action="store_true", help="exit once nothing is left to do")
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("--redis-url or BANKCTL_REDIS_URL is required")
    return main(redis_url=args.redis_url, bus_url=args.bus_url, data_dir=Path(args.data_dir), name=args.name,
                burst=args.burst)


if __name__ == "__main__":
    sys.exit(_cli())
