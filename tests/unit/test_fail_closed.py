"""Issue 12 items 1, 2, 9, 10: fail closed at start, lose no acknowledged ban, say the cause.

Each test here failed on the code before its fix: a corrupt database started the
server without bans, a failed ban write was acknowledged and forgotten, a full
disk was reported as "cannot rollback - no transaction is active", and a data
dir that could not be created was a traceback.
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock

from gamed import tap
from gamed.middleware.analytics.middleware import Analytics
from gamed.middleware.analytics.store import InlineStore
from gamed.middleware.security.middleware import SecurityMiddleware, SecurityService
from gamed.middleware.security.policy import build_policy
from gamed.middleware.security.store import FILENAME, RETRY_MAX, BlockStore, _write
from gamed.service import ServerRoot
from gamed.store import SqliteStore
from tests.unit.fakes import FakeServerControl, SecurityPlugin


class Launcher(dict[str, Any]):
    """The bits of twistd's ServerOptions gamed reads."""


# -- item 1: fail closed ------------------------------------------------------------------


def test_a_corrupt_ban_database_refuses_the_start_in_one_line(tmp_path: Path) -> None:
    """Through ServerRoot: the line goes through twistd's status pipe, the pidfile goes."""
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 512)
    clock = Clock()
    mw = SecurityMiddleware(build_policy({}), clock, FakeServerControl(), CollectorRegistry())
    root = ServerRoot()
    SecurityService(mw, clock, str(tmp_path)).setServiceParent(root)
    pidfile = tmp_path / "gamed.pid"
    pidfile.write_text("1")
    r, w = os.pipe()
    root.launcher = Launcher(nodaemon=False, statusPipe=w, pidfile=str(pidfile))
    try:
        with pytest.raises(SystemExit) as info:
            root.startService()
        said = os.read(r, 200)
    finally:
        os.close(r)
    line = f"gamed: cannot use {tmp_path / FILENAME}: file is not a database"
    assert info.value.code == line
    assert said == b"1 " + line.encode()[:98]
    assert not pidfile.exists()
    assert not root.running
    assert mw.user_blocks == {}


def test_a_corrupt_analytics_database_refuses_the_start_in_one_line(tmp_path: Path) -> None:
    """Item 9: before, a raw traceback from SqliteStore.migrate."""
    path = tmp_path / "analytics.sqlite3"
    path.write_bytes(b"not sqlite at all " * 400)
    hub = Analytics(MemoryReactorClock(), CollectorRegistry(), str(path))
    # A reactor with threads: the real SqliteStore, as under twistd.
    hub._store_factory = lambda p: SqliteStore(p, reactor=MemoryReactor())
    from gamed.middleware.analytics.middleware import AnalyticsService

    root = ServerRoot()
    AnalyticsService(hub).setServiceParent(root)
    with pytest.raises(SystemExit) as info:
        root.startService()
    assert info.value.code == f"gamed: cannot use {path}: file is not a database"


