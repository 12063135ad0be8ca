"""The parent of ``--workers N``: binds the ports, runs N workers, restarts them, passes signals on.

One ``twistd gamed --workers N --redis URL`` is this process. It binds the
game and WebSocket ports itself (before twistd drops privileges), starts N
workers (``python -m gamed.workers``: twistd gamed with the same options, one
``--node-id`` and data directory each) that adopt those sockets, and serves
the merged ``/metrics``, ``/healthz`` and ``/stats`` on ``--metrics-port``
(gamed.workers.web). Every worker's log goes into this process's log
(gamed.workers.relay).

- A worker that dies is restarted: after 0.1 s, doubling with every restart of
  that worker within the last minute up to 10 s, and never more than
  ``MAX_RESTARTS`` in any 60 s (then it waits until the oldest is a minute old).
- SIGHUP is passed to every worker (each reloads its config, all or nothing,
  and logs the outcome). SIGTERM drains: every worker gets SIGTERM and drains
  with its ``--shutdown-grace``; what still runs ``STOP_MARGIN`` s after that is
  killed. The parent exits after its workers.
- Start-up: twistd's launcher (daemon mode) is told "started" only once every
  worker said it is ready; a worker that exits before it is ready, or no
  readiness within ``START_TIMEOUT``, is a start-up failure: one line, exit 1.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections import deque
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gamed.config import NODE_ID, Settings, with_backlog
from gamed.service import ServerRoot, cannot_listen, preflight_start, twistd_options
from gamed.workers.listen import WORKER_ENV, ListenAddress, bind, listen_address, worker_env
from gamed.workers.relay import LogRelay

_log = Logger()

#: Restarts of one worker allowed in any 60 s.
MAX_RESTARTS = 10
#: The first restart's delay; doubled for each restart of that worker in the last minute.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
#: Seconds every worker gets to say it is ready at start.
START_TIMEOUT = 30.0
#: Seconds past --shutdown-grace before a worker still running is killed.
STOP_MARGIN = 5.0
#: Seconds to wait for a killed worker to be reaped.
KILL_WAIT = 2.0
#: The twistd logger a worker runs with.
WORKER_LOGGER = "gamed.workers.relay.worker_observer"
#: Options a worker gets from the parent, not copied from the parent's command line.
OWN_OPTIONS = frozenset({"workers", "node-id", "data-dir", "metrics-port", "config"})


class Worker(ProcessProtocol):
    """One incarnation of worker ``index``: its pipes, its readiness, its end."""

    def __init__(self, supervisor: Supervisor, index: int, node_id: str) -> None:
        self.supervisor = supervisor
        self.index = index
        self.node_id = node_id
        self.pid: int | None = None
        self.ready = False
        self.started_at: float = supervisor.clock.seconds()
        #: The loopback port of the worker's own HTTP site (told when ready).
        self.http_port: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.out = LogRelay(index, json_records=True, on_event=self._event)
        self.err = LogRelay(index, json_records=False)

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        (self.out if childFD == 1 else self.err).feed(data)

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("gamed_worker_ready") and not self.ready:
            self.ready = True
            port = event.get("http_port")
            self.http_port = port if isinstance(port, int) else None
            self.supervisor.worker_ready(self)

    def signal(self, name: str) -> bool:
        """Send SIG``name``; False when the process is already gone."""
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except Exception:  # ProcessExitedAlready, or the pid is gone
            return False
        return True

    def processEnded(self, reason: Failure) -> None:
        self.out.flush()
        self.err.flush()
        self.supervisor.worker_ended(self, exit_text(reason))
        self.ended.callback(None)

    @property
    def alive(self) -> bool:
        return not self.ended.called


def exit_text(reason: Failure) -> str:
    """How a process ended, in words: "exit status 1", "killed by SIGKILL"."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"killed by {signal.Signals(value.signal).name}"
        return f"exit status {value.exitCode}"
    return str(value)


class Slot:
    """Worker ``index`` across its incarnations: restarts, the current process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.current: Worker | None = None
        self.restarts = 0
        self.recent: deque[float] = deque()  # restart times (reactor clock) in the last minute
        self.pending: Any = None  # the DelayedCall of a scheduled restart

    def next_delay(self, now: float) -> float:
        """The wait before the next restart: the backoff, or longer if the minute's budget is spent."""
        while self.recent and now - self.recent[0] >= 60.0:
            self.recent.popleft()
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** len(self.recent))
        if len(self.recent) >= MAX_RESTARTS:
            delay = max(delay, 60.0 - (now - self.recent[0]))
        return delay


