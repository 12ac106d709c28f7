"""Query serving from one projection database (DESIGN §7).

Both projectors read ``{bank}:queries`` in the group ``readers``; each answers from its own database. A server
takes new queries only while its projector is at the head on a file still in place; entries left unanswered
by a dead or stalled server are taken over with XAUTOCLAIM after :data:`CLAIM_IDLE_MS`. A query's ``min_seq``
is honoured by waiting (bounded) for the checkpoint; the reply then carries the checkpoint it was read at.
An SQLite error leaves the query unacknowledged, so the other projector answers it: never a wrong answer.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from auth_zkp.authz import permission_error
from auth_zkp.principal import Principal
from auth_zkp.sessions import SessionStore
from commands.money import format_cents
from eventstore.direct import Command, DirectConnection
from eventstore.groups import ConsumerGroup
from eventstore.keys import Keys
from projections.database import ProjectionDatabase
from projections.schema import ACCOUNT_COLUMNS, read_checkpoint

log = logging.getLogger("bank.queries")

GROUP = "readers"
CLAIM_IDLE_MS = 300
CLAIM_EVERY_S = 0.1
MIN_SEQ_WAIT_S = 2.0
READ_COUNT = 64
BLOCK_MS = 100
REPLY_TTL_S = 120
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_LIST = 10_000
QUERY_TYPES = frozenset({"balance", "history", "account_show", "account_list", "tx_list"})
OWN_ACCOUNT_QUERIES = frozenset({"balance", "history", "account_show"})


class QueryRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def refusal(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


@dataclass(frozen=True, slots=True)
class Query:
    entry_id: str
    request_id: str
    type: str
    payload: dict[str, Any]
    fields: Mapping[bytes, bytes]
    min_seq: int


def parse_query(entry_id: str, fields: Mapping[bytes, bytes]) -> Query | None:
    """``None`` when there is no reply key to answer on; a bad payload becomes ``{}`` and is refused later."""
    request_id = fields.get(b"request_id")
    if not request_id or len(request_id) > 64:
        return None
    try:
        payload = orjson.loads(fields.get(b"payload", b"{}"))
        min_seq = int(fields.get(b"min_seq", b"0") or 0)
    except (orjson.JSONDecodeError, ValueError):
        payload, min_seq = None, 0
    return Query(
        entry_id=entry_id, request_id=request_id.decode(errors="replace"),
        type=fields.get(b"type", b"").decode(errors="replace"),
        payload=payload if isinstance(payload, dict) else {"__invalid__": True},
        fields=fields, min_seq=max(min_seq, 0),
    )


def _int_option(payload: Mapping[str, Any], name: str, default: int, maximum: int) -> int:
    value = payload.get(name, default)
    if value is None:
        return default
    if type(value) is not int or value < 1:
        raise QueryRefused("invalid_request", f"{name} must be a positive integer")
    return min(value, maximum)


def _account_json(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(ACCOUNT_COLUMNS, row, strict=True))
    return {
        "account": record["id"], "role": record["role"], "status": record["status"],
        "balance": format_cents(record["balance"]), "balance_cents": record["balance"],
        "first_name": record["first_name"], "last_name": record["last_name"], "phone": record["phone"],
        "ssn": record["ssn_masked"], "sms_opt_in": bool(record["sms_opt_in"]), "opened_at": record["opened_at"],
        "closed_at": record["closed_at"], "erased": bool(record["erased"]), "version": record["version"],
    }


def _tx_json(row: tuple[Any, ...], *, with_account: bool) -> dict[str, Any]:
    seq, account, kind, amount, counterparty, balance_after, occurred_at = row
    out = {"seq": seq, "kind": kind, "amount": format_cents(amount), "amount_cents": amount,
           "counterparty": counterparty, "balance_after": format_cents(balance_after),
           "balance_after_cents": balance_after, "occurred_at": occurred_at}
    if with_account:
        out["account"] = account
    return out


_TX_COLUMNS = "seq, account, kind, amount, counterparty, balance_after, occurred_at"
_ACCOUNT_SELECT = f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts"  # noqa: S608 - constant columns


def run_query(conn: sqlite3.Connection, query_type: str, account: int | None, payload: Mapping[str, Any],
              checkpoint: int) -> dict[str, Any]:
    """Answer one authorized query inside the caller's read transaction."""
    if query_type in OWN_ACCOUNT_QUERIES:
        row = conn.execute(f"{_ACCOUNT_SELECT} WHERE id = ?", (account,)).fetchone()
        if row is None:
            raise QueryRefused("unknown_account", f"account {account} does not exist")
        if query_type == "balance":
            balance = row[ACCOUNT_COLUMNS.index("balance")]
            return {"ok": True, "account": account, "balance": format_cents(balance), "balance_cents": balance,
                    "status": row[ACCOUNT_COLUMNS.index("status")], "seq": checkpoint}
        if query_type == "account_show":
            return {"ok": True, **_account_json(row), "seq": checkpoint}
        limit = _int_option(payload, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        rows = conn.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE account = ? ORDER BY seq DESC LIMIT ?",  # noqa: S608
            (account, limit),
        ).fetchall()
        return {"ok": True, "account": account, "transactions": [_tx_json(r, with_account=False) for r in rows],
                "seq": checkpoint}
    if query_type == "account_list":
        limit = _int_option(payload, "limit", MAX_LIST, MAX_LIST)
        after = payload.get("after", -1)
        if type(after) is not int:
            raise QueryRefused("invalid_request", "after must be an account number")
        rows = conn.execute(f"{_ACCOUNT_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        return {"ok": True, "accounts": [_account_json(r) for r in rows], "seq": checkpoint}
    if query_type == "tx_list":
        limit = _int_option(payload, "limit", DEFAULT_LIMIT, MAX_LIST)
        rows = conn.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions ORDER BY seq DESC, account LIMIT ?", (limit,)  # noqa: S608
        ).fetchall()
        return {"ok": True, "transactions": [_tx_json(r, with_account=True) for r in rows], "seq": checkpoint}
    raise QueryRefused("invalid_request", f"unknown query {query_type!r}")


