"""``bankctl bench``: the benchmark report of the whole bank, measured end to end on throw-away banks.

Two phases (see :mod:`bankctl.bench_suite`): the write path alone (two handlers), then the full system (two
handlers, two projectors, the notifier, the sealer). Every figure is the median of ``--runs`` runs; the report
says which machine produced it, and ends with the invariant checks. It never touches a running bank.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from bankctl.bench_suite import WRITE_MODES, BenchOptions, run_bench
from bankctl.output import emit, json_option, table


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _result_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "per_s": _rate(r["per_s"]), "p50_ms": _ms(r["p50_ms"]), "p95_ms": _ms(r["p95_ms"]),
             "p99_ms": _ms(r["p99_ms"]), "runs_per_s": " ".join(f"{x:,}" for x in r["per_s_runs"])} for r in rows]


RESULT_COLUMNS = ("mode", "runs", "commands", "per_s", "p50_ms", "p95_ms", "p99_ms", "rejected", "missing",
                  "runs_per_s")


def render(report: dict[str, Any]) -> str:
    """The report as people read it."""
    m = report["machine"]
    opts = report["options"]
    lines = [
        f"machine: {m['host']}, {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"{m['python']}, Redis {m['redis']} (log: appendfsync {report['fsync']}; request bus: a second redis-server "
        f"that persists nothing); load average at start "
        f"{' '.join(str(x) for x in m['load_average_at_start'])}; one core ran a fixed Python loop at "
        f"{' then '.join(f'{x} M' for x in m['cpu_probe_mloops_per_s'])} iterations/s (before, after the runs)",
        f"{opts['accounts']} accounts; medians of {opts['runs']} runs; batched = {opts['clients']} client processes "
        f"x {opts['window']} commands in flight as batch requests (one customer's commands each, one reply per "
        f"request); pipelined = the same window of single-command requests; sequential = one request in flight "
        "per client; paced = "
        f"open loop, each client process offers up to {opts['paced_client_rate']:,.0f}/s on a fixed schedule from "
        "a pool of connections, latency from each request's scheduled send time",
        "",
        f"WRITE PATH ({report['write_path']['processes']})",
        table(_result_rows(report["write_path"]["results"]), RESULT_COLUMNS),
    ]
    if report["write_path"]["handler_split"]:
        lines += ["handler split (batched runs):",
                  table(report["write_path"]["handler_split"],
                        ("handler", "processed", "share", "batches", "per_batch", "conflicts", "claimed"))]
    full = report.get("full_system")
    if full:
        lag, notifier = full["projector_lag"], full["notifier"]
        lag_rows = [{"database": name, **{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in value.items()}}
                    for name, value in lag.items() if isinstance(value, dict)]
        queries = _result_rows([full["queries"]])[0]
        lines += [
            "",
            f"FULL SYSTEM ({full['processes']})",
            table(_result_rows(full["results"]), RESULT_COLUMNS),
            "projector lag during the batched runs (sampled every 0.1 s from each database's checkpoint):",
            table(lag_rows, ("database", "max_events", "median_events", "max_s", "median_s", "samples")),
            f"projectors caught up {lag['catch_up_after_load_s']:.2f} s after the load stopped (median)",
            f"queries (balance/history, paced {opts['query_rate']:,.0f}/s): {queries['per_s']}/s, p50 "
            f"{queries['p50_ms']} ms, p95 {queries['p95_ms']} ms, p99 {queries['p99_ms']} ms, "
            f"missing {queries['missing']}, refused {queries['rejected']}",
            f"notifier catch-up into the outbox: {_rate(notifier['events_per_s'])} events/s, "
            f"{_rate(notifier['sms_per_s'])} SMS/s (backlog {notifier['backlog_events']:,.0f} events)",
            f"rebuild from seq 1: {_rate(full['rebuild'].get('events_per_s'))} events/s over "
            f"{full['rebuild'].get('events', 0):,.0f} events",
            f"audit verify: {_rate(full['audit'].get('events_per_s'))} events/s over "
            f"{full['audit'].get('events', 0):,.0f} events",
            f"redis memory: {_rate(full['redis_bytes_per_event'])} bytes per event (used_memory delta over the "
            f"batched runs, outcome keys included); {full['redis_used_memory_mib']} MiB in use at the end",
        ]
        if full.get("filled"):
            lines.append(f"(log filled with {full['filled']['events']:,} direct appends at "
                         f"{full['filled']['events_per_s']:,.0f} events/s before rebuild and audit)")
        lines += ["resident memory per process:",
                  table(full["resident_memory"], ("process", "rss_mib", "peak_rss_mib")),
                  "CPU per command in the batched runs (user + system time from /proc, followers' catch-up "
                  "included; the load generator not counted):",
                  table(full["cpu_per_command"], ("process", "us_per_command", "share")),
                  "handler split (batched runs):",
                  table(full["handler_split"],
                        ("handler", "processed", "share", "batches", "per_batch", "conflicts", "claimed"))]
    lines += ["", "INVARIANTS"]
    for phase in ("write_path", "full_system"):
        if report.get(phase):
            inv = report[phase]["invariants"]
            audit = f"; audit verify ok: {inv['audit_ok']}" if "audit_ok" in inv else ""
            lines.append(f"{phase}: sum of balances {inv['sum_of_balances']} == deposits - withdrawals "
                         f"{inv['deposits_minus_withdrawals']}: {inv['conserved']}; negative balances "
                         f"{inv['negative_balances']}; duplicate command ids {inv['duplicate_command_ids']}; "
                         f"events {inv['events']}{audit}")
    inv = report["invariants"]
    lines.append(f"missing replies: {inv['missing_replies']}; overall: {'OK' if inv['ok'] else 'FAILED'} "
                 f"({report['seconds']} s)")
    return "\n".join(lines)


@click.command("bench")
@click.option("--accounts", default=10_000, show_default=True, help="Customer accounts to open (fewer: more "
              "version conflicts between the two handlers, see the handler split).")
@click.option("--clients", default=2, show_default=True, help="Client processes for batched and paced runs.")
@click.option("--window", default=1000, show_default=True,
              help="Commands in flight per client in batched and pipelined modes.")
@click.option("--operations", default=60_000, show_default=True,
              help="Commands per batched or pipelined run (all clients).")
@click.option("--sequential-clients", multiple=True, type=int, help="Clients of a sequential run (repeatable; "
              "default 1 and 4).")
@click.option("--sequential-operations", default=5_000, show_default=True, help="Commands per sequential run.")
@click.option("--rate", "rates", multiple=True, type=float, help="Offered commands/s of paced runs (repeatable; "
              "default 1000 and 2000).")
@click.option("--paced-seconds", default=5.0, show_default=True, help="Length of each paced run.")
@click.option("--paced-client-rate", default=1000.0, show_default=True,
              help="Offered load per paced client process (open loop: requests go out on schedule).")
@click.option("--query-rate", default=1000.0, show_default=True, help="Offered queries/s.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(WRITE_MODES),
              help="Write-path modes to run (default: all).")
@click.option("--runs", default=3, show_default=True, help="Runs per figure; figures are medians.")
@click.option("--full-system/--write-path-only", default=True, show_default=True,
              help="Also measure the whole bank (projectors, notifier, sealer, queries, rebuild, audit).")
@click.option("--events", "fill_events", default=0, show_default=True,
              help="Fill the log to this many events (direct appends) before the rebuild and audit figures, "
                   "e.g. 1000000.")
@json_option
def bench(accounts: int, clients: int, window: int, operations: int, sequential_clients: int,
          sequential_operations: int, rates: tuple[float, ...], paced_seconds: float, paced_client_rate: float,
          query_rate: float,
          modes: tuple[str, ...], runs: int, full_system: bool, fill_events: int, as_json: bool) -> None:
    """Benchmark the whole bank on throw-away banks (never the running one); progress on stderr."""
    options = BenchOptions(
        accounts=accounts, clients=clients, window=window, operations=operations,
        sequential_clients=sequential_clients or (1, 4), sequential_operations=sequential_operations,
        rates=rates or (1000.0, 2000.0), paced_seconds=paced_seconds, paced_client_rate=paced_client_rate,
        query_rate=query_rate, runs=runs,
        modes=modes or WRITE_MODES, full_system=full_system, fill_events=fill_events,
    )
    report = run_bench(options, progress=lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    emit(as_json, report, lambda: render(report))
    if not report["invariants"]["ok"]:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(bench)
