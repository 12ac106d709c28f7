"""The command handler worker (DESIGN §5, §6): requests in, events and replies out, one Lua append per batch.

One iteration (:meth:`CommandHandler.poll_once`):

1. read a batch from the group ``handlers`` (own pending entries first after a start, entries idle longer than
   the failover threshold every ~1 s, otherwise new ones);
2. parse; poison entries (malformed, or delivered too often) go to ``{bank}:dead:commands`` with the reason;
3. resolve sessions (one round trip) and authorize; login requests go to ``auth_zkp.login.AuthService``;
4. load the touched accounts (one round trip), decide in order over a local overlay so a later command sees
   the earlier ones' effects, seal personal data, and append the whole batch in one script, which answers a
   command id it has settled before with its first outcome;
5. re-decide commands that met a version conflict against fresh state (bounded rounds);
6. only then do the side effects outside the log (revoke sessions, destroy a data key), push the replies and
   XACK and XDEL the entries, in one round trip to the request bus: the request stream holds personal data in
   plaintext until processed.

Two Redis roles: ``client`` holds the log and the write-side state (AOF ``always``); ``bus`` carries requests,
replies and heartbeats. They are the same server unless the bank runs a separate, non-persistent bus (the
default of ``bankctl up``): then a request costs the log's Redis one disk sync (the script) instead of four
(request XADD, XREADGROUP, the script, XACK), and losing the bus loses only requests in flight, which clients
resend with the same command id.

A crash anywhere before step 6 leaves the entries pending; a restart or the other handler replays them, and the
script's stored outcomes make the replay exactly-once in effect.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import redis
from nacl.public import PrivateKey

from auth_zkp.authz import permission_error
from auth_zkp.login import AuthService
from auth_zkp.principal import Principal
from auth_zkp.sessions import AuthenticatedSession, SessionStore
from commands.decide import Context, Decision, EventDraft, Reason, Rejection, decide, touched_accounts
from commands.models import ChangePassword, CloseAccount, EraseCustomer, OpenAccount
from commands.prepare import Origin, prepare_decision, prepare_rejection
from commands.requests import (
    MAX_BATCH_COMMANDS,
    MalformedRequest,
    ParsedRequest,
    parse_entries,
    redacted_fields,
)
from commands.state import AccountState
from commands.state_loader import StateLoader
from eventstore.append import MAX_COMMANDS_PER_APPEND, Appender, AppendResult, AppendStatus, PreparedCommand
from eventstore.connection import MAX_BLOCK_MS, connect, connect_bus
from eventstore.direct import Command, DirectConnection
from eventstore.envelope import utc_timestamp
from eventstore.groups import ConsumerGroup, Entry
from eventstore.keys import KEYS, Keys
from eventstore.pii import PersonalDataVault, load_master_key
from eventstore.transport import load_transport_key, publish_public_key
from eventstore.worker import WorkerRunner, configure_logging

log = logging.getLogger("bank.handler")

GROUP = "handlers"
DEAD_LETTER_NAME = "commands"
USE_CONFIGURED_BLOCK = -1
LOGIN_ACTOR = "system:login"
_NO_CONTEXT = Context(Principal(0, "customer"))  # touched_accounts needs no principal except for opens


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """Every limit of the handler, explicit (TigerBeetle style)."""

    batch_size: int = 256
    # Fewer entries are read while they are batches, so a poll stays short (well inside failover_ms). Two batch
    # requests of 250 per poll rather than one: the second's chunks are decided while Redis runs the first's
    # script (one request of 250 went in one call, and the handler only waited). Measured, whole bank on two
    # cores, alternating runs (medians of 2): 7,881 -> 9,388 and 10,269 -> 12,371 commands/s; 1,024 per poll
    # was no better than 512 (12,404 / 13,322 against 13,882 / 11,525).
    commands_per_poll: int = 512
    # Commands per script call in a large round; the next chunk is decided while Redis runs one. A batch request
    # (250 commands) goes in one call: one script and one disk sync instead of four. Measured, whole bank on two
    # cores, alternating runs: 17,100-18,000 commands/s with chunks of 64, 18,200-19,600 with 128.
    append_chunk: int = 128
    block_ms: int = 1000
    failover_ms: int = 2000
    claim_every_s: float = 1.0
    max_deliveries: int = 5
    max_rounds: int = 8
    backoff_s: float = 0.001
    reply_ttl_s: int = 120  # a reply nobody collected (the client gave up) expires from the bus

    def __post_init__(self) -> None:
        assert 0 < self.batch_size <= 512, "a batch must fit one append call"
        assert 0 < self.append_chunk <= MAX_COMMANDS_PER_APPEND, "a chunk must fit one append call"
        assert 0 <= self.block_ms <= MAX_BLOCK_MS, "BLOCK must stay below the socket timeout"


@dataclass(slots=True)
class Work:
    """One command on its way to the append script."""

    request: ParsedRequest
    principal: Principal
    actor: str
    accounts: tuple[int, ...] = ()
    new_account_id: int | None = None
    lock: dict[str, Any] | None = None
    lock_reply: dict[str, Any] | None = None
    decided: Decided | None = None  # the last decision, kept for a later round (see CommandHandler._prepare)


class Decided(NamedTuple):
    """A command's prepared decision and the account states it was decided on."""

    inputs: tuple[AccountState, ...]
    prepared: PreparedCommand
    new_states: Mapping[int, AccountState]


