"""``bankctl notifier status|dead-letters`` against a real redis-server."""

from __future__ import annotations

import click
import orjson
from click.testing import CliRunner
from test_notifier_twilio import drain, error, make

from bankctl.cmd_notifier import register
from bankctl.config import Settings


def test_status_shows_the_active_notifier_its_lag_and_dead_letters(redis_server, real_redis, keys, tmp_path):
    bank, _http, notifier, _clock = make(real_redis, keys, [error(400, 21211, "invalid To"), error(503, None)])
    with bank.batch():
        first, second = bank.open(sms=True), bank.open(sms=True)
        bank.deposit(first, 100)
        bank.deposit(second, 100)
    drain(notifier, rounds=2)  # the second deposit's message waits for a retry
    bank.deposit(first, 5)  # not yet read by any notifier
    root = click.Group()
    register(root)
    settings = Settings.from_env(data_dir=str(tmp_path), redis_url=redis_server.url)
    status = CliRunner().invoke(root, ["notifier", "status", "--json"], obj=settings)
    assert status.exit_code == 0, status.output
    info = orjson.loads(status.output)
    assert info["lag"] == 2 and info["checkpoint"] == info["head_seq"] - 2 and info["dead_letters"] == 1
    assert info["active"] == "n1"
    human = CliRunner().invoke(root, ["notifier", "status"], obj=settings)
    assert f"checkpoint {info['checkpoint']}  lag 2" in human.output and "active notifier: n1" in human.output
    letters = CliRunner().invoke(root, ["notifier", "dead-letters", "--json"], obj=settings)
    [letter] = orjson.loads(letters.output)["dead_letters"]
    assert letter["code"] == "21211" and letter["account"] == str(first)
    human = CliRunner().invoke(root, ["notifier", "dead-letters"], obj=settings)
    assert "21211" in human.output and "+1555" not in human.output
