"""Senders: Twilio and the local outbox, behind one small interface.

A sender owns the order of "check the ledger, send, record" because that order is what makes delivery exactly
once, and it differs: the outbox is a local file we can make transactional with the ledger (so exactly once),
Twilio is a remote API without an idempotency key (so at least once in a small window; see TwilioSender).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import orjson

from eventstore.worker import FatalWorkerError
from notifier.delivery import Ledger, Message, Outcome, SmsId, Status, Verdict, classify, message_key, unique

log = logging.getLogger("bank.notifier")

ENV_SID = "TWILIO_ACCOUNT_SID"
ENV_TOKEN = "TWILIO_AUTH_TOKEN"  # noqa: S105 - the variable name, not a secret
ENV_FROM = "TWILIO_FROM_NUMBER"
TWILIO_TIMEOUT_S = 5.0
"""Below the worker heartbeat TTL (10 s): a hung request cannot make a live notifier look dead."""
OUTBOX_BATCH = 1000
TWILIO_BATCH = 20


class Sender(Protocol):
    kind: str
    max_batch: int

    def send(self, messages: Sequence[Message], ledger: Ledger) -> list[Outcome]:
        """Deliver the messages the ledger does not already mark final, and record each success in it.

        Returns one outcome per message, in order.
        """
        ...

    def close(self) -> None: ...


class OutboxUnwritable(FatalWorkerError):
    """The outbox file cannot be written (disk full, permissions): stop rather than drop messages."""


class SenderNotConfigured(FatalWorkerError):
    exit_code = 2


def _wall_time() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OutboxSender:
    """One JSON line per message appended to ``<data dir>/outbox.jsonl`` (mode 0600: it holds phone numbers).

    Exactly once into the file, across crashes and concurrent notifiers: under an exclusive ``flock`` each batch
    (1) reconciles: every complete line past the byte offset recorded in Redis was written by someone who died
    before recording it, so its ledger key is recorded now (a torn last line is cut off); (2) drops messages
    the ledger marks final; (3) writes all lines with one ``write`` and one ``fsync``; (4) records the ledger
    keys and the new offset in one MULTI. Only then does the worker acknowledge the events.
    Rotate the outbox only while every notifier is stopped (the offset refers to this file).
    """

    kind = "outbox"
    max_batch = OUTBOX_BATCH

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        self._outbox_digest = digest
        self.reconciled = 0

    def offset_key(self, ledger: Ledger) -> str:
        return ledger.keys.notifier_outbox_offset(self._outbox_digest)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def line(message: Message, queued_at: str | None = None) -> bytes:
        record = {
            "event_id": message.event_id, "account": message.account, "seq": message.seq,
            "type": message.event_type, "to": message.to, "body": message.body,
            "occurred_at": message.occurred_at, "queued_at": queued_at or _wall_time(),
        }
        return orjson.dumps(record) + b"\n"

    def _reconcile(self, ledger: Ledger, recorded: int) -> int:
        """Record ledger keys for lines past ``recorded``; returns the file size now accounted for."""
        size = os.fstat(self._fd).st_size
        if size == recorded:
            return size
        if size < recorded:
            log.warning("outbox %s shrank from %d to %d bytes (rotated?); continuing from its end",
                        self.path, recorded, size)
            ledger.record_sent({}, extra={self.offset_key(ledger): size})
            return size
        with open(self.path, "rb") as reader:
            reader.seek(recorded)
            tail = reader.read(size - recorded)
        complete = tail[: tail.rfind(b"\n") + 1]
        if len(complete) != len(tail):
            log.warning("outbox %s: cutting a torn last line of %d bytes", self.path, len(tail) - len(complete))
            os.ftruncate(self._fd, recorded + len(complete))
        refs: dict[SmsId, str] = {}
        for raw in complete.splitlines():
            try:
                record = orjson.loads(raw)
                refs[SmsId(int(record["seq"]), str(record["event_id"]), int(record["account"]))] = "outbox"
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("outbox %s: unreadable line left as it is", self.path)
        new_size = recorded + len(complete)
        ledger.record_sent(refs, extra={self.offset_key(ledger): new_size})
        self.reconciled += len(refs)
        if refs:
            log.info("outbox: recorded %d lines written before a crash", len(refs))
        return new_size

    def send(self, messages: Sequence[Message], ledger: Ledger) -> list[Outcome]:
        batch = unique(messages)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                return self._send_locked(messages, batch, ledger)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as error:
            raise OutboxUnwritable(f"cannot write the outbox {self.path}: {error}") from error

    def _send_locked(self, messages: Sequence[Message], batch: list[Message], ledger: Ledger) -> list[Outcome]:
        ids = [m.sms_id for m in batch]
        (offset,), states = ledger.lookup(ids, also_get=[self.offset_key(ledger)])
        recorded = int(offset or 0)
        size = self._reconcile(ledger, recorded)
        if size != recorded:
            states = ledger.states(ids)
        fresh = [(m, sms) for m, sms, state in zip(batch, ids, states, strict=True) if not ledger.is_final(state)]
        if fresh:
            queued_at = _wall_time()  # one batch, one write: one time for all its lines
            data = b"".join(self.line(m, queued_at) for m, _ in fresh)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError:
                # Lines that are not known to be on disk must not count as sent at the next reconcile.
                os.ftruncate(self._fd, size)
                raise
            ledger.record_sent(dict.fromkeys([sms for _, sms in fresh], "outbox"),
                               extra={self.offset_key(ledger): size + len(data)})
        sent = {message_key(m) for m, _ in fresh}
        out: list[Outcome] = []
        for message in messages:
            key = message_key(message)
            if key in sent:
                out.append(Outcome(message, Status.SENT, "outbox"))
                sent.discard(key)
            else:
                out.append(Outcome(message, Status.DUPLICATE))
        return out


class TwilioSender:
    """SMS through the official SDK (``twilio.rest.Client``) with an explicit HTTP timeout.

    Per message: take the ledger lease, call ``messages.create``, record ``sent:<sid>``. Residual risk: Twilio
    has no idempotency key, so if the process dies (or the request times out) after Twilio accepted a message but
    before ``sent`` is recorded, the message is sent again: at least once in that window of one request, exactly
    once otherwise. The batch stops at the first failure so an outage costs one timeout per round, not one per
    queued message.
    """

    kind = "twilio"
    max_batch = TWILIO_BATCH

    def __init__(
        self, *, account_sid: str, auth_token: str, from_number: str, owner: str,
        timeout_s: float = TWILIO_TIMEOUT_S, http_client: object | None = None,
    ) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self.from_number = from_number
        self.owner = owner
        self.http_client = http_client or TwilioHttpClient(timeout=timeout_s)
        self.client = Client(account_sid, auth_token, http_client=self.http_client)

    def close(self) -> None:
        session = getattr(self.http_client, "session", None)
        if session is not None:
            session.close()

    def send(self, messages: Sequence[Message], ledger: Ledger) -> list[Outcome]:
        out: list[Outcome] = []
        for index, message in enumerate(messages):
            held = ledger.lease(message.sms_id, self.owner)
            if held is not None:
                out.append(Outcome(message, held))
                continue
            try:
                created = self.client.messages.create(to=message.to, from_=self.from_number, body=message.body)
            except Exception as error:  # every failure is classified by the caller; nothing is swallowed
                ledger.release(message.sms_id, self.owner)
                out.append(Outcome(message, Status.FAILED, error=error))
                if classify(error).verdict is Verdict.PERMANENT:
                    continue  # one bad number must not hold up the others
                out.extend(Outcome(m, Status.NOT_ATTEMPTED) for m in messages[index + 1 :])
                return out
            sid = str(getattr(created, "sid", "") or "unknown")
            ledger.record_sent({message.sms_id: f"twilio:{sid}"}, leases=[message.sms_id])
            out.append(Outcome(message, Status.SENT, sid))
        return out


def sender_from_env(
    environ: Mapping[str, str], *, data_dir: Path, owner: str, timeout_s: float = TWILIO_TIMEOUT_S
) -> Sender:
    """Twilio when all three ``TWILIO_*`` variables are set, the outbox when none is; half a setup is an error."""
    values = {name: environ.get(name, "").strip() for name in (ENV_SID, ENV_TOKEN, ENV_FROM)}
    present = [name for name, value in values.items() if value]
    if not present:
        return OutboxSender(data_dir / "outbox.jsonl")
    if len(present) != len(values):
        missing = sorted(set(values) - set(present))
        raise SenderNotConfigured(f"Twilio is half configured: set {', '.join(missing)} too (or unset all)")
    return TwilioSender(account_sid=values[ENV_SID], auth_token=values[ENV_TOKEN], from_number=values[ENV_FROM],
                        owner=owner, timeout_s=timeout_s)
