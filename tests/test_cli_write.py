"""bankctl's writing commands against a real redis-server with a handler serving in a thread (DESIGN §9).

Bad input is exit 2 with nothing sent; the bank's refusals are exit 3 with nothing appended; --json prints
exactly one object with amounts as two-decimal strings.
"""

from __future__ import annotations

import threading

import orjson
import pytest
from click.testing import CliRunner

from bankctl.cli import cli
from bankctl.profile import SavedSession, save_session
from eventstore.log import last_seq
from tests.helpers_bank import make_data_dir, make_handler, open_accounts, session_for

pytestmark = pytest.mark.redis_server


@pytest.fixture
def bank(real_redis, redis_server, keys, tmp_path, monkeypatch):
    """A served bank: customers a (100.00) and b open, c closed; saved sessions "ann" (a) and "admin"."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("BANKCTL_REDIS_URL", raising=False)
    handler = make_handler(real_redis, keys)
    a, b, c = open_accounts(real_redis, keys, handler, 3)
    for profile, account, role in (("ann", a, "customer"), ("admin", 0, "admin")):
        token = session_for(real_redis, keys, account, role)
        save_session(profile, SavedSession(token, account, role, "test-server", "2026-11-24T00:00:00Z"))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            handler.poll_once(block_ms=50)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    data_dir = make_data_dir(tmp_path / "data")

    def run(profile, *args, stdin=None):
        result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "--redis-url", redis_server.url,
                                          "--profile", profile, *args], input=stdin, catch_exceptions=False)
        return result

    assert run("admin", "deposit", "100", "--account", str(a)).exit_code == 0
    assert run("admin", "account", "close", str(c)).exit_code == 0
    yield run, (a, b, c)
    stop.set()
    thread.join(5)


BAD_AMOUNTS = ["-5", "0", "0.001", "nan", "inf", "1e3", "1_000", "abc", str(10**15)]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
@pytest.mark.parametrize("command", ["deposit", "withdraw", "transfer"])
def test_bad_amounts_exit_2_and_send_nothing(bank, real_redis, keys, command, amount):
    run, (_a, b, _c) = bank
    sent_before = real_redis.xinfo_stream(keys.commands)["entries-added"]
    args = ["transfer", "--json", str(b), amount] if command == "transfer" else [command, "--json", amount]
    result = run("ann", *args)
    assert result.exit_code == 2, result.output
    assert "amount" in result.output
    body = orjson.loads(result.stdout.splitlines()[0])
    assert body["ok"] is False and body["code"] == "invalid_amount"
    assert real_redis.xinfo_stream(keys.commands)["entries-added"] == sent_before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["withdraw", "100.01"], "insufficient_funds"),
        (["transfer", "{a}", "1"], "same_account"),
        (["transfer", "99", "1"], "unknown_account"),
        (["transfer", "{c}", "1"], "account_closed"),
    ],
)
def test_refusals_exit_3_and_append_nothing(bank, real_redis, keys, args, code):
    run, (a, _b, c) = bank
    before = last_seq(real_redis, keys)
    result = run("ann", *[x.format(a=a, c=c) for x in args], "--json")
    assert result.exit_code == 3, result.output
    assert orjson.loads(result.stdout.splitlines()[0])["code"] == code
    assert last_seq(real_redis, keys) == before


def test_money_commands_print_one_json_object(bank, real_redis, keys):
    run, (a, b, _c) = bank
    result = run("ann", "transfer", str(b), "12.5", "--json")
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    body = orjson.loads(line)
    assert body["ok"] and body["account"] == a and body["to"] == b
    assert body["balance"] == "87.50" and body["amount"] == "12.50" and "balance_cents" not in body
    assert body["seq"] == last_seq(real_redis, keys)
    human = run("ann", "withdraw", "0.50")
    assert human.exit_code == 0 and "balance 87.00" in human.output


def test_permissions_and_missing_session(bank, real_redis, keys):
    run, (a, b, _c) = bank
    assert run("ann", "deposit", "5", "--account", str(b)).exit_code == 4
    assert run("ann", "account", "close", str(a)).exit_code == 4
    assert run("nobody", "deposit", "5").exit_code == 4
    assert "not logged in" in run("nobody", "deposit", "5").output
    assert run("admin", "deposit", "5").exit_code == 2  # an admin must name the account


def test_account_open_profile_update_close_and_erase(bank, real_redis, keys):
    run, _accounts = bank
    bad = run("admin", "account", "open", "--ssn", "000-12-3456", "--phone", "+15551234567", "--first-name", "A",
              "--last-name", "B", "--password-stdin", stdin="a long enough password\n")
    assert bad.exit_code == 2 and "SSN" in bad.output
    opened = run("admin", "account", "open", "--ssn", "123-45-6789", "--phone", "+15551234567", "--first-name",
                 "Bea", "--last-name", "Lee", "--sms", "--password-stdin", "--json",
                 stdin="a long enough password 123\n")
    assert opened.exit_code == 0, opened.output
    account = orjson.loads(opened.stdout.splitlines()[-1])["account"]
    assert run("admin", "profile", "update", "--account", str(account)).exit_code == 2
    updated = run("admin", "profile", "update", "--account", str(account), "--no-sms", "--phone", "+1 555 000 1111",
                  "--json")
    assert updated.exit_code == 0 and orjson.loads(updated.stdout)["updated"] == ["phone", "sms_opt_in"]
    assert run("admin", "customer", "erase", str(account)).exit_code == 3  # still open
    assert run("admin", "account", "close", str(account)).exit_code == 0
    erased = run("admin", "customer", "erase", str(account), "--json")
    assert erased.exit_code == 0 and not real_redis.exists(keys.data_key(account))
