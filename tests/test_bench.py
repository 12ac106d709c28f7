"""``bankctl bench`` end to end on a tiny load: the report's structure and its invariants (no timed assertions)."""

from __future__ import annotations

import os
import time

import orjson
import pytest
from click.testing import CliRunner

from bankctl.bench_probe import CpuMeter, LagSampler
from bankctl.bench_suite import BenchOptions, paced_clients, run_bench
from bankctl.cmd_bench import bench, render

pytestmark = pytest.mark.usefixtures("needs_redis_server")

TINY = BenchOptions(accounts=20, clients=2, window=50, operations=300, sequential_clients=(1,),
                    sequential_operations=60, rates=(200.0,), paced_seconds=0.5, query_rate=100.0, runs=1,
                    fill_events=1_500)


@pytest.fixture(scope="module")
def report() -> dict:
    return run_bench(TINY)


def test_report_has_every_figure(report):
    assert report["machine"]["cores"] >= 1 and report["fsync"] == "always"
    probes = report["machine"]["cpu_probe_mloops_per_s"]
    assert len(probes) == 2 and all(p > 0 for p in probes)  # before and after the runs
    write = report["write_path"]
    assert [r["mode"].split(" ")[0] for r in write["results"]] == ["sequential", "batched", "pipelined", "paced"]
    for row in write["results"] + report["full_system"]["results"]:
        assert row["runs"] == 1 and row["commands"] > 0 and row["per_s"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["accepted"] + row["rejected"] + row["missing"] == row["commands"]
    full = report["full_system"]
    assert set(full["projector_lag"]) >= {"database1", "database2", "catch_up_after_load_s"}
    assert full["queries"]["commands"] == 50 and full["queries"]["rejected"] == 0
    assert full["notifier"]["backlog_events"] > 0 and full["notifier"]["sms"] > 0
    assert full["filled"]["events"] > 0
    assert full["rebuild"]["events"] >= TINY.fill_events and full["rebuild"]["events_per_s"] > 0
    assert full["audit"]["events"] >= TINY.fill_events and full["audit"]["findings"] == []
    assert full["redis_bytes_per_event"] > 0
    names = {row["process"] for row in full["resident_memory"]}
    assert names == {"redis-server", "bus redis-server", "handler-1", "handler-2", "projector-1", "projector-2",
                     "notifier", "sealer"}
    assert all(row["rss_mib"] > 0 for row in full["resident_memory"])
    cpu = {row["process"]: row["us_per_command"] for row in full["cpu_per_command"]}
    [whole] = set(cpu) - names
    assert whole.startswith("all (cores busy: ")
    assert all(v >= 0 for v in cpu.values())  # a tiny run may round to 0: /proc counts in 10 ms ticks
    assert abs(sum(cpu[n] for n in names) - cpu[whole]) < 1
    split = write["handler_split"]
    assert [r["handler"] for r in split] == ["handler-1", "handler-2"]
    assert sum(r["processed"] for r in split) >= 0


def test_invariants_hold_and_are_reported(report):
    for phase in ("write_path", "full_system"):
        inv = report[phase]["invariants"]
        assert inv["conserved"] and inv["sum_of_balances"] == inv["deposits_minus_withdrawals"]
        assert inv["negative_balances"] == 0 and inv["duplicate_command_ids"] == 0 and inv["events"] > 0
    assert report["full_system"]["invariants"]["audit_ok"] is True
    assert report["invariants"] == {"write_path": True, "full_system": True, "missing_replies": 0, "ok": True}


def test_human_report_names_every_section(report):
    text = render(report)
    for heading in ("WRITE PATH", "FULL SYSTEM", "projector lag", "queries", "notifier", "rebuild", "audit verify",
                    "bytes per event", "resident memory", "INVARIANTS", "overall: OK", "fixed Python loop"):
        assert heading in text


def test_paced_load_is_split_over_enough_client_processes():
    assert paced_clients(TINY, 2000.0) == 2
    assert paced_clients(TINY, 2500.0) == 3
    assert paced_clients(TINY, 1.0) == 1


def test_cli_prints_one_json_object():
    result = CliRunner().invoke(bench, [
        "--accounts", "10", "--operations", "100", "--window", "50", "--sequential-clients", "1",
        "--sequential-operations", "20", "--rate", "100", "--paced-seconds", "0.3", "--runs", "1",
        "--write-path-only", "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert data["full_system"] is None and data["invariants"]["ok"] is True


def test_the_cpu_meter_counts_the_cpu_a_process_used_per_command():
    meter = CpuMeter({"me": os.getpid(), "gone": 2**22 + 7})  # a pid that does not exist counts nothing
    meter.start()
    until = time.process_time() + 0.2
    while time.process_time() < until:  # 0.2 s of CPU in this process
        pass
    meter.stop(commands=1000)
    rows = {row["process"]: row for row in meter.rows()}
    assert 150 <= rows["me"]["us_per_command"] <= 400 and rows["gone"]["us_per_command"] == 0
    [whole] = set(rows) - {"me", "gone"}
    assert rows[whole]["us_per_command"] == rows["me"]["us_per_command"] and rows["me"]["share"] == 1.0
    assert 0 < float(whole.removeprefix("all (cores busy: ").rstrip(")")) <= 1.2


def test_projector_lag_is_the_age_of_the_oldest_unapplied_event_not_the_pause_before_it(fake_redis, keys, tmp_path):
    """A burst after ten quiet seconds: the database is one event behind, and that event is fresh."""
    from datetime import UTC, datetime, timedelta

    from eventstore.envelope import utc_timestamp
    from projections.schema import connect

    now = datetime.now(UTC)
    for seq, at in ((1, now - timedelta(seconds=10)), (2, now)):
        body = orjson.dumps({"seq": seq, "type": "MoneyDeposited", "occurred_at": utc_timestamp(at)})
        fake_redis.xadd(keys.events, {b"seq": str(seq), b"type": b"MoneyDeposited", b"body": body}, id=f"{seq}-0")
    path = tmp_path / "database1.db"
    conn = connect(path)
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                     [("checkpoint", "1"), ("checkpoint_at", utc_timestamp(now - timedelta(seconds=10)))])
    conn.close()
    sampler = LagSampler(fake_redis, keys, {"database1": path})
    sampler.start()
    time.sleep(0.35)
    sampler.stop()
    lag = sampler.summary()["database1"]
    assert lag["samples"] >= 2 and lag["max_events"] == 1
    assert 0.0 < lag["max_s"] < 5.0  # the event waiting is a fraction of a second old, not the 10 s pause
