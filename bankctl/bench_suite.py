"""The phases of ``bankctl bench``: the write path alone, then the full system; each figure a median of runs.

Phase 1 (write path): a throw-away bank with two handlers. Sequential, batched (batch requests), pipelined
(single-command requests) and paced command runs.
Phase 2 (full system): two handlers, two projectors, the notifier and the sealer. Batched runs with projector lag
sampled from the projectors' checkpoints, paced runs, paced queries, notifier catch-up into the outbox, Redis
memory per event, then (on a quiet bank, optionally filled to a million events) rebuild and audit rates.
Both phases end with the invariant check (conservation, no negative balance, no command id twice).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auth_zkp.principal import Principal
from bankctl.bench_env import BenchBank, start_bench_bank
from bankctl.bench_load import ClientStats, batch_size, open_accounts, percentile, run_clients
from bankctl.bench_probe import (
    CpuMeter,
    LagSampler,
    counters_delta,
    head,
    process_rows,
    redis_used_memory,
    wait_caught_up,
    worker_counters,
)
from bankctl.bench_rates import audit_rate, fill_log, outbox_lines, rebuild_rate, wait_notifier_caught_up
from eventstore.log import iterate

WRITE_MODES = ("sequential", "batched", "pipelined", "paced")
MONEY_EVENTS = frozenset({"MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred"})


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Every knob of a bench run (see ``bankctl bench --help``)."""

    accounts: int = 10_000
    clients: int = 2
    window: int = 1000
    operations: int = 60_000
    sequential_clients: tuple[int, ...] = (1, 4)
    sequential_operations: int = 5_000
    rates: tuple[float, ...] = (1000.0, 2000.0)
    paced_seconds: float = 5.0
    paced_client_rate: float = 1000.0  # open loop per client process (see bench_load._run_open_loop)
    query_rate: float = 1000.0
    runs: int = 3
    modes: tuple[str, ...] = WRITE_MODES
    full_system: bool = True
    fill_events: int = 0


Progress = Callable[[str], None]


def window_label(mode: str, options: BenchOptions) -> str:
    """How a windowed run's requests were shaped, for the table."""
    if mode == "batched":
        return (f"batched ({options.clients}x{options.window} in flight, "
                f"{batch_size(options.window)} per request)")
    return f"pipelined ({options.clients}x{options.window} in flight, 1 per request)"


def paced_clients(options: BenchOptions, rate: float) -> int:
    """One open-loop client process per ``paced_client_rate`` of offered load."""
    return max(1, math.ceil(rate / options.paced_client_rate))


def _quiet(_message: str) -> None:
    return None


class Ledger:
    """Money the clients were told was deposited or withdrawn: the invariant check's expectation."""

    def __init__(self) -> None:
        self.deposited = 0
        self.withdrawn = 0

    def add(self, results: list[ClientStats]) -> None:
        self.deposited += sum(r.deposited for r in results)
        self.withdrawn += sum(r.withdrawn for r in results)


def summarise(mode: str, results: list[ClientStats], wall: float) -> dict[str, Any]:
    latencies = [x for r in results for x in r.latencies_ms]
    sent = sum(r.sent for r in results)
    return {
        "mode": mode,
        "commands": sent,
        "per_s": sent / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "accepted": sum(r.ok for r in results),
        "rejected": sum(r.rejected for r in results),
        "missing": sum(r.missing for r in results),
    }


