"""The invariants a chaos run must keep, as pure functions over what the clients saw and what the log says.

Each returns :class:`ChaosFinding` items (empty when the invariant holds), so they are tested on small
hand-made inputs as well as used on a run.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from commands.client import Request

QUERY_OUTCOMES = frozenset({"timeout"})
"""Refusal codes a query may legitimately get under faults (the read model did not reach ``min_seq`` in time)."""


@dataclass(frozen=True, slots=True)
class ChaosFinding:
    check: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "message": self.message}


def sms_expected(events: Iterable[dict[str, Any]]) -> tuple[set[tuple[str, int]], set[int]]:
    """``(event_id, account)`` of every money movement of an opted-in account, and the opted-in accounts.

    The chaos load never changes opt-ins after opening, so "opted in" is what AccountOpened said.
    """
    opted: set[int] = set()
    expected: set[tuple[str, int]] = set()
    for body in events:
        data = body["data"]
        if body["type"] == "AccountOpened" and data.get("sms_opt_in"):
            opted.add(int(data["account"]))
        elif body["type"] in ("MoneyDeposited", "MoneyWithdrawn"):
            if data["account"] in opted:
                expected.add((body["event_id"], int(data["account"])))
        elif body["type"] == "MoneyTransferred":
            for account in (data["from"], data["to"]):
                if account in opted:
                    expected.add((body["event_id"], int(account)))
    return expected, opted


def check_outbox(lines: Iterable[bytes], expected: set[tuple[str, int]]) -> list[ChaosFinding]:
    """No SMS twice for one (event, account), none missing for an opted-in movement, none unasked for."""
    counts: dict[tuple[str, int], int] = {}
    findings: list[ChaosFinding] = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
            key = (str(record["event_id"]), int(record["account"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            findings.append(ChaosFinding("sms", f"unreadable outbox line {raw[:80]!r}"))
            continue
        counts[key] = counts.get(key, 0) + 1
    doubled = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(expected - counts.keys())
    unasked = sorted(counts.keys() - expected)
    if doubled:
        findings.append(ChaosFinding("sms", f"{len(doubled)} SMS sent more than once, e.g. {doubled[:3]}"))
    if missing:
        findings.append(ChaosFinding("sms", f"{len(missing)} SMS missing for opted-in movements, e.g. {missing[:3]}"))
    if unasked:
        findings.append(ChaosFinding("sms", f"{len(unasked)} SMS for no opted-in movement, e.g. {unasked[:3]}"))
    return findings


def check_outcomes(requests: Mapping[str, Request], replies: Mapping[str, dict[str, Any]],
                   log_counts: Mapping[str, int], stored: Mapping[str, dict[str, Any] | None],
                   unanswered: list[Request]) -> list[ChaosFinding]:
    """Exactly one outcome per command: a reply for each, the log holds accepted ones once and refused ones never,
    and the outcome stored for resends is the reply the client got. No event without a command we sent."""
    findings: list[ChaosFinding] = []
    if unanswered:
        findings.append(ChaosFinding("outcome", f"{len(unanswered)} requests never got a reply, e.g. "
                                                f"{[(r.type, r.command_id) for r in unanswered[:3]]}"))
    lost, doubled, ghost, mismatched = [], [], [], []
    for command_id, reply in replies.items():
        count = log_counts.get(command_id, 0)
        if reply.get("ok") and count == 0:
            lost.append(command_id)
        elif count > 1:
            doubled.append(command_id)
        elif not reply.get("ok") and count:
            ghost.append(command_id)
        saved = stored.get(command_id)
        if saved is not None and saved != reply:
            mismatched.append((command_id, reply, saved))
    unknown = sorted(set(log_counts) - set(requests))
    for label, items in (("acknowledged command missing from the log", lost), ("command in the log twice", doubled),
                         ("refused command in the log", ghost), ("stored outcome differs from the reply", mismatched),
                         ("event from a command nobody sent", unknown)):
        if items:
            findings.append(ChaosFinding("outcome", f"{len(items)} x {label}, e.g. {items[:2]}"))
    return findings


def command_counts(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many times each command took effect: one command's events are consecutive in the log (one append),
    so a command id that starts a second run of events took effect twice."""
    out: dict[str, int] = {}
    previous = None
    for body in events:
        command_id = body["command_id"]
        if command_id != previous:
            out[command_id] = out.get(command_id, 0) + 1
            previous = command_id
    return out


def balance_timeline(events: Iterable[dict[str, Any]]) -> dict[int, tuple[list[int], list[int]]]:
    """Per account, the seqs where its balance changed and the balance after each (for read-model checks)."""
    out: dict[int, tuple[list[int], list[int]]] = {}

    def note(account: int, seq: int, balance: int) -> None:
        seqs, balances = out.setdefault(account, ([], []))
        seqs.append(seq)
        balances.append(balance)

    for body in events:
        data, seq = body["data"], body["seq"]
        if body["type"] == "AccountOpened":
            note(int(data["account"]), seq, 0)
        elif body["type"] in ("MoneyDeposited", "MoneyWithdrawn"):
            note(int(data["account"]), seq, int(data["balance_after"]))
        elif body["type"] == "MoneyTransferred":
            note(int(data["from"]), seq, int(data["from_balance_after"]))
            note(int(data["to"]), seq, int(data["to_balance_after"]))
    return out


def balance_at(timeline: Mapping[int, tuple[list[int], list[int]]], account: int, seq: int) -> int | None:
    seqs, balances = timeline.get(account, ([], []))
    index = bisect.bisect_right(seqs, seq) - 1
    return balances[index] if index >= 0 else None


def check_queries(queries: Iterable[tuple[Request, dict[str, Any]]],
                  timeline: Mapping[int, tuple[list[int], list[int]]]) -> tuple[list[ChaosFinding], dict[str, int]]:
    """Every answer is what the log says at the seq the answer claims, and at least the ``min_seq`` asked for."""
    findings: list[ChaosFinding] = []
    stats = {"ok": 0, "timeout": 0}
    wrong: list[Any] = []
    for request, reply in queries:
        if not reply.get("ok"):
            code = str(reply.get("code"))
            if code in QUERY_OUTCOMES:
                stats[code] += 1
            else:
                wrong.append((request.type, request.payload, reply))
            continue
        stats["ok"] += 1
        account, seq = request.payload["account"], int(reply.get("seq", -1))
        if seq < request.min_seq:
            wrong.append((request.type, "read below min_seq", request.min_seq, reply.get("seq")))
            continue
        if request.type == "balance":
            expected = balance_at(timeline, account, seq)
            if reply.get("balance_cents") != expected:
                wrong.append(("balance", account, seq, reply.get("balance_cents"), expected))
        else:
            for tx in reply.get("transactions", []):
                expected = balance_at(timeline, account, tx["seq"])
                if tx["seq"] > seq or tx["balance_after_cents"] != expected:
                    wrong.append(("history", account, seq, tx, expected))
                    break
    if wrong:
        findings.append(ChaosFinding("query", f"{len(wrong)} wrong query answers, e.g. {wrong[:2]}"))
    return findings, stats
