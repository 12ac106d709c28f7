"""The request bus (a second Redis that persists nothing) beside the log's Redis (AOF always).

Requests, replies, acknowledgements and heartbeats travel on the bus; the log's Redis sees only the append
script's writes. Losing the bus loses only requests in flight: clients resend them with the same command id
and get the first outcome, so nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import fakeredis
import pytest

from bankctl.embedded_redis import restart, start_bus
from tests.helpers_bank import (
    LoadDriver,
    check_exactly_once,
    check_money,
    drain,
    make_data_dir,
    make_handler,
    open_accounts,
    open_payload,
    random_transfers,
    session_for,
    start_worker,
    stop_process,
    submit,
    take_reply,
    wait_for_heartbeat,
)

REQUEST_TRAFFIC = ("commands", "queries", "reply:", "worker:", "transport_key")


def _request_keys(client, keys) -> list[str]:
    names = [k.decode() for k in client.scan_iter(match=keys.prefix + "*", count=1000)]
    return [n for n in names if n[len(keys.prefix):].startswith(REQUEST_TRAFFIC)]


def test_requests_and_replies_never_touch_the_log_redis(keys):
    log = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    bus = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    handler = make_handler(log, keys, bus=bus)
    admin = session_for(log, keys, 0, "admin")  # sessions are durable: they live with the log
    request_id = submit(bus, keys, "OpenAccount", open_payload(1), admin)
    drain(handler)
    reply = take_reply(bus, keys, request_id)
    assert reply is not None and reply["ok"], reply
    deposit = submit(bus, keys, "Deposit", {"account": reply["account"], "amount": 500}, admin,
                     command_id="c-1")
    resend = submit(bus, keys, "Deposit", {"account": reply["account"], "amount": 500}, admin, command_id="c-1")
    drain(handler)
    first, second = take_reply(bus, keys, deposit), take_reply(bus, keys, resend)
    assert first == second and first["ok"] and first["balance_cents"] == 500, (first, second)
    assert _request_keys(log, keys) == []
    assert log.exists(keys.events) and not bus.exists(keys.events)
    assert bus.xlen(keys.commands) == 0, "settled requests are acknowledged and deleted on the bus"


@pytest.mark.redis_server
@pytest.mark.slow
def test_a_lost_bus_loses_no_command_and_applies_none_twice(private_redis, keys, tmp_path):
    client = private_redis.client(socket_timeout=10)
    bus_server = start_bus(tmp_path / "bus")
    servers = [bus_server]
    bus = bus_server.client(socket_timeout=10)
    data_dir = make_data_dir(tmp_path / "data")
    accounts = open_accounts(client, keys, make_handler(client, keys, name="setup"), 6, deposit_cents=50_000)
    client.delete(keys.commands, keys.transport_key)  # the set-up ran in process, without a bus
    handlers = [start_worker(private_redis.url, data_dir, "handler", f"handler-{i}", bus_url=bus_server.url,
                             log_path=tmp_path / f"handler-{i}.log") for i in (1, 2)]
    try:
        wait_for_heartbeat(bus, keys, ["handler-1", "handler-2"])
        sessions = {a: session_for(client, keys, a) for a in accounts}
        requests = random_transfers(accounts, sessions, 3_000, seed=7)

        def lose_the_bus(driver):
            if len(servers) > 1 or len(driver.replies) < 1_000:
                return
            servers[-1].kill()
            servers.append(restart(servers[-1]))

        driver = LoadDriver(bus, keys, window=200, resend_after_s=3.0)
        replies = driver.run(requests, deadline_s=150, on_progress=lose_the_bus)
        assert len(servers) == 2, "the bus was killed and restarted"
        # Requests in flight at the kill were either held by a handler (answered on the new bus) or lost with it
        # (resent after 3 s by the driver). Now every client resends everything, as after a lost reply: each gets
        # its first outcome back and nothing is applied again.
        again = LoadDriver(bus, keys, window=500).run(requests, deadline_s=60)
        assert again == replies
        events = check_exactly_once(client, keys, replies)
        assert check_money(client, keys, events, accounts) == 6 * 50_000
        assert all(r == copies[0] for copies in driver.replies.values() for r in copies), "a resend changed an outcome"
        assert _request_keys(client, keys) == []
    finally:
        for process in handlers:
            stop_process(process)
        servers[-1].kill()