def median_row(label: str, per_run: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One table row: medians of the rates and percentiles, sums of the counts, and every run's rate."""
    row: dict[str, Any] = {"mode": label, "runs": len(per_run)}
    for key in ("per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"):
        row[key] = statistics.median(r[key] for r in per_run)
    for key in ("commands", "accepted", "rejected", "missing"):
        row[key] = sum(r[key] for r in per_run)
    row["per_s_runs"] = [round(r["per_s"]) for r in per_run]
    row.update(extra or {})
    return row


def check_invariants(bank: BenchBank, accounts: list[int], ledger: Ledger) -> dict[str, Any]:
    """Sum of balances equals deposits minus withdrawals; no negative balance; no command id twice."""
    client = bank.client()
    pipe = client.pipeline(transaction=False)
    for account in accounts:
        pipe.hget(bank.keys.account(account), "balance")
    balances = [int(b or 0) for b in pipe.execute()]
    command_ids: set[str] = set()
    duplicates = events = 0
    for stored in iterate(client, bank.keys):
        events += 1
        if stored.type in MONEY_EVENTS:  # an open appends two events with one command id
            command_id = stored.payload()["command_id"]
            duplicates += command_id in command_ids
            command_ids.add(command_id)
    total = sum(balances)
    expected = ledger.deposited - ledger.withdrawn
    return {
        "sum_of_balances": total,
        "deposits_minus_withdrawals": expected,
        "conserved": total == expected,
        "negative_balances": sum(1 for b in balances if b < 0),
        "duplicate_command_ids": duplicates,
        "events": events,
        "ok": total == expected and all(b >= 0 for b in balances) and duplicates == 0,
    }


def machine_description() -> dict[str, Any]:
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")  # noqa: SIM115
                      if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    try:
        memory_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))  # noqa: SIM115
    except (OSError, StopIteration):
        memory_kib = 0
    try:
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                       check=False).stdout.split()[2].removeprefix("v=")
    except (OSError, IndexError):
        redis_version = "?"
    return {"host": platform.node(), "cores": os.cpu_count(), "cpu": model, "memory_gib": round(memory_kib / 2**20, 1),
            "kernel": platform.release(), "python": f"{platform.python_implementation()} {platform.python_version()}",
            "redis": redis_version, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


PROBE_LOOPS = 2_000_000


def cpu_probe(rounds: int = 5) -> float:
    """Millions of iterations/s of a fixed pure-Python loop on one core: the median of ``rounds``.

    Why: these VMs share their host, and the same code measured half as fast on one day as on another. The probe,
    taken before and after the runs, says how fast the machine was, so reports from different days can be put
    side by side.
    """
    speeds = []
    for _ in range(rounds):
        began = time.perf_counter()
        total = 0
        for i in range(PROBE_LOOPS):
            total += i
        speeds.append(PROBE_LOOPS / (time.perf_counter() - began) / 1e6)
    return round(statistics.median(speeds), 1)


def prepare_bank(bank: BenchBank, count: int) -> tuple[list[int], dict[int, str]]:
    opened = open_accounts(bank.bus_client(), bank.keys, bank.admin_session(), count)
    store = bank.sessions()
    return opened, {a: store.create(Principal(account_id=a, role="customer")) for a in opened}


def _handlers_counters(bank: BenchBank) -> dict[str, dict[str, int]]:
    client = bank.bus_client()
    return {name: worker_counters(client, bank.keys, name) for name in bank.workers if name.startswith("handler")}


def handler_split(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """How the handlers shared the work of the measured runs (their heartbeat counters, which lag ~1 s)."""
    rows = []
    for name in sorted(after):
        delta = counters_delta(before.get(name, {}), after[name])
        rows.append({"handler": name, "processed": delta.get("processed", 0), "batches": delta.get("batches", 0),
                     "conflicts": delta.get("conflicts", 0), "claimed": delta.get("claimed", 0)})
    total = sum(r["processed"] for r in rows) or 1
    for row in rows:
        row["share"] = round(row["processed"] / total, 3)
        row["per_batch"] = round(row["processed"] / row["batches"], 1) if row["batches"] else 0.0
    return rows


def settle_disk() -> None:
    """Write back every dirty page before a measured run.

    With ``appendfsync always`` Redis waits for each fsync on its main thread, and an fsync queues behind
    whatever the kernel is writing back at that moment: the projectors' and the notifier's files from the
    previous phase. Seen: query p99 of 115-350 ms (``aof-fsync-always`` stalls of up to 373 ms in Redis's
    latency monitor) in the first runs after a batched phase; a maximum of 33 ms in eight runs after a sync.
    A run should measure its own load, not the last one's.
    """
    os.sync()


def _run(bank: BenchBank, sessions: dict[int, str], ledger: Ledger, *, mode: str, clients: int, operations: int,
         window: int = 100, rate: float = 0.0, seed: int) -> tuple[dict[str, Any], float]:
    settle_disk()
    results, wall = run_clients(str(bank.bus_server.socket), bank.keys.tag, sessions, clients=clients, mode=mode,
                                operations=operations, window=window, rate=rate, seed=seed)
    ledger.add(results)
    return summarise(mode, results, wall), wall


def _settle_counters(bank: BenchBank) -> dict[str, dict[str, int]]:
    time.sleep(1.2)  # heartbeats carry the counters once a second
    return _handlers_counters(bank)


def write_path_phase(options: BenchOptions, progress: Progress = _quiet) -> dict[str, Any]:
    """Two handlers and nothing else: the write path's own throughput and latency."""
    bank = start_bench_bank(handlers=2)
    try:
        opened, sessions = prepare_bank(bank, options.accounts)
        ledger = Ledger()
        rows: list[dict[str, Any]] = []
        split: list[dict[str, Any]] = []
        for mode in options.modes:
            plans: list[tuple[str, dict[str, Any]]] = []
            if mode == "sequential":
                for clients in options.sequential_clients:
                    plans.append((f"sequential ({clients} client{'s' if clients > 1 else ''})",
                                  {"clients": clients, "operations": options.sequential_operations}))
            elif mode in ("batched", "pipelined"):
                plans.append((window_label(mode, options),
                              {"clients": options.clients, "operations": options.operations,
                               "window": options.window}))
            else:
                for rate in options.rates:
                    plans.append((f"paced {rate:,.0f}/s ({paced_clients(options, rate)} clients)",
                                  {"clients": paced_clients(options, rate), "rate": rate,
                                   "operations": int(rate * options.paced_seconds)}))
            for label, plan in plans:
                before = _settle_counters(bank) if mode == "batched" else {}
                per_run = []
                for run in range(options.runs):
                    progress(f"write path: {label}, run {run + 1}/{options.runs}")
                    summary, _ = _run(bank, sessions, ledger, mode=mode, seed=run + 1, **plan)
                    per_run.append(summary)
                rows.append(median_row(label, per_run))
                if mode == "batched":
                    split = handler_split(before, _settle_counters(bank))
        progress("write path: invariants")
        invariants = check_invariants(bank, opened, ledger)
        return {"processes": "redis-server + bus + 2 handlers", "results": rows, "handler_split": split,
                "invariants": invariants}
    finally:
        bank.close()


def full_system_phase(options: BenchOptions, progress: Progress = _quiet) -> dict[str, Any]:
    """Handlers, both projectors, the notifier and the sealer: the whole bank under load."""
    bank = start_bench_bank(handlers=2, projectors=2, notifier=True, sealer=True)
    try:
        client = bank.client()
        databases = {f"database{i}": bank.data_dir / f"database{i}.db" for i in (1, 2)}
        opened, sessions = prepare_bank(bank, options.accounts)
        wait_caught_up(client, bank.keys, databases)
        ledger = Ledger()
        rows: list[dict[str, Any]] = []

        progress("full system: batched runs with projector lag sampling")
        per_run, lags, catch_ups, memory = [], [], [], []
        before = _settle_counters(bank)
        meter = CpuMeter(_bank_pids(bank))
        for run in range(options.runs):
            progress(f"full system: batched, run {run + 1}/{options.runs}")
            used, (seq_before, _) = redis_used_memory(client), head(client, bank.keys)
            sampler = LagSampler(bank.client(), bank.keys, databases)
            sampler.start()
            meter.start()
            try:
                summary, _ = _run(bank, sessions, ledger, mode="batched", clients=options.clients,
                                  operations=options.operations, window=options.window, seed=100 + run)
            finally:
                sampler.stop()
            catch_ups.append(wait_caught_up(client, bank.keys, databases))
            wait_notifier_caught_up(client, bank.keys, timeout_s=300.0)
            meter.stop(summary["commands"])
            seq_after, _ = head(client, bank.keys)
            if seq_after > seq_before:
                memory.append((redis_used_memory(client) - used) / (seq_after - seq_before))
            per_run.append(summary)
            lags.append(sampler.summary())
        rows.append(median_row(window_label("batched", options), per_run))
        split = handler_split(before, _settle_counters(bank))
        lag = _median_lag(lags, catch_ups)

        for rate in options.rates:
            per_run = []
            for run in range(options.runs):
                # Start each paced run on a quiet bank: the notifier's backlog from the batched runs would
                # otherwise compete for the two cores and be measured as command latency.
                wait_caught_up(client, bank.keys, databases)
                wait_notifier_caught_up(client, bank.keys, timeout_s=300.0)
                progress(f"full system: paced {rate:,.0f}/s, run {run + 1}/{options.runs}")
                summary, _ = _run(bank, sessions, ledger, mode="paced", clients=paced_clients(options, rate),
                                  rate=rate, operations=int(rate * options.paced_seconds), seed=200 + run)
                per_run.append(summary)
            rows.append(median_row(f"paced {rate:,.0f}/s ({paced_clients(options, rate)} clients)", per_run))
        per_run = []
        for run in range(options.runs):
            wait_caught_up(client, bank.keys, databases)
            wait_notifier_caught_up(client, bank.keys, timeout_s=300.0)
            progress(f"full system: queries paced {options.query_rate:,.0f}/s, run {run + 1}/{options.runs}")
            summary, _ = _run(bank, sessions, ledger, mode="queries",
                              clients=paced_clients(options, options.query_rate),
                              rate=options.query_rate, operations=int(options.query_rate * options.paced_seconds),
                              seed=300 + run)
            per_run.append(summary)
        queries = median_row(f"queries paced {options.query_rate:,.0f}/s", per_run)

        notifier = notifier_phase(bank, sessions, ledger, options, progress)
        resources = process_rows(_bank_pids(bank))

        filled = None
        if options.fill_events:
            seq_now, _ = head(client, bank.keys)
            missing = options.fill_events - seq_now
            if missing > 0:
                progress(f"full system: appending {missing:,} events directly for the rebuild and audit figures")
                result = fill_log(client, bank.keys, bank.data_dir, opened, missing)
                ledger.deposited += result.deposited
                filled = {"events": result.events, "seconds": round(result.seconds, 2),
                          "events_per_s": result.events / result.seconds if result.seconds else 0.0}
            wait_caught_up(client, bank.keys, databases, timeout_s=max(60.0, options.fill_events / 5_000))
        wait_notifier_caught_up(client, bank.keys)
        time.sleep(1.5)  # the sealer seals the head at most a second later
        rebuilds, audits = [], []
        for run in range(options.runs):
            progress(f"full system: rebuild, run {run + 1}/{options.runs}")
            rebuilds.append(rebuild_rate(client, bank.keys, bank.data_dir))
        for run in range(options.runs):
            progress(f"full system: audit verify, run {run + 1}/{options.runs}")
            audits.append(audit_rate(client, bank.keys, bank.data_dir, databases))
        progress("full system: invariants")
        invariants = check_invariants(bank, opened, ledger)
        invariants["audit_ok"] = all(a["ok"] for a in audits)
        invariants["ok"] = invariants["ok"] and invariants["audit_ok"]
        return {
            "processes": "redis-server + bus + 2 handlers + 2 projectors + notifier + sealer",
            "results": rows,
            "handler_split": split,
            "projector_lag": lag,
            "queries": queries,
            "notifier": notifier,
            "redis_bytes_per_event": statistics.median(memory) if memory else None,
            "redis_used_memory_mib": round(redis_used_memory(client) / 2**20, 1),
            "resident_memory": resources,
            "cpu_per_command": meter.rows(),
            "filled": filled,
            "rebuild": _median_rate(rebuilds),
            "audit": {**_median_rate(audits), "findings": audits[-1]["findings"] if audits else []},
            "invariants": invariants,
        }
    finally:
        bank.close()


def _bank_pids(bank: BenchBank) -> dict[str, int]:
    """The bank's processes by name: the Redis servers, then the workers."""
    servers = {"redis-server": bank.redis.pid, **({"bus redis-server": bank.bus.pid} if bank.bus else {})}
    return {**servers, **{name: process.pid for name, process in bank.workers.items()}}


def notifier_phase(bank: BenchBank, sessions: dict[int, str], ledger: Ledger, options: BenchOptions,
                   progress: Progress) -> dict[str, Any]:
    """Stop the notifier, let events pile up, start it again and time its catch-up into the outbox."""
    client = bank.client()
    wait_notifier_caught_up(client, bank.keys)
    per_run = []
    for run in range(options.runs):
        progress(f"full system: notifier catch-up, run {run + 1}/{options.runs}")
        bank.kill_worker("notifier")
        backlog_from, _ = head(client, bank.keys)
        _run(bank, sessions, ledger, mode="batched", clients=options.clients, window=options.window,
             operations=max(options.operations // 4, 100), seed=400 + run)
        backlog_to, _ = head(client, bank.keys)
        lines = outbox_lines(bank.data_dir)
        bank.restart_worker("notifier")
        bank.wait_for_heartbeats()
        seconds = wait_notifier_caught_up(client, bank.keys)
        sms = outbox_lines(bank.data_dir) - lines
        events = backlog_to - backlog_from
        per_run.append({"events": events, "sms": sms, "seconds": seconds,
                        "events_per_s": events / seconds if seconds else 0.0,
                        "sms_per_s": sms / seconds if seconds else 0.0})
    return {
        "runs": len(per_run),
        "events_per_s": statistics.median(r["events_per_s"] for r in per_run),
        "sms_per_s": statistics.median(r["sms_per_s"] for r in per_run),
        "backlog_events": statistics.median(r["events"] for r in per_run),
        "sms": sum(r["sms"] for r in per_run),
    }


def _median_rate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {"runs": 0}
    return {"runs": len(runs), "events": statistics.median(r["events"] for r in runs),
            "events_per_s": statistics.median(r["events_per_s"] for r in runs),
            "per_s_runs": [round(r["events_per_s"]) for r in runs]}


def _median_lag(lags: list[dict[str, dict[str, float]]], catch_ups: list[float]) -> dict[str, Any]:
    """Per database: the median over runs of each run's maximum and median lag."""
    out: dict[str, Any] = {}
    names = sorted({name for run in lags for name in run})
    for name in names:
        runs = [run[name] for run in lags if name in run]
        out[name] = {key: statistics.median(r[key] for r in runs)
                     for key in ("max_events", "median_events", "max_s", "median_s")}
        out[name]["samples"] = sum(r["samples"] for r in runs)
    out["catch_up_after_load_s"] = statistics.median(catch_ups) if catch_ups else None
    return out


def run_bench(options: BenchOptions, progress: Progress = _quiet) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine_description(), "fsync": "always", "options": _options_json(options)}
    report["machine"]["cpu_probe_mloops_per_s"] = [cpu_probe()]
    report["write_path"] = write_path_phase(options, progress)
    report["full_system"] = full_system_phase(options, progress) if options.full_system else None
    checks = {"write_path": report["write_path"]["invariants"]["ok"]}
    if report["full_system"] is not None:
        checks["full_system"] = report["full_system"]["invariants"]["ok"]
    missing = sum(r["missing"] for phase in ("write_path", "full_system") if report[phase]
                  for r in report[phase]["results"])
    if report["full_system"]:
        missing += report["full_system"]["queries"]["missing"]
    report["machine"]["cpu_probe_mloops_per_s"].append(cpu_probe())
    report["invariants"] = {**checks, "missing_replies": missing, "ok": all(checks.values()) and missing == 0}
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def _options_json(options: BenchOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in BenchOptions.__slots__}  # type: ignore[attr-defined]
