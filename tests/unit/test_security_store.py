"""Bans and blocks survive a restart: the plugin's service, its SQLite file, a Clock."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from gamed import messages as m
from gamed import store as gamed_store
from gamed.middleware.security.middleware import SecurityMiddleware, SecurityService
from gamed.middleware.security.policy import build_policy
from gamed.middleware.security.store import FILENAME, BlockStore
from gamed.store import StoreError
from tests.unit.fakes import Ctx, FakeServerControl


def server(data_dir: Path, clock: Clock) -> tuple[SecurityMiddleware, SecurityService]:
    mw = SecurityMiddleware(build_policy({}), clock, FakeServerControl(), CollectorRegistry())
    service = SecurityService(mw, clock, str(data_dir))
    service.startService()
    return mw, service


def sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "sqlite:" in t.name]


def test_bans_and_active_blocks_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    mw, service = server(tmp_path, clock)
    mw.ban_user(1)
    mw.block_user(2, 300, "rate_user")
    mw.block_user(3, 10, "rate_user")  # will have expired by the restart
    mw.block_ip("10.0.0.1", math.inf, "admin_block")
    mw.block_ip("10.0.0.2", 120, "rate_ip", kick=False)
    mw.unblock_user(2)
    mw.block_user(2, 300, "suspicion")  # re-blocked: the last change wins
    service.stopService()

    clock.advance(60)
    mw2, service2 = server(tmp_path, clock)
    try:
        assert set(mw2.user_blocks) == {1, 2}
        assert math.isinf(mw2.user_blocks[1].until)
        assert mw2.user_blocks[2].reason == "suspicion"
        assert set(mw2.ip_blocks) == {"10.0.0.1", "10.0.0.2"}
        ctx = Ctx(clock, "10.0.0.9")
        mw2.connection_opened(ctx)
        out = mw2.before_process(ctx, m.Connect(0, 1))
        assert out.code == 403 and out.close  # a restart does not free an abuser
        assert mw2.connection_opened(Ctx(clock, "10.0.0.1")).code == 403
        assert mw2.connection_opened(Ctx(clock, "10.0.0.2")).code == 403
    finally:
        service2.stopService()


def test_lifting_a_ban_is_durable_too(tmp_path: Path) -> None:
    clock = Clock()
    mw, service = server(tmp_path, clock)
    mw.ban_user(5)
    mw.store.flush_sync()
    mw.unblock_user(5)
    service.stopService()
    mw2, service2 = server(tmp_path, clock)
    assert mw2.user_blocks == {}
    service2.stopService()


def test_expired_rows_are_deleted_on_load(tmp_path: Path) -> None:
    clock = Clock()
    mw, service = server(tmp_path, clock)
    mw.block_user(1, 5, "rate_user")
    service.stopService()
    clock.advance(10)
    _, service2 = server(tmp_path, clock)
    service2.stopService()
    rows = sqlite3.connect(tmp_path / FILENAME).execute("SELECT * FROM user_blocks").fetchall()
    assert rows == []


def test_no_writer_thread_is_kept_while_nothing_changes(tmp_path: Path) -> None:
    before = len(sqlite_threads())
    clock = Clock()
    mw, service = server(tmp_path, clock)
    assert len(sqlite_threads()) == before  # loaded, then released
    mw.ban_user(1)
    assert len(sqlite_threads()) == before  # queued; the store's thread starts on first use
    clock.advance(1.0)  # the flusher writes the ban
    assert len(sqlite_threads()) == before + 1
    service.stopService()
    assert len(sqlite_threads()) == before


def test_flush_runs_on_the_clock_and_sweeps_expire(tmp_path: Path) -> None:
    clock = Clock()
    mw, service = server(tmp_path, clock)
    try:
        mw.block_user(1, 45, "rate_user")
        assert mw.store.pending
        clock.advance(1.0)  # the flusher hands the batch to the writer thread
        assert not mw.store.pending
        clock.advance(60)  # the sweeper (every 30 s) drops the expired block
        assert mw.user_blocks == {}
        # written on the next flush
        assert ("user", "1", "delete", "", 0.0) in mw.store.pending.values()
    finally:
        service.stopService()


def test_a_full_queue_drops_the_oldest_unacknowledged_and_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gamed.middleware.security import store as security_store

    monkeypatch.setattr(security_store, "MAX_PENDING", 10)
    store = BlockStore(None, str(tmp_path / "q.sqlite3"), Clock())
    try:
        store.put("user", 999, math.inf, "admin_ban", 0.0, keep=True)  # acknowledged
        for i in range(25):
            store.put("user", i, 1e12, "x", 0.0)  # automatic blocks
        assert len(store.pending) == 10 and store.dropped == 16
        assert ("user", "999") in store.pending, "an acknowledged ban is never dropped"
        assert [k for _, k in store.pending][1] == "16"
    finally:
        store.close()


def test_changes_to_one_key_are_coalesced(tmp_path: Path) -> None:
    store = BlockStore(None, str(tmp_path / "q.sqlite3"), Clock())
    store.put("user", 1, math.inf, "admin_ban", 0.0)
    store.delete("user", 1)
    store.put("user", 1, 50.0, "rate_user", 0.0)
    assert list(store.pending.values()) == [("user", "1", 50.0, "rate_user", 0.0)]
    assert store.seq == 3
    store.close()


@pytest.mark.parametrize(
    ("spoil", "cause"),
    [
        (lambda p: p.write_bytes(b"garbage, not SQLite " * 100), "file is not a database"),
        (lambda p: p.mkdir(), "is a directory, not a database file"),
        (lambda p: p.symlink_to("/dev/null"), "is not a regular file"),
    ],
    ids=["garbage", "directory", "device"],
)
def test_a_ban_file_that_cannot_be_read_stops_the_start(
    tmp_path: Path, spoil: Any, cause: str
) -> None:
    """Fail closed (issue 12 item 1): before, this logged one line and served without bans."""
    spoil(tmp_path / FILENAME)
    clock = Clock()
    mw = SecurityMiddleware(build_policy({}), clock, FakeServerControl(), CollectorRegistry())
    service = SecurityService(mw, clock, str(tmp_path))
    before = len(sqlite_threads())
    with pytest.raises(StoreError) as info:
        service.startService()
    assert str(info.value) == f"{tmp_path / FILENAME}: {cause}"
    assert len(sqlite_threads()) == before, "no thread left behind"


def test_an_unreadable_ban_file_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file, so the permission check is simulated (the e2e test runs as nobody)."""
    (tmp_path / FILENAME).write_bytes(b"")
    monkeypatch.setattr(gamed_store.os, "access", lambda path, mode: False)
    clock = Clock()
    mw = SecurityMiddleware(build_policy({}), clock, FakeServerControl(), CollectorRegistry())
    with pytest.raises(StoreError, match=r"security\.sqlite3: permission denied"):
        SecurityService(mw, clock, str(tmp_path)).startService()


def test_a_ban_file_with_a_corrupt_page_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    store = BlockStore.open(str(path))
    for uid in range(2000):
        store.put("user", uid, math.inf, "admin_ban" * 10, 0.0)
    store.close()
    raw = bytearray(path.read_bytes())
    assert len(raw) > 4 * 4096
    raw[3 * 4096 : 3 * 4096 + 512] = b"\xff" * 512  # a b-tree page, not the header
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"security\.sqlite3: integrity check failed: ") as info:
        BlockStore.open(str(path))
    assert "\n" not in str(info.value)
