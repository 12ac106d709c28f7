"""SIGKILL of redis-server under load, restart from its AOF (appendfsync always, DESIGN §5, §10).

Every command whose success reply was received is in the log after the restart, exactly once; the handlers
reconnect by themselves and the clients' resends (same command id) settle what was in flight.
"""

from __future__ import annotations

import pytest

from bankctl.embedded_redis import AOF_DIR, restart, start_redis
from tests.helpers_bank import (
    LoadDriver,
    check_exactly_once,
    check_money,
    make_data_dir,
    make_handler,
    open_accounts,
    random_transfers,
    session_for,
    start_worker,
    stop_process,
    wait_for_heartbeat,
)

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]


def test_acknowledged_commands_survive_a_redis_crash(private_redis, keys, tmp_path):
    client = private_redis.client(socket_timeout=10)
    data_dir = make_data_dir(tmp_path / "data")
    accounts = open_accounts(client, keys, make_handler(client, keys, name="setup"), 6, deposit_cents=50_000)
    handlers = [start_worker(private_redis.url, data_dir, "handler", f"handler-{i}",
                             log_path=tmp_path / f"handler-{i}.log") for i in (1, 2)]
    servers = [private_redis]
    try:
        wait_for_heartbeat(client, keys, ["handler-1", "handler-2"])
        sessions = {a: session_for(client, keys, a) for a in accounts}
        requests = random_transfers(accounts, sessions, 3_000, seed=11)
        acknowledged_before_crash: set[str] = set()

        def crash_midway(driver):
            if len(servers) > 1 or len(driver.replies) < 1_000:
                return
            acknowledged_before_crash.update(c for c, r in driver.replies.items() if r[0]["ok"])
            servers[-1].kill()
            servers.append(restart(servers[-1]))

        driver = LoadDriver(client, keys, window=200, resend_after_s=3.0)
        replies = driver.run(requests, deadline_s=150, on_progress=crash_midway)
        assert len(servers) == 2, "redis-server was killed and restarted"
        assert acknowledged_before_crash, "the crash must come after some successes"
        events = check_exactly_once(client, keys, replies)
        logged = {e["command_id"] for e in events}
        assert acknowledged_before_crash <= logged
        assert all(replies[c]["ok"] for c in acknowledged_before_crash), "a resend changed a first outcome"
        assert check_money(client, keys, events, accounts) == 6 * 50_000
    finally:
        for process in handlers:
            stop_process(process)
        servers[-1].kill()


def _cut_inside_last_exec(directory) -> None:
    """What a crash in the middle of writing a script's MULTI ... EXEC block to the AOF leaves behind."""
    [incr] = sorted((directory / AOF_DIR).glob("*.incr.aof"))[-1:]
    data = incr.read_bytes()
    incr.write_bytes(data[: data.rindex(b"EXEC") + 2])


def test_a_write_cut_short_by_a_crash_never_comes_back(tmp_path, needs_redis_server):
    """Redis 7.0 with ``aof-load-truncated yes`` keeps the cut block's MULTI; the restart after the next one then
    replays the never-acknowledged block (in the log: its XADDs take the seqs of events already read)."""
    server = start_redis(tmp_path / "redis")
    two_writes = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1])"
    try:
        client = server.client()
        client.set("acknowledged", "1")
        client.eval(two_writes, 2, "cut-1", "cut-2", "never acknowledged")
        server.kill()
        _cut_inside_last_exec(server.directory)
        server = restart(server)
        client = server.client()
        assert client.mget("acknowledged", "cut-1", "cut-2") == [b"1", None, None]
        client.eval(two_writes, 2, "later-1", "later-2", "read by others")
        server.kill()
        server = restart(server)
        client = server.client()
        assert client.mget("cut-1", "cut-2", "later-1", "later-2") == [None, None, b"read by others", b"read by others"]
        assert "repaired the AOF" in (server.directory / "redis.log").read_text()
    finally:
        server.stop()
