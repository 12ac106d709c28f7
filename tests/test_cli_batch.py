"""``bankctl batch FILE`` against a real redis-server with a handler serving in a thread.

A bad file is exit 2 with nothing sent; each line is decided on its own (exit 3 if any was refused, the others
applied); more than MAX_BATCH_COMMANDS lines go out as several requests, in order, every line with an outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result

from bankctl.cli import cli
from bankctl.output import BankctlError, Exit
from bankctl.profile import SavedSession, save_session
from bankctl.session_client import BankSession
from commands.requests import MAX_BATCH_COMMANDS
from eventstore.keys import Keys
from eventstore.log import last_seq
from tests.helpers_bank import balances_from_log, log_payloads, make_data_dir, make_handler, open_accounts, session_for

pytestmark = pytest.mark.redis_server

HEADER = "type,account,to,amount\n"
Run = Callable[..., Result]


@pytest.fixture
def bank(real_redis: redis.Redis, redis_server: Any, keys: Keys, tmp_path: Any,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Run, tuple[int, int]]]:
    """A served bank: customers a and b with 100.00 each; saved sessions "ann" (a) and "admin"."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("BANKCTL_REDIS_URL", raising=False)
    handler = make_handler(real_redis, keys)
    a, b = open_accounts(real_redis, keys, handler, 2, deposit_cents=10_000)
    for profile, account, role in (("ann", a, "customer"), ("admin", 0, "admin")):
        save_session(profile, SavedSession(session_for(real_redis, keys, account, role), account, role, "test-server",
                                           "2026-11-24T00:00:00Z"))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            handler.poll_once(block_ms=50)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    data_dir = make_data_dir(tmp_path / "data")

    def run(profile: str, *args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--data-dir", str(data_dir), "--redis-url", redis_server.url, "--profile",
                                        profile, "batch", *args], input=stdin, catch_exceptions=False)

    yield run, (a, b)
    stop.set()
    thread.join(5)


def write(tmp_path: Any, text: str) -> str:
    path = tmp_path / "moves.csv"
    path.write_text(text)
    return str(path)


def sent(client: redis.Redis, keys: Keys) -> int:
    """Requests ever added to the command stream (entries are deleted once settled, so not XLEN)."""
    return int(client.xinfo_stream(keys.commands)["entries-added"])


def body(result: Result) -> dict[str, Any]:
    [line] = result.stdout.splitlines()
    return orjson.loads(line)


def test_a_refused_line_is_exit_3_and_the_others_are_applied(bank, real_redis, keys, tmp_path):
    run, (a, b) = bank
    path = write(tmp_path, f"{HEADER}Deposit,,,10\nwithdraw,{a},,500.00\nTRANSFER,,{b},30.5\nwithdraw,,,0.50\n")
    result = run("ann", path, "--json")
    assert result.exit_code == 3, result.output
    rows = body(result)["results"]
    assert [(r["line"], r["result"]) for r in rows] == [(2, "ok"), (3, "insufficient_funds"), (4, "ok"), (5, "ok")]
    assert [r["balance"] for r in rows] == ["110.00", None, "79.50", "79.00"]
    assert rows[3]["seq"] == last_seq(real_redis, keys) and rows[0]["seq"] < rows[2]["seq"] < rows[3]["seq"]
    assert balances_from_log(log_payloads(real_redis, keys)) == {a: 7_900, b: 13_050}


def test_every_line_accepted_is_exit_0_with_a_table_and_a_summary(bank, real_redis, keys, tmp_path):
    run, (a, b) = bank
    result = run("ann", write(tmp_path, f"{HEADER}deposit,,,12.34\ntransfer,{a},{b},2.34\n"))
    assert result.exit_code == 0, result.output
    header, _rule, first, second, summary = result.stdout.splitlines()
    assert header.split() == ["line", "type", "account", "to", "amount", "result", "balance", "seq"]
    assert first.split() == ["2", "deposit", str(a), "12.34", "ok", "112.34", str(last_seq(real_redis, keys) - 1)]
    assert second.split()[:7] == ["3", "transfer", str(a), str(b), "2.34", "ok", "110.00"]
    assert summary == "2 accepted, 0 rejected"


