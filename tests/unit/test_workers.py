"""``--workers N`` on a Clock: the supervisor's restarts, start, stop and signals; the worker's
adoption of inherited sockets; the log relay and the merged /metrics. No process is started:
``spawnProcess`` is a fake that records, and each "process" ends when the test says so."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, eventAsJSON
from twisted.python.failure import Failure

from gamed.config import Settings
from gamed.workers import supervisor as sup
from gamed.workers.listen import (
    WORKER_ENV,
    InheritedEndpoint,
    listen_address,
    worker_env,
    worker_spec,
)
from gamed.workers.relay import MAX_LINE, LogRelay
from gamed.workers.web import merge
from gamed.workers.worker import WorkerService
from tests.unit.fakes import memory_service


class FakeProcess:
    """The transport ``spawnProcess`` would give: a pid, the signals sent, stdin closed."""

    pids = iter(range(5000, 6000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.signals: list[str] = []
        self.stdin_closed = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class ProcessReactor(Clock):
    """A Clock with ``spawnProcess`` (recorded), system event triggers and ``stop`` (recorded)."""

    def __init__(self, fail_spawn: bool = False) -> None:
        super().__init__()
        self.spawned: list[tuple[sup.Worker, list[str], dict[str, str], dict[int, Any]]] = []
        self.triggers: list[tuple[Any, ...]] = []
        self.running = True
        self.stopped = 0
        self.fail_spawn = fail_spawn

    def spawnProcess(
        self, proto: sup.Worker, exe: str, args: list[str], env: Any, childFDs: Any
    ) -> FakeProcess:
        if self.fail_spawn:
            raise PermissionError(13, "Permission denied", exe)
        process = FakeProcess()
        proto.makeConnection(process)  # type: ignore[arg-type]
        self.spawned.append((proto, args, env, childFDs))
        return process

    def addSystemEventTrigger(self, *args: Any) -> None:
        self.triggers.append(args)

    def stop(self) -> None:
        self.stopped += 1

    def callWhenRunning(self, f: Any, *args: Any) -> None:
        f(*args)


def supervisor(
    tmp_path: Path, reactor: ProcessReactor, pipe: int | None = None, **settings: Any
) -> sup.Supervisor:
    s = Settings(
        workers=2,
        redis="redis://127.0.0.1:6379",
        metrics_port=None,
        data_dir=str(tmp_path / "data"),
        **settings,
    )
    top = sup.Supervisor(reactor, s, {}, ["--redis", "redis://127.0.0.1:6379"], [], "host:1")
    if pipe is not None:
        top.launcher = {"statusPipe": pipe, "pidfile": None, "nodaemon": False}
    return top


def started_with_pipe(tmp_path: Path, reactor: ProcessReactor) -> tuple[int, sup.Supervisor]:
    """A Supervisor started as in twistd's daemon mode: (its status pipe's read end, it)."""
    r, w = os.pipe()
    top = supervisor(tmp_path, reactor, pipe=w)
    top.startService()
    return r, top


def ready(worker: sup.Worker, http_port: int = 4321) -> None:
    """The worker's stdout carries its ready event, as a worker's relay observer writes it."""
    event = {
        "log_format": "worker ready",
        "log_level": LogLevel.info,
        "log_namespace": "gamed.workers.worker",
        "log_time": 0.0,
        "gamed_worker_ready": True,
        "http_port": http_port,
    }
    worker.childDataReceived(1, b"\x1e" + eventAsJSON(event).encode() + b"\n")


def die(worker: sup.Worker, sig: int | None = 9, status: int | None = None) -> None:
    reason = ProcessDone(0) if sig is None and not status else ProcessTerminated(status, sig)
    worker.processEnded(Failure(reason))


def started(tmp_path: Path, **settings: Any) -> tuple[sup.Supervisor, ProcessReactor]:
    reactor = ProcessReactor()
    top = supervisor(tmp_path, reactor, **settings)
    top.startService()
    for proto, *_ in list(reactor.spawned):
        ready(proto)
    assert top.started
    return top, reactor


def current(top: sup.Supervisor, index: int) -> sup.Worker:
    worker = top.slots[index - 1].current
    assert worker is not None
    return worker


# -- start ------------------------------------------------------------------------------------


def test_each_worker_is_twistd_gamed_with_its_own_node_data_dir_and_inherited_sockets(
    tmp_path: Path,
) -> None:
    reactor = ProcessReactor()
    top = supervisor(tmp_path, reactor)
    a = socket.socket()
    top.sockets = {"game": a}
    try:
        top.startService()
        assert reactor.spawned[0][3][3] == a.fileno()
    finally:
        a.close()
    assert len(reactor.spawned) == 2
    proto, args, env, fds = reactor.spawned[0]
    assert args[1:3] == ["-m", "gamed.workers"]
    assert "--nodaemon" in args and sup.WORKER_LOGGER in args
    gamed = args[args.index("gamed") + 1 :]
    assert gamed[:2] == ["--redis", "redis://127.0.0.1:6379"]
    given = dict(zip(gamed[2::2], gamed[3::2], strict=True))
    assert given == {
        "--workers": "1",
        "--node-id": "host:1-w1",
        "--data-dir": os.path.join(tmp_path / "data", "worker-1"),
        "--metrics-port": "none",  # the parent has no HTTP port: nor do the workers
    }
    spec = worker_spec(env)
    assert spec is not None and spec.index == 1 and spec.parent == os.getpid()
    assert spec.fds == {"game": (3, int(socket.AF_INET))}
    assert fds[1] == fds[2] == "r"
    assert proto.transport.stdin_closed  # type: ignore[union-attr]
    assert reactor.spawned[1][0].node_id == "host:1-w2"


def test_twistds_launcher_hears_started_only_when_every_worker_is_ready(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    r, top = started_with_pipe(tmp_path, reactor)
    assert top.launcher is not None and top.launcher["statusPipe"] is None  # twistd: not yet
    ready(reactor.spawned[0][0], http_port=1111)
    assert not top.started
    ready(reactor.spawned[1][0], http_port=2222)
    assert top.started
    assert os.read(r, 100) == b"0"
    os.close(r)
    assert [w["http_port"] for w in top.describe()] == [1111, 2222]
    assert not reactor.getDelayedCalls(), "the start timeout is cancelled"


def test_a_worker_dying_before_it_is_ready_is_a_one_line_start_failure(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    r, top = started_with_pipe(tmp_path, reactor)
    worker = reactor.spawned[1][0]
    worker.childDataReceived(2, b"gamed: cannot use /d/security.sqlite3: file is not a database\n")
    die(worker, sig=None, status=1)
    assert (
        os.read(r, 200)
        == b"1 gamed: worker 2: cannot use /d/security.sqlite3: file is not a database"
    )
    os.close(r)
    assert reactor.stopped == 1
    assert ("after", "shutdown", os._exit, 1) in reactor.triggers
    assert not top.slots[1].pending, "a start failure is not restarted"


def test_no_readiness_within_the_start_timeout_is_a_start_failure(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    r, _ = started_with_pipe(tmp_path, reactor)
    ready(reactor.spawned[0][0])
    reactor.advance(sup.START_TIMEOUT)
    assert os.read(r, 200) == b"1 gamed: worker(s) [2] not ready within 30s"
    os.close(r)
    assert reactor.stopped == 1


def test_a_worker_that_cannot_be_executed_is_a_start_failure(tmp_path: Path) -> None:
    reactor = ProcessReactor(fail_spawn=True)
    r, _ = started_with_pipe(tmp_path, reactor)
    assert os.read(r, 200).startswith(b"1 gamed: worker 1 cannot be started: [Errno 13]")
    os.close(r)
    assert reactor.stopped == 1


# -- restarts ---------------------------------------------------------------------------------


def test_a_dead_worker_is_restarted_after_the_backoff_as_a_new_node(tmp_path: Path) -> None:
    top, reactor = started(tmp_path)
    first = current(top, 1)
    die(first)
    assert top.slots[0].current is None and top.slots[0].restarts == 1
    reactor.advance(sup.BACKOFF_FIRST * 0.99)
    assert len(reactor.spawned) == 2
    reactor.advance(sup.BACKOFF_FIRST * 0.02)
    assert len(reactor.spawned) == 3
    again = current(top, 1)
    assert again is not first and again.node_id == "host:1-w1.1"
    assert current(top, 2).node_id == "host:1-w2"  # the other one untouched
    reactor.advance(0.25)
    ready(again)
    assert top.restart_times[-1] == pytest.approx(0.25)


def test_restarts_back_off_and_never_exceed_the_budget_per_minute(tmp_path: Path) -> None:
    top, reactor = started(tmp_path)
    delays = []
    for _ in range(sup.MAX_RESTARTS + 2):
        die(current(top, 1))
        call = top.slots[0].pending
        delays.append(round(call.getTime() - reactor.seconds(), 3))
        reactor.advance(call.getTime() - reactor.seconds())
    assert delays[:8] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]
    assert all(d <= 60 for d in delays)
    # Every window of 60 s holds at most MAX_RESTARTS restarts.
    times = list(top.slots[0].recent)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 60) <= sup.MAX_RESTARTS
    assert delays[sup.MAX_RESTARTS] > sup.BACKOFF_MAX, "the 11th waits for the window"


def test_a_quiet_minute_resets_the_backoff(tmp_path: Path) -> None:
    top, reactor = started(tmp_path)
    for _ in range(3):
        die(current(top, 1))
        reactor.advance(top.slots[0].pending.getTime() - reactor.seconds())
    reactor.advance(61)
    die(current(top, 1))
    assert top.slots[0].pending.getTime() - reactor.seconds() == pytest.approx(0.1)


# -- signals and stop -------------------------------------------------------------------------


def test_sighup_goes_to_every_running_worker(tmp_path: Path) -> None:
    top, _ = started(tmp_path)
    assert top.reload() == {"signal": "HUP", "workers": [1, 2]}
    assert [current(top, k).transport.signals for k in (1, 2)] == [["HUP"], ["HUP"]]  # type: ignore[union-attr]


def test_stop_terms_every_worker_and_ends_when_they_have(tmp_path: Path) -> None:
    top, reactor = started(tmp_path)
    a, b = current(top, 1), current(top, 2)
    d = top.stopService()
    assert a.transport.signals == b.transport.signals == ["TERM"]  # type: ignore[union-attr]
    die(a, sig=15)
    assert not d.called
    die(b, sig=15)
    assert d.called
    assert not reactor.getDelayedCalls()
    assert not top.slots[0].pending, "no restart while stopping"


def test_stop_kills_what_outlives_the_grace(tmp_path: Path) -> None:
    top, reactor = started(tmp_path, shutdown_grace=3.0)
    a, b = current(top, 1), current(top, 2)
    d = top.stopService()
    die(a, sig=15)
    reactor.advance(3.0 + sup.STOP_MARGIN - 0.01)
    assert b.transport.signals == ["TERM"]  # type: ignore[union-attr]
    reactor.advance(0.01)
    assert b.transport.signals == ["TERM", "KILL"]  # type: ignore[union-attr]
    assert not d.called
    reactor.advance(sup.KILL_WAIT)  # never reaped: the stop still ends, bounded
    assert d.called


def test_a_worker_dead_during_start_delay_is_not_restarted_once_stopping(tmp_path: Path) -> None:
    top, reactor = started(tmp_path)
    die(current(top, 1))
    assert top.slots[0].pending is not None
    top.stopService()
    assert top.slots[0].pending is None
    reactor.advance(60)
    assert len(reactor.spawned) == 2


# -- what each piece does on its own ----------------------------------------------------------


def test_only_tcp_endpoints_can_be_shared() -> None:
    a = listen_address("port", "tcp:7000:interface=127.0.0.1:backlog=64")
    assert (a.family, a.interface, a.port, a.backlog) == (socket.AF_INET, "127.0.0.1", 7000, 64)
    assert listen_address("ws-port", "haproxy:tcp:7080").interface == "0.0.0.0"
    assert listen_address("port", "tcp6:7000").family == socket.AF_INET6
    with pytest.raises(ValueError, match=r"--port is 'unix:/tmp/g\.sock'"):
        listen_address("port", "unix:/tmp/g.sock")


def test_worker_arguments_copy_the_parents_options_but_its_own() -> None:
    cli = {"redis": "redis://r", "workers": "4", "node-id": "n", "max-room-users": "7", "x": None}
    args = sup.worker_arguments(cli, "gamed.toml")
    assert args == [
        "--config",
        os.path.abspath("gamed.toml"),
        "--redis",
        "redis://r",
        "--max-room-users",
        "7",
    ]


def test_a_long_parent_node_id_is_cut_to_fit_the_suffix(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    top = supervisor(tmp_path, reactor)
    top.node_base = "n" * 64
    top.slots[0].restarts = 12
    node = top.node_id(top.slots[0])
    assert len(node) == 64 and node.endswith("-w1.12")
    top.node_base = "höst name:1"
    assert top.node_id(top.slots[0]) == "h_st_name:1-w1.12"


def test_a_worker_adopts_the_inherited_sockets_instead_of_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fds = {"game": (3, int(socket.AF_INET)), "ws": (4, int(socket.AF_INET6))}
    monkeypatch.setenv(WORKER_ENV, worker_env(2, fds, os.getpid()))
    reactor = MemoryReactorClock()
    top, _ = memory_service(tmp_path, "--redis", "redis://127.0.0.1:6379", reactor=reactor)
    game = top.getServiceNamed("game")
    assert isinstance(game, MultiService)
    listener = game.getServiceNamed("game-listener")
    assert isinstance(listener, StreamServerEndpointService)
    assert isinstance(listener.endpoint, InheritedEndpoint)
    top.privilegedStartService()
    adopted = [(fd, family) for fd, family, _ in reactor.adoptedPorts]
    assert adopted == [(3, socket.AF_INET), (4, socket.AF_INET6)]
    assert [port for port, *_ in reactor.tcpServers] == [9701], "only the HTTP port binds"
    assert isinstance(top.getServiceNamed("worker"), WorkerService)


def test_a_worker_stops_when_its_parent_is_gone() -> None:
    reactor = ProcessReactor()
    spec = worker_spec({WORKER_ENV: worker_env(1, {}, os.getppid())})
    assert spec is not None
    w = WorkerService(spec, reactor, None)
    w.startService()
    reactor.advance(5)
    assert reactor.stopped == 0, "the parent is there"
    orphan = WorkerService(
        worker_spec({WORKER_ENV: worker_env(1, {}, 1 << 22)}),  # type: ignore[arg-type]
        reactor,
        None,
    )
    orphan.startService()
    reactor.advance(1)
    assert reactor.stopped == 1
    w.stopService()


def test_the_relay_marks_each_event_with_its_worker() -> None:
    published: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    out = LogRelay(3, json_records=True, on_event=seen.append, publish=published.append)
    event = {"log_format": "hi {who}", "who": "x", "log_level": LogLevel.warn, "log_time": 5.0}
    event["log_namespace"] = "gamed.router"
    record = b"\x1e" + eventAsJSON(event).encode() + b"\n"
    out.feed(record[:10])
    assert published == []  # half a record: kept
    out.feed(record[10:] + b"not json\n")
    assert [e["log_system"] for e in published] == [
        "worker-3 gamed.router#warn",
        "worker-3 gamed.workers#info",
    ]
    assert published[0]["log_time"] == 5.0 and published[0]["who"] == "x"
    assert published[1]["text"] == "not json" and len(seen) == 2

    err = LogRelay(3, json_records=False, publish=published.append)
    err.feed(b"x" * (MAX_LINE + 10))
    assert err.last_text is not None and len(err.last_text) == MAX_LINE + 3
    err.feed(b"gamed: the last words")
    err.flush()
    assert err.last_text == "gamed: the last words"


def test_merged_metrics_label_every_sample_with_its_worker() -> None:
    one = "# HELP gamed_connections Open\n# TYPE gamed_connections gauge\ngamed_connections 3.0\n"
    one += '# TYPE gamed_x_total counter\ngamed_x_total{kind="a"} 1.0\n'
    two = "# HELP gamed_connections Open\n# TYPE gamed_connections gauge\ngamed_connections 4.0\n"
    families = {f.name: f for f in merge({1: one, 2: two, 3: "garbage{{{\n"})}
    assert [(s.labels, s.value) for s in families["gamed_connections"].samples] == [
        ({"worker": "1"}, 3.0),
        ({"worker": "2"}, 4.0),
    ]
    assert families["gamed_x"].samples[0].labels == {"kind": "a", "worker": "1"}
    # What the parent renders parses again (one HELP/TYPE per family).
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self) -> Any:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    again = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(again["gamed_connections"].samples) == 2
    assert text.count("# TYPE gamed_connections gauge") == 1


def test_workers_n_makes_the_supervisor_with_deep_backlogs(tmp_path: Path) -> None:
    from gamed import tap

    options = tap.Options()
    cluster = ["--workers", "3", "--redis", "redis://127.0.0.1:6379"]
    ports = ["--port", "tcp:7001", "--ws-port", "tcp:7081:backlog=77"]
    options.parseOptions([*cluster, *ports, "--data-dir", str(tmp_path / "d")])
    top = tap.makeService(options, reactor=MemoryReactorClock())
    assert isinstance(top, sup.Supervisor)
    assert len(top.slots) == 3
    assert top.listeners["game"].backlog == 1024  # not Twisted's 50: a reconnect storm fits
    assert top.listeners["ws"].backlog == 77  # the operator's own
    assert top.settings.data_dir == str(tmp_path / "d")
    assert "http-listener" in top.namedServices


def test_a_stop_before_every_worker_is_ready_answers_twistds_launcher(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    r, top = started_with_pipe(tmp_path, reactor)
    ready(reactor.spawned[0][0])
    top.stopService()
    assert os.read(r, 200) == b"1 gamed: stopped before every worker was ready"
    os.close(r)
    die(reactor.spawned[1][0], sig=15)
    assert reactor.stopped == 0, "a stop asked for is no failure"
