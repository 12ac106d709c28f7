"""The chaos load: client threads that keep commands and queries in flight and resend them safely.

Why threads in the runner's process: the load must go on while the runner kills processes, and its tally (the
first reply of every command) is what the checks compare with the log.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from bankctl.bench_env import BenchBank
from commands.client import Request


@dataclass
class Sent:
    request: Request
    stream: str
    sent_at: float


@dataclass
class ClientLog:
    """What one client saw: the first reply per command id, and its counters."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: dict[str, Request] = field(default_factory=dict)
    queries: list[tuple[Request, dict[str, Any]]] = field(default_factory=list)
    unanswered: list[Request] = field(default_factory=list)
    resends: int = 0
    connection_errors: int = 0


class LoadClient(threading.Thread):
    """Keeps ``window`` requests in flight (about one in four a query) until told to stop, then drains.

    A request with no reply after ``resend_after_s`` is sent again with the same ``command_id`` and a fresh
    request id, and connection errors (Redis restarting) are waited out: every request ends with exactly one
    first reply, or is listed in :attr:`ClientLog.unanswered` when the drain deadline passes.
    """

    def __init__(self, bank: BenchBank, *, own: list[tuple[int, str]], everyone: list[int], seed: int,
                 window: int, stop: threading.Event, drain_s: float, resend_after_s: float = 3.0) -> None:
        super().__init__(name=f"chaos-client-{seed}", daemon=True)
        self.bank = bank
        self.keys = bank.keys
        self.own = own
        self.everyone = everyone
        self.rng = random.Random(seed)  # noqa: S311 - workload shape
        self.window = window
        self.stop_event = stop
        self.drain_s = drain_s
        self.resend_after_s = resend_after_s
        self.log = ClientLog()
        self.last_seq: dict[int, int] = {}
        self._inflight: dict[str, Sent] = {}
        self._answered_queries: set[str] = set()
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis(unix_socket_path=str(self.bank.bus_server.socket), socket_timeout=5,
                                       socket_connect_timeout=2)
        return self._client

    def _next(self) -> tuple[Request, str]:
        account, token = self.own[self.rng.randrange(len(self.own))]
        roll = self.rng.random()
        if roll < 0.25:
            kind = "balance" if roll < 0.15 else "history"
            payload: dict[str, Any] = {"account": account} if kind == "balance" else {"account": account, "limit": 5}
            return Request(kind, payload, session=token, min_seq=self.last_seq.get(account, 0)), self.keys.queries
        if roll < 0.55:
            payload = {"type": "Deposit", "account": account, "amount": self.rng.randint(100, 5_000)}
        elif roll < 0.75:
            payload = {"type": "Withdraw", "account": account, "amount": self.rng.randint(100, 8_000)}
        else:
            target = self.everyone[self.rng.randrange(len(self.everyone))]
            if target == account:
                target = self.everyone[(self.everyone.index(target) + 1) % len(self.everyone)]
            payload = {"type": "Transfer", "account": account, "to": target, "amount": self.rng.randint(100, 6_000)}
        return Request(payload["type"], payload, session=token), self.keys.commands

    def _send(self, batch: list[tuple[Request, str]]) -> None:
        pipe = self._redis().pipeline(transaction=False)
        now = time.monotonic()
        for request, stream in batch:
            request_id = secrets.token_hex(16)
            pipe.xadd(stream, request.fields(request_id))
            self._inflight[request_id] = Sent(request, stream, now)
        pipe.execute()

    def _record(self, sent: Sent, reply: dict[str, Any]) -> None:
        request = sent.request
        if sent.stream == self.keys.queries:
            self._answered_queries.add(request.command_id)
            self.log.queries.append((request, reply))
            return
        if request.command_id in self.log.replies:
            return
        self.log.replies[request.command_id] = reply
        if reply.get("ok") and isinstance(reply.get("seq"), int):
            for name in ("account", "to"):
                account = request.payload.get(name)
                if isinstance(account, int):
                    self.last_seq[account] = max(self.last_seq.get(account, 0), reply["seq"])

    def _collect(self) -> int:
        ids = list(self._inflight)
        if not ids:
            return 0
        pipe = self._redis().pipeline(transaction=False)
        for request_id in ids:
            pipe.lpop(self.keys.reply(request_id))
        got = 0
        now = time.monotonic()
        stale: list[tuple[Request, str]] = []
        for request_id, raw in zip(ids, pipe.execute(), strict=True):
            sent = self._inflight[request_id]
            if raw is not None:
                del self._inflight[request_id]
                if sent.request.command_id in self._answered_queries:
                    continue
                self._record(sent, orjson.loads(raw))
                got += 1
            elif (sent.request.command_id in self.log.replies
                  or sent.request.command_id in self._answered_queries):
                del self._inflight[request_id]  # another copy was answered already
            elif now - sent.sent_at > self.resend_after_s:
                del self._inflight[request_id]
                stale.append((sent.request, sent.stream))
        if stale:
            self.log.resends += len(stale)
            self._send(stale)
        return got

    def run(self) -> None:
        drain_deadline: float | None = None
        while True:
            stopping = self.stop_event.is_set()
            if stopping and drain_deadline is None:
                drain_deadline = time.monotonic() + self.drain_s
            if stopping and not self._inflight:
                break
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                break
            try:
                room = self.window - len(self._inflight)
                if room > 0 and not stopping:
                    batch = [self._next() for _ in range(room)]
                    for request, stream in batch:
                        if stream == self.keys.commands:
                            self.log.requests[request.command_id] = request
                    self._send(batch)
                if not self._collect():
                    time.sleep(0.005)
            except (redis.ConnectionError, redis.TimeoutError):
                self.log.connection_errors += 1
                self._client = None
                time.sleep(0.1)
        self.log.unanswered = [r for cid, r in self.log.requests.items() if cid not in self.log.replies]
        self.log.unanswered += list({s.request.command_id: s.request for s in self._inflight.values()
                                     if s.stream == self.keys.queries}.values())
