"""Projector processes on a real redis-server: identical databases, SIGKILL and restart, read failover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_events import EventFactory, write_master_key

from auth_zkp.principal import Principal
from auth_zkp.sessions import SessionStore
from commands.client import BankClient, Request
from projections.compare import checksums, diff_databases
from projections.rebuild import rebuild
from projections.schema import DatabaseUnusable, connect, open_readonly, read_checkpoint

pytestmark = pytest.mark.redis_server
WAIT_S = 90


def start_projector(url: str, data_dir: Path, name: str, db: str) -> subprocess.Popen:
    code = ("import sys; from projections.projector import main; "
            f"sys.exit(main(redis_url={url!r}, data_dir={str(data_dir)!r}, name={name!r}, db_path={db!r}))")
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(data_dir / f"{name}.log", "ab"))


def checkpoint_of(path: Path) -> int:
    try:
        conn = open_readonly(path)
    except DatabaseUnusable:
        return -1
    try:
        return read_checkpoint(conn)
    except Exception:
        return -1
    finally:
        conn.close()


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def bank(real_redis, keys, redis_server, tmp_path):
    factory = EventFactory(real_redis, keys)
    write_master_key(tmp_path, factory.master_key)
    factory.open_admin()
    factory.accounts = factory.open_accounts(30)
    processes: list[subprocess.Popen] = []
    yield factory, redis_server.url, tmp_path, processes
    for process in processes:
        stop(process)


def test_two_projectors_build_identical_databases_and_a_rebuild_matches(bank, real_redis, keys):
    factory, url, data_dir, processes = bank
    processes += [start_projector(url, data_dir, "projector-1", "database1.db"),
                  start_projector(url, data_dir, "projector-2", "database2.db")]
    for round_ in range(4):  # traffic while both run
        factory.random_traffic(factory.accounts, 500, seed=round_)
    factory.close(factory.accounts[-1]) if factory.states[factory.accounts[-1]].balance == 0 else None
    head = factory.last_seq
    for name in ("database1.db", "database2.db"):
        wait_for(lambda n=name: checkpoint_of(data_dir / n) == head, f"{name} at seq {head}")
    report = diff_databases(data_dir / "database1.db", data_dir / "database2.db")
    assert report.equal and report.seq == head, report.to_json()
    result = rebuild(real_redis, keys, factory.vault, data_dir / "scratch.db")
    assert result.checkpoint == head
    assert checksums(connect(data_dir / "scratch.db"))["tables"] == report.a["tables"]
    # A difference is found and named: damage one row of a copy.
    conn = connect(data_dir / "scratch.db")
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (factory.accounts[3],))
    conn.close()
    damaged = diff_databases(data_dir / "database1.db", data_dir / "scratch.db")
    assert not damaged.equal and damaged.differences[0]["key"] == [factory.accounts[3]]


def test_sigkill_mid_batch_then_restart_resumes_without_missing_or_doubled_rows(bank, real_redis, keys):
    factory, url, data_dir, processes = bank
    db = data_dir / "database1.db"
    killed_at = head = 0
    for _attempt in range(3):  # a fast machine may finish before the kill: then give it more to do
        target = factory.last_seq + 30_000
        while factory.last_seq < target:
            factory.random_traffic(factory.accounts, 5000, seed=factory.last_seq)
        head = factory.last_seq
        start_at = max(checkpoint_of(db), 0)
        victim = start_projector(url, data_dir, "projector-1", "database1.db")
        processes.append(victim)
        wait_for(lambda s=start_at: checkpoint_of(db) > s + 1000, "some progress")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = checkpoint_of(db)
        if killed_at < head:
            break
    assert 0 < killed_at < head, "the projector was killed before the head (mid-run)"
    survivor = start_projector(url, data_dir, "projector-1", "database1.db")
    processes.append(survivor)
    wait_for(lambda: checkpoint_of(db) == head, "the restarted projector at the head")
    stop(survivor)
    conn = open_readonly(db)
    legs = sum(2 if e.type == "MoneyTransferred" else 1
               for e in map(lambda i: i, _events(real_redis, keys)) if e.type.startswith("Money"))
    assert conn.execute("SELECT count(*) FROM transactions").fetchone()[0] == legs
    assert conn.execute("SELECT count(DISTINCT seq) FROM transactions").fetchone()[0] == sum(
        1 for e in _events(real_redis, keys) if e.type.startswith("Money"))
    rebuild(real_redis, keys, factory.vault, data_dir / "scratch.db")
    assert checksums(conn)["tables"] == checksums(connect(data_dir / "scratch.db"))["tables"]


def _events(client, keys):
    from eventstore.log import iterate

    return iterate(client, keys, page=5000)


def test_reads_fail_over_when_database1_is_deleted(bank, real_redis, keys):
    factory, url, data_dir, processes = bank
    for account in factory.accounts[:5]:
        factory.deposit(account, 10_00)
    processes += [start_projector(url, data_dir, "projector-1", "database1.db"),
                  start_projector(url, data_dir, "projector-2", "database2.db")]
    head = factory.last_seq
    for name in ("database1.db", "database2.db"):
        wait_for(lambda n=name: checkpoint_of(data_dir / n) == head, f"{name} at the head")
    sessions = SessionStore(real_redis, keys=keys, master_key=factory.master_key)
    account = factory.accounts[0]
    token = sessions.create(Principal(account, "customer"))
    client = BankClient(real_redis, keys=keys, timeout_s=5, attempts=1)
    answers = []
    for i in range(400):
        if i == 100:
            (data_dir / "database1.db").unlink()
        if i % 50 == 0:
            factory.deposit(account, 1_00)
        reply = client.query(Request(type="balance", payload={}, session=token, min_seq=factory.last_seq))
        assert reply["ok"], (i, reply)
        assert reply["balance_cents"] == factory.states[account].balance, (i, reply)
        answers.append(reply)
    assert len(answers) == 400
    # database1 comes back, rebuilt from seq 1 by its projector.
    wait_for(lambda: checkpoint_of(data_dir / "database1.db") == factory.last_seq, "database1 rebuilt")