def test_a_data_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """Item 9: before, os.makedirs raised a traceback out of makeService."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    options = tap.Options()
    options.parseOptions(["--data-dir", str(blocker / "data"), "--metrics-port", "none"])
    with pytest.raises(SystemExit) as info:
        tap.makeService(options, reactor=MemoryReactorClock())
    assert (
        info.value.code
        == f"gamed: --data-dir {blocker / 'data'} cannot be created: Not a directory"
    )


# -- item 10: the real cause of a failed write ----------------------------------------------


def fill(conn: sqlite3.Connection, rows: int) -> None:
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 3000,))


def test_a_full_disk_is_reported_as_a_full_disk(tmp_path: Path) -> None:
    """SQLite rolls back by itself on SQLITE_FULL; our ROLLBACK must not hide the cause."""
    store = SqliteStore(str(tmp_path / "db.sqlite3"), reactor=MemoryReactor())
    try:
        store.migrate(["CREATE TABLE t (a BLOB)"])
        store.run_sync(lambda c: c.execute("PRAGMA max_page_count=8"))  # a tiny "disk"
        with pytest.raises(sqlite3.OperationalError, match=r"^database or disk is full$"):
            store.run_sync(fill, 100)
        store.run_sync(lambda c: c.execute("PRAGMA max_page_count=100000"))
        store.run_sync(fill, 3)  # the connection is usable again
        assert store.run_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 3
    finally:
        store.close()


def test_analytics_on_a_full_disk_keeps_its_deltas_and_logs_once(
    tmp_path: Path, logged: list[str]
) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    hub = Analytics(clock, registry, str(tmp_path / "a.sqlite3"))
    hub.open()
    assert isinstance(hub.store, InlineStore)
    conn = hub.store._conn
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count={pages}")  # full: not one more page

    for uid in range(200):
        hub.aggregates.user(uid, clock.seconds()).messages += 1
    failures = []
    for _ in range(3):
        hub.flush().addErrback(failures.append)
    assert failures == []
    assert hub.flush_failures == 3
    assert registry.get_sample_value("gamed_analytics_flush_failures_total") == 3
    assert hub.flush_error == "database or disk is full"
    errors = [line for line in logged if "analytics: cannot write" in line]
    assert len(errors) == 1, "once per state change, not every flush"
    assert "database or disk is full" in errors[0]
    assert not any("cannot rollback" in line for line in logged)
    assert len(hub.aggregates.users) == 200, "the deltas are kept"

    conn.execute("PRAGMA max_page_count=1000000")  # space again
    hub.flush()
    assert hub.flush_error is None
    assert conn.execute("SELECT SUM(messages), COUNT(*) FROM users").fetchone() == (200, 200)
    assert any("works again" in line for line in logged)
    hub.close()


# -- item 2: an acknowledged ban is never lost ---------------------------------------------


class FlakyStore:
    """SqliteStore's surface over a dict; writes fail while ``error`` is set."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[tuple[str, str], Any] = {}
        self.error: str | None = None
        self.attempts = 0
        self.hold: defer.Deferred[int] | None = None  # set: the next write waits for it

    def _apply(self, batch: list[Any]) -> int:
        self.attempts += 1
        if self.error is not None:
            raise sqlite3.OperationalError(self.error)
        for kind, key, until, reason, _since in batch:
            if until == "delete":
                self.rows.pop((kind, key), None)
            else:
                self.rows[(kind, key)] = (until, reason)
        return len(batch)

    def run(self, fn: Any, batch: list[Any]) -> defer.Deferred[int]:
        assert fn is _write
        if self.hold is not None:
            d, self.hold = self.hold, None
            return d.addCallback(lambda _: self._apply(batch))
        try:
            return defer.succeed(self._apply(batch))
        except Exception:
            return defer.fail()

    def run_sync(self, fn: Any, batch: list[Any]) -> int:
        return self._apply(batch)

    def close(self) -> None:
        pass


def flaky_plugin(tmp_path: Path) -> tuple[SecurityPlugin, FlakyStore]:
    p = SecurityPlugin(tmp_path)
    disk = FlakyStore(str(tmp_path / FILENAME))
    p.mw.store = BlockStore(disk, disk.path, p.clock)  # type: ignore[arg-type]
    p.parts.service.startService()  # the flusher, on the test's clock
    return p, disk


def test_a_ban_is_acknowledged_once_durable(tmp_path: Path) -> None:
    p, disk = flaky_plugin(tmp_path)
    status, body = p.call("POST", "users/7/ban", {"reason": "cheating"})
    assert status == 200
    assert body == {"user_id": 7, "banned": True, "kicked": False, "durable": True}
    assert disk.rows[("user", "7")] == (math.inf, "cheating")


def test_a_failed_ban_write_is_pending_enforced_retried_and_never_dropped(
    tmp_path: Path, logged: list[str]
) -> None:
    p, disk = flaky_plugin(tmp_path)
    disk.error = "attempt to write a readonly database"
    status, body = p.call("POST", "users/7/ban", {"reason": "cheating"})
    assert status == 202
    assert body["banned"] is True and body["durable"] is False and body["pending"] is True
    assert "attempt to write a readonly database" in body["why"]
    assert 7 in p.mw.user_blocks, "enforced at once"

    stats = p.call("GET", "security")[1]["store"]
    assert stats["state"] == "failing" and stats["pending"] == 1
    assert stats["last_error"] == "attempt to write a readonly database"
    assert p.mw.store.write_failures == 1

    # Retried on the clock with doubling delays (1, 2, 4, ... up to RETRY_MAX), logged once.
    attempts = [disk.attempts]
    for _ in range(12):
        p.clock.advance(1.0)
        attempts.append(disk.attempts)
    gaps = [i for i in range(1, len(attempts)) if attempts[i] != attempts[i - 1]]
    assert gaps[:3] == [1, 3, 7], attempts  # retries at +1 s, +2 s, +4 s
    assert len([line for line in logged if "security: cannot write" in line]) == 1
    assert p.mw.store.retry_at - p.clock.seconds() <= RETRY_MAX

    # Unbanning someone else meanwhile: pending too, and nothing is dropped.
    p.mw.block_user(8, 300, "rate_user")
    assert p.call("POST", "users/7/unblock")[0] == 202
    assert p.call("POST", "users/7/ban", {"reason": "again"})[0] == 202

    disk.error = None  # permissions are back
    p.clock.advance(RETRY_MAX)
    assert disk.rows[("user", "7")] == (math.inf, "again")
    assert ("user", "8") in disk.rows
    stats = p.call("GET", "security")[1]["store"]
    assert stats["state"] == "ok" and stats["pending"] == 0 and stats["last_error"] is None
    assert any("works again" in line for line in logged)