def authorize(query: Query, principal: Principal | None) -> int | None:
    """The account the query is about; raises :class:`QueryRefused` when it may not be asked."""
    if query.type not in QUERY_TYPES:
        raise QueryRefused("invalid_request", f"unknown query {query.type!r}")
    if "__invalid__" in query.payload:
        raise QueryRefused("invalid_request", "payload must be a JSON object")
    if principal is None:
        raise QueryRefused("unauthenticated", "not logged in (or the session expired): run 'bankctl login'")
    account: int | None = None
    if query.type in OWN_ACCOUNT_QUERIES:
        account = query.payload.get("account", principal.account_id)
        if account is None:
            account = principal.account_id
        if type(account) is not int or account < 0:
            raise QueryRefused("invalid_request", "account must be an account number")
    problem = permission_error(principal, query.type, account)
    if problem is not None:
        raise QueryRefused("not_permitted", problem)
    return account


class QueryServer:
    """One consumer of the ``readers`` group, answering from one database."""

    kind = "queries"

    def __init__(
        self,
        client: redis.Redis,
        *,
        bus: redis.Redis | None = None,
        keys: Keys,
        db: ProjectionDatabase,
        consumer: str,
        ready: Callable[[], bool],
        master_key: bytes,
        changed: threading.Condition | None = None,
        hurry: threading.Event | None = None,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        wait_s: float = MIN_SEQ_WAIT_S,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self.client = client  # sessions (the durable store)
        self.bus = client if bus is None else bus  # queries in, replies out
        self.keys = keys
        self.db = db
        self.ready = ready
        self.changed = changed or threading.Condition()
        self.hurry = hurry or threading.Event()  # tells the projector someone waits for a later seq
        self.claim_idle_ms = claim_idle_ms
        self.wait_s = wait_s
        self.block_ms = block_ms
        self.group = ConsumerGroup(self.bus, stream=keys.queries, group=GROUP, consumer=consumer)
        self.sessions = SessionStore(client, keys=keys, master_key=master_key)
        self.direct = DirectConnection(client)  # sessions, and replies: no client layers (see eventstore.direct)
        self.bus_direct = self.direct if self.bus is client else DirectConnection(self.bus)
        self.counters: dict[str, int] = {"answered": 0, "claimed": 0, "failed": 0}
        self._ensured = False
        self._own_pending_done = False
        self._last_claim = 0.0

    def poll_once(self) -> int:
        if not self._ensured:
            self.group.ensure("0")
            self._ensured = True
        if not self.ready():
            time.sleep(self.block_ms / 1000)
            return 0
        try:
            entries = self._read()
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            log.warning("the readers group vanished (a restarted bus?); creating it again")
            self._ensured = False
            return 0
        if not entries:
            return 0
        return self.handle(entries)

    def _read(self) -> list[tuple[str, dict[bytes, bytes]]]:
        entries: list[tuple[str, dict[bytes, bytes]]] = []
        if not self._own_pending_done:
            entries = self.group.read_own_pending(count=READ_COUNT)
            self._own_pending_done = len(entries) < READ_COUNT
        now = time.monotonic()
        if not entries and now - self._last_claim >= CLAIM_EVERY_S:
            self._last_claim = now
            claimed = self.group.autoclaim(min_idle_ms=self.claim_idle_ms, count=READ_COUNT)
            entries = claimed.entries
            self.counters["claimed"] += len(entries)
        if not entries:
            entries = self.group.read_new(count=READ_COUNT, block_ms=self.block_ms)
        return entries

    def handle(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> int:
        queries: list[Query] = []
        dropped: list[str] = []
        for entry_id, fields in entries:
            query = parse_query(entry_id, fields) if fields else None
            if query is None:
                dropped.append(entry_id)
            else:
                queries.append(query)
        sessions = self.sessions.authenticate_many([q.fields for q in queries], now=time.time(), direct=self.direct)
        principals = [s.principal if s else None for s in sessions]
        replies: dict[str, dict[str, Any]] = {}
        waiting: list[tuple[Query, int | None]] = []
        for query, principal in zip(queries, principals, strict=True):
            try:
                waiting.append((query, authorize(query, principal)))
            except QueryRefused as refused:
                replies[query.entry_id] = refusal(refused.code, refused.message)
        self._answer(waiting, replies)
        answered = [q for q in queries if q.entry_id in replies]
        self._reply_and_ack(answered, replies, dropped)
        self.counters["answered"] += len(answered)
        return len(answered)

    def _reply_and_ack(self, answered: list[Query], replies: Mapping[str, dict[str, Any]], dropped: list[str]) -> None:
        """Replies, then XACK + XDEL of those and of the dropped entries, in ONE round trip.

        On a bus that shares the log's Redis (``appendfsync always``) every write command costs an AOF fsync
        before Redis answers anyone, so one round trip instead of three (drop, reply, ack) keeps the fsyncs on a
        batch's path to one. A pipeline runs in order: a reply is still pushed before its entry is acknowledged.
        """
        done = dropped + [q.entry_id for q in answered]
        if not done:
            return
        commands: list[Command] = []
        for query in answered:
            reply_key = self.keys.reply(query.request_id)
            commands.append(("RPUSH", reply_key, orjson.dumps(replies[query.entry_id])))
            commands.append(("EXPIRE", reply_key, REPLY_TTL_S))
        commands.append(("XACK", self.keys.queries, GROUP, *done))
        commands.append(("XDEL", self.keys.queries, *done))
        self.bus_direct.execute(commands)

    def _answer(self, waiting: list[tuple[Query, int | None]], replies: dict[str, dict[str, Any]]) -> None:
        """Answer every query whose ``min_seq`` is reached; wait (bounded) for the others."""
        deadline = time.monotonic() + self.wait_s
        last_touch = time.monotonic()
        while waiting:
            later: list[tuple[Query, int | None]] = []
            try:
                with self.db.lock:
                    if not self.db.path_is_current():
                        return  # left unacknowledged: the other projector takes them over
                    conn = self.db.reader
                    conn.execute("BEGIN")
                    try:
                        checkpoint = read_checkpoint(conn)
                        for query, account in waiting:
                            if query.min_seq > checkpoint:
                                later.append((query, account))
                                continue
                            try:
                                replies[query.entry_id] = run_query(conn, query.type, account, query.payload,
                                                                    checkpoint)
                            except QueryRefused as refused:
                                replies[query.entry_id] = refusal(refused.code, refused.message)
                    finally:
                        conn.execute("COMMIT")
            except sqlite3.Error as error:
                log.error("%s: cannot answer queries: %s", self.db.path, error)
                self.counters["failed"] += len(waiting)
                return
            waiting = later
            if not waiting:
                return
            self.hurry.set()
            now = time.monotonic()
            if now >= deadline:
                for query, _account in waiting:
                    replies[query.entry_id] = refusal(
                        "timeout", f"the read model has not reached seq {query.min_seq} yet; try again")
                return
            if now - last_touch >= CLAIM_IDLE_MS / 3000:
                # Reset the idle time so the other projector does not take over what this one is waiting on.
                self.bus.xclaim(self.keys.queries, GROUP, self.group.consumer, 0,
                                   [q.entry_id for q, _a in waiting], justid=True)
                last_touch = now
            with self.changed:
                self.changed.wait(timeout=0.02)


class QueryThread(threading.Thread):
    """Runs a :class:`QueryServer` beside the projector; Redis errors are retried, never fatal."""

    def __init__(self, server: QueryServer, *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.server = server
        self._stop_event = threading.Event()

    def run(self) -> None:
        delay = 0.2
        while not self._stop_event.is_set():
            try:
                self.server.poll_once()
                delay = 0.2
            except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as error:
                log.warning("queries: redis unavailable (%s); retrying", error)
                self._stop_event.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("queries: unexpected error; retrying")
                self._stop_event.wait(1.0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
