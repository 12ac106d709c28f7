"""bankctl projections status|rebuild|diff and bankctl balance/history through the CLI (real redis-server)."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from click.testing import CliRunner
from helpers_events import EventFactory, write_master_key

from auth_zkp.principal import Principal
from auth_zkp.sessions import SessionStore
from bankctl.cli import cli
from projections.database import ProjectionDatabase
from projections.projector import Projector
from projections.queries import QueryServer, QueryThread
from projections.schema import connect


@pytest.fixture
def cli_bank(real_redis, keys, redis_server, tmp_path):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    factory = EventFactory(real_redis, keys)
    write_master_key(data_dir, factory.master_key)
    factory.open_admin()
    factory.accounts = factory.open_accounts(6)
    factory.random_traffic(factory.accounts, 200)
    base = ["--data-dir", str(data_dir), "--redis-url", redis_server.url]
    return factory, data_dir, base


def _json(result):
    assert result.exit_code in (0, 1), result.output
    return orjson.loads(result.stdout)


def test_projections_rebuild_status_and_diff(cli_bank):
    factory, data_dir, base = cli_bank
    runner = CliRunner()
    for name in ("database1.db", "database2.db"):
        report = _json(runner.invoke(cli, [*base, "projections", "rebuild", "--db", name, "--json"]))
        assert report["checkpoint"] == factory.last_seq and report["swapped"] == "rename"
    status = _json(runner.invoke(cli, [*base, "projections", "status", "--json"]))
    assert status["head_seq"] == factory.last_seq
    assert [d["lag_events"] for d in status["databases"]] == [0, 0]
    time.sleep(2.0)  # a quiet pause, then one fresh event: the lag is that event's age, not the pause
    factory.deposit(factory.accounts[0], 5_00)
    status = _json(runner.invoke(cli, [*base, "projections", "status", "--json"]))
    assert [d["lag_events"] for d in status["databases"]] == [1, 1]
    assert all(0 <= d["lag_seconds"] < 1.0 for d in status["databases"]), status
    # database1 catches up by a rebuild over the existing file; diff compares at the same seq anyway.
    _json(runner.invoke(cli, [*base, "projections", "rebuild", "--db", "database1.db", "--json"]))
    result = runner.invoke(cli, [*base, "projections", "diff", "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["equal"] is True
    conn = connect(data_dir / "database2.db")
    conn.execute("UPDATE transactions SET amount = amount + 1 WHERE seq = (SELECT min(seq) FROM transactions)")
    conn.close()
    result = runner.invoke(cli, [*base, "projections", "diff"])
    assert result.exit_code == 1 and "transactions" in result.stdout and "DIFFERENT" in result.stdout


def test_balance_and_history_commands_read_through_the_query_server(cli_bank, real_redis, keys, tmp_path,
                                                                    monkeypatch):
    factory, data_dir, base = cli_bank
    from bankctl.last_seq import remember
    from bankctl.profile import SavedSession, save_session

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    account = factory.accounts[0]
    token = SessionStore(real_redis, keys=keys, master_key=factory.master_key).create(Principal(account, "customer"))
    save_session("default", SavedSession(token=token, account_id=account, role="customer", server_id="bank-x",
                                         created_at="now"))
    db = ProjectionDatabase(data_dir / "database1.db")
    projector = Projector(real_redis, keys=keys, db=db, vault=factory.vault, block_ms=200)
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [projector.poll_once() for _ in iter(stop.is_set, True)], daemon=True)
    worker.start()
    queries = QueryThread(QueryServer(real_redis, keys=keys, db=db, consumer="p1", ready=projector.is_live,
                                      master_key=factory.master_key, changed=projector.changed), name="q")
    queries.start()
    try:
        runner = CliRunner()
        seq = factory.deposit(account, 7_77)
        remember("default", "bank-x", seq)
        reply = _json(runner.invoke(cli, [*base, "balance", "--json"]))
        assert reply["balance"] == f"{factory.states[account].balance / 100:.2f}" and "balance_cents" not in reply
        assert reply["seq"] >= seq
        reply = _json(runner.invoke(cli, [*base, "history", "--limit", "1", "--json"]))
        assert reply["transactions"][0]["seq"] == seq and reply["transactions"][0]["amount"] == "7.77"
        result = runner.invoke(cli, [*base, "account", "list"])
        assert result.exit_code == 4
        result = runner.invoke(cli, [*base, "account", "show"])
        assert result.exit_code == 0 and "***-**-" in result.stdout
    finally:
        stop.set()
        queries.stop()
        worker.join(timeout=5)
        db.close()
