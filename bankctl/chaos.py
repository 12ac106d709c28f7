"""The chaos runner (``bankctl chaos``, ``make chaos``): seeded fault runs against a throw-away bank.

A run builds a whole bank (redis-server with AOF ``always``, two handlers, two projectors, the notifier and the
sealer), drives a steady load of commands and queries from client threads that resend with the same
``command_id`` when no reply comes, and meanwhile follows a fault schedule: SIGKILL and restart of handlers,
projectors, the notifier, the sealer and redis-server itself, and deletion of a projection database. Then it
lets the bank settle and checks the invariants (:meth:`ChaosRun._check`, with the pure checkers of
:mod:`bankctl.chaos_checks`; the load is :mod:`bankctl.chaos_load`).

Why a schedule that is a pure function of the seed (:func:`plan`): a failing run prints its seed, and the same
seed replays the same faults in the same order at the same offsets (the exact interleaving with the load still
depends on timing, so a rare race may need a few tries). The load itself is also drawn from the seed.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bankctl.bench_env import BenchBank, start_bench_bank
from bankctl.chaos_checks import (
    ChaosFinding,
    balance_timeline,
    check_outbox,
    check_outcomes,
    check_queries,
    command_counts,
    sms_expected,
)
from bankctl.chaos_load import LoadClient
from bankctl.embedded_redis import aof_repairs
from commands.client import Request
from eventstore.keys import Keys

WORKERS = ("handler-1", "handler-2", "projector-1", "projector-2", "notifier", "sealer")
DATABASES = ("database1.db", "database2.db")
FAULT_KINDS = ("handler", "projector", "notifier", "sealer", "redis", "bus", "delete_db")
SERVER_VERBS = {"redis": ("kill_redis", "start_redis"), "bus": ("kill_bus", "start_bus")}
MONEY_TYPES = frozenset({"MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred"})
INITIAL_CENTS = 50_000
MAX_SELF_EXITS = 3


# ---------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    runs: int
    fault_s: float
    """How long the load runs with faults injected."""
    mean_gap_s: float
    """Mean pause between two faults."""
    accounts: int = 24
    clients: int = 4
    window: int = 8
    """Requests in flight per client."""
    settle_s: float = 90.0
    drain_s: float = 90.0
    fsync: str = "always"
    """Redis ``appendfsync``; anything but ``always`` may lose acknowledged commands (the harness must see it)."""


PROFILES: dict[str, Profile] = {
    "short": Profile("short", runs=1, fault_s=45.0, mean_gap_s=2.5),
    "long": Profile("long", runs=5, fault_s=180.0, mean_gap_s=2.0, accounts=48, clients=6),
}


# ---------------------------------------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class Action:
    """One step of the schedule, ``at`` seconds after the load started."""

    at: float
    verb: str
    """``kill`` / ``start`` a worker, ``kill_redis`` / ``start_redis`` (the log's Redis, restarted from its AOF),
    ``kill_bus`` / ``start_bus`` (the request bus, restarted empty), or ``delete`` a database file."""
    target: str

    def describe(self) -> str:
        return f"t={self.at:6.2f}s {self.verb} {self.target}"


def _target(kind: str, rng: random.Random) -> str:
    if kind == "handler":
        return rng.choice(("handler-1", "handler-2"))
    if kind == "projector":
        return rng.choice(("projector-1", "projector-2"))
    if kind == "delete_db":
        return rng.choice(DATABASES)
    return kind


def plan(seed: int, *, duration_s: float, mean_gap_s: float) -> list[Action]:
    """The fault schedule of a run: a pure function of its arguments.

    Every kind of fault happens at least once (in a seeded order) when the run is long enough, then kinds are
    drawn at random. A killed process stays down for a random while (sometimes restarted at once, sometimes
    long enough for failover to matter); faults may overlap (a handler can die while Redis is down), but a
    process that is down is not killed again. Every process is running again before ``duration_s``.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not security
    first = list(FAULT_KINDS)
    rng.shuffle(first)
    down_until: dict[str, float] = {}
    actions: list[Action] = []
    t = rng.uniform(1.0, 3.0)
    while t < duration_s - 1.0:
        kind = first.pop(0) if first else rng.choice(FAULT_KINDS)
        target = _target(kind, rng)
        if kind == "delete_db":
            actions.append(Action(round(t, 3), "delete", target))
        elif down_until.get(target, 0.0) <= t:
            limit = max(0.0, duration_s - 0.5 - t)
            if kind in SERVER_VERBS:
                down = min(limit, rng.choice((0.0, rng.uniform(0.2, 2.5))))
                verbs = SERVER_VERBS[kind]
            else:
                down = min(limit, rng.choice((0.0, rng.uniform(0.3, 1.5), rng.uniform(1.5, 5.0))))
                verbs = ("kill", "start")
            actions.append(Action(round(t, 3), verbs[0], target))
            actions.append(Action(round(t + down, 3), verbs[1], target))
            down_until[target] = t + down + 0.2
        t += rng.expovariate(1.0 / mean_gap_s) + 0.2
    order = {"kill_redis": 0, "kill_bus": 0, "kill": 1, "delete": 2, "start_redis": 3, "start_bus": 3, "start": 4}
    return sorted(actions, key=lambda a: (a.at, order[a.verb], a.target))


# ---------------------------------------------------------------------------------------------- a run


@dataclass
class RunReport:
    seed: int
    profile: str
    findings: list[ChaosFinding] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    kept_dir: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "profile": self.profile, "ok": self.ok, "seconds": round(self.seconds, 1),
                "findings": [f.to_json() for f in self.findings], "actions": self.actions, "stats": self.stats,
                "kept_dir": self.kept_dir}


