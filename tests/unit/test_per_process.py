"""Nothing per-process exists before startService.

twistd calls makeService, then forks (daemon mode), then calls startService
in the child. A psutil handle, a thread, an SQLite connection or a timer made
before the fork belongs to a process that is gone; these tests guard each.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from twisted.internet.testing import MemoryReactorClock

from gamed import tap
from gamed.middleware.metrics import middleware as metrics
from gamed.store import SqliteStore
from tests.unit.fakes import memory_service


@pytest.fixture
def handles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of every psutil.Process the metrics plugin opens."""
    opened: list[int] = []
    real = psutil.Process

    def recording(*args: Any) -> psutil.Process:
        p = real(*args)
        opened.append(p.pid)
        return p

    monkeypatch.setattr(metrics.psutil, "Process", recording)
    return opened


def test_make_service_opens_no_psutil_handle_and_schedules_no_timer(
    tmp_path: Path, handles: list[int]
) -> None:
    service, reactor = memory_service(tmp_path)  # every plugin: security, metrics, analytics
    assert handles == []
    assert reactor.getDelayedCalls() == []
    service.privilegedStartService()  # binds (before the fork when not daemonizing)
    assert handles == []
    assert reactor.getDelayedCalls() == []
    service.startService()
    try:
        assert handles == [os.getpid()], "opened once, in the process that serves"
        assert reactor.getDelayedCalls(), "the plugins' loops start with the service"
    finally:
        service.stopService()
    collector = service.getServiceNamed("middleware-metrics").collector
    assert collector.process is None, "closed on stop; a restart opens a fresh one"


def test_make_service_on_a_real_reactor_starts_no_thread_and_opens_no_database(
    tmp_path: Path, handles: list[int]
) -> None:
    from twisted.internet import reactor

    before_threads = set(threading.enumerate())
    before_calls = set(reactor.getDelayedCalls())
    options = tap.Options()
    options.parseOptions(
        ["--port", "tcp:0", "--metrics-port", "none", "--data-dir", str(tmp_path / "d")]
    )
    tap.makeService(options, reactor=reactor)
    assert set(threading.enumerate()) == before_threads
    assert set(reactor.getDelayedCalls()) == before_calls
    assert handles == []
    assert list((tmp_path / "d").iterdir()) == [], "no SQLite file before startService"


def test_metrics_reads_the_process_it_runs_in(tmp_path: Path, handles: list[int]) -> None:
    service, reactor = memory_service(tmp_path, "--middleware", "metrics")
    collector = service.getServiceNamed("middleware-metrics").collector
    assert collector.process is None
    service.privilegedStartService()
    service.startService()
    try:
        assert collector.process.pid == os.getpid()
        reactor.advance(5)
        stats = collector.stats()
        assert stats["collected"] is True
        assert stats["memory_mb"] > 0
    finally:
        service.stopService()


def test_a_store_starts_its_thread_on_first_use(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    store = SqliteStore(str(tmp_path / "db.sqlite3"), reactor=MemoryReactorClock())
    try:
        assert set(threading.enumerate()) == before
        assert not store.started
        assert not (tmp_path / "db.sqlite3").exists()
        assert store.run_sync(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
        assert store.started
        assert len(set(threading.enumerate()) - before) == 1
    finally:
        store.close()
    assert set(threading.enumerate()) == before


def test_a_store_never_used_closes_without_a_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    store = SqliteStore(str(tmp_path / "db.sqlite3"), reactor=MemoryReactorClock())
    store.close()
    assert set(threading.enumerate()) == before
    with pytest.raises(RuntimeError, match="closed"):
        store.run_sync(lambda conn: None)


def test_a_store_used_across_a_fork_refuses_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(str(tmp_path / "db.sqlite3"), reactor=MemoryReactorClock())
    try:
        store.run_sync(lambda conn: None)
        parent = os.getpid()
        monkeypatch.setattr("gamed.store.os.getpid", lambda: parent + 1)  # "the child"
        with pytest.raises(RuntimeError, match="after a fork"):
            store.run_sync(lambda conn: None)
        failures: list[Any] = []
        store.run(lambda conn: None).addErrback(failures.append)
        assert failures and failures[0].check(RuntimeError)
        monkeypatch.undo()
    finally:
        store.close()
