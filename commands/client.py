"""The request/reply client (DESIGN §7): XADD a request, BLPOP its reply, resend safely on timeout.

Every request carries a random ``request_id`` (its reply key) and a ``command_id`` (the idempotency key).
A resend after a timeout reuses the ``command_id`` with a fresh ``request_id``: the handler's append script
returns the first outcome, so the command takes effect at most once however often it is sent.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from auth_zkp.sessions import sign_request
from commands.requests import BATCH_TYPE, MAX_BATCH_COMMANDS
from eventstore.direct import DirectConnection
from eventstore.keys import Keys

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3
MAX_REQUEST_STREAM_LEN = 1_000_000
BLOCK_SLICE_S = 2.0  # each BLPOP stays well below the socket timeout (redis-py would time out first)


class BankUnavailable(RuntimeError):
    """No reply within the deadline, or Redis cannot be reached (CLI exit 5)."""


def new_id() -> str:
    """128 random bits, hex."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Request:
    type: str
    payload: dict[str, Any]
    session: str | None = None
    command_id: str = field(default_factory=new_id)
    min_seq: int = 0

    def fields(self, request_id: str) -> dict[bytes, bytes | str]:
        """The stream entry; with a session, signed (the session's key itself is never sent)."""
        out: dict[bytes, bytes | str] = {
            b"request_id": request_id,
            b"command_id": self.command_id,
            b"type": self.type,
            b"payload": orjson.dumps(self.payload),
            b"sent_at": repr(time.time()),
        }
        if self.min_seq:
            out[b"min_seq"] = str(self.min_seq)
        if self.session:
            sign_request(self.session, out)
        return out


def batch_request(requests: Sequence[Request], *, session: str | None) -> Request:
    """One signed ``Batch`` request carrying ``requests``; each keeps its own command id (and so its idempotency)."""
    assert 0 < len(requests) <= MAX_BATCH_COMMANDS, "a batch holds 1 to MAX_BATCH_COMMANDS commands"
    return Request(BATCH_TYPE, {"commands": [
        {"command_id": r.command_id, "command": {**r.payload, "type": r.type}} for r in requests]}, session=session)


def batch_results(reply: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Each command's outcome from a batch reply; a refusal of the whole batch is every command's outcome."""
    results = reply.get("results")
    if isinstance(results, list) and len(results) == count:
        return results
    return [reply] * count


def _seconds(timeout_s: float) -> str:
    """A BLPOP timeout: Redis takes fractional seconds (0 would mean forever, so never below a millisecond)."""
    return f"{max(timeout_s, 0.001):.3f}"


class BankClient:
    """Sends commands and queries and waits for their replies."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.client = client
        self.keys = keys
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._local = threading.local()  # one direct connection per thread that uses this client

    @property
    def _direct(self) -> DirectConnection:
        direct = getattr(self._local, "direct", None)
        if direct is None:
            direct = self._local.direct = DirectConnection(self.client)
        return direct

    def command(self, request: Request) -> dict[str, Any]:
        return self._roundtrip(self.keys.commands, request)

    def command_batch(self, requests: Sequence[Request], *, session: str | None) -> list[dict[str, Any]]:
        """Send up to :data:`MAX_BATCH_COMMANDS` commands as one request; their outcomes, in order."""
        return batch_results(self.command(batch_request(requests, session=session)), len(requests))

    def query(self, request: Request) -> dict[str, Any]:
        return self._roundtrip(self.keys.queries, request)

    def _roundtrip(self, stream: str, request: Request) -> dict[str, Any]:
        last_error: Exception | None = None
        for _attempt in range(self.attempts):
            request_id = new_id()
            try:
                reply = self._send_and_wait(stream, request.fields(request_id), self.keys.reply(request_id))
            except (redis.ConnectionError, redis.TimeoutError) as error:
                last_error = error
                time.sleep(0.2)
                continue
            if reply is not None:
                return reply
        raise BankUnavailable(
            f"no reply after {self.attempts} attempts of {self.timeout_s:.0f}s"
            + (f" ({last_error})" if last_error else "")
            + ": are the workers running? try 'bankctl status'"
        )

    def _send_and_wait(self, stream: str, fields: dict[bytes, bytes | str], reply_key: str) -> dict[str, Any] | None:
        """XADD and the first BLPOP in one round trip (the BLPOP waits on the server for the handler's reply)."""
        began = time.monotonic()
        _entry_id, popped = self._direct.execute([
            ("XADD", stream, "MAXLEN", "~", MAX_REQUEST_STREAM_LEN, "*", *(x for pair in fields.items() for x in pair)),
            ("BLPOP", reply_key, _seconds(min(self.timeout_s, BLOCK_SLICE_S))),
        ])
        if popped is not None:
            return orjson.loads(popped[1])
        return self._wait(reply_key, self.timeout_s - (time.monotonic() - began))

    def _wait(self, reply_key: str, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            popped = self.client.blpop([reply_key], timeout=min(remaining, BLOCK_SLICE_S))
            if popped is not None:
                return orjson.loads(popped[1])

    def submit_many(self, stream: str, requests: Sequence[Request]) -> list[str]:
        """Pipelined XADD of many requests; returns their request ids (for batched clients and bench)."""
        pipe = self.client.pipeline(transaction=False)
        request_ids = []
        for request in requests:
            request_id = new_id()
            request_ids.append(request_id)
            pipe.xadd(stream, request.fields(request_id), maxlen=MAX_REQUEST_STREAM_LEN, approximate=True)
        pipe.execute()
        return request_ids

    def wait_many(self, request_ids: Sequence[str], timeout_s: float | None = None) -> list[dict[str, Any] | None]:
        """Pipelined BLPOP of many replies, in order; ``None`` for one that did not arrive in time."""
        timeout = min(timeout_s or self.timeout_s, BLOCK_SLICE_S)
        pipe = self.client.pipeline(transaction=False)
        for request_id in request_ids:
            pipe.blpop([self.keys.reply(request_id)], timeout=timeout)
        out: list[dict[str, Any] | None] = []
        for popped in pipe.execute():
            out.append(orjson.loads(popped[1]) if popped else None)
        return out
