"""SqliteStore: migrations, transactions, and Deferred results from its own thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.testing import MemoryReactor

from gamed.store import SqliteStore, StoreError

STEPS = ["CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)", "ALTER TABLE t ADD COLUMN c INTEGER"]


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(str(tmp_path / "sub" / "db.sqlite3"), reactor=MemoryReactor())
    yield s
    s.close()


def test_migrate_creates_and_is_idempotent(store: SqliteStore, tmp_path: Path) -> None:
    assert store.migrate(STEPS) == 2
    assert store.migrate(STEPS) == 2
    cols = store.run_sync(lambda c: [r[1] for r in c.execute("PRAGMA table_info(t)")])
    assert cols == ["a", "b", "c"]


def test_newer_schema_is_refused(store: SqliteStore) -> None:
    store.migrate(STEPS)
    with pytest.raises(RuntimeError, match="newer than this gamed"):
        store.migrate(STEPS[:1])


def test_failed_transaction_rolls_back(store: SqliteStore) -> None:
    store.migrate(STEPS)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (a, b) VALUES (1, 'x')")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        store.run_sync(half_then_fail)
    assert store.run_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0


def test_data_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite3")
    s = SqliteStore(path, reactor=MemoryReactor())
    s.migrate(STEPS)
    s.run_sync(lambda c: c.execute("INSERT INTO t (a, b) VALUES (7, 'kept')"))
    s.close()
    s2 = SqliteStore(path, reactor=MemoryReactor())
    assert s2.run_sync(lambda c: c.execute("SELECT b FROM t WHERE a = 7").fetchone()) == ("kept",)
    s2.close()
    with pytest.raises(RuntimeError, match="closed"):
        s2.run_sync(lambda c: None)


@pytest_twisted.inlineCallbacks
def test_run_works_off_the_reactor_thread(tmp_path: Path):
    from twisted.internet import reactor

    s = SqliteStore(str(tmp_path / "db.sqlite3"), reactor=reactor)
    try:
        s.migrate(STEPS)
        main = threading.get_ident()

        def insert(conn: sqlite3.Connection, n: int) -> int:
            assert threading.get_ident() != main
            conn.executemany("INSERT INTO t (a, b) VALUES (?, 'v')", [(i,) for i in range(n)])
            return n

        assert (yield s.run(insert, 50)) == 50
        count = yield s.run(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0])
        assert count == 50
    finally:
        s.close()


def test_split_sql_keeps_semicolons_inside_strings_and_triggers() -> None:
    from gamed.store import split_sql

    script = (
        "CREATE TABLE a (x TEXT DEFAULT ';');\n"
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 'y;z'; END;\n"
    )
    assert len(split_sql(script)) == 2
    with pytest.raises(ValueError, match="incomplete"):
        split_sql("CREATE TABLE b (x TEXT DEFAULT 'unterminated)")


def test_failed_migration_closes_the_store(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "db.sqlite3"), reactor=MemoryReactor())
    with pytest.raises(StoreError, match=r"db\.sqlite3: near .THIS.: syntax error") as info:
        s.migrate(["CREATE TABLE ok (a INTEGER)", "THIS IS NOT SQL"])
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(RuntimeError, match="closed"):
        s.run_sync(lambda c: None)
