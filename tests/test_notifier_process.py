"""Real notifier processes on a real redis-server: SIGKILL mid-stream, restart, takeover; and measurements.

The invariant: every opted-in event produced exactly one outbox line per recipient (none lost, none doubled),
and an erased customer's number appears in no line. Waits are bounded polls on state, never timed assertions.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from helpers_notifier import FakeBank

from eventstore.pii import create_master_key
from eventstore.worker import WorkerRunner
from notifier.lease import active_notifier, read_checkpoint
from notifier.senders import OutboxSender
from notifier.worker import Notifier

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
NOTIFIED = {"MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred", "PasswordChanged", "AccountLocked",
            "AccountClosed"}
WAIT_LIMIT_S = 60.0


def start_notifier(url: str, data_dir: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    code = ("import sys, pathlib; from notifier.worker import main; "
            f"sys.exit(main(redis_url={url!r}, data_dir=pathlib.Path({str(data_dir)!r}), name={name!r}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env["PYTHONPATH"] = str(ROOT)
    handle = log.open("ab")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=handle, stderr=handle)


def outbox_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def wait_for(predicate, what: str, procs=()) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"notifier exited with {proc.returncode} while waiting for {what}"
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def caught_up(client, keys) -> bool:
    last = client.get(keys.seq)
    return last is not None and read_checkpoint(client, keys) == int(last)


def expected(bank: FakeBank, opted_in: set[int]) -> Counter:
    return Counter((event_id, account) for event_id, event_type, accounts in bank.event_ids
                   if event_type in NOTIFIED for account in accounts if account in opted_in)


def sent_past_the_checkpoint(client, keys, outbox: Path) -> int:
    """Events the outbox has lines for that lie after the stored checkpoint: a successor reads them again."""
    checkpoint = read_checkpoint(client, keys)
    return len({m["seq"] for m in outbox_lines(outbox) if m["seq"] > checkpoint})


def kill_mid_batch(proc: subprocess.Popen[bytes], client, keys, outbox: Path, top_up) -> int:
    """Freeze the process until it is caught having sent for events past its checkpoint, then SIGKILL it there.

    Returns how many such events it left (0 if it was never caught mid-batch within the bounded tries).
    """
    for attempt in range(400):
        proc.send_signal(signal.SIGSTOP)
        # A checkpoint it wrote just before the stop may still be in Redis's input: let it land first, or the
        # process is killed "holding" events that are settled a moment later.
        time.sleep(0.02)
        if sent_past_the_checkpoint(client, keys, outbox):
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return sent_past_the_checkpoint(client, keys, outbox)
        proc.send_signal(signal.SIGCONT)
        if attempt % 50 == 49:
            top_up()
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return 0


def test_sigkill_mid_stream_then_restart_and_takeover_exactly_once(private_redis, keys, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    create_master_key(data_dir / "master.key")
    client = private_redis.client()
    bank = FakeBank(client, keys, master_key=(data_dir / "master.key").read_bytes())
    rng = random.Random(5)
    secret_number = "+15557770000"
    with bank.batch():
        accounts = [bank.open(sms=rng.random() < 0.7) for _ in range(60)]
        erased = bank.open(phone=secret_number, sms=True)
        bank.deposit(erased, 700)
        bank.transfer(erased, accounts[0], 700)
        bank.close(erased)
        for account in accounts:
            bank.deposit(account, 1_000_000)
    bank.erase(erased)
    opted_in = {a for a in accounts if bank.states[a].sms_opt_in}

    def money_events(n: int) -> None:
        with bank.batch():
            for _ in range(n):
                source, target = rng.sample(accounts, 2)
                match rng.randrange(3):
                    case 0:
                        bank.deposit(source, rng.randrange(1, 10_000))
                    case 1:
                        bank.withdraw(source, rng.randrange(1, 100))
                    case _:
                        bank.transfer(source, target, rng.randrange(1, 100))

    outbox = data_dir / "outbox.jsonl"
    log = tmp_path / "notifier.log"
    money_events(1000)
    first = start_notifier(private_redis.url, data_dir, "n1", log)
    wait_for(lambda: len(outbox_lines(outbox)) > 0, "n1 to write its first lines", [first])
    held_by_n1 = kill_mid_batch(first, client, keys, outbox, top_up=lambda: money_events(100))
    assert held_by_n1 > 0
    assert active_notifier(client, keys) == "n1", "the dead one's lease lasts until it expires"
    left_by_n1 = read_checkpoint(client, keys)
    money_events(1000)
    # A second process takes the lease over once n1's has expired, reads again from n1's checkpoint, then dies too.
    second = start_notifier(private_redis.url, data_dir, "n2", log)
    wait_for(lambda: read_checkpoint(client, keys) > left_by_n1, "n2 to take over after n1's lease", [second])
    assert active_notifier(client, keys) == "n2"
    held_by_n2 = kill_mid_batch(second, client, keys, outbox, top_up=lambda: money_events(100))
    print(f"\nSIGKILLed n1 and n2 having sent for {held_by_n1} and {held_by_n2} events past their checkpoints")
    money_events(200)
    third = start_notifier(private_redis.url, data_dir, "n2", log)  # same name: holds the lease at once
    wait_for(lambda: caught_up(client, keys), "the notifier to reach the head", [third])
    third.send_signal(signal.SIGTERM)
    assert third.wait(15) == 0
    assert active_notifier(client, keys) is None, "a clean stop hands the lease back"

    written = outbox_lines(outbox)
    assert sum(1 for _e, t, _a in bank.event_ids if t.startswith("Money")) >= 2000
    got = Counter((m["event_id"], m["account"]) for m in written)
    want = expected(bank, opted_in)
    assert got - want == Counter(), f"doubled or unexpected: {list((got - want).items())[:5]}"
    assert want - got == Counter(), f"lost: {list((want - got).items())[:5]}"
    assert secret_number not in outbox.read_text()
    assert all(m["account"] != erased for m in written)
    print(f"events in the log {len(bank.event_ids)}, outbox lines {len(written)}, all exactly once")


def test_measure_outbox_throughput_and_event_to_message_latency(redis_server, real_redis, keys, tmp_path):
    """Reports numbers (printed with -s); asserts only correctness, never time."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    create_master_key(data_dir / "master.key")
    bank = FakeBank(real_redis, keys, master_key=(data_dir / "master.key").read_bytes())
    with bank.batch():
        accounts = [bank.open(sms=True) for _ in range(200)]
        for i in range(10_000):
            bank.deposit(accounts[i % 200], 100)
    outbox = data_dir / "outbox.jsonl"
    notifier = Notifier(real_redis, keys=keys, vault=bank.vault, sender=OutboxSender(outbox), name="bench",
                        block_ms=None)
    started = time.perf_counter()
    runner = WorkerRunner(notifier, client=real_redis, keys=keys, name="bench", burst=True)
    assert runner.run() == 0
    elapsed = time.perf_counter() - started
    notifier.stop()  # as the worker's main does: the live notifier below takes the lease at once
    notifier.sender.close()
    assert notifier.counters["sent"] == 10_000
    print(f"\noutbox throughput: {10_000 / elapsed:,.0f} messages/s (10,000 messages, cold directory, "
          f"{elapsed:.2f}s)")

    # Latency: a notifier process; events appended at about 1,000/s for 3 s (150 ticks of 20 events).
    live = start_notifier(redis_server.url, data_dir, "bench-live", tmp_path / "live.log")
    wait_for(lambda: real_redis.exists(keys.worker("bench-live")), "the live notifier to start", [live])
    before = len(outbox_lines(outbox))
    for tick in range(150):
        with bank.batch():
            for i in range(20):
                bank.deposit(accounts[(tick * 20 + i) % 200], 1)
        time.sleep(0.02)
    wait_for(lambda: len(outbox_lines(outbox)) == before + 3000, "the live notifier", [live])
    live.send_signal(signal.SIGTERM)
    assert live.wait(15) == 0
    lat = sorted(
        (datetime.fromisoformat(m["queued_at"].replace("Z", "+00:00"))
         - datetime.fromisoformat(m["occurred_at"].replace("Z", "+00:00"))).total_seconds() * 1000
        for m in outbox_lines(outbox)[before:]
    )
    p50, p99, worst = lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]
    print(f"event-to-message latency at ~1,000 events/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")
    assert len(lat) == 3000


def test_background_workers_yield_the_cpu_to_the_command_path():
    """Followers lower their own priority (by their default unless configured): commands go first on a busy host."""
    probe = ("import os; from eventstore.worker import yield_cpu_to_commands as y; before = os.getpriority("
             "os.PRIO_PROCESS, 0); print(before, y(ENV), os.getpriority(os.PRIO_PROCESS, 0) - before)")
    for env, amount in (("{}", 10), ("{}, default=19", 19), ("{'BANKCTL_BACKGROUND_NICE': '3'}, default=19", 3),
                        ("{'BANKCTL_BACKGROUND_NICE': '0'}", 0), ("{'BANKCTL_BACKGROUND_NICE': 'x'}", 10),
                        ("{'BANKCTL_BACKGROUND_NICE': 'x'}, default=19", 19)):
        out = subprocess.run([sys.executable, "-c", probe.replace("ENV", env)], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent).stdout.split()
        before, asked, moved = (int(x) for x in out)
        assert asked == amount and moved == min(amount, 19 - before), env
