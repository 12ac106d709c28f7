"""SIGKILL of one handler process in the middle of 5,000 commands (real redis-server, DESIGN §6, §10).

Every request still gets exactly one outcome (the client resends with the same command id on timeout), the log
has no command id twice, and money is conserved.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from commands.client import Request
from tests.helpers_bank import (
    LoadDriver,
    check_exactly_once,
    check_money,
    make_data_dir,
    make_handler,
    open_accounts,
    session_for,
    start_worker,
    stop_process,
    wait_for_heartbeat,
)

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]


def _counter(client, keys, name, counter, *, fresh_after):
    """A worker's counter from a heartbeat written after ``fresh_after`` (heartbeats come every second)."""
    deadline = time.monotonic() + 15
    while float(client.hget(keys.worker(name), "beat") or 0) < fresh_after and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(client.hget(keys.worker(name), f"n_{counter}") or 0)


def test_sigkill_of_one_handler_under_load(private_redis, keys, tmp_path):
    client = private_redis.client(socket_timeout=10)
    data_dir = make_data_dir(tmp_path / "data")
    setup = make_handler(client, keys, name="setup")
    accounts = open_accounts(client, keys, setup, 10, deposit_cents=100_000)
    client.xgroup_delconsumer(keys.commands, "handlers", "setup")
    client.delete(keys.worker("setup"))
    before_total = 10 * 100_000

    handlers = {name: start_worker(private_redis.url, data_dir, "handler", name, log_path=tmp_path / f"{name}.log")
                for name in ("handler-1", "handler-2")}
    try:
        wait_for_heartbeat(client, keys, handlers)
        rng = random.Random(7)
        sessions = {a: session_for(client, keys, a) for a in accounts}
        requests = []
        for i in range(5_000):
            source = rng.choice(accounts)
            if i % 5 == 0:
                requests.append(Request("Deposit", {"account": source, "amount": 100}, sessions[source]))
            else:
                target = rng.choice(accounts)
                requests.append(Request("Transfer", {"account": source, "to": target, "amount": rng.randint(1, 5000)},
                                        sessions[source]))
        driver = LoadDriver(client, keys, window=300, resend_after_s=4.0)
        # Phase 1: both handlers serve (their heartbeat counters, refreshed after the load, say so).
        driver.run(requests[:1_000], deadline_s=60)
        after_load = time.time()
        assert all(_counter(client, keys, n, "processed", fresh_after=after_load) > 0 for n in handlers)
        # Phase 2: handler-1 is SIGKILLed while it holds unacknowledged entries.
        killed = {}

        def kill_midway(driver):
            if killed or len(driver.replies) < 2_000:
                return
            handlers["handler-1"].send_signal(signal.SIGSTOP)  # frozen, so its pending list cannot change
            if not client.xpending_range(keys.commands, "handlers", "-", "+", 1, consumername="handler-1"):
                handlers["handler-1"].send_signal(signal.SIGCONT)
                return
            handlers["handler-1"].send_signal(signal.SIGKILL)
            handlers["handler-1"].wait(10)
            killed["at"] = len(driver.replies)

        replies = driver.run(requests, deadline_s=150, on_progress=kill_midway)
        assert killed and killed["at"] < 5_000, "the kill must happen mid-load"
        assert len(replies) == 5_000
        assert all(r.get("code") != "malformed_request" for r in replies.values())
        # handler-1 died holding entries: handler-2 takes them over (XAUTOCLAIM) even where a client's resend
        # got there first (then the claimed entry is a duplicate and returns the first outcome).
        deadline = time.monotonic() + 30
        while client.xpending(keys.commands, "handlers")["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _counter(client, keys, "handler-2", "claimed", fresh_after=time.time()) > 0
        events = check_exactly_once(client, keys, replies)
        command_ids = [e["command_id"] for e in events if e["type"].startswith("Money")]
        assert len(command_ids) == len(set(command_ids)), "a command id appears twice in the log"
        deposited = sum(r["ok"] for c, r in replies.items() if c in {q.command_id for q in requests[::5]}) * 100
        assert check_money(client, keys, events, accounts) == before_total + deposited
        assert not client.xpending(keys.commands, "handlers")["pending"]
    finally:
        for process in handlers.values():
            stop_process(process)