@dataclass(slots=True)
class Preload:
    """What one round trip fetched for a batch before deciding (see :meth:`CommandHandler._preload`)."""

    sessions: dict[str, AuthenticatedSession] = field(default_factory=dict)  # by entry id
    outcomes: dict[str, bytes | None] = field(default_factory=dict)  # of the OpenAccount commands only
    states: dict[int, AccountState] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """What one iteration must send back and acknowledge."""

    ack_ids: list[str] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    batch_replies: dict[str, list[bytes | None]] = field(default_factory=dict)  # by request id, in command order
    revoke: set[int] = field(default_factory=set)
    erase: set[int] = field(default_factory=set)

    def reply(self, request_id: str, body: dict[str, Any] | bytes) -> None:
        self.replies.append((request_id, body if isinstance(body, bytes) else orjson.dumps(body)))

    def answer(self, request: ParsedRequest, body: dict[str, Any] | bytes) -> None:
        """The outcome of one request: its own reply, or its place in its batch's reply."""
        if request.batch_index is None:
            self.reply(request.request_id, body)
        else:
            self.batch_replies[request.request_id][request.batch_index] = (
                body if isinstance(body, bytes) else orjson.dumps(body))

    def encoded_batch_replies(self) -> list[tuple[str, bytes]]:
        """One reply per batch request: ``{"ok": true, "results": [...]}`` in the order the commands came."""
        out = []
        missing = orjson.dumps(_refusal("internal_error", "internal error: no outcome"))
        for request_id, bodies in self.batch_replies.items():
            results = b",".join(body if body is not None else missing for body in bodies)
            out.append((request_id, b'{"ok":true,"results":[' + results + b"]}"))
        return out


def _refusal(code: str, message: str, command_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "code": code, "message": message}
    if command_id is not None:
        out["command_id"] = command_id
    return out


