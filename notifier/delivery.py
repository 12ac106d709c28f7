"""Delivery rules: what a message is, the dedupe ledger, how failures are classified, how retries back off.

Dedupe ledger: one Redis string per (event id, recipient account), ``{bank}:sms:<event_id>:<account>``, holding
``sent:<ref>`` once a send succeeded, ``dead:<code>`` once the message was dead-lettered, or ``sending:<owner>``
(a short lease, Twilio only) while one notifier is calling the API. A message whose key says ``sent``/``dead`` is
never sent again; a lease held by another live notifier makes the caller wait instead of sending too.

Failure classes (see :func:`classify`):
- transient (timeouts, connection errors, HTTP 429, 5xx, anything unexpected): retry with exponential backoff
  and jitter, dead-letter after ``RetryPolicy.max_attempts``;
- permanent for this recipient or message (HTTP 4xx with a Twilio code such as 21211 invalid number, 21610
  unsubscribed, 21614 not a mobile): dead-letter at once with the code;
- fatal (HTTP 401/403, 20003 authentication, 21606/21212/21659/21660 bad sender, 20404 unknown account): the
  worker stops with a clear message, leaving its events unacknowledged for after the fix.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import redis

from eventstore.direct import Command, DirectConnection
from eventstore.keys import Keys

LEDGER_TTL_S = 30 * 24 * 3600
LEASE_S = 60
MAX_REF_CHARS = 64

FATAL_STATUSES = frozenset({401, 403})
FATAL_CODES = frozenset({20003, 20005, 20404, 21212, 21603, 21606, 21659, 21660})
EXIT_AUTH = 4
EXIT_CONFIG = 2

MessageKey = tuple[str, int]


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
        return (self.event_id, self.account)


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
    """The dedupe records in Redis (see the module docstring for the values)."""

    def __init__(self, client: redis.Redis, *, keys: Keys, ttl_s: int = LEDGER_TTL_S) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._direct = DirectConnection(client)  # record_sent: thousands of SETs a second under load

    def key(self, message_key: MessageKey) -> str:
        event_id, account = message_key
        return self.keys.sms_sent(event_id, account)

    @staticmethod
    def is_final(value: bytes | None) -> bool:
        return value is not None and (value.startswith(b"sent:") or value.startswith(b"dead:"))

    def states(self, message_keys: Sequence[MessageKey]) -> list[bytes | None]:
        if not message_keys:
            return []
        return list(self.client.mget([self.key(k) for k in message_keys]))

    def final(self, message_keys: Sequence[MessageKey]) -> set[MessageKey]:
        """The keys that must not be sent again."""
        return {k for k, v in zip(message_keys, self.states(message_keys), strict=True) if self.is_final(v)}

    def lease(self, message_key: MessageKey, owner: str, lease_s: int = LEASE_S) -> Status | None:
        """Take the sending lease: ``None`` when taken, else DUPLICATE (final) or BUSY (another owner)."""
        key = self.key(message_key)
        mine = f"sending:{owner}".encode()
        if self.client.set(key, mine, nx=True, ex=lease_s):
            return None
        value = self.client.get(key)
        if self.is_final(value):
            return Status.DUPLICATE
        if value == mine or value is None:
            # Our own lease (a retry, or our predecessor of the same name that crashed mid-send): take it.
            self.client.set(key, mine, ex=lease_s)
            return None
        return Status.BUSY

    def release(self, message_key: MessageKey, owner: str) -> None:
        """Drop our lease (compare-and-delete with WATCH: no Lua, so the notifier's ACL needs no scripting)."""
        key = self.key(message_key)
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

    def record_sent(self, refs: Mapping[MessageKey, str], *, extra: Mapping[str, str | int] | None = None) -> None:
        """Mark messages sent (and set ``extra`` keys) in one MULTI: both or neither."""
        commands: list[Command] = [("MULTI",)]
        for message_key, ref in refs.items():
            commands.append(("SET", self.key(message_key), f"sent:{ref[:MAX_REF_CHARS]}", "EX", self.ttl_s))
        for name, value in (extra or {}).items():
            commands.append(("SET", name, value))
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
        pipe.set(self.key(message.key), f"dead:{failure.code}"[:MAX_REF_CHARS], ex=self.ttl_s)
        pipe.execute()


def unique(messages: Iterable[Message]) -> list[Message]:
    """Drop repeats of the same (event, recipient) within one batch, keeping the first."""
    seen: set[MessageKey] = set()
    out = []
    for message in messages:
        if message.key not in seen:
            seen.add(message.key)
            out.append(message)
    return out
