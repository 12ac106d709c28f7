"""Money parsing is strict and round-trips with format_cents (property-based, DESIGN §9 "Amounts")."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.money import MAX_AMOUNT_CENTS, InvalidAmount, format_cents, parse_amount

VALID = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{1,2})?")


@given(st.integers(min_value=1, max_value=MAX_AMOUNT_CENTS))
def test_round_trip_with_format_cents(cents):
    assert parse_amount(format_cents(cents)) == cents


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_cents_shows_every_cent_and_the_sign(cents):
    text = format_cents(cents)
    assert re.fullmatch(r"-?(0|[1-9][0-9]*)\.[0-9]{2}", text)
    assert text.startswith("-") == (cents < 0)
    assert int(text.replace(".", "")) == cents


@given(st.integers(min_value=1, max_value=MAX_AMOUNT_CENTS), st.sampled_from(["", ".0", ".00"]))
def test_whole_amounts_in_every_spelling(whole_cents, suffix):
    whole = whole_cents // 100 or 1
    assert parse_amount(f"{whole}{suffix}") == whole * 100


@given(st.text(max_size=24))
def test_everything_else_is_rejected_with_a_message(text):
    stripped = text.strip()
    if stripped.isascii() and VALID.fullmatch(stripped) and 0 < Decimal(stripped) * 100 <= MAX_AMOUNT_CENTS:
        assert parse_amount(text) == int(Decimal(stripped) * 100)
        return
    with pytest.raises(InvalidAmount) as error:
        parse_amount(text)
    assert str(error.value)


@pytest.mark.parametrize("text", ["-5", "0", "0.001", "nan", "inf", "-inf", "1e3", "1_000", "abc", "10" + "0" * 15,
                                  "1,000", "+5", ".5", "5.", "0x10", "١٢", "", " ", "1.234", "00.5"])
def test_known_bad_amounts(text):
    with pytest.raises(InvalidAmount):
        parse_amount(text)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_cents_always_has_two_decimals(cents):
    text = format_cents(cents)
    assert re.fullmatch(r"-?[0-9]+\.[0-9]{2}", text)
    assert round(float(text) * 100) == cents