class Supervisor(ServerRoot):
    """The parent's service: sockets, workers, signals; its child is the merged HTTP site."""

    #: Seconds every worker gets to be ready at start (tests lower it).
    start_timeout = START_TIMEOUT

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        listeners: dict[str, ListenAddress],
        worker_args: list[str],
        twistd_args: list[str],
        node_base: str | None,
    ) -> None:
        super().__init__(reactor, reload=lambda: self.forward("HUP"))
        self.clock = reactor  # restarts and readiness are timed on the reactor's clock
        self.settings = settings
        self.listeners = listeners
        self.worker_args = worker_args
        self.twistd_args = twistd_args
        self.node_base = node_base
        self.sockets: dict[str, socket.socket] = {}
        self.slots = [Slot(k) for k in range(1, settings.workers + 1)]
        self.started = False  # every worker of the first start was ready
        self.stopping = False
        self._status_pipe: int | None = None
        self._start_timer: Any = None
        self._exit_code = 0
        #: Restart-to-ready times of the last restarts (seconds), for /stats and the log.
        self.restart_times: deque[float] = deque(maxlen=20)

    # -- start ----------------------------------------------------------------------------------
    def privilegedStartService(self) -> None:
        for name, address in self.listeners.items():
            try:
                self.sockets[name] = bind(address)
            except OSError as e:
                self._close_sockets()
                self.privileged_failure(CannotListenError(address.interface, address.port, e))
            else:
                if address.port == 0:
                    address = ListenAddress(
                        address.family,
                        address.interface,
                        self.sockets[name].getsockname()[1],
                        address.backlog,
                    )
                    self.listeners[name] = address
                _log.info(
                    "{name} port {port} bound on {interface}, shared by {n} workers",
                    name=name,
                    port=address.port,
                    interface=address.interface,
                    n=len(self.slots),
                )
        super().privilegedStartService()

    def privileged_failure(self, error: CannotListenError) -> None:
        line = cannot_listen(error.interface, error.port, error.socketError)
        self.report_start_failure(line)
        raise SystemExit(line)

    def startService(self) -> None:
        super().startService()
        launcher = self.launcher
        if launcher is not None and launcher.get("statusPipe") is not None:
            # twistd would tell its launcher "started" as soon as this returns; the
            # workers are not serving yet: say it (or the failure) once they are.
            self._status_pipe = launcher["statusPipe"]
            launcher["statusPipe"] = None
        if self.node_base is None:
            self.node_base = f"{socket.gethostname()}:{os.getpid()}"  # after the fork
        for slot in self.slots:
            self.spawn(slot)
        self._start_timer = self._reactor.callLater(self.start_timeout, self._start_timed_out)

    def node_id(self, slot: Slot) -> str:
        """``<base>-w<K>``, and ``.<n>`` for its n-th restart: a dead incarnation's
        registrations are a dead node's to the cluster, never the new one's."""
        suffix = f"-w{slot.index}" + (f".{slot.restarts}" if slot.restarts else "")
        base = (self.node_base or "gamed")[: 64 - len(suffix)]
        node = base + suffix
        if not NODE_ID.fullmatch(node):  # a host name with characters a node id may not have
            node = re.sub(r"[^A-Za-z0-9_.:@-]", "_", node)
        return node

    def command(self, slot: Slot, node_id: str) -> list[str]:
        """The worker's command line: twistd in the foreground, logging JSON to the parent."""
        http = "tcp:0:interface=127.0.0.1" if self.settings.metrics_port is not None else "none"
        data_dir = os.path.join(self.settings.data_dir, f"worker-{slot.index}")
        return [
            sys.executable,
            "-m",
            "gamed.workers",
            "--nodaemon",
            "--pidfile=",
            "--logger",
            WORKER_LOGGER,
            *self.twistd_args,
            "gamed",
            *self.worker_args,
            "--workers",
            "1",
            "--node-id",
            node_id,
            "--data-dir",
            data_dir,
            "--metrics-port",
            http,
        ]

    def spawn(self, slot: Slot) -> None:
        slot.pending = None
        node_id = self.node_id(slot)
        worker = Worker(self, slot.index, node_id)
        fds: dict[str, tuple[int, int]] = {}
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for n, (name, sock) in enumerate(sorted(self.sockets.items()), start=3):
            child_fds[n] = sock.fileno()
            fds[name] = (n, int(sock.family))
        env = dict(os.environ)
        env[WORKER_ENV] = worker_env(slot.index, fds, os.getpid())
        try:
            self._reactor.spawnProcess(
                worker, sys.executable, self.command(slot, node_id), env=env, childFDs=child_fds
            )
        except OSError as e:
            # E.g. an interpreter the --uid user may not run (one under /root).
            if not self.started:
                self.fatal(f"gamed: worker {slot.index} cannot be started: {e}")
            else:
                self._restart_later(slot, None, f"could not be started: {e}")
            return
        slot.current = worker
        _log.info(
            "worker {worker} started: pid {pid}, node {node}",
            worker=slot.index,
            pid=worker.pid,
            node=node_id,
        )

    def worker_ready(self, worker: Worker) -> None:
        slot = self.slots[worker.index - 1]
        took = self.clock.seconds() - worker.started_at
        if slot.restarts:
            self.restart_times.append(took)
        _log.info(
            "worker {worker} (pid {pid}) ready in {took:.2f}s",
            worker=worker.index,
            pid=worker.pid,
            took=took,
        )
        if not self.started and all(s.current is not None and s.current.ready for s in self.slots):
            self.started = True
            if self._start_timer is not None and self._start_timer.active():
                self._start_timer.cancel()
            self._tell_launcher(b"0")
            _log.info("all {n} workers ready", n=len(self.slots))

    def _start_timed_out(self) -> None:
        waiting = [s.index for s in self.slots if s.current is None or not s.current.ready]
        self.fatal(f"gamed: worker(s) {waiting} not ready within {self.start_timeout:g}s")

    # -- a worker ends --------------------------------------------------------------------------
    def worker_ended(self, worker: Worker, how: str) -> None:
        slot = self.slots[worker.index - 1]
        if slot.current is worker:
            slot.current = None
        if self.stopping:
            _log.info(
                "worker {worker} (pid {pid}) exited: {how}",
                worker=worker.index,
                pid=worker.pid,
                how=how,
            )
            return
        if not self.started:
            # twistd printed the worker's own one line ("gamed: cannot use ...") to its stderr.
            reason = (worker.err.last_text or f"exited before it was ready ({how})").strip()
            reason = reason.removeprefix("gamed: ")
            self.fatal(f"gamed: worker {worker.index}: {reason}")
            return
        self._restart_later(slot, worker.pid, f"died: {how}")

    def _restart_later(self, slot: Slot, pid: int | None, what: str) -> None:
        now = self.clock.seconds()
        delay = slot.next_delay(now)
        slot.recent.append(now + delay)
        slot.restarts += 1
        _log.warn(
            "worker {worker} (pid {pid}) {what}; restarting in {delay:.1f}s "
            "(restart {n} in the last minute, at most {max})",
            worker=slot.index,
            pid=pid,
            what=what,
            delay=delay,
            n=len(slot.recent),
            max=MAX_RESTARTS,
        )
        slot.pending = self._reactor.callLater(delay, self.spawn, slot)

    # -- signals --------------------------------------------------------------------------------
    def forward(self, name: str) -> dict[str, Any]:
        """SIG``name`` to every running worker; which got it."""
        sent = [s.index for s in self.slots if s.current is not None and s.current.signal(name)]
        return {"signal": name, "workers": sent}

    def reload(self) -> Any:
        """SIGHUP (and a reload asked of the parent): each worker reloads and logs its outcome."""
        result = self.forward("HUP")
        _log.info(
            "SIGHUP passed to workers {workers}: each reloads its config and logs the outcome",
            workers=result["workers"],
        )
        return result

    # -- stop -----------------------------------------------------------------------------------
    def stopService(self) -> Any:
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None
        self.stopping = True
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        # Stopped before every worker was ready: twistd's launcher must not wait on.
        self._tell_launcher(b"1 gamed: stopped before every worker was ready")
        for slot in self.slots:
            if slot.pending is not None and slot.pending.active():
                slot.pending.cancel()
            slot.pending = None
        restore = self._hold_stop_signals()
        d = self.stop_workers()
        d.addCallback(lambda _: self._close_sockets())
        d.addCallback(lambda _: MultiService.stopService(self))
        return d.addBoth(lambda result: (restore(), result)[1])

    def stop_workers(self) -> defer.Deferred[None]:
        """SIGTERM each worker; SIGKILL what still runs after its grace + STOP_MARGIN."""
        running = [s.current for s in self.slots if s.current is not None and s.current.alive]
        if not running:
            return defer.succeed(None)
        _log.info(
            "stopping {n} workers: each drains for up to {grace:g}s",
            n=len(running),
            grace=self.settings.shutdown_grace,
        )
        for w in running:
            w.signal("TERM")
        ended = defer.DeferredList([w.ended for w in running])
        done: defer.Deferred[None] = defer.Deferred()
        ended.addCallback(lambda _: finish())

        def kill() -> None:
            late = [w for w in running if w.alive]
            if not late:
                return
            _log.warn("workers {late} still running: killed", late=[w.index for w in late])
            for w in late:
                w.signal("KILL")
            self._reactor.callLater(KILL_WAIT, finish)

        def finish() -> None:
            if not done.called:
                done.callback(None)

        timer = self._reactor.callLater(self.settings.shutdown_grace + STOP_MARGIN, kill)
        done.addCallback(lambda _: timer.cancel() if timer.active() else None)
        return done

    def _close_sockets(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    # -- failure --------------------------------------------------------------------------------
    def fatal(self, line: str) -> None:
        """A start-up failure after twistd's start: one line (stderr, log, launcher), exit 1."""
        if self._exit_code:
            return
        self._exit_code = 1
        _log.critical("{line}", line=line)
        self._tell_launcher(b"1 " + line.encode("ascii", "backslashreplace")[:98])
        self.report_start_failure(line)  # the pidfile
        try:
            os.write(2, line.encode("utf-8", "replace") + b"\n")
        except OSError:
            pass
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def _tell_launcher(self, word: bytes) -> None:
        pipe, self._status_pipe = self._status_pipe, None
        if pipe is None:
            return
        try:
            os.write(pipe, word)
            os.close(pipe)
        except OSError:
            pass

    # -- for /stats -----------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """Each worker: index, pid, node, ready, HTTP port, restarts."""
        out = []
        for slot in self.slots:
            w = slot.current
            out.append(
                {
                    "worker": slot.index,
                    "pid": w.pid if w is not None else None,
                    "node_id": w.node_id if w is not None else None,
                    "ready": bool(w is not None and w.ready),
                    "http_port": w.http_port if w is not None else None,
                    "restarts": slot.restarts,
                }
            )
        return out


def worker_arguments(cli: dict[str, Any], config: str | None) -> list[str]:
    """The parent's own gamed options, as a worker's command line gets them."""
    args: list[str] = []
    if config:
        args += ["--config", os.path.abspath(config)]
    for option, value in cli.items():
        if value is None or option in OWN_OPTIONS:
            continue
        args += [f"--{option}", str(value)]
    return args


def make_supervisor(options: Any, settings: Settings, reactor: Any) -> IService:
    """The service tree of ``--workers N`` (N > 1): the Supervisor and its merged HTTP site."""
    from gamed.workers.web import make_supervisor_site

    listeners: dict[str, ListenAddress] = {}
    try:
        # backlog=1024 unless given, as for one process (gamed.config.with_backlog).
        listeners["game"] = listen_address("port", with_backlog(settings.port))
        if settings.ws_port is not None:
            listeners["ws"] = listen_address("ws-port", with_backlog(settings.ws_port))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    preflight_start(options, settings, reactor)
    launcher = twistd_options(options)
    twistd_args: list[str] = []
    if launcher is not None and launcher.get("reactor"):
        twistd_args += ["--reactor", str(launcher["reactor"])]
    cli = dict(getattr(options, "cli", None) or {})
    config = settings.config_file
    settings = _absolute_data_dir(settings)
    top = Supervisor(
        reactor,
        settings,
        listeners,
        worker_arguments(cli, config),
        twistd_args,
        settings.node_id,
    )
    top.launcher = launcher
    top.data_dir = settings.data_dir
    if settings.metrics_port is not None:
        web = strports.service(
            with_backlog(settings.metrics_port), make_supervisor_site(top, reactor), reactor=reactor
        )
        web.setName("http-listener")
        web.setServiceParent(top)
    _log.info(
        "gamed supervisor: {n} workers on game port {port}, WebSocket {ws}, merged HTTP on {http}",
        n=settings.workers,
        port=settings.port,
        ws=settings.ws_port,
        http=settings.metrics_port,
    )
    return top


def _absolute_data_dir(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, data_dir=os.path.abspath(settings.data_dir))