def test_a_slow_write_is_answered_pending_after_the_wait(tmp_path: Path) -> None:
    from gamed.middleware.security.web import ACK_WAIT

    p, disk = flaky_plugin(tmp_path)
    disk.hold = defer.Deferred()
    hold = disk.hold
    status, _ = p.call("POST", "ips/10.1.2.3/block", {"duration": 60})
    assert status == 0, "not answered before the write or the wait ends"
    p.clock.advance(ACK_WAIT)
    assert p.last.responseCode == 202
    assert b"did not finish within" in b"".join(p.last.written)
    assert p.mw.store.stats()["in_flight"] == 1
    hold.callback(0)
    assert p.mw.store.stats()["pending"] == 0
    p.parts.service.stopService()


def test_pending_writes_show_as_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    mw = SecurityMiddleware(build_policy({}), clock, FakeServerControl(), registry)
    disk = FlakyStore(str(tmp_path / FILENAME))
    disk.error = "database or disk is full"
    mw.store = BlockStore(disk, disk.path, clock)  # type: ignore[arg-type]
    mw.ban_user(1)
    mw.store.flush()
    assert registry.get_sample_value("gamed_security_store_pending_changes") == 1
    assert registry.get_sample_value("gamed_security_store_failing") == 1
    assert registry.get_sample_value("gamed_security_store_write_failures_total") == 1
    disk.error = None
    clock.advance(1.0)
    mw.store.flush()
    assert registry.get_sample_value("gamed_security_store_pending_changes") == 0
    assert registry.get_sample_value("gamed_security_store_failing") == 0


def test_a_batch_that_fails_is_rewritten_behind_newer_changes(tmp_path: Path) -> None:
    clock = Clock()
    disk = FlakyStore(str(tmp_path / FILENAME))
    store = BlockStore(disk, disk.path, clock)  # type: ignore[arg-type]
    hold: defer.Deferred[int] = defer.Deferred()
    disk.hold = hold
    store.put("user", 1, math.inf, "ban", 0.0, keep=True)
    store.put("user", 2, math.inf, "ban", 0.0, keep=True)
    store.flush()
    store.delete("user", 1, keep=True)  # newer than the batch in flight
    disk.error = "disk I/O error"
    hold.callback(None)  # the batch fails
    assert store.pending == {
        ("user", "2"): ("user", "2", math.inf, "ban", 0.0),
        ("user", "1"): ("user", "1", "delete", "", 0.0),
    }
    disk.error = None
    clock.advance(1.0)
    store.flush()
    assert disk.rows == {("user", "2"): (math.inf, "ban")}
    assert store.durable_seq == store.seq


def test_a_ban_on_a_failing_disk_is_written_at_stop(tmp_path: Path) -> None:
    """Stop writes what the retries have not: nothing acknowledged dropped while we live."""
    clock = Clock()
    mw = SecurityMiddleware(build_policy({}), clock, FakeServerControl(), CollectorRegistry())
    service = SecurityService(mw, clock, str(tmp_path))
    service.startService()
    real = mw.store.store
    assert real is None  # released after the load
    disk = FlakyStore(str(tmp_path / FILENAME))
    disk.error = "attempt to write a readonly database"
    mw.store.store = disk  # type: ignore[assignment]
    mw.ban_user(3)
    clock.advance(5)
    assert mw.store.failing
    disk.error = None
    service.stopService()
    assert disk.rows == {("user", "3"): (math.inf, "admin_ban")}


def test_make_service_refuses_a_corrupt_database_before_the_fork(tmp_path: Path) -> None:
    """Daemon mode: the whole line on the terminal, not 98 bytes through twistd's pipe."""
    data = tmp_path / "data"
    data.mkdir()
    (data / FILENAME).write_bytes(b"junk" * 1000)
    options = tap.Options()
    options.parseOptions(["--data-dir", str(data), "--metrics-port", "none"])
    with pytest.raises(SystemExit) as info:
        tap.makeService(options, reactor=MemoryReactorClock())
    assert info.value.code == f"gamed: cannot use {data / FILENAME}: file is not a database"
    assert sorted(p.name for p in data.iterdir()) == [FILENAME], "the preflight creates nothing"


def test_a_ban_queued_behind_a_failing_write_hears_why_at_once(tmp_path: Path) -> None:
    p, disk = flaky_plugin(tmp_path)
    hold: defer.Deferred[int] = defer.Deferred()
    disk.hold = hold
    p.mw.block_user(1, 300, "rate_user")
    p.clock.advance(1.0)  # the flusher starts writing the automatic block
    assert p.call("POST", "users/2/ban")[0] == 0  # queued behind the write in flight
    disk.error = "disk I/O error"
    hold.callback(0)
    assert p.last.responseCode == 202
    assert b"disk I/O error" in b"".join(p.last.written)
    p.parts.service.stopService()
