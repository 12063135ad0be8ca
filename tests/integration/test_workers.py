"""`twistd -n gamed --workers 2 --redis URL`: one port, two worker processes, one supervisor.

These tests need no cross-worker chat (the cluster's tests do that): they check that the
shared port is served by both workers, that a killed worker comes back while the port keeps
serving, that SIGHUP reaches the workers, and that SIGTERM leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import TWISTD, GamedProcess, RedisServer, poll_until

WORKERS = 2


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ready_workers(p: GamedProcess) -> list[dict[str, Any]]:
    """The parent's /stats workers, once every one is ready (else an empty list)."""
    workers: list[dict[str, Any]] = p.stats()["workers"]
    return workers if all(w["ready"] and w["stats"] for w in workers) else []


def start_workers(
    gamed: Callable[..., GamedProcess], redis: RedisServer, *args: str
) -> tuple[GamedProcess, list[dict[str, Any]]]:
    p = gamed("--workers", str(WORKERS), "--redis", redis.url(), *args)
    workers = poll_until(lambda: ready_workers(p), 30, "every worker ready", detail=p.log_tail)
    assert len(workers) == WORKERS
    return p, workers


def test_both_workers_accept_on_the_shared_port(
    gamed: Callable[..., GamedProcess], redis_server: RedisServer
) -> None:
    p, workers = start_workers(gamed, redis_server)
    pids = {w["pid"] for w in workers}
    assert len(pids) == WORKERS and p.pid not in pids
    assert {w["node_id"] for w in workers} == {
        f"{socket.gethostname()}:{p.pid}-w{k}" for k in range(1, WORKERS + 1)
    }
    assert {psutil.Process(pid).ppid() for pid in pids} == {p.pid}
    # Each worker has a data directory of its own (SQLite files are never shared).
    data = Path(p.workdir) / "data"
    poll_until(
        lambda: all((data / f"worker-{k}" / "security.sqlite3").exists() for k in (1, 2)),
        10,
        "each worker's own security database",
    )

    # Connect until both workers hold connections (the kernel picks the worker): bounded.
    uid = 0

    def both_hold_some() -> bool:
        nonlocal uid
        for _ in range(4):
            uid += 1
            p.client(uid)  # asserts the ConnectionAck
        assert uid <= 200, f"one worker took all {uid} connections: {p.stats()}"
        held = {w["worker"]: w["stats"]["connections"] for w in p.stats()["workers"]}
        return all(n > 0 for n in held.values())

    poll_until(both_hold_some, 30, "connections on both workers")
    stats = p.stats()
    assert stats["connections"] == uid  # the parent adds the workers' counts

    # One /metrics: every worker's series, labelled; the supervisor's own series.
    status, body = p.http("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    per_worker = {s.labels["worker"]: s.value for s in families["gamed_connections"].samples}
    assert set(per_worker) == {"1", "2"} and sum(per_worker.values()) == uid
    up = {s.labels["worker"]: s.value for s in families["gamed_supervisor_worker_up"].samples}
    assert up == {"1": 1.0, "2": 1.0}
    status, body = p.http("/healthz")
    assert status == 200 and b'"workers_up": 2' in body


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    gamed: Callable[..., GamedProcess], redis_server: RedisServer
) -> None:
    p, workers = start_workers(gamed, redis_server)
    victim = workers[0]
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    # Meanwhile the other worker answers on the same port.
    served = [p.client(100 + i) for i in range(3)]
    assert len(served) == 3

    def replaced() -> dict[str, Any] | None:
        w = p.stats()["workers"][0]
        return w if w["ready"] and w["pid"] not in (None, victim["pid"]) else None

    new = poll_until(replaced, 20, "worker 1 restarted", detail=p.log_tail)
    took = time.monotonic() - killed_at
    assert new["restarts"] == 1
    assert new["node_id"] == f"{victim['node_id']}.1"  # a new incarnation, a new node id
    assert psutil.Process(new["pid"]).ppid() == p.pid
    assert f"worker 1 (pid {victim['pid']}) died: killed by SIGKILL" in p.log()
    assert took < 20
    # The restarted worker accepts too: connect until it holds a connection (bounded).
    uid = 200

    def restarted_serves() -> bool:
        nonlocal uid
        uid += 1
        p.client(uid)
        assert uid < 400, "the restarted worker never took a connection"
        return p.stats()["workers"][0]["stats"]["connections"] > 0

    poll_until(restarted_serves, 20, "a connection on the restarted worker")
    status, body = p.http("/metrics")
    assert status == 200
    assert b'gamed_supervisor_worker_restarts{worker="1"} 1.0' in body


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(
    gamed: Callable[..., GamedProcess], redis_server: RedisServer
) -> None:
    p, workers = start_workers(gamed, redis_server)
    family = psutil.Process(p.pid).children(recursive=True)
    assert {c.pid for c in family} >= {w["pid"] for w in workers}

    p.proc.send_signal(signal.SIGHUP)
    for k in range(1, WORKERS + 1):
        p.wait_for_log(f"[worker-{k} gamed.service#info] config reloaded")
    assert "SIGHUP passed to workers [1, 2]" in p.log()
    assert all(alive(w["pid"]) for w in workers)

    c = p.client(1)
    started = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    assert c.recv() == {"SystemMessage": {"message": "server is shutting down"}}
    # While a worker drains (this client is still there), the parent's /healthz says so.
    status, body = p.http("/healthz")
    assert (status, orjson.loads(body)) == (503, {"status": "draining"})
    c.close()
    p.proc.wait(20)
    assert time.monotonic() - started < 15
    poll_until(lambda: not any(alive(c.pid) for c in family), 10, "no worker left behind")
    log = p.log()
    assert "stopping 2 workers" in log
    for w in workers:
        assert f"worker {w['worker']} (pid {w['pid']}) exited" in log
    assert "Traceback" not in log


def test_a_worker_that_cannot_start_is_one_line_and_exit_1(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    data = tmp_path / "data"
    (data / "worker-2").mkdir(parents=True)
    (data / "worker-2" / "security.sqlite3").write_bytes(b"not a database")
    port = "tcp:0:interface=127.0.0.1"
    r = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "gamed",
            "--workers",
            "2",
            "--redis",
            redis_server.url(),
            "--port",
            port,
            "--ws-port",
            port,
            "--metrics-port",
            port,
            "--data-dir",
            str(data),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r
    line = f"gamed: worker 2: cannot use {data / 'worker-2' / 'security.sqlite3'}: "
    assert r.stderr.startswith(line) and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stdout


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
    gamed: Callable[..., GamedProcess], redis_server: RedisServer
) -> None:
    p, workers = start_workers(gamed, redis_server)
    p.proc.kill()
    p.proc.wait(10)
    # Each worker looks for its parent every second, then drains (nothing to drain here).
    poll_until(
        lambda: not any(alive(w["pid"]) for w in workers),
        15,
        "the orphaned workers to exit",
        detail=p.log_tail,
    )
    # (Their last words went to the dead parent's pipe.) Nobody holds the game port now.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", p.port)) != 0
