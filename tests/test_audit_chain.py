"""The hash-chain check run in a child process: the same result as in-process, and a dead child is an error."""

from __future__ import annotations

import hashlib
import os

import pytest

from bankctl.audit_chain import ChainCheck, ChainCheckFailed, ChainCheckProcess
from eventstore.seals import GENESIS


def _entries(count: int) -> list[tuple[str, bytes, bytes, bytes]]:
    return [(f"{seq}-0", str(seq).encode(), b"MoneyDeposited", f'{{"seq":{seq}}}'.encode())
            for seq in range(1, count + 1)]


def _chain(entries: list[tuple[str, bytes, bytes, bytes]]) -> bytes:
    chain = GENESIS
    for entry in entries:
        chain = hashlib.sha256(chain + hashlib.sha256(entry[3]).digest()).digest()
    return chain


def test_a_child_brings_back_the_chain_it_computed() -> None:
    entries = _entries(1_000)
    check = ChainCheck([])
    ChainCheckProcess(check, lambda: iter(entries)).result()
    assert (check.chain, check.head, check.findings) == (_chain(entries), 1_000, [])
    here = ChainCheck([])
    here.feed(entries)
    assert here.state() == check.state()


def test_a_child_that_cannot_read_the_log_is_an_error() -> None:
    def broken():
        yield from _entries(3)
        raise ConnectionError("log unreachable")

    with pytest.raises(ChainCheckFailed, match="log unreachable"):
        ChainCheckProcess(ChainCheck([]), broken).result()


def test_a_child_that_dies_is_an_error() -> None:
    def dying():
        yield from _entries(3)
        os._exit(9)

    with pytest.raises(ChainCheckFailed, match="died"):
        ChainCheckProcess(ChainCheck([]), dying).result()
