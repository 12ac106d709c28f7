"""The bulk log reader: pages in order across page boundaries, fields exactly as stored, no stray replies."""

from __future__ import annotations

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.keys import Keys
from eventstore.log_pages import PageReader, raw_entries


def _fill(client: redis.Redis, keys: Keys, count: int) -> None:
    for seq in range(1, count + 1):
        client.xadd(keys.events, {"seq": seq, "type": "MoneyDeposited", "body": f"body-{seq}"}, id=f"{seq}-0")


def test_pages_cover_the_log_in_order_across_page_boundaries(any_redis: redis.Redis, keys: Keys) -> None:
    _fill(any_redis, keys, 23)
    reader = PageReader(any_redis, keys, page=5)
    pages = list(reader.raw_pages())
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    flat = [entry for page in pages for entry in page]
    assert flat == [(f"{s}-0", str(s).encode(), b"MoneyDeposited", f"body-{s}".encode()) for s in range(1, 24)]
    assert [e.seq for page in reader.event_pages(7, last=16) for e in page] == list(range(8, 17))
    assert [e[0] for e in reader.entries()] == [f"{s}-0" for s in range(1, 24)]


def test_a_log_of_exactly_whole_pages_ends_cleanly(any_redis: redis.Redis, keys: Keys) -> None:
    _fill(any_redis, keys, 10)
    assert [len(p) for p in PageReader(any_redis, keys, page=5).raw_pages()] == [5, 5]
    assert list(PageReader(any_redis, keys, page=5).raw_pages("(10-0")) == []


def test_an_abandoned_reader_leaves_the_client_usable(any_redis: redis.Redis, keys: Keys) -> None:
    _fill(any_redis, keys, 30)
    pages = PageReader(any_redis, keys, page=4).raw_pages()
    next(pages)  # the next page has been asked for and is never read
    pages.close()
    assert any_redis.xlen(keys.events) == 30
    assert [e.seq for page in PageReader(any_redis, keys).event_pages(28) for e in page] == [29, 30]


def test_fields_come_back_as_a_dict_reader_would_see_them(any_redis: redis.Redis, keys: Keys) -> None:
    any_redis.execute_command("XADD", keys.events, "1-0", "seq", "1", "type", "A", "body", "x", "body", "y")
    any_redis.execute_command("XADD", keys.events, "2-0", "type", "B", "seq", "2")
    any_redis.execute_command("XADD", keys.events, "3-0", "body", "z", "seq", "3", "type", "C")
    assert next(PageReader(any_redis, keys).raw_pages()) == [
        ("1-0", b"1", b"A", b"y"), ("2-0", b"2", b"B", b""), ("3-0", b"3", b"C", b"z")]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from([b"seq", b"type", b"body", b"other"]), st.binary(max_size=4)),
                max_size=6))
def test_raw_entries_match_the_last_value_of_each_field(fields: list[tuple[bytes, bytes]]) -> None:
    flat = [part for pair in fields for part in pair]
    named = dict(fields)
    assert raw_entries([[b"9-0", flat]]) == [
        ("9-0", named.get(b"seq", b""), named.get(b"type", b""), named.get(b"body", b""))]
