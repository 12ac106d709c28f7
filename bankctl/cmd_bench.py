"""``bankctl bench``: throughput and latency of the write path, measured end to end (submit to reply).

It builds a throw-away bank (own redis-server with AOF ``always``, two handler processes), opens accounts,
drives them from several client processes and checks the invariants at the end. Figures are medians of
``--runs`` runs; the table says which machine produced them.
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import click

from bankctl.bench_env import BenchBank, start_bench_bank
from bankctl.bench_load import ClientStats, open_accounts, percentile, run_clients
from bankctl.output import emit, json_option, table
from eventstore.log import iterate

MODES = ("sequential", "batched", "paced")


def _summarise(mode: str, results: list[ClientStats], wall: float) -> dict[str, Any]:
    latencies = [x for r in results for x in r.latencies_ms]
    sent = sum(r.sent for r in results)
    return {
        "mode": mode,
        "commands": sent,
        "commands_per_s": sent / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "accepted": sum(r.ok for r in results),
        "rejected": sum(r.rejected for r in results),
        "missing": sum(r.missing for r in results),
        "deposited": sum(r.deposited for r in results),
        "withdrawn": sum(r.withdrawn for r in results),
        "transfers": sum(r.transfers for r in results),
    }


def check_invariants(bank: BenchBank, accounts: list[int], deposited: int, withdrawn: int) -> dict[str, Any]:
    """Sum of balances equals deposits minus withdrawals; no negative balance; no command id twice."""
    client = bank.client()
    pipe = client.pipeline(transaction=False)
    for account in accounts:
        pipe.hget(bank.keys.account(account), "balance")
    balances = [int(b or 0) for b in pipe.execute()]
    command_ids: set[str] = set()
    duplicates = 0
    events = 0
    for stored in iterate(client, bank.keys):
        events += 1
        command_id = stored.payload()["command_id"]
        if stored.type in ("MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred"):
            if command_id in command_ids:
                duplicates += 1
            command_ids.add(command_id)
    total = sum(balances)
    return {
        "sum_of_balances": total,
        "deposits_minus_withdrawals": deposited - withdrawn,
        "conserved": total == deposited - withdrawn,
        "negative_balances": sum(1 for b in balances if b < 0),
        "duplicate_command_ids": duplicates,
        "events": events,
        "ok": total == deposited - withdrawn and all(b >= 0 for b in balances) and duplicates == 0,
    }


def machine_description() -> str:
    return f"{platform.node()}: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def run_bench(*, accounts: int, clients: int, operations: int, modes: tuple[str, ...], runs: int, window: int,
              rate: float) -> dict[str, Any]:
    bank = start_bench_bank(handlers=2)
    try:
        client = bank.client()
        opened = open_accounts(client, bank.keys, bank.admin_session(), accounts)
        sessions = {a: bank.customer_session(a) for a in opened}
        deposited = withdrawn = 0
        rows: list[dict[str, Any]] = []
        for mode in modes:
            per_run = []
            for run in range(runs):
                results, wall = run_clients(str(bank.redis.socket), bank.keys.tag, sessions, clients=clients,
                                            mode=mode, operations=operations, window=window, rate=rate,
                                            seed=run + 1)
                summary = _summarise(mode, results, wall)
                deposited += summary["deposited"]
                withdrawn += summary["withdrawn"]
                per_run.append(summary)
            row = {key: per_run[0][key] for key in ("mode",)}
            for key in ("commands_per_s", "p50_ms", "p95_ms", "p99_ms"):
                row[key] = statistics.median(r[key] for r in per_run)
            for key in ("commands", "accepted", "rejected", "missing"):
                row[key] = sum(r[key] for r in per_run)
            row["runs"] = runs
            rows.append(row)
        invariants = check_invariants(bank, opened, deposited, withdrawn)
        return {"machine": machine_description(), "fsync": "always", "handlers": 2, "clients": clients,
                "accounts": accounts, "rate": rate, "window": window, "results": rows, "invariants": invariants}
    finally:
        bank.close()


def _human(report: dict[str, Any]) -> str:
    rows = [{**r, "commands_per_s": f"{r['commands_per_s']:,.0f}", "p50_ms": f"{r['p50_ms']:.2f}",
             "p95_ms": f"{r['p95_ms']:.2f}", "p99_ms": f"{r['p99_ms']:.2f}"} for r in report["results"]]
    inv = report["invariants"]
    lines = [
        f"machine: {report['machine']}; redis appendfsync={report['fsync']}; {report['handlers']} handlers; "
        f"{report['clients']} client processes; {report['accounts']} accounts",
        table(rows, ["mode", "runs", "commands", "commands_per_s", "p50_ms", "p95_ms", "p99_ms", "accepted",
                     "rejected", "missing"]),
        "(batched: latency is per pipelined window; paced: from each request's scheduled send time)",
        f"invariants: sum of balances {inv['sum_of_balances']} == deposits - withdrawals "
        f"{inv['deposits_minus_withdrawals']}: {inv['conserved']}; negative balances {inv['negative_balances']}; "
        f"duplicate command ids {inv['duplicate_command_ids']}; events {inv['events']}",
    ]
    return "\n".join(lines)


@click.command("bench")
@click.option("--accounts", default=200, show_default=True, help="Customer accounts to open.")
@click.option("--clients", default=4, show_default=True, help="Client processes.")
@click.option("--operations", default=20_000, show_default=True, help="Commands per run (all clients together).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), help="Modes to run (default: all).")
@click.option("--runs", default=3, show_default=True, help="Runs per mode; figures are medians.")
@click.option("--window", default=200, show_default=True, help="Requests in flight per client in batched mode.")
@click.option("--rate", default=2000.0, show_default=True, help="Offered commands/s in paced mode.")
@json_option
def bench(accounts: int, clients: int, operations: int, modes: tuple[str, ...], runs: int, window: int,
          rate: float, as_json: bool) -> None:
    """Benchmark the write path on a throw-away bank (never the running one)."""
    report = run_bench(accounts=accounts, clients=clients, operations=operations, modes=modes or MODES,
                       runs=runs, window=window, rate=rate)
    emit(as_json, report, lambda: _human(report))
    if not report["invariants"]["ok"] or any(r["missing"] for r in report["results"]):
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(bench)
