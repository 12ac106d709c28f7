"""The notifier worker: follows ``{bank}:events`` in consumer group ``notifier`` and texts account holders.

One iteration (:meth:`Notifier.poll_once`): read a batch (own pending entries first after a start, then entries
idle too long at a dead peer via XAUTOCLAIM about once a second, then new ones), bring the contact directory up
to the batch, turn events into messages, send the due ones through the sender, classify failures, and
acknowledge each event once every message it called for is sent, already sent, or dead-lettered.

Why it is safe to kill at any moment: an event is acknowledged only after its messages are recorded in the
dedupe ledger, and the outbox write is reconciled with the ledger (see ``notifier.senders.OutboxSender``), so a
redelivered event never produces a second outbox line. Messages waiting for a retry keep their events pending;
the worker refreshes their idle time so a healthy peer does not take them over, and stops reading new events
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
from eventstore.groups import ConsumerGroup, Entry
from eventstore.keys import KEYS, Keys
from eventstore.log import last_seq
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
)
from notifier.directory import ContactDirectory, ContactUnreadable, DirectoryGap
from notifier.senders import Sender, SenderNotConfigured, sender_from_env
from notifier.status import DEAD_NAME, GROUP
from notifier.templates import notices_for, recipients

log = logging.getLogger("bank.notifier")

READ_COUNT = 1000
BLOCK_MS = 100
FAILOVER_MS = 2000
CLAIM_EVERY_S = 1.0
TOUCH_EVERY_S = 1.0
MAX_WAITING = 5000
"""Messages waiting for a retry; above this no new events are read (they wait safely in Redis)."""
LINGER_S = 0.05
"""After a read that found the notifier at the head, wait this long before the next: see :meth:`Notifier._linger`."""

assert BLOCK_MS < MAX_BLOCK_MS


Fields = dict[bytes, bytes]


@dataclass(slots=True)
class _Job:
    message: Message
    attempts: int = 0
    due: float = 0.0


def _seq_of(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


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
        consumer: str,
        policy: RetryPolicy | None = None,
        read_count: int = READ_COUNT,
        block_ms: int | None = BLOCK_MS,
        failover_ms: int = FAILOVER_MS,
        max_waiting: int = MAX_WAITING,
        clock: Callable[[], float] = time.monotonic,
        linger_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``block_ms`` is how long a read waits for new events (``None``: not at all, as in tests);
        ``failover_ms`` is how long a peer's unacknowledged event must idle before this one takes it over."""
        self.client = client
        self.keys = keys
        self.sender = sender
        self.consumer = consumer
        self.policy = policy or RetryPolicy()
        self.read_count = read_count
        self.block_ms = block_ms
        self.failover_ms = failover_ms
        self.max_waiting = max_waiting
        self.clock = clock
        self.linger_s = linger_s
        self._sleep = sleep
        self.group = ConsumerGroup(client, stream=keys.events, group=GROUP, consumer=consumer)
        self.directory = ContactDirectory(vault)
        self.ledger = Ledger(client, keys=keys)
        self.dead_stream = keys.dead(DEAD_NAME)
        self._jobs: dict[MessageKey, _Job] = {}
        self._open: dict[str, set[MessageKey]] = {}
        self._ready = False
        self._own_cursor: str | None = "0-0"
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_touch = 0.0
        self.counters: dict[str, int] = {
            "events": 0, "sent": 0, "duplicates": 0, "skipped": 0, "retries": 0, "dead": 0, "claimed": 0,
        }

    # -- reading ---------------------------------------------------------------------------------------------

    def _read(self, now: float) -> list[Entry]:
        if not self._ready:
            self.group.ensure("0")
            # Warm the directory to the head now, so the first live events do not pay for the whole log.
            self._catch_up(last_seq(self.client, self.keys))
            self._ready = True
        if self._own_cursor is not None:
            response = self.client.xreadgroup(GROUP, self.consumer, {self.keys.events: self._own_cursor},
                                              count=self.read_count)
            raw = response[0][1] if response else []
            entries = [(e.decode() if isinstance(e, bytes) else e, f or {}) for e, f in raw]
            self._own_cursor = entries[-1][0] if len(entries) == self.read_count else None
            fresh = [e for e in entries if e[0] not in self._open and e[1]]
            if fresh:
                return fresh
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_EVERY_S
            claimed = self.group.autoclaim(min_idle_ms=self.failover_ms, count=self.read_count,
                                           start=self._claim_cursor)
            self._claim_cursor = claimed.next_start
            fresh = [e for e in claimed.entries if e[0] not in self._open and e[1]]
            if fresh:
                self.counters["claimed"] += len(fresh)
                log.info("%s: took over %d events idle at a peer", self.consumer, len(fresh))
                return fresh
        if len(self._jobs) >= self.max_waiting:
            return []
        block = self.block_ms if not self._has_due(now) else None
        return self.group.read_new(count=self.read_count, block_ms=block)

    def _has_due(self, now: float) -> bool:
        return any(job.due <= now for job in self._jobs.values())

    # -- turning events into messages -------------------------------------------------------------------------

    def _catch_up(self, upto_seq: int) -> None:
        try:
            self.directory.catch_up(self.client, self.keys, upto_seq)
        except DirectoryGap as error:
            raise FatalWorkerError(f"contact directory cannot follow the log: {error}") from error

    def _admit(self, entries: Sequence[Entry], now: float) -> None:
        # The entries just read are the log itself: the directory takes them as they are, and reads the log only
        # for what they do not cover (a gap before claimed or redelivered entries).
        seqs = [_seq_of(entry_id) for entry_id, _ in entries]
        self.directory.apply_entries_while_contiguous(
            (seq, fields[b"type"], fields[b"body"]) for seq, (_, fields) in zip(seqs, entries, strict=True)
            if b"type" in fields and b"body" in fields)
        self._catch_up(max(seqs))
        done: list[str] = []
        readable: list[tuple[str, Fields, int, dict[str, Any], tuple[int, ...]]] = []
        for seq, (entry_id, fields) in zip(seqs, entries, strict=True):
            self.counters["events"] += 1
            try:
                payload = orjson.loads(fields[b"body"])
                readable.append((entry_id, fields, seq, payload, recipients(payload["type"], payload["data"])))
            except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as error:
                self._unreadable(entry_id, fields, error)
        self.directory.prefetch_phones({account for *_, accounts in readable for account in accounts})
        for entry_id, fields, seq, payload, accounts in readable:
            if not accounts:
                done.append(entry_id)
                continue
            try:
                event_id = str(payload["event_id"])
                event_type, occurred_at = str(payload["type"]), str(payload["occurred_at"])
                phones = self._phones(accounts, seq, event_id, event_type, entry_id, occurred_at)
                notices = notices_for(event_type, payload["data"], occurred_at, only=phones) if phones else []
            except (KeyError, TypeError, ValueError) as error:
                self._unreadable(entry_id, fields, error)
                continue
            waiting: set[MessageKey] = set()
            for notice in notices:
                message = Message(event_id, notice.account, seq, event_type, entry_id, occurred_at,
                                  phones[notice.account], notice.body)
                if message.key not in self._jobs:
                    self._jobs[message.key] = _Job(message, due=now)
                waiting.add(message.key)
            if waiting:
                self._open[entry_id] = waiting
            else:
                done.append(entry_id)
        self.group.ack(done)

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

    def _unreadable(self, entry_id: str, fields: Fields, error: Exception) -> None:
        log.error("%s: unreadable event %s dead-lettered: %r", self.consumer, entry_id, error)
        self.group.dead_letter(self.dead_stream, entry_id, fields, f"unreadable event: {error!r}")
        self.counters["dead"] += 1

    # -- sending -------------------------------------------------------------------------------------------------

    def _dead(self, message: Message, failure: Failure, attempts: int) -> None:
        log.warning("%s: dead-lettering message for event %s account %s: %s", self.consumer, message.event_id,
                    message.account, failure.reason)
        self.ledger.record_dead(message, failure, dead_stream=self.dead_stream, attempts=attempts,
                                consumer=self.consumer)
        self.counters["dead"] += 1

    def _resolve(self, key: MessageKey, finished: list[str]) -> None:
        job = self._jobs.pop(key, None)
        if job is None:
            return
        entry_id = job.message.entry_id
        waiting = self._open.get(entry_id)
        if waiting is None:
            return
        waiting.discard(key)
        if not waiting:
            del self._open[entry_id]
            finished.append(entry_id)

    def _deliver(self, now: float) -> int:
        due = [job for job in self._jobs.values() if job.due <= now]
        if not due:
            return 0
        due.sort(key=lambda job: job.message.seq)
        due = due[: self.sender.max_batch]
        outcomes = self.sender.send([job.message for job in due], self.ledger)
        finished: list[str] = []
        fatal: Failure | None = None
        for outcome in outcomes:
            key = outcome.message.key
            job = self._jobs.get(key)
            if job is None:
                continue
            if outcome.status is Status.SENT:
                self.counters["sent"] += 1
                self._resolve(key, finished)
            elif outcome.status is Status.DUPLICATE:
                self.counters["duplicates"] += 1
                self._resolve(key, finished)
            elif outcome.status is Status.BUSY:
                job.due = now + self.policy.busy_wait_s
            elif outcome.status is Status.FAILED:
                assert outcome.error is not None
                failure = classify(outcome.error)
                if failure.verdict is Verdict.FATAL:
                    fatal = fatal or failure
                elif failure.verdict is Verdict.PERMANENT:
                    self._dead(job.message, failure, job.attempts + 1)
                    self._resolve(key, finished)
                else:
                    job.attempts += 1
                    if job.attempts >= self.policy.max_attempts:
                        gave_up = Failure(Verdict.TRANSIENT, failure.code,
                                          f"gave up after {job.attempts} attempts: {failure.reason}")
                        self._dead(job.message, gave_up, job.attempts)
                        self._resolve(key, finished)
                    else:
                        self.counters["retries"] += 1
                        job.due = now + self.policy.delay(job.attempts)
                        log.warning("%s: transient failure (%s), attempt %d of %d, retrying in %.1fs",
                                    self.consumer, failure.reason, job.attempts, self.policy.max_attempts,
                                    job.due - now)
        self.group.ack(finished)
        if fatal is not None:
            error = FatalWorkerError(f"{fatal.reason}. Fix TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN / "
                                     f"TWILIO_FROM_NUMBER and restart; the events stay unacknowledged")
            error.exit_code = fatal_exit_code(fatal)
            raise error
        return len(outcomes)

    def _touch_waiting(self, now: float) -> None:
        """Reset the idle time of events whose messages wait for a retry, so no peer takes them over."""
        if not self._open or now < self._next_touch:
            return
        self._next_touch = now + TOUCH_EVERY_S
        ids = list(self._open)
        for start in range(0, len(ids), 500):
            self.client.xclaim(self.keys.events, GROUP, self.consumer, 0, ids[start : start + 500], justid=True)

    def poll_once(self) -> int:
        """One iteration: read, admit, deliver what is due, acknowledge; returns how much it did."""
        now = self.clock()
        entries = self._read(now)
        if entries:
            self._admit(entries, now)
        sent = self._deliver(now)
        self._touch_waiting(now)
        if 0 < len(entries) < self.read_count:
            self._linger()
        return len(entries) + sent

    def _linger(self) -> None:
        """At the head of the log, let the next events gather for a moment before reading them.

        Why: every batch costs a wake-up and several round trips to the log's Redis (the group's read, the ledger,
        the acknowledgement) whatever its size. Read after every append, at 2,000 commands/s the notifier
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
        return {"sender": self.sender.kind, "waiting": self.waiting, "directory_seq": self.directory.applied_seq}


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
    worker = Notifier(client, keys=keys, vault=vault, sender=sender, consumer=name, linger_s=LINGER_S)
    log.info("%s: notifier starting (sender %s, group %s)", name, sender.kind, GROUP)
    bus = connect_bus(bus_url, log_url=redis_url, log_client=client)  # heartbeats
    runner = WorkerRunner(worker, client=bus, keys=keys, name=name, burst=burst, extra_status=worker.status)
    runner.install_signal_handlers()
    try:
        return runner.run()
    finally:
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
                        help="consumer and heartbeat name (unique per process)")
    parser.add_argument("--burst", action="store_true", help="exit once nothing is left to do")
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("--redis-url or BANKCTL_REDIS_URL is required")
    return main(redis_url=args.redis_url, bus_url=args.bus_url, data_dir=Path(args.data_dir), name=args.name,
                burst=args.burst)


if __name__ == "__main__":
    sys.exit(_cli())