class CommandHandler:
    """The write side's worker; several run in one consumer group (active-active)."""

    kind = "handler"

    def __init__(
        self,
        client: redis.Redis,
        *,
        bus: redis.Redis | None = None,
        keys: Keys,
        vault: PersonalDataVault,
        name: str,
        server_id: str = "",
        transport_key: PrivateKey | None = None,
        sessions: SessionStore | None = None,
        config: HandlerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.bus = client if bus is None else bus
        self.keys = keys
        self.vault = vault
        self.name = name
        self.server_id = server_id
        self.transport_key = transport_key
        self.sessions = sessions or SessionStore(client, keys=keys, master_key=vault.master_key)
        self.config = config or HandlerConfig()
        self.clock = clock
        self.group = ConsumerGroup(self.bus, stream=keys.commands, group=GROUP, consumer=name)
        self.appender = Appender(client, keys=keys)
        self.state_loader = StateLoader(client, keys=keys)
        self.direct = DirectConnection(client)  # the per-batch reads: no client layers (see eventstore.direct)
        # replies and acknowledgements
        self.bus_direct = self.direct if self.bus is client else DirectConnection(self.bus)
        self.auth = AuthService(client, keys=keys, vault=vault, server_id=server_id, sessions=self.sessions)
        self.counters: dict[str, int] = {
            "processed": 0, "events": 0, "rejected": 0, "refused": 0, "dead": 0, "dups": 0, "conflicts": 0,
            "claimed": 0, "batches": 0,
        }
        self._ready = False
        self._recovering = True
        self._last_claim = 0.0
        self._claim_cursor = "0-0"
        # Until a poll has seen how large the entries are, assume the largest batch: the first poll after a start
        # or a takeover then reads one entry, not ``batch_size`` entries of up to MAX_BATCH_COMMANDS each.
        self._commands_per_entry = float(MAX_BATCH_COMMANDS)

    # ------------------------------------------------------------------ reading

    def poll_once(self, block_ms: int | None = USE_CONFIGURED_BLOCK) -> int:
        """One iteration; returns how many entries it settled. ``block_ms=None`` never blocks (tests)."""
        if not self._ready:  # at start, and after the bus lost its data (a restarted, non-persistent bus)
            self.group.ensure()
            if self.transport_key is not None:
                publish_public_key(self.bus, self.keys, self.transport_key)
            self._ready = True
        try:
            entries, counts = self._fetch(self.config.block_ms if block_ms == USE_CONFIGURED_BLOCK else block_ms)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            log.warning("%s: the consumer group vanished (Redis flushed?); creating it again", self.name)
            self._ready = False
            return 0
        if not entries:
            return 0
        try:
            self.handle_entries(entries, counts)
        except BaseException:
            self._recovering = True  # the batch stays pending: read it again first (stored outcomes dedupe it)
            raise
        return len(entries)

    def _fetch(self, block_ms: int | None) -> tuple[list[Entry], dict[str, int]]:
        # entries holding batches of commands: read fewer, so one poll settles well within the failover time
        count = max(1, min(self.config.batch_size, round(self.config.commands_per_poll / self._commands_per_entry)))
        if self._recovering:
            entries = self.group.read_own_pending(count=count)
            if entries:
                return entries, self._delivery_counts(entries)
            self._recovering = False
        now = time.monotonic()
        if now - self._last_claim >= self.config.claim_every_s:
            self._last_claim = now
            claimed = self.group.autoclaim(min_idle_ms=self.config.failover_ms, count=count,
                                           start=self._claim_cursor)
            self._claim_cursor = claimed.next_start
            if claimed.entries:
                self.counters["claimed"] += len(claimed.entries)
                log.info("%s: took over %d idle entries", self.name, len(claimed.entries))
                return claimed.entries, claimed.delivery_counts
        return self.group.read_new(count=count, block_ms=block_ms), {}

    def _delivery_counts(self, entries: Sequence[Entry]) -> dict[str, int]:
        rows = self.bus.xpending_range(
            self.group.stream, GROUP, min=entries[0][0], max=entries[-1][0], count=len(entries) + 16,
            consumername=self.name,
        )
        out = {}
        for row in rows:
            mid = row["message_id"]
            out[mid.decode() if isinstance(mid, bytes) else mid] = int(row["times_delivered"])
        return out

    # ------------------------------------------------------------------ one batch

    def handle_entries(self, entries: Sequence[Entry], delivery_counts: dict[str, int] | None = None) -> None:
        """Settle a batch: every entry gets exactly one outcome and is acknowledged."""
        batch = Batch()
        counts = delivery_counts or {}
        parsed: list[ParsedRequest] = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending (already settled): only the acknowledgement is missing
                batch.ack_ids.append(entry_id)
                continue
            delivered = counts.get(entry_id, 1)
            if delivered > self.config.max_deliveries:
                self._dead_letter(entry_id, fields, f"delivered {delivered} times without being settled", batch)
                continue
            try:
                requests = parse_entries(entry_id, fields, transport_key=self.transport_key)
            except MalformedRequest as error:
                self._dead_letter(entry_id, fields, error.reason, batch, request_id=error.request_id)
                continue
            if requests[0].batch_index is not None:
                batch.ack_ids.append(entry_id)
                batch.batch_replies[requests[0].request_id] = [None] * len(requests)
            for request in requests:
                if request.error is None:
                    parsed.append(request)
                else:
                    self.counters["refused"] += 1
                    batch.answer(request, _refusal("malformed_request", request.error, request.command_id))
        self._commands_per_entry = max(1.0, len(parsed) / len(entries))
        self.counters["batches"] += 1
        if parsed:
            self._settle(parsed, batch)
        self._finish(batch)

    def _dead_letter(
        self, entry_id: str, fields: dict[bytes, bytes], reason: str, batch: Batch, *, request_id: str | None = None
    ) -> None:
        log.warning("%s: dead-lettering %s: %s", self.name, entry_id, reason)
        self.group.dead_letter(self.keys.dead(DEAD_LETTER_NAME), entry_id, redacted_fields(fields), reason,
                               delete=True, store=self.client)
        self.counters["dead"] += 1
        if request_id is not None:
            batch.reply(request_id, _refusal("malformed_request", reason))

    def _settle(self, requests: list[ParsedRequest], batch: Batch) -> None:
        now = self.clock()
        preload = self._preload(requests, now)
        works: list[Work] = []
        for request in requests:
            batch.ack_ids.append(request.entry_id)
            try:
                work = self._admit(request, preload.sessions.get(request.entry_id), now, batch)
            except Exception as error:  # one bad request never stops the bank
                log.exception("%s: request %s failed", self.name, request.entry_id)
                batch.answer(request, _refusal("internal_error", f"internal error: {type(error).__name__}",
                                               request.command_id))
                continue
            if work is not None:
                works.append(work)
        if works:
            self._decide_and_append(works, now, batch, preload)

    def _preload(self, requests: list[ParsedRequest], now: float) -> Preload:
        """Sessions, the touched accounts' state and the stored outcomes of ``OpenAccount`` commands, in ONE
        round trip.

        Only an ``OpenAccount`` is checked for a first outcome before it is decided: it creates the new
        customer's data key before the script runs, which a resend must not do again. Every other command goes
        to the script, which finds a resend's outcome itself; checking all of them here cost the log's Redis an
        MGET key per command (about 3% of its CPU) for the rare resend.

        Read before authorization (read-only, so harmless for a request that is then refused); the first
        decision round uses these states, later rounds reload. New account ids are still drawn only for
        admitted ``OpenAccount`` commands (see :meth:`_decide_and_append`).
        """
        entries = list({r.entry_id: r for r in requests}.values())  # a batch's members share one signed entry
        session_ids = self.sessions.session_ids([r.fields for r in entries])
        distinct = sorted({i for i in session_ids if i})
        opens = [r for r in requests if isinstance(r.command, OpenAccount)]
        accounts = {a for r in requests if r.command is not None and not isinstance(r.command, OpenAccount)
                    for a in touched_accounts(r.command, _NO_CONTEXT)}
        round_trip: list[Command] = []
        if distinct:
            round_trip.append(("MGET", *self.sessions.record_keys(distinct)))
        if opens:
            round_trip.append(("MGET", *(self.keys.command_outcome(r.command_id) for r in opens)))
        ordered, loads = self.state_loader.commands(accounts)
        round_trip += loads
        try:
            results = self.direct.execute(round_trip)
        except redis.exceptions.NoScriptError:
            self.state_loader.reload()
            results = self.direct.execute(round_trip)
        out = Preload()
        if distinct:
            records = dict(zip(distinct, results.pop(0), strict=True))
            checked = self.sessions.verify_many([r.fields for r in entries], session_ids, records, now=now)
            out.sessions = {r.entry_id: s for r, s in zip(entries, checked, strict=True) if s is not None}
        if opens:
            out.outcomes = {r.command_id: stored for r, stored in zip(opens, results.pop(0), strict=True)}
        if ordered:
            out.states = self.state_loader.take(ordered, results)
        return out

    def _admit(
        self, request: ParsedRequest, session: AuthenticatedSession | None, now: float, batch: Batch
    ) -> Work | None:
        """Authenticate and authorize; returns the work to decide, or ``None`` when already answered."""
        if request.command is None:
            return self._login_request(request, session, now, batch)
        if session is None:
            self.counters["refused"] += 1
            batch.answer(request, _refusal(Reason.UNAUTHENTICATED, "not logged in: run 'bankctl login'",
                                           request.command_id))
            return None
        principal = session.principal
        denied = permission_error(principal, request.type, request.account)
        if denied is not None:
            self.counters["refused"] += 1
            batch.answer(request, _refusal(Reason.NOT_PERMITTED, denied, request.command_id))
            return None
        if isinstance(request.command, ChangePassword):
            command = request.command
            check = self.auth.check_proof(command.account, command.proof, now)
            if not check.ok:
                self.counters["refused"] += 1
                refusal = _refusal(check.code or Reason.INVALID_PROOF, check.message or "the password is wrong",
                                   request.command_id)
                if check.lock_event:
                    return self._lock_work(request, check.lock_event, refusal)
                batch.answer(request, refusal)
                return None
        return Work(request, principal, principal.name)

    def _login_request(
        self, request: ParsedRequest, session: AuthenticatedSession | None, now: float, batch: Batch
    ) -> Work | None:
        assert request.payload is not None
        reply = dict(self.auth.handle(request.type, request.payload, session, now))
        lock = reply.pop("_lock_event", None)
        if not lock:
            batch.reply(request.request_id, reply)
            return None
        return self._lock_work(request, lock, reply)

    def _lock_work(self, request: ParsedRequest, lock: dict[str, Any], reply: dict[str, Any]) -> Work:
        """An ``AccountLocked`` event to append; the script delivers ``reply`` with it."""
        account = int(lock["account"])
        return Work(request, Principal(account, "customer"), LOGIN_ACTOR, accounts=(account,), lock=dict(lock),
                    lock_reply=reply)

    # ------------------------------------------------------------------ deciding and appending

    def _decide_and_append(self, works: list[Work], now: float, batch: Batch, preload: Preload | None = None) -> None:
        preload = preload or Preload()
        opens = [w for w in works if isinstance(w.request.command, OpenAccount)]
        unknown = [w for w in opens if w.request.command_id not in preload.outcomes]
        if opens:  # new account ids (admitted opens only), outcomes not read with the preload
            pipe = self.client.pipeline(transaction=False)
            for _ in opens:
                pipe.incr(self.keys.account_ids)
            if unknown:
                pipe.mget([self.keys.command_outcome(work.request.command_id) for work in unknown])
            results = pipe.execute()
            for work, new_id in zip(opens, results[: len(opens)], strict=True):
                work.new_account_id = int(new_id)
            if unknown:
                preload.outcomes.update((w.request.command_id, stored)
                                        for w, stored in zip(unknown, results[-1], strict=True))
        live: list[Work] = []
        for work in works:
            stored = preload.outcomes.get(work.request.command_id) if work.lock is None else None
            if stored is not None:
                self._duplicate(work, stored, batch)
                continue
            if work.new_account_id is not None:
                self.vault.create_data_key(work.new_account_id)
            if work.lock is None:
                assert work.request.command is not None
                work.accounts = touched_accounts(work.request.command, Context(work.principal, work.new_account_id))
            live.append(work)
        occurred_at = utc_timestamp(datetime.fromtimestamp(now, UTC))
        for round_number in range(self.config.max_rounds):
            if not live:
                return
            if round_number:  # two handlers racing for hot accounts: desynchronise them (jittered backoff)
                time.sleep(random.uniform(0, self.config.backoff_s * 2**round_number))
            needed = {a for w in live for a in w.accounts}
            if round_number == 0 and preload.states:  # first round: the preloaded states, plus what they lack
                states = {a: preload.states[a] for a in needed if a in preload.states}
                if len(states) < len(needed):
                    states.update(self._load(needed - states.keys()))
            else:
                states = self._load(needed)
            round_works, live = live, []
            for work, item, result in self._prepare_and_append(round_works, dict(states), occurred_at, batch):
                if result is None or result.status is AppendStatus.CONFLICT:
                    self.counters["conflicts"] += 1
                    live.append(work)
                    continue
                assert item is not None, "a command with a result was sent, so it was prepared"
                self.counters["processed"] += 1
                batch.answer(work.request, item.reply_for(result))
                if result.status is AppendStatus.DUPLICATE:
                    self.counters["dups"] += 1
                    self._after_duplicate(work, result, batch)
                elif result.status is AppendStatus.REJECTED:
                    self.counters["rejected"] += 1
                else:
                    self._after_success(work, batch)
        if live:
            self._give_up(live, batch)

    def _prepare_chunk(
        self, works: Sequence[Work], overlay: dict[int, AccountState], occurred_at: str, batch: Batch
    ) -> list[tuple[Work, PreparedCommand]]:
        prepared = []
        for work in works:
            try:
                prepared.append((work, self._prepare(work, overlay, occurred_at)))
            except Exception as error:  # a decider or sealing bug must not take the batch down
                log.exception("%s: command %s failed", self.name, work.request.command_id)
                batch.answer(work.request, _refusal(
                    "internal_error", f"internal error: {type(error).__name__}", work.request.command_id))
        return prepared

    def _prepare_and_append(
        self, works: list[Work], overlay: dict[int, AccountState], occurred_at: str, batch: Batch
    ) -> list[tuple[Work, PreparedCommand | None, AppendResult | None]]:
        """Decide and append a round's commands in order, in chunks: the next chunk is decided while Redis runs
        the script for the current one, so the handler's CPU and Redis work at the same time.

        The commands are decided in sequence over one overlay, so a command not applied (conflict, duplicate)
        invalidates what later ones assumed about its accounts. Inside one call the script poisons those
        accounts; across calls this does the same: a later command touching one is not sent (result ``None``)
        and is decided again in the next round, so a version number matching by coincidence can never apply it.
        A command whose accounts are known to be poisoned before it is decided is not decided at all (item
        ``None``): in a customer's batch one conflict would otherwise have every later command decided in vain.
        """
        out: list[tuple[Work, PreparedCommand | None, AppendResult | None]] = []
        poisoned: set[int] = set()

        def still_valid(work: Work) -> bool:
            if poisoned and not poisoned.isdisjoint(work.accounts):
                poisoned.update(work.accounts)
                out.append((work, None, None))
                return False
            return True

        def prepare(chunk: list[Work]) -> list[tuple[Work, PreparedCommand]]:
            return self._prepare_chunk([w for w in chunk if still_valid(w)], overlay, occurred_at, batch)

        # a small round goes in one call (one disk sync); a large one in chunks that overlap with deciding
        size = self.config.append_chunk if len(works) > 2 * self.config.append_chunk else MAX_COMMANDS_PER_APPEND
        chunks = [works[i:i + size] for i in range(0, len(works), size)]
        ready = prepare(chunks[0]) if chunks else []
        for index in range(len(chunks)):
            send = [(work, item) for work, item in ready if still_valid(work)]
            pending = self.appender.send([item for _, item in send])
            try:
                ready = prepare(chunks[index + 1]) if index + 1 < len(chunks) else []
            finally:
                results = pending.results()
            for (work, item), result in zip(send, results, strict=True):
                if result.status in (AppendStatus.CONFLICT, AppendStatus.DUPLICATE):
                    poisoned.update(work.accounts)
                out.append((work, item, result))
        return out

    def _give_up(self, works: list[Work], batch: Batch) -> None:
        """Settle commands that kept conflicting as ``conflict``, through the script like any outcome.

        Stored, not merely replied: a copy of the same command id (a client's resend) being decided by the other
        handler at this moment either won already (the script then answers with its outcome) or will find this
        one. Either way the command id has exactly one outcome; a client retries with a new command id.
        """
        prepared = [
            PreparedCommand(self.keys.command_outcome(w.request.command_id), [], [],
                            orjson.dumps(_refusal(Reason.CONFLICT, "the accounts changed too often while deciding; "
                                                  "try again", w.request.command_id)))
            for w in works
        ]
        for start in range(0, len(prepared), MAX_COMMANDS_PER_APPEND):
            end = start + MAX_COMMANDS_PER_APPEND
            chunk = prepared[start:end]
            for work, item, result in zip(works[start:end], chunk, self.appender.append(chunk), strict=True):
                self.counters["processed"] += 1
                batch.answer(work.request, item.reply_for(result))
                if result.status is AppendStatus.DUPLICATE:
                    self.counters["dups"] += 1
                    self._after_duplicate(work, result, batch)

    def _load(self, accounts: set[int]) -> dict[int, AccountState]:
        return self.state_loader.load(accounts)

    def _prepare(self, work: Work, overlay: dict[int, AccountState], occurred_at: str) -> PreparedCommand:
        """Decide and prepare ``work`` over ``overlay``, or reuse its last decision if its accounts are unchanged.

        Why reuse: a conflict makes every later command of the customer's batch wait for the next round (they were
        decided on top of it). The conflicting command is usually a transfer whose recipient the other handler
        had just changed; decided again, it leaves the sender's account as before, so the later commands see the
        same states as in the last round and, the deciders being pure, would decide the same. About a quarter
        of all decisions under load were such repeats (measured: 91,262 decided for 68,800 appended).
        """
        inputs = tuple(overlay[a] for a in work.accounts)
        decided = work.decided
        if decided is not None and decided.inputs == inputs:
            overlay.update(decided.new_states)
            return decided.prepared
        request = work.request
        origin = Origin(request.command_id, work.actor, occurred_at)
        before = dict(zip(work.accounts, inputs, strict=True))
        if work.lock is not None:
            outcome = _decide_lock(work.lock, before[work.accounts[0]])
        else:
            assert request.command is not None
            outcome = decide(request.command, overlay, Context(work.principal, work.new_account_id))
        if isinstance(outcome, Rejection):
            if work.lock_reply is not None:  # nothing to lock: just answer the login request
                prepared = PreparedCommand(self.keys.command_outcome(request.command_id), [], [],
                                           orjson.dumps(work.lock_reply))
            else:
                prepared = prepare_rejection(outcome, inputs, origin, keys=self.keys)
            work.decided = Decided(inputs, prepared, {})
            return prepared
        prepared = prepare_decision(outcome, before, origin, keys=self.keys, vault=self.vault, reply=work.lock_reply)
        overlay.update(outcome.new_states)
        self.counters["events"] += len(outcome.events)
        work.decided = Decided(inputs, prepared, outcome.new_states)
        return prepared

    # ------------------------------------------------------------------ after the append

    def _duplicate(self, work: Work, stored: bytes, batch: Batch) -> None:
        """A command already settled (a resend or a replay): answer with the first outcome."""
        self.counters["dups"] += 1
        self.counters["processed"] += 1
        batch.answer(work.request, stored)
        if orjson.loads(stored).get("ok"):
            self._after_success(work, batch)

    def _after_duplicate(self, work: Work, result: AppendResult, batch: Batch) -> None:
        """The script met an outcome stored meanwhile (a resend decided by the other handler): it was the answer,
        and its side effects are redone (they are idempotent) before the reply goes out."""
        if result.stored is not None and orjson.loads(result.stored).get("ok"):
            self._after_success(work, batch)

    def _after_success(self, work: Work, batch: Batch) -> None:
        if work.lock is not None:  # the request's own command was refused; only a lockout was recorded
            return
        command = work.request.command
        if isinstance(command, EraseCustomer):
            batch.erase.add(command.account)
        elif isinstance(command, CloseAccount | ChangePassword):
            batch.revoke.add(command.account)

    def _finish(self, batch: Batch) -> None:
        """Side effects that must follow the append, then replies and the acknowledgement, in one round trip.

        Replies go out only after the side effects, so a reply never announces an erasure or a revocation that
        has not happened yet; a crash before the acknowledgement redelivers the entries, and the stored outcomes
        make the redelivery answer the same and redo only the (idempotent) side effects.
        """
        for account in batch.erase:
            self.vault.destroy_data_key(account)
        for account in batch.revoke:
            self.sessions.revoke_all_for(account)
        commands: list[Command] = []
        for request_id, body in batch.replies + batch.encoded_batch_replies():
            key = self.keys.reply(request_id)
            commands.append(("RPUSH", key, body))
            commands.append(("EXPIRE", key, self.config.reply_ttl_s))
        ack_ids = list(dict.fromkeys(batch.ack_ids))
        if ack_ids:
            commands.append(("XACK", self.group.stream, GROUP, *ack_ids))
            commands.append(("XDEL", self.group.stream, *ack_ids))
        self.bus_direct.execute(commands)


def _decide_lock(data: dict[str, Any], state: AccountState) -> Decision | Rejection:
    """Record a login lockout reported by the authentication service (bumps the version, changes nothing else)."""
    if not state.exists:
        return Rejection(Reason.UNKNOWN_ACCOUNT, f"account {state.account_id} does not exist")
    new = state.bump()
    event = EventDraft("AccountLocked", (state.account_id,), {**data, "account": state.account_id})
    return Decision((event,), {state.account_id: new}, {"account": state.account_id})


def build_handler(client: redis.Redis, *, data_dir: Path, name: str, keys: Keys = KEYS,
                  bus: redis.Redis | None = None) -> CommandHandler:
    """A handler wired to the bank's master key and server id under ``data_dir``."""
    master_key = load_master_key(data_dir / "master.key")
    server_id_path = data_dir / "server_id"
    server_id = server_id_path.read_text().strip() if server_id_path.exists() else ""
    vault = PersonalDataVault(client, keys=keys, master_key=master_key)
    transport_key = None
    if (data_dir / "transport.key").exists():
        transport_key = load_transport_key(data_dir / "transport.key")
    return CommandHandler(client, bus=bus, keys=keys, vault=vault, name=name, server_id=server_id,
                          transport_key=transport_key)


def main(*, redis_url: str, bus_url: str | None = None, data_dir: Path, name: str, **_options: object) -> int:
    """Entry point of ``bankctl worker handler``: run until SIGTERM/SIGINT."""
    configure_logging()
    client = connect(redis_url)
    bus = connect_bus(bus_url, log_url=redis_url, log_client=client)
    handler = build_handler(client, data_dir=Path(data_dir), name=name, bus=bus)
    runner = WorkerRunner(handler, client=bus, keys=KEYS, name=name)
    runner.install_signal_handlers()
    return runner.run()
