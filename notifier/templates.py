"""Short SMS texts for the events a customer is told about (pure functions, no I/O).

Why so terse: one GSM segment (160 characters) per message keeps cost and splitting predictable, and an SMS is
read on a lock screen, so it carries only what happened, the amount, the masked account number, the balance
after and the time. No names, no full account numbers, and a transfer never reveals the other party.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from commands.money import format_cents

BRAND = "Fintech Fortress"
MAX_SMS_CHARS = 160
NOTIFIED_TYPES = frozenset(
    {"MoneyDeposited", "MoneyWithdrawn", "MoneyTransferred", "PasswordChanged", "AccountLocked", "AccountClosed"}
)


class Notice(NamedTuple):
    """One message to one account holder about one event (before the phone number is looked up)."""

    account: int
    body: str


def mask_account(account: int) -> str:
    """``42`` -> ``"****0042"``: enough for the customer to recognise, useless to anyone else."""
    return "****" + f"{account % 10_000:04d}"


_UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def short_time(occurred_at: str) -> str:
    """``"2026-11-24T01:02:03.123456Z"`` (or without micros) -> ``"2026-11-24 01:02 UTC"``; else the raw text."""
    if isinstance(occurred_at, str):
        return _short_utc(occurred_at)
    return str(occurred_at)[:25]


@lru_cache(maxsize=1024)
def _short_utc(occurred_at: str) -> str:
    """Sliced rather than ``strptime``-parsed and reformatted, and cached: this runs for every message, the events
    of one append share their time, and parsing was a seventh of the notifier's CPU. ``fromisoformat`` still
    refuses a date that does not exist."""
    if _UTC_TIME.fullmatch(occurred_at):
        try:
            datetime.fromisoformat(occurred_at)
        except ValueError:
            pass
        else:
            return f"{occurred_at[:10]} {occurred_at[11:16]} UTC"
    return occurred_at[:25]


def _lock_end(until: Any) -> str:
    """``until`` may be epoch seconds (number or numeric text) or an ISO time; show minutes in UTC."""
    try:
        seconds = float(until)
    except (TypeError, ValueError):
        return short_time(str(until)) if until else "later"
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _money(verb: str, account: int, amount: int, balance: int, when: str) -> str:
    return (f"{BRAND}: {verb} {format_cents(amount)} on account {mask_account(account)}. "
            f"Balance {format_cents(balance)}. {when}")


def recipients(event_type: str, data: Mapping[str, Any]) -> tuple[int, ...]:
    """The account holders an event is texted to (empty for the types nobody is told about)."""
    if event_type == "MoneyTransferred":
        return int(data["from"]), int(data["to"])
    if event_type in NOTIFIED_TYPES:
        return (int(data["account"]),)
    return ()


def notices_for(
    event_type: str, data: Mapping[str, Any], occurred_at: str, only: Container[int] | None = None
) -> list[Notice]:
    """The messages an event calls for, one per account holder concerned (empty for other event types).

    ``only``: the accounts to write for. The notifier passes those with a number to text, so no text is built
    for the others (half the bench's customers are not opted in; building texts was a sixth of its CPU).
    """
    when = short_time(occurred_at)
    match event_type:
        case "MoneyDeposited" | "MoneyWithdrawn":
            account = int(data["account"])
            if only is not None and account not in only:
                return []
            verb = "Deposit of" if event_type == "MoneyDeposited" else "Withdrawal of"
            return [Notice(account, _money(verb, account, int(data["amount"]), int(data["balance_after"]), when))]
        case "MoneyTransferred":
            source, target, amount = int(data["from"]), int(data["to"]), int(data["amount"])
            out = []
            if only is None or source in only:
                out.append(Notice(source, _money("Transfer out", source, amount, int(data["from_balance_after"]),
                                                 when)))
            if only is None or target in only:
                out.append(Notice(target, _money("Transfer in", target, amount, int(data["to_balance_after"]),
                                                 when)))
            return out
    if event_type not in NOTIFIED_TYPES:
        return []
    account = int(data["account"])
    if only is not None and account not in only:
        return []
    match event_type:
        case "PasswordChanged":
            return [Notice(account, f"{BRAND}: the password of account {mask_account(account)} was changed. "
                                    f"{when}. Not you? Call us now.")]
        case "AccountLocked":
            return [Notice(account, f"{BRAND}: account {mask_account(account)} locked after failed sign-ins "
                                    f"until {_lock_end(data.get('until'))}. Not you? Call us.")]
        case "AccountClosed":
            return [Notice(account, f"{BRAND}: account {mask_account(account)} was closed. {when}")]
    return []
