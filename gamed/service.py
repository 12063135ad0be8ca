"""The game listener as a service that drains its clients when stopped."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError

from gamed.router import Router


class GameService(MultiService):
    """Parent of the game listener; on stop: refuse new clients, stop listening, drain.

    twistd stops services on SIGTERM before the reactor stops, and waits for
    the Deferred returned here, so every client gets its SystemMessage and a
    clean close (or is aborted after ``shutdown_grace``).
    """

    def __init__(self, router: Router) -> None:
        super().__init__()
        self.router = router

    def stopService(self) -> defer.Deferred[object]:
        self.router.draining = True
        stopped = super().stopService()  # closes the listening socket
        drained = self.router.drain()
        return defer.gatherResults([stopped, drained], consumeErrors=True)


class ServerRoot(MultiService):
    """The top of gamed's service tree; turns a failed bind into one clear line.

    twistd binds in ``privilegedStartService`` (before daemonizing), so raising
    SystemExit here makes it exit non-zero with the message on stderr instead
    of a traceback.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            where = f"{e.interface or '0.0.0.0'}:{e.port}"
            raise SystemExit(f"gamed: cannot listen on {where}: {e.socketError}") from None
