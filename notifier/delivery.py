"""Delivery rules: what a message is, the dedupe ledger, how failures are classified, how retries back off.

Dedupe ledger: one Redis hash per range of :data:`LEDGER_BUCKET_EVENTS` seqs, ``{bank}:sms:ledger:<seq // n>``,
with a field ``<event_id>:<account>`` per message holding ``sent:<ref>`` once a send succeeded or ``dead:<code>``
once it was dead-lettered. A message with such a record is never sent again. A whole batch's records are one
HSET (and one EXPIRE, which keeps every record at least :data:`LEDGER_TTL_S`): one string key per message cost
the log's Redis a SET with its own expiry for each, about a tenth of its CPU under load (measured).
While one notifier calls Twilio for a message it holds a short lease, the string ``{bank}:sms:<event_id>:<account>``
= ``sending:<owner>``; a lease held by another live notifier makes the caller wait instead of sending too. The
record is written and the lease deleted in one MULTI, and a lease taker reads the record after taking it, so a
message recorded meanwhile is never sent twice.

Failure classes (see :func:`classify`):
- transient (timeouts, connection errors, HTTP 429, 5xx, anything unexpected): retry with exponential backoff
  and jitter, dead-letter after ``RetryPolicy.max_attempts``;
- permanent for this recipient or message (HTTP 4xx with a Twilio code such as 21211 invalid number, 21610
  unsubscribed, 21614 not a mobile): dead-letter at once with the code;
- fatal (HTTP 401/403, 20003 authentication, 21606/21212/21659/21660 bad sender, 20404 unknown account): the
  worker stops with a clear message, its checkpoint left before the event for after the fix.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from eventstore.direct import Command, DirectConnection
from eventstore.keys import Keys

LEDGER_TTL_S = 30 * 24 * 3600
LEDGER_BUCKET_EVENTS = 100_000
LEASE_S = 60
MAX_REF_CHARS = 64

FATAL_STATUSES = frozenset({401, 403})
FATAL_CODES = frozenset({20003, 20005, 20404, 21212, 21603, 21606, 21659, 21660})
EXIT_AUTH = 4
EXIT_CONFIG = 2

MessageKey = tuple[str, int]


class SmsId(NamedTuple):
    """Which SMS a ledger record is about: the event (its seq places the record) and the recipient."""

    seq: int
    event_id: str
    account: int


class Message(NamedTuple):
    """One SMS for one recipient about one event (a named tuple: one per message, about half the cost of a
    frozen dataclass to build, and as immutable)."""

    event_id: str
    account: int
    seq: int
    event_type: str
    entry_id: str
    occurred_at: str
    to: str
    body: str

    @property
    def key(self) -> MessageKey:
        return message_key(self)

    @property
    def sms_id(self) -> SmsId:
        return SmsId(self.seq, self.event_id, self.account)


message_key: Callable[[Message], MessageKey] = operator.attrgetter("event_id", "account")  # type: ignore[assignment]
"""``Message.key`` as a C-level getter: the notifier takes a message's key several times per message, and a
property is a Python call each time."""


class Status(StrEnum):
    SENT = "sent"
    DUPLICATE = "duplicate"
    """The ledger already says sent or dead-lettered."""
    BUSY = "busy"
    """Another notifier holds the sending lease; try again later without counting an attempt."""
    FAILED = "failed"
    NOT_ATTEMPTED = "not_attempted"
    """An earlier message of the batch failed; this one was left for the next round."""


class Outcome(NamedTuple):
    message: Message
    status: Status
    ref: str = ""
    error: BaseException | None = None


class Verdict(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Failure:
    verdict: Verdict
    code: str
    """The Twilio error code, the HTTP status, or the exception's class name."""
    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries; the defaults ride out roughly an hour of provider outage before dead-lettering."""

    max_attempts: int = 12
    base_s: float = 1.0
    cap_s: float = 600.0
    busy_wait_s: float = 5.0
    rng: random.Random = field(default_factory=random.SystemRandom, compare=False)

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1``: half fixed, half jitter, so it grows yet peers spread out."""
        ceiling = min(self.cap_s, self.base_s * (2 ** max(attempt - 1, 0)))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