BAD_LINES = [
    ("payment,,,5", "unknown type"),
    ("deposit,,,-5", "amount"),
    ("deposit,,,0", "amount"),
    ("withdraw,,,1.234", "amount"),
    ("deposit,,,1e3", "amount"),
    ("transfer,,,5", "needs 'to'"),
    ("deposit,,{b},5", "only for transfers"),
    ("deposit,,,5,extra", "columns"),
    ("deposit,abc,,5", "account"),
    ("transfer,,-{b},5", "to must be an account number"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_a_bad_line_is_exit_2_naming_it_and_nothing_is_sent(bank, real_redis, keys, tmp_path, line, reason):
    run, (_a, b) = bank
    before, log_before = sent(real_redis, keys), last_seq(real_redis, keys)
    path = write(tmp_path, f"{HEADER}deposit,,,1\n\ndeposit,,,2\n{line.format(b=b)}\ndeposit,,,3\n")
    result = run("ann", path)
    assert result.exit_code == 2, result.output
    assert "line 5:" in result.stderr and reason in result.stderr and "line 2" not in result.stderr
    assert sent(real_redis, keys) == before and last_seq(real_redis, keys) == log_before


@pytest.mark.parametrize("text", ["", "\n\n", HEADER, f"{HEADER}\n,,,\n", "kind,account,to,amount\ndeposit,,,1\n"])
def test_an_empty_file_or_a_wrong_header_is_exit_2(bank, real_redis, keys, tmp_path, text):
    run, _accounts = bank
    before = sent(real_redis, keys)
    result = run("ann", write(tmp_path, text), "--json")
    assert result.exit_code == 2, result.output
    assert body(result)["code"] == "invalid_request" and sent(real_redis, keys) == before


def test_more_lines_than_one_batch_go_out_in_order_as_several_requests(bank, real_redis, keys, tmp_path):
    run, (a, _b) = bank
    count = MAX_BATCH_COMMANDS + 5
    lines = ["deposit,,,0.01"] * (count - 1) + ["withdraw,,,1000"]  # the last line, in the second request, is refused
    before = sent(real_redis, keys)
    result = run("ann", write(tmp_path, HEADER + "\n".join(lines) + "\n"), "--json")
    assert result.exit_code == 3, result.output
    assert sent(real_redis, keys) == before + 2
    report = body(result)
    rows = report["results"]
    assert [r["line"] for r in rows] == list(range(2, count + 2))
    assert all(r["result"] == "ok" for r in rows[:-1]) and rows[-1]["result"] == "insufficient_funds"
    assert rows[-2]["balance"] == f"{100 + (count - 1) / 100:.2f}"
    seqs = [r["seq"] for r in rows[:-1]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({r["command_id"] for r in rows}) == count
    assert (report["accepted"], report["rejected"]) == (count - 1, 1)
    assert balances_from_log(log_payloads(real_redis, keys))[a] == 10_000 + count - 1


def test_json_is_one_object_with_every_line_and_the_counts(bank, tmp_path):
    run, (a, b) = bank
    result = run("ann", write(tmp_path, f"{HEADER}transfer,,{b},1\ntransfer,,{a},1\n"), "--json")
    assert result.exit_code == 3, result.output
    report = body(result)
    assert report["ok"] is False and (report["accepted"], report["rejected"]) == (1, 1)
    ok, refused = report["results"]
    assert ok["ok"] and ok["account"] == a and ok["to"] == b and ok["amount"] == "1.00" and ok["balance"] == "99.00"
    assert isinstance(ok["seq"], int) and ok["command_id"] and "balance_cents" not in ok
    assert not refused["ok"] and refused["result"] == "same_account" and refused["message"]


def test_stdin_and_an_administrator_naming_accounts(bank, real_redis, keys):
    run, (a, b) = bank
    result = run("admin", "-", stdin=f"{HEADER}deposit,{a},,1\nwithdraw,{b},,2\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "2 accepted, 0 rejected"
    assert balances_from_log(log_payloads(real_redis, keys)) == {a: 10_100, b: 9_800}
    before = sent(real_redis, keys)
    missing = run("admin", "-", stdin=f"{HEADER}deposit,{a},,1\ndeposit,,,1\n")
    assert missing.exit_code == 2 and "line(s) 3" in missing.stderr and sent(real_redis, keys) == before


def test_the_same_refusal_of_every_line_exits_as_a_single_command_would(bank, tmp_path):
    run, (_a, b) = bank
    result = run("ann", write(tmp_path, f"{HEADER}deposit,{b},,1\nwithdraw,{b},,1\n"))
    assert result.exit_code == 4, result.output  # not permitted: ann may not act on b's account
    assert result.stdout.splitlines()[-1] == "0 accepted, 2 rejected"


def test_a_lost_request_after_settled_ones_still_reports_every_line(bank, tmp_path, monkeypatch):
    run, _accounts = bank
    real = BankSession.command_batch
    calls: list[int] = []

    def flaky(self: BankSession, requests: list[Any]) -> list[dict[str, Any]]:
        calls.append(len(requests))
        if len(calls) == 2:
            raise BankctlError("no reply", Exit.UNAVAILABLE, "unavailable")
        return real(self, requests)

    monkeypatch.setattr(BankSession, "command_batch", flaky)
    count = 2 * MAX_BATCH_COMMANDS + 1
    result = run("ann", write(tmp_path, HEADER + "deposit,,,0.01\n" * count), "--json")
    assert result.exit_code == 5, result.output
    report = body(result)
    assert report["code"] == "unavailable" and report["accepted"] == MAX_BATCH_COMMANDS
    results = [r["result"] for r in report["results"]]
    assert results == ["ok"] * MAX_BATCH_COMMANDS + ["unknown"] * MAX_BATCH_COMMANDS + ["not_sent"]
    assert calls == [MAX_BATCH_COMMANDS, MAX_BATCH_COMMANDS] and "do not send the whole file again" in result.stderr
