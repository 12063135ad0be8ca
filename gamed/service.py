"""The game listener as a service that drains its clients when stopped."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gamed.config import ConfigError, Settings, with_backlog
from gamed.reconfig import describe
from gamed.router import Router
from gamed.store import StoreError

_log = Logger()


class GameService(MultiService):
    """Parent of the game listener; drains the clients before the listener closes.

    The listener stays open through the drain, so a client that connects
    meanwhile is told ``Error{503}`` instead of finding the port closed, and a
    load balancer sees /healthz answer 503 (ServerRoot keeps the HTTP port up
    until ``drain`` has fired).
    """

    def __init__(self, router: Router) -> None:
        super().__init__()
        self.router = router

    def drain(self) -> defer.Deferred[None]:
        """Tell every client and game; fires once they left, or after ``shutdown_grace``."""
        router = self.router
        first = not router.draining
        router.draining = True  # before anything else: no new client from here on
        if not first:
            return router.drain()  # under way or over: fires with it
        started = router.clock.seconds()
        _log.info(
            "draining: {n} clients told to leave, {grace}s grace; new ones get Error 503",
            n=len(router.connections),
            grace=router.settings.shutdown_grace,
        )

        def drained(result: object) -> object:
            _log.info("drained in {s:.2f}s", s=router.clock.seconds() - started)
            return result

        return router.drain().addBoth(drained)

    def stopService(self) -> defer.Deferred[None]:
        d = self.drain()
        d.addCallback(lambda _: MultiService.stopService(self))  # closes the listener
        return d


def twistd_options(options: object) -> MutableMapping[str, Any] | None:
    """twistd's own options when it runs us, else None (tests, tools).

    twistd parses ``twistd [its options] gamed [ours]``, so our Options'
    ``parent`` is its ServerOptions: ``nodaemon`` (``-n``, or implied by
    ``--debug``), ``pidfile``, and in daemon mode after the fork ``statusPipe``.
    """
    parent = getattr(options, "parent", None)
    if not isinstance(parent, MutableMapping) or "nodaemon" not in parent:
        return None
    return parent


def daemon_launcher(options: object) -> MutableMapping[str, Any] | None:
    """twistd's own options when it is going to fork (daemon mode), else None."""
    parent = twistd_options(options)
    if parent is None or parent.get("nodaemon") or parent.get("debug"):
        return None
    return parent


def cannot_listen(interface: str, port: object, error: object) -> str:
    """The one line a failed bind prints (README, Operations)."""
    return f"gamed: cannot listen on {interface or '0.0.0.0'}:{port}: {error}"


def cannot_use(error: StoreError) -> str:
    """The one line an unusable database prints (docs/operations.md)."""
    return f"gamed: cannot use {error.path}: {error.cause}"


def probe_listen(descriptions: Iterable[str], reactor: Any) -> str | None:
    """Bind each TCP endpoint's address once and let go; the first failure's line, or None.

    twistd forks (daemon mode) *before* it calls ``privilegedStartService``, so
    a bind failing there is reported by a process whose terminal is gone. This
    check runs in makeService, in the process that owns the terminal, with the
    same privileges and SO_REUSEADDR as Twisted's listenTCP. Port 0 and
    non-TCP endpoints are not probed; a port taken in between is still caught
    by ServerRoot, through twistd's status pipe.
    """
    for description in descriptions:
        try:
            endpoint = endpoints.serverFromString(reactor, description)
        except Exception:
            continue  # validated by the options; the real listen reports it
        if not isinstance(endpoint, endpoints.TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint):
            continue
        port, interface = endpoint._port, endpoint._interface
        if not port:
            continue
        v6 = isinstance(endpoint, endpoints.TCP6ServerEndpoint) or ":" in interface
        probe = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface or ("::" if v6 else "0.0.0.0"), port))
        except OSError as e:
            return cannot_listen(interface, port, e)
        finally:
            probe.close()
    return None


def preflight_start(options: object, settings: Settings, reactor: Any) -> None:
    """Fail a start while the terminal is still ours: one line (SystemExit), before any fork.

    Daemon mode: twistd forks before it binds, so the ports are probed here to
    say "port in use" on the terminal (probe_listen). --data-dir is created
    here for the same reason, and twistd has no pidfile yet. Shared by one
    process (gamed.tap) and the parent of ``--workers N``.
    """
    if daemon_launcher(options) is not None:
        ports = [settings.port, settings.metrics_port, settings.ws_port]
        problem = probe_listen([with_backlog(p) for p in ports if p is not None], reactor)
        if problem is not None:
            raise SystemExit(problem)
    try:
        os.makedirs(settings.data_dir, exist_ok=True)
    except OSError as e:
        raise SystemExit(
            f"gamed: --data-dir {settings.data_dir} cannot be created: {e.strerror or e}"
        ) from None