def _error_status_and_code(error: BaseException) -> tuple[int | None, int | None]:
    """Twilio's REST and RFC-9457 exceptions both carry ``status`` and ``code``."""
    status = getattr(error, "status", None)
    code = getattr(error, "code", None)
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    return status, code


_NUMBER = re.compile(r"\+?\d[\d ().-]{5,}\d")


def scrub(text: str) -> str:
    """Remove anything that looks like a phone number: provider messages quote the recipient's number, and
    reasons end up in logs and dead letters, which erasure cannot reach."""
    return _NUMBER.sub("[number]", text)


def classify(error: BaseException) -> Failure:
    """Map a send error to transient / permanent / fatal (pure; the table is in the module docstring)."""
    from twilio.base.exceptions import TwilioRestException, TwilioServiceException

    name = type(error).__name__
    if isinstance(error, TwilioRestException | TwilioServiceException):
        status, code = _error_status_and_code(error)
        text = scrub(str(getattr(error, "msg", "") or getattr(error, "title", "") or name))[:300]
        label = str(code if code is not None else status)
        if status in FATAL_STATUSES or code in FATAL_CODES:
            return Failure(Verdict.FATAL, label, f"Twilio refused our credentials or sender: HTTP {status} "
                                                 f"code {code}: {text}")
        if status == 429 or status is None or status >= 500:
            return Failure(Verdict.TRANSIENT, label, f"HTTP {status} code {code}: {text}")
        return Failure(Verdict.PERMANENT, label, f"HTTP {status} code {code}: {text}")
    return Failure(Verdict.TRANSIENT, name, scrub(str(error))[:300] or name)


def fatal_exit_code(failure: Failure) -> int:
    """Authentication failures exit 4, sender-configuration problems 2 (the bankctl exit-code table)."""
    return EXIT_AUTH if failure.code in {"401", "403", "20003", "20005"} else EXIT_CONFIG


