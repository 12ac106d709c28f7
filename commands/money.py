"""Money: integer cents only, parsed strictly (DESIGN §9 "Amounts")."""

from __future__ import annotations

import re

MAX_AMOUNT_CENTS = 100_000_000_000  # 1,000,000,000.00 per operation
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,14})(?:\.([0-9]{1,2}))?")


class InvalidAmount(ValueError):
    """Raised with a message fit to show a person."""


def parse_amount(text: str) -> int:
    """``"12.30"`` -> ``1230``. Rejects zero, negatives, exponents, ``nan``/``inf``, ``1_000``, >2 decimals."""
    if not isinstance(text, str):
        raise InvalidAmount("amount must be text like 12.50")
    candidate = text.strip()
    match = _AMOUNT.fullmatch(candidate) if candidate.isascii() else None
    if match is None:
        raise InvalidAmount(
            f"invalid amount {text!r}: use a positive number with at most two decimals, like 12.50"
        )
    whole, fraction = match.group(1), match.group(2) or ""
    cents = int(whole) * 100 + int(fraction.ljust(2, "0") or "0")
    if cents <= 0:
        raise InvalidAmount("amount must be greater than zero")
    if cents > MAX_AMOUNT_CENTS:
        raise InvalidAmount(f"amount exceeds the maximum of {format_cents(MAX_AMOUNT_CENTS)} per operation")
    return cents


def format_cents(cents: int) -> str:
    """``1230`` -> ``"12.30"``; ``-5`` -> ``"-0.05"``. (Every reply and SMS formats amounts: no ``divmod``.)"""
    if cents < 0:
        return "-" + format_cents(-cents)
    return f"{cents // 100}.{cents % 100:02d}"