class ServerRoot(MultiService):
    """The top of gamed's service tree; turns a failed start into one clear line.

    A failed bind (``privilegedStartService``), a data dir the dropped user
    cannot write, and a database that cannot be opened (``StoreError`` from a
    plugin's ``startService``) all end the same way: one line, exit 1.

    twistd binds in ``privilegedStartService``. In the foreground, raising
    SystemExit here makes it exit non-zero with the message on stderr instead
    of a traceback. In daemon mode twistd has already forked: its first
    process waits for the child's word on a status pipe (and holds the pipe's
    write end itself, so a child that just dies leaves it waiting forever), so
    the line goes through that pipe. Either way the pidfile twistd wrote is
    removed (twistd removes it only for an Exception, not SystemExit).
    """

    #: twistd's options when twistd runs us (set by gamed.tap), else None.
    launcher: MutableMapping[str, Any] | None = None
    #: --data-dir, checked after twistd dropped privileges (set by gamed.tap).
    data_dir: str | None = None

    def __init__(self, reactor: Any = None, reload: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._reload = reload
        self._old_hup: Any = None
        #: The live state behind the services, for tests and tools (set by makeService).
        self.router: Router | None = None

    def startService(self) -> None:
        if self.data_dir is not None and not os.access(self.data_dir, os.W_OK | os.X_OK):
            # After --uid/--gid: say it in one line rather than let each plugin's
            # SQLite fail with a traceback.
            line = f"gamed: --data-dir {self.data_dir} is not writable by uid {os.getuid()}"
            self.report_start_failure(line)
            raise SystemExit(line)
        try:
            # The plugins open their databases here: after twistd dropped
            # privileges (files belong to --uid), on the reactor thread before
            # the reactor runs, so no client is served yet.
            super().startService()
        except StoreError as e:
            # Fail closed: a ban (or analytics) database that cannot be read
            # stops the start; the operator may move the file away on purpose.
            line = cannot_use(e)
            self.running = 0
            self.report_start_failure(line)
            raise SystemExit(line) from None
        # SIGHUP re-reads the config (hot reload). Only on a real reactor in the
        # main thread: signal handlers cannot be set anywhere else.
        if (
            self._reload is not None
            and hasattr(self._reactor, "callFromThread")
            and threading.current_thread() is threading.main_thread()
        ):
            self._old_hup = signal.signal(
                signal.SIGHUP, lambda *_: self._reactor.callFromThread(self._sighup)
            )
            _log.info("SIGHUP reloads the config (all or nothing)")

    def stopService(self) -> Any:
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None
        # Drain first, with every other service still up (the HTTP port answers
        # /healthz 503, plugins keep counting); then stop them all, as twistd does.
        game = self.namedServices.get("game")
        if not isinstance(game, GameService) or not game.running:
            return super().stopService()
        restore = self._hold_stop_signals()
        d = game.drain()
        d.addCallback(lambda _: MultiService.stopService(self))
        return d.addBoth(lambda result: (restore(), result)[1])

    def _hold_stop_signals(self) -> Callable[[], None]:
        """Log a second SIGTERM/SIGINT during the drain instead of passing it to twistd.

        twistd's handler calls reactor.stop() again, which raises
        ReactorNotRunning (a traceback in the log); the drain is bounded
        (``--shutdown-grace`` + 1 s) anyway. Returns the function restoring
        the previous handlers. Only on a real reactor in the main thread.
        """
        if not (
            hasattr(self._reactor, "callFromThread")
            and threading.current_thread() is threading.main_thread()
        ):
            return lambda: None
        reactor = self._reactor

        def again(signum: int, frame: object) -> None:
            reactor.callFromThread(
                _log.info,
                "{signal} while draining: already stopping (at most --shutdown-grace + 1 s)",
                signal=signal.Signals(signum).name,
            )

        previous = {sig: signal.signal(sig, again) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def reload(self) -> Any:
        """Reload the config, all or nothing; one log line either way.

        Returns what the reloader reports (changed / applied / restart_required
        keys); raises ConfigError, naming the table and key, when the new config
        is refused (then nothing was applied). SIGHUP and the admin API both
        come through here.
        """
        if self._reload is None:
            raise RuntimeError("this server has no config reloader")
        try:
            result = self._reload()
        except ConfigError as e:
            _log.error("config reload refused, old config kept: {error}", error=str(e))
            raise
        _log.info("config reloaded: {summary}", summary=describe(result), result=result)
        return result

    def _sighup(self) -> None:
        try:
            self.reload()
        except ConfigError:
            pass  # logged in reload(); the old config stays
        except Exception:
            _log.failure("config reload failed")

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            line = cannot_listen(e.interface, e.port, e.socketError)
            self.report_start_failure(line)
            raise SystemExit(line) from None
        except SystemExit as e:
            self.report_start_failure(str(e.code))
            raise

    def report_start_failure(self, line: str) -> None:
        """Drop twistd's pidfile; in daemon mode, hand ``line`` to twistd's waiting parent.

        twistd's parent prints what the pipe carries and exits 1; twistd's own
        error path (for an Exception) would also write a traceback to the log.
        """
        launcher = self.launcher
        if launcher is None:
            return
        # The pidfile goes first: once the pipe is written the parent exits 1,
        # and whoever waited for it must not find a pidfile of a dying process.
        pidfile = launcher.get("pidfile")
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass
        pipe = launcher.get("statusPipe")
        if pipe is not None:
            launcher["statusPipe"] = None  # said once; twistd must not write "0" after it
            try:
                os.write(pipe, b"1 " + line.encode("ascii", "backslashreplace")[:98])
                os.close(pipe)
            except OSError:
                pass