class ChaosRun:
    """One seeded run: set up, load + faults, settle, check."""

    def __init__(self, seed: int, profile: Profile, *, say: Callable[[str], None] = lambda _t: None) -> None:
        self.seed = seed
        self.profile = profile
        self.say = say
        self.report = RunReport(seed=seed, profile=profile.name)
        self.bank: BenchBank | None = None
        self.killed: set[str] = set()
        self.exits: dict[str, list[str]] = {}
        self.redis_down = False

    def finding(self, check: str, message: str) -> None:
        self.report.findings.append(ChaosFinding(check, message))

    # ------------------------------------------------------------------ setup

    def _setup(self) -> tuple[list[int], dict[int, str], dict[str, Request], dict[str, dict[str, Any]]]:
        self.bank = bank = start_bench_bank(handlers=2, projectors=2, notifier=True, sealer=True,
                                                  fsync=self.profile.fsync)
        rng = random.Random(self.seed ^ 0x5EED)  # noqa: S311 - workload shape
        admin = bank.admin_session()
        opens = [Request("OpenAccount", {
            "type": "OpenAccount", "ssn": f"123-45-{1000 + i:04d}", "phone": f"+1555{rng.randrange(10**7):07d}",
            "first_name": "Chaos", "last_name": f"Customer{i}", "sms_opt_in": i % 2 == 0,
            "credential": _credential()}, session=admin) for i in range(self.profile.accounts)]
        replies = self._settle_requests(opens)
        accounts = [int(replies[r.command_id]["account"]) for r in opens]
        funding = [Request("Deposit", {"type": "Deposit", "account": a, "amount": INITIAL_CENTS}, session=admin)
                   for a in accounts]
        replies.update(self._settle_requests(funding))
        sessions = {a: bank.customer_session(a) for a in accounts}
        requests = {r.command_id: r for r in opens + funding}
        return accounts, sessions, requests, replies

    def _settle_requests(self, requests: list[Request]) -> dict[str, dict[str, Any]]:
        """Setup commands (no faults yet): every one must be accepted."""
        assert self.bank is not None
        client = self.bank.bus_client()
        out: dict[str, dict[str, Any]] = {}
        ids = {secrets.token_hex(16): r for r in requests}
        pipe = client.pipeline(transaction=False)
        for request_id, request in ids.items():
            pipe.xadd(self.bank.keys.commands, request.fields(request_id))
        pipe.execute()
        for request_id, request in ids.items():
            popped = client.blpop([self.bank.keys.reply(request_id)], timeout=25)
            if popped is None:
                raise RuntimeError(f"setup: no reply to {request.type}")
            reply = orjson.loads(popped[1])
            if not reply.get("ok"):
                raise RuntimeError(f"setup: {request.type} refused: {reply}")
            out[request.command_id] = reply
        return out

    # ------------------------------------------------------------------ faults

    def _apply(self, action: Action) -> None:
        bank = self.bank
        assert bank is not None
        if action.verb == "kill":
            bank.kill_worker(action.target)
            self.killed.add(action.target)
        elif action.verb == "start":
            bank.restart_worker(action.target)
            self.killed.discard(action.target)
        elif action.verb == "kill_redis":
            bank.kill_redis()
            self.redis_down = True
        elif action.verb == "start_redis":
            bank.restart_redis()
            self.redis_down = False
        elif action.verb == "kill_bus":
            bank.kill_bus()
        elif action.verb == "start_bus":
            bank.restart_bus()
        elif action.verb == "delete":
            path = bank.data_dir / action.target
            path.unlink(missing_ok=True)

    def _watch_workers(self) -> None:
        """A worker that exits on its own is a finding; it is restarted (as the supervisor would) to go on,
        up to :data:`MAX_SELF_EXITS` times (a crash loop is reported once, with its last log lines)."""
        assert self.bank is not None
        for name, proc in list(self.bank.workers.items()):
            if name in self.killed or proc.poll() is None:
                continue
            exits = self.exits.setdefault(name, [])
            exits.append(f"code {proc.returncode}: {_log_tail(self.bank.root / f'{name}.log')}")
            if len(exits) <= MAX_SELF_EXITS:
                self.bank.restart_worker(name)
            else:
                self.bank.workers.pop(name)

    def _report_exits(self) -> None:
        for name, exits in sorted(self.exits.items()):
            self.finding("worker", f"{name} exited by itself {len(exits)} time(s); last {exits[-1]}")

    def _run_schedule(self, actions: list[Action], began: float, duration_s: float) -> None:
        for action in actions:
            while time.monotonic() - began < action.at:
                self._watch_workers()
                time.sleep(min(0.05, max(0.0, action.at - (time.monotonic() - began))))
            try:
                self._apply(action)
                self.report.actions.append(f"{action.describe()} (done at t={time.monotonic() - began:.2f}s)")
            except Exception as error:  # a fault that cannot be applied or undone is itself a finding
                self.finding("fault", f"{action.describe()} failed: {error!r}")
        while time.monotonic() - began < duration_s:
            self._watch_workers()
            time.sleep(0.05)

    # ------------------------------------------------------------------ settle and check

    def _settle(self) -> bool:
        from eventstore.log import last_seq
        from eventstore.seals import last_seal
        from notifier.status import notifier_status
        from projections.schema import open_readonly, read_checkpoint

        bank = self.bank
        assert bank is not None
        deadline = time.monotonic() + self.profile.settle_s
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._watch_workers()
            try:
                client = bank.client()
                head = last_seq(client, bank.keys)
                checkpoints = []
                for name in DATABASES:
                    try:
                        conn = open_readonly(bank.data_dir / name)
                        try:
                            checkpoints.append(read_checkpoint(conn))
                        finally:
                            conn.close()
                    except Exception:  # noqa: BLE001 - missing, being rebuilt or locked: not settled yet
                        checkpoints.append(-1)
                notifier = notifier_status(client, bank.keys)
                seal = last_seal(client, bank.keys)
                state = {"head": head, "checkpoints": checkpoints, "notifier_lag": notifier["lag"],
                         "sealed": seal.seq if seal else 0}
                if all(c == head for c in checkpoints) and notifier["lag"] == 0 and state["sealed"] == head:
                    self.report.stats["settled"] = state
                    return True
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.2)
        self.finding("settle", f"the bank did not settle within {self.profile.settle_s:.0f}s: {state}")
        return False

    def _check(self, requests: dict[str, Request], replies: dict[str, dict[str, Any]],
               queries: list[tuple[Request, dict[str, Any]]], unanswered: list[Request],
               tally: tuple[int, int]) -> None:
        from bankctl.audit import verify_redis
        from eventstore.log import iterate
        from eventstore.pii import PersonalDataVault, load_master_key
        from eventstore.seals import load_public_key
        from projections.compare import diff_databases

        bank = self.bank
        assert bank is not None
        client = bank.client()
        keys = bank.keys
        events = [stored.payload() for stored in iterate(client, keys)]
        log_counts = command_counts(events)
        stored = _stored_outcomes(client, keys, list(replies))
        self.report.findings += check_outcomes(requests, replies, log_counts, stored, unanswered)

        # Money: the client's tally, the log and the write side agree; nothing negative.
        deposited, withdrawn = tally
        log_in = sum(b["data"]["amount"] for b in events if b["type"] == "MoneyDeposited")
        log_out = sum(b["data"]["amount"] for b in events if b["type"] == "MoneyWithdrawn")
        timeline = balance_timeline(events)
        balances = {a: int(client.hget(keys.account(a), "balance") or 0) for a in timeline}
        total = sum(balances.values())
        if not deposited - withdrawn == log_in - log_out == total:
            self.finding("money", f"client tally {deposited - withdrawn}, log {log_in - log_out}, "
                                  f"sum of balances {total}")
        negative = {a: b for a, b in balances.items() if b < 0}
        if negative:
            self.finding("money", f"negative balances: {negative}")
        replayed = {a: balances_[-1] for a, (_s, balances_) in timeline.items()}
        if replayed != balances:
            diff = {a: (balances[a], replayed.get(a)) for a in balances if balances[a] != replayed.get(a)}
            self.finding("money", f"write side differs from the log's replay: {dict(list(diff.items())[:5])}")

        query_findings, query_stats = check_queries(queries, timeline)
        self.report.findings += query_findings

        # SMS: exactly once per opted-in movement.
        expected, _opted = sms_expected(events)
        outbox = bank.data_dir / "outbox.jsonl"
        lines = outbox.read_bytes().splitlines() if outbox.exists() else []
        self.report.findings += check_outbox(lines, expected)

        # Both read models identical; the full audit clean.
        vault = PersonalDataVault(client, keys=keys, master_key=load_master_key(bank.data_dir / "master.key"))
        paths = {name: bank.data_dir / name for name in DATABASES}
        try:
            diff = diff_databases(paths["database1.db"], paths["database2.db"], client=client, keys=keys, pii=vault)
            if not diff.equal:
                self.finding("databases", f"database1.db and database2.db differ at seq {diff.seq}: "
                                          f"{diff.differences[:2]}")
        except Exception as error:  # noqa: BLE001 - any failure to compare is a finding, not a crash
            self.finding("databases", f"could not compare the databases: {error!r}")
        audit = verify_redis(client, keys, public_key=load_public_key(bank.data_dir / "signing.pub"),
                             databases=paths, require_databases=True)
        for item in audit.findings:
            self.finding("audit", f"[{item.check}] seq {item.seq}: {item.message}")
        self.report.stats.update({
            "events": len(events), "commands": len(replies),
            "accepted": sum(1 for r in replies.values() if r.get("ok")),
            "refused": sum(1 for r in replies.values() if not r.get("ok")),
            "queries": query_stats, "sms": len(lines), "sms_expected": len(expected),
            "audit_warnings": audit.warnings,
        })

    # ------------------------------------------------------------------ the whole run

    def run(self, *, keep_on_failure: bool = False) -> RunReport:
        started = time.monotonic()
        profile = self.profile
        try:
            accounts, sessions, requests, replies = self._setup()
            stop = threading.Event()
            clients = []
            for c in range(profile.clients):
                own = [(a, sessions[a]) for a in accounts[c::profile.clients]]
                clients.append(LoadClient(self.bank, own=own, everyone=accounts,  # type: ignore[arg-type]
                                          seed=self.seed * 100 + c, window=profile.window, stop=stop,
                                          drain_s=profile.drain_s))
            actions = plan(self.seed, duration_s=profile.fault_s, mean_gap_s=profile.mean_gap_s)
            self.say(f"seed {self.seed}: {len(actions)} fault actions over {profile.fault_s:.0f}s, "
                     f"{profile.clients} clients")
            began = time.monotonic()
            for client in clients:
                client.start()
            try:
                self._run_schedule(actions, began, profile.fault_s)
            finally:
                stop.set()
                for client in clients:
                    client.join(profile.drain_s + 30)
            self.say(f"seed {self.seed}: load stopped; settling")
            deposited = INITIAL_CENTS * len(accounts)
            withdrawn = 0
            queries: list[tuple[Request, dict[str, Any]]] = []
            unanswered: list[Request] = []
            for client in clients:
                requests.update(client.log.requests)
                replies.update(client.log.replies)
                queries += client.log.queries
                unanswered += client.log.unanswered
                for command_id, reply in client.log.replies.items():
                    request = client.log.requests[command_id]
                    if reply.get("ok") and request.type == "Deposit":
                        deposited += request.payload["amount"]
                    elif reply.get("ok") and request.type == "Withdraw":
                        withdrawn += request.payload["amount"]
            self.report.stats.update({
                "resends": sum(c.log.resends for c in clients),
                "connection_errors": sum(c.log.connection_errors for c in clients),
            })
            self._settle()
            self.report.stats["aof_repairs"] = aof_repairs(self.bank.redis.directory)
            self._watch_workers()
            self._report_exits()
            self._check(requests, replies, queries, unanswered, (deposited, withdrawn))
        except Exception as error:  # noqa: BLE001 - a run that breaks is reported with its seed, not raised
            self.finding("harness", f"the run broke: {error!r}")
            self._report_exits()
        finally:
            self.report.seconds = time.monotonic() - started
            if self.bank is not None:
                if keep_on_failure and not self.report.ok:
                    self._stop_keeping()
                else:
                    self.bank.close()
        return self.report

    def _stop_keeping(self) -> None:
        """Stop the processes but keep the directory (logs, AOF, databases, outbox) for a post-mortem."""
        assert self.bank is not None
        for proc in self.bank.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.bank.workers.values():
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001
                proc.kill()
        self.bank.redis.stop()
        if self.bank.bus is not None:
            self.bank.bus.stop()
        self.report.kept_dir = str(self.bank.root)


def _credential() -> dict[str, Any]:
    return {"salt": secrets.token_hex(16), "kdf": {"algorithm": "argon2id", "memory_kib": 8192, "iterations": 1,
                                                   "lanes": 1}, "public_key": secrets.token_hex(32)}


def _stored_outcomes(client: redis.Redis, keys: Keys, command_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for start in range(0, len(command_ids), 1000):
        chunk = command_ids[start:start + 1000]
        values = client.mget([keys.command_outcome(c) for c in chunk])
        for command_id, raw in zip(chunk, values, strict=True):
            out[command_id] = orjson.loads(raw) if raw is not None else None
    return out


def _log_tail(path: Path, size: int = 1200) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - size))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return "(no log)"


def run_profile(profile: Profile, *, seeds: list[int], say: Callable[[str], None] = lambda _t: None,
                keep_on_failure: bool = False) -> list[RunReport]:
    reports = []
    for seed in seeds:
        report = ChaosRun(seed, profile, say=say).run(keep_on_failure=keep_on_failure)
        say(f"seed {seed}: {'OK' if report.ok else 'FAILED'} in {report.seconds:.1f}s "
            f"({len(report.findings)} findings)")
        reports.append(report)
    return reports
