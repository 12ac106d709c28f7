"""The chaos suite: the short profile runs in ``make test``; the schedule and the checkers are tested on their own.

The seed of the short run is random (``BANKCTL_CHAOS_SEED`` pins it); a failure names the seed, and
``bankctl chaos --runs 1 --seed N`` replays its fault schedule.
"""

from __future__ import annotations

import os
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bankctl.chaos import DATABASES, PROFILES, WORKERS, ChaosRun, plan
from bankctl.chaos_checks import (
    balance_timeline,
    check_outbox,
    check_outcomes,
    check_queries,
    command_counts,
    sms_expected,
)
from commands.client import Request


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), duration=st.floats(min_value=5, max_value=300))
def test_plan_is_a_pure_function_of_the_seed_and_always_restarts(seed: int, duration: float) -> None:
    actions = plan(seed, duration_s=duration, mean_gap_s=2.0)
    assert actions == plan(seed, duration_s=duration, mean_gap_s=2.0)
    assert [a.at for a in actions] == sorted(a.at for a in actions)
    down: set[str] = set()
    for action in actions:
        assert 0 < action.at <= duration
        if action.verb in ("kill", "kill_redis", "kill_bus"):
            assert action.target not in down, "a process that is down is not killed again"
            down.add(action.target)
        elif action.verb in ("start", "start_redis", "start_bus"):
            assert action.target in down
            down.discard(action.target)
        else:
            assert action.verb == "delete" and action.target in DATABASES
    assert not down, "every process runs again at the end"
    assert {a.target for a in actions if a.verb == "kill"} <= set(WORKERS)


def test_plan_covers_every_kind_of_fault_and_seeds_differ() -> None:
    actions = plan(3, duration_s=45, mean_gap_s=2.5)
    targets = {a.target for a in actions}
    assert "redis" in targets and "bus" in targets and "notifier" in targets and "sealer" in targets
    assert targets & {"handler-1", "handler-2"} and targets & {"projector-1", "projector-2"}
    assert targets & set(DATABASES)
    assert plan(4, duration_s=45, mean_gap_s=2.5) != actions


def _event(seq: int, kind: str, command_id: str, **data: object) -> dict[str, object]:
    return {"seq": seq, "type": kind, "command_id": command_id, "event_id": f"e{seq}", "data": data}


EVENTS = [
    _event(1, "AccountOpened", "c1", account=1, sms_opt_in=True),
    _event(2, "CredentialsRegistered", "c1", account=1),
    _event(3, "AccountOpened", "c2", account=2, sms_opt_in=False),
    _event(4, "MoneyDeposited", "c3", account=1, amount=500, balance_after=500),
    _event(5, "MoneyTransferred", "c4", **{"from": 1, "to": 2, "amount": 200, "from_balance_after": 300,
                                           "to_balance_after": 200}),
]


def test_a_command_counts_once_for_all_its_events_and_twice_when_repeated() -> None:
    assert command_counts(EVENTS) == {"c1": 1, "c2": 1, "c3": 1, "c4": 1}
    repeated = [*EVENTS, _event(6, "MoneyDeposited", "c3", account=1, amount=500, balance_after=800)]
    assert command_counts(repeated)["c3"] == 2


def test_outcome_check_finds_lost_doubled_and_mismatched_commands() -> None:
    requests = {c: Request("Deposit", {}, command_id=c) for c in ("c1", "c2", "c3", "c4")}
    ok = {"ok": True}
    replies = {"c1": ok, "c2": ok, "c3": ok, "c4": {"ok": False, "code": "insufficient_funds"}}
    assert check_outcomes(requests, replies, {"c1": 1, "c2": 1, "c3": 1}, {"c1": ok}, []) == []
    found = check_outcomes(requests, replies, {"c1": 1, "c3": 2, "c4": 1, "zz": 1}, {"c1": {"ok": False}},
                           [requests["c2"]])
    text = " ".join(f.message for f in found)
    for expected in ("never got a reply", "missing from the log", "twice", "refused command", "stored outcome",
                     "nobody sent"):
        assert expected in text


def test_outbox_check_finds_doubled_missing_and_unasked_sms() -> None:
    expected, opted = sms_expected(EVENTS)
    assert opted == {1} and expected == {("e4", 1), ("e5", 1)}
    good = [b'{"event_id":"e4","account":1}', b'{"event_id":"e5","account":1}']
    assert check_outbox(good, expected) == []
    bad = [good[0], good[0], b'{"event_id":"e5","account":2}']
    messages = " ".join(f.message for f in check_outbox(bad, expected))
    assert "more than once" in messages and "missing" in messages and "no opted-in" in messages


def test_query_check_compares_answers_with_the_log_at_their_seq() -> None:
    timeline = balance_timeline(EVENTS)
    good = [(Request("balance", {"account": 1}), {"ok": True, "balance_cents": 500, "seq": 4}),
            (Request("balance", {"account": 2}, min_seq=5), {"ok": True, "balance_cents": 200, "seq": 5}),
            (Request("history", {"account": 1}), {"ok": True, "seq": 5, "transactions": [
                {"seq": 5, "balance_after_cents": 300}, {"seq": 4, "balance_after_cents": 500}]}),
            (Request("balance", {"account": 1}), {"ok": False, "code": "timeout"})]
    findings, stats = check_queries(good, timeline)
    assert findings == [] and stats == {"ok": 3, "timeout": 1}
    stale = [(Request("balance", {"account": 1}, min_seq=5), {"ok": True, "balance_cents": 500, "seq": 4})]
    wrong = [(Request("balance", {"account": 1}), {"ok": True, "balance_cents": 499, "seq": 4})]
    refused = [(Request("balance", {"account": 1}), {"ok": False, "code": "not_permitted"})]
    for case in (stale, wrong, refused):
        assert check_queries(case, timeline)[0]


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_short_chaos_profile_finds_nothing(needs_redis_server: None) -> None:
    seed = int(os.environ.get("BANKCTL_CHAOS_SEED") or secrets.randbelow(1_000_000))
    report = ChaosRun(seed, PROFILES["short"]).run()
    assert report.ok, (f"chaos seed {seed} (replay: bankctl chaos --runs 1 --seed {seed}): "
                       + "; ".join(f"[{f.check}] {f.message}" for f in report.findings))
    assert report.stats["accepted"] > 1000 and report.stats["queries"]["ok"] > 100, report.stats
    assert len(report.actions) >= 6, report.actions