class Ledger:
    """The dedupe records and sending leases in Redis (see the module docstring for the layout)."""

    def __init__(self, client: redis.Redis, *, keys: Keys, ttl_s: int = LEDGER_TTL_S) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._direct = DirectConnection(client)  # lookups and records: thousands of messages a second under load
        self._buckets: dict[int, str] = {}  # bucket number -> key: every message asks, few buckets exist

    def bucket(self, sms: SmsId) -> str:
        number = sms.seq // LEDGER_BUCKET_EVENTS
        key = self._buckets.get(number)
        if key is None:
            key = self._buckets[number] = self.keys.sms_ledger(number)
        return key

    @staticmethod
    def field(sms: SmsId) -> str:
        return f"{sms.event_id}:{sms.account}"

    def lease_key(self, sms: SmsId) -> str:
        return self.keys.sms_lease(sms.event_id, sms.account)

    @staticmethod
    def is_final(value: bytes | None) -> bool:
        return value is not None and (value.startswith(b"sent:") or value.startswith(b"dead:"))

    def lookup(self, ids: Sequence[SmsId], *, also_get: Sequence[str] = ()) -> tuple[list[Any], list[bytes | None]]:
        """The values of the string keys ``also_get`` and the records of ``ids`` (in order), in one round trip."""
        by_bucket: dict[str, list[int]] = {}
        for index, sms in enumerate(ids):
            by_bucket.setdefault(self.bucket(sms), []).append(index)
        commands: list[Command] = [("GET", key) for key in also_get]
        commands += [("HMGET", bucket, *(self.field(ids[i]) for i in indexes)) for bucket, indexes in by_bucket.items()]
        if not commands:
            return [], []
        replies = self._direct.execute(commands)
        records: list[bytes | None] = [None] * len(ids)
        for indexes, values in zip(by_bucket.values(), replies[len(also_get):], strict=True):
            for index, value in zip(indexes, values, strict=True):
                records[index] = value
        return replies[: len(also_get)], records

    def states(self, ids: Sequence[SmsId]) -> list[bytes | None]:
        return self.lookup(ids)[1]

    def final(self, ids: Sequence[SmsId]) -> set[SmsId]:
        """The messages that must not be sent again."""
        return {sms for sms, value in zip(ids, self.states(ids), strict=True) if self.is_final(value)}

    def lease(self, sms: SmsId, owner: str, lease_s: int = LEASE_S) -> Status | None:
        """Take the sending lease: ``None`` when taken, else DUPLICATE (recorded final) or BUSY (another owner).

        The record is read after the lease is taken: a holder records and drops its lease in one MULTI, so a
        record made before this lease existed is seen here, and none can be made while it is held.
        """
        key = self.lease_key(sms)
        mine = f"sending:{owner}".encode()
        if not self.client.set(key, mine, nx=True, ex=lease_s):
            held = self.client.get(key)
            if self.is_final(held):  # a record in the lease's place: written by a notifier before the hashes
                return Status.DUPLICATE
            if held is None:  # expired just now: take it like anyone else, or lose it to whoever was first
                if not self.client.set(key, mine, nx=True, ex=lease_s):
                    return Status.BUSY
            elif held == mine:  # our own (a retry, or our predecessor of the same name that crashed mid-send)
                self.client.set(key, mine, ex=lease_s)
            else:
                return Status.BUSY
        if self.is_final(self.client.hget(self.bucket(sms), self.field(sms))):
            self.release(sms, owner)
            return Status.DUPLICATE
        return None

    def release(self, sms: SmsId, owner: str) -> None:
        """Drop our lease (compare-and-delete with WATCH: no Lua, so the notifier's ACL needs no scripting)."""
        key = self.lease_key(sms)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != f"sending:{owner}".encode():
                    return
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            except redis.WatchError:
                return  # someone else changed it meanwhile: it is theirs now

    def _record_commands(self, records: Mapping[SmsId, str]) -> list[Command]:
        """HSET and EXPIRE per bucket: a batch's records are one command, not one key each."""
        by_bucket: dict[str, list[str]] = {}
        for sms, value in records.items():
            by_bucket.setdefault(self.bucket(sms), []).extend((self.field(sms), value[:MAX_REF_CHARS]))
        commands: list[Command] = [("HSET", bucket, *pairs) for bucket, pairs in by_bucket.items()]
        commands += [("EXPIRE", bucket, self.ttl_s) for bucket in by_bucket]
        return commands

    def record_sent(self, refs: Mapping[SmsId, str], *, extra: Mapping[str, str | int] | None = None,
                    leases: Sequence[SmsId] = ()) -> None:
        """Record messages sent (``sent:<ref>``), set ``extra`` keys and drop our ``leases``, in one MULTI: all
        or nothing."""
        commands: list[Command] = [("MULTI",), *self._record_commands({s: f"sent:{r}" for s, r in refs.items()})]
        commands += [("SET", name, value) for name, value in (extra or {}).items()]
        if leases:
            commands.append(("DEL", *(self.lease_key(sms) for sms in leases)))
        commands.append(("EXEC",))
        executed = self._direct.execute(commands)[-1]  # a refused MULTI raises (EXECABORT) with nothing applied
        failed = [reply for reply in executed or [] if isinstance(reply, Exception)]
        if failed:
            raise failed[0]

    def record_dead(
        self, message: Message, failure: Failure, *, dead_stream: str, attempts: int, consumer: str
    ) -> None:
        """Dead-letter one message (no phone number, no text: ids and the reason are enough to re-drive it)."""
        record = {
            "reason": failure.reason[:1000], "verdict": str(failure.verdict), "code": failure.code,
            "event_id": message.event_id, "account": str(message.account), "seq": str(message.seq),
            "type": message.event_type, "origin_id": message.entry_id, "attempts": str(attempts),
            "consumer": consumer,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(dead_stream, record, maxlen=100_000, approximate=True)
        for command in self._record_commands({message.sms_id: f"dead:{failure.code}"}):
            pipe.execute_command(*command)
        pipe.delete(self.lease_key(message.sms_id))
        pipe.execute()


def unique(messages: Iterable[Message]) -> list[Message]:
    """Drop repeats of the same (event, recipient) within one batch, keeping the first."""
    seen: set[MessageKey] = set()
    out = []
    for message in messages:
        key = message_key(message)
        if key not in seen:
            seen.add(key)
            out.append(message)
    return out
