"""The game listener as a service that drains its clients when stopped."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gamed.config import ConfigError
from gamed.reconfig import describe
from gamed.router import Router

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

    def stopService(self) -> defer.Deferred[object]:
        d = self.drain()
        d.addCallback(lambda _: MultiService.stopService(self))  # closes the listener
        return d


class ServerRoot(MultiService):
    """The top of gamed's service tree; turns a failed bind into one clear line.

    twistd binds in ``privilegedStartService`` (before daemonizing), so raising
    SystemExit here makes it exit non-zero with the message on stderr instead
    of a traceback.
    """

    def __init__(self, reactor: Any = None, reload: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._reload = reload
        self._old_hup: Any = None

    def startService(self) -> None:
        super().startService()
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
        d = game.drain()
        d.addCallback(lambda _: MultiService.stopService(self))
        return d

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
            where = f"{e.interface or '0.0.0.0'}:{e.port}"
            raise SystemExit(f"gamed: cannot listen on {where}: {e.socketError}") from None
