"""The worker side of ``--workers N``: adopt the parent's sockets, say when ready, follow the parent.

``makeService`` builds a worker's service tree like any gamed's; ``adopt``
then points its game and WebSocket listeners at the sockets the parent passed
down (``adoptStreamPort`` instead of a bind), and adds a ``worker`` service
that tells the parent the worker is ready and which loopback port its own HTTP
site has (the parent scrapes it), and stops the worker if the parent is gone.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from gamed.workers.listen import InheritedEndpoint, WorkerSpec

_log = Logger()

#: Seconds between two looks at whether the parent is still there.
PARENT_CHECK = 1.0


@implementer(IStreamServerEndpoint)
class ReportingEndpoint:
    """Listens like ``inner`` and remembers the port it got (port 0: the kernel's pick)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.port: int | None = None

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        def got(port: IListeningPort) -> IListeningPort:
            self.port = port.getHost().port  # type: ignore[attr-defined]
            return port

        return self._inner.listen(protocolFactory).addCallback(got)


class WorkerService(Service):
    """Says "ready" to the parent (a structured log event it reads) and watches for its death.

    Started last in the tree: by then every listener is up (they listen in
    ``privilegedStartService``) and every plugin has opened its database.
    """

    def __init__(self, spec: WorkerSpec, reactor: Any, http: ReportingEndpoint | None) -> None:
        self.spec = spec
        self._reactor = reactor
        self._http = http
        self._watch: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        _log.info(
            "worker {worker} ready (pid {pid}), HTTP on 127.0.0.1:{http_port}",
            worker=self.spec.index,
            pid=os.getpid(),
            http_port=self._http.port if self._http is not None else None,
            gamed_worker_ready=True,
        )
        self._watch = LoopingCall(self._check_parent)
        self._watch.clock = self._reactor
        self._watch.start(PARENT_CHECK, now=False)

    def stopService(self) -> Any:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        return super().stopService()

    def _check_parent(self) -> None:
        """A worker whose parent died (kill -9) must not keep the port: drain and exit."""
        if os.getppid() != self.spec.parent:
            _log.warn("the supervisor (pid {pid}) is gone: stopping", pid=self.spec.parent)
            if self._watch is not None and self._watch.running:
                self._watch.stop()
            self._reactor.stop()


def adopt(top: MultiService, spec: WorkerSpec, reactor: Any) -> None:
    """Make the service tree ``top`` a worker's: inherited listeners, the ``worker`` service."""
    game = top.getServiceNamed("game")
    assert isinstance(game, MultiService)
    for name, key in (("game-listener", "game"), ("ws-listener", "ws")):
        if key not in spec.fds:
            continue
        listener = game.getServiceNamed(name)
        assert isinstance(listener, StreamServerEndpointService)
        fd, family = spec.fds[key]
        listener.endpoint = InheritedEndpoint(reactor, fd, family)
    http: ReportingEndpoint | None = None
    if "http-listener" in top.namedServices:
        web = top.getServiceNamed("http-listener")
        assert isinstance(web, StreamServerEndpointService)
        http = ReportingEndpoint(web.endpoint)
        web.endpoint = http
    worker = WorkerService(spec, reactor, http)
    worker.setName("worker")
    worker.setServiceParent(top)
