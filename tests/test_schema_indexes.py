"""A bulk load builds the secondary index at the end; every live database has it whatever built the file."""

from __future__ import annotations

from projections.schema import connect, create_indexes


def _indexes(conn) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                             "AND name NOT LIKE 'sqlite_%'")}


def test_a_bulk_load_has_no_secondary_index_until_it_asks(tmp_path):
    bulk = connect(tmp_path / "bulk.db", live=False)
    assert _indexes(bulk) == set()
    create_indexes(bulk)
    assert _indexes(bulk) == {"transactions_by_account"}


def test_a_live_database_always_gets_its_index(tmp_path):
    path = tmp_path / "interrupted.db"
    connect(path, live=False).close()  # a bulk load that stopped before create_indexes
    live = connect(path, live=True)
    assert _indexes(live) == {"transactions_by_account"}
    plan = " ".join(str(row) for row in live.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM transactions WHERE account = 7 ORDER BY seq DESC LIMIT 10"))
    assert "transactions_by_account" in plan
