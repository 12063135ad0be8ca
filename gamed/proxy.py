"""The PROXY protocol (v1 and v2) in front of the game port: ``--port haproxy:tcp:7000``.

Behind HAProxy (``send-proxy`` / ``send-proxy-v2``), nginx's stream module or stunnel,
every TCP connection comes from the proxy; the PROXY header the proxy sends first
says who the client is. Twisted parses it (``twisted.protocols.haproxy``), but its
wrapper starts the wrapped protocol at once, before the header has arrived, so a
``getPeer()`` in ``connectionMade`` (where gamed records the peer, counts it per
address and checks the blocklist) would still see the proxy. This wrapper starts
the game protocol only once the header is parsed: from its first line on, the
connection's ``peer_host`` is the real client's. A connection that sends no valid
header within ``HEADER_TIMEOUT`` seconds, or something else, is closed without
ever reaching the router. A ``LOCAL`` header (a proxy's health check) has no
client address: the peer is then the proxy itself.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

_log = Logger()

PREFIX = "haproxy:"
#: Seconds a connection gets to send its PROXY header (a proxy sends it at once).
HEADER_TIMEOUT = 10.0
#: The longest PROXY header: v1 is at most 107 bytes; v2 is 16 + a 16-bit length.
MAX_HEADER = 16 + 65535


def split(description: str) -> tuple[bool, str]:
    """(whether ``description`` asks for the PROXY protocol, the endpoint under it)."""
    if description.startswith(PREFIX):
        return True, description[len(PREFIX) :]
    return False, description


class ProxiedProtocol(HAProxyProtocolWrapper):
    """Reads the PROXY header, then starts the wrapped protocol with the client's address."""

    factory: ProxiedFactory

    def __init__(self, factory: ProxiedFactory, wrappedProtocol: Any) -> None:
        super().__init__(cast(Any, factory), wrappedProtocol)
        self._pending = b""
        self._started = False
        self._timeout: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, but the wrapped protocol starts after the header.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timeout = self.factory.clock.callLater(HEADER_TIMEOUT, self._no_header)

    def _no_header(self) -> None:
        self._timeout = None
        tcp = self._tcp()
        _log.info("PROXY: no header from {peer} in {s:g}s", peer=tcp.getPeer(), s=HEADER_TIMEOUT)
        tcp.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        data = self._pending + data
        if self._parser is None:
            if data[:5] == V1Parser.PROXYSTR:
                self._parser = V1Parser()
            elif len(data) >= 16 and data[:12] == V2Parser.PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif (len(data) < 16 and V2Parser.PREFIX.startswith(data[:12])) or (
                len(data) < 5 and V1Parser.PROXYSTR.startswith(data)
            ):
                self._pending = data  # too short to tell yet
                return
            else:
                self._refuse("not a PROXY protocol header")
                return
        self._pending = b""
        try:
            info, rest = self._parser.feed(data)
        except InvalidProxyHeader:
            self._refuse("invalid PROXY header")
            return
        if info is None:
            if len(getattr(self._parser, "buffer", b"")) > MAX_HEADER:
                self._refuse("PROXY header too long")
            return
        self._proxyInfo = info
        self._started = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self.wrappedProtocol.makeConnection(cast(Any, self))  # a wrapper is its transport
        if rest and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(rest)

    def _tcp(self) -> Any:
        """The real transport (``ITransport`` does not declare ``abortConnection``)."""
        return self.transport

    def _refuse(self, why: str) -> None:
        tcp = self._tcp()
        _log.info("PROXY: {why} from {peer}; closed", why=why, peer=tcp.getPeer())
        tcp.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        if self._started:
            super().connectionLost(reason)
        else:  # the game protocol never started: nothing to tell it
            self.factory.unregisterProtocol(self)
            self.wrappedProtocol = None  # type: ignore[assignment]  # as ProtocolWrapper does


class ProxiedFactory(HAProxyWrappingFactory):
    """Twisted's HAProxy wrapping factory with ``ProxiedProtocol`` and a clock."""

    protocol = ProxiedProtocol  # type: ignore[assignment]  # a subclass of the declared one

    def __init__(self, wrappedFactory: IProtocolFactory, clock: IReactorTime) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock

    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:  # the wrapped factory refused (e.g. out of file descriptors)
            return None
        return self.protocol(self, inner)


def listen_args(description: str, factory: Any, clock: IReactorTime) -> tuple[str, Any]:
    """The endpoint and factory to listen with for ``--port``: a ``haproxy:`` description
    becomes the endpoint under it, with the factory wrapped in ``ProxiedFactory``."""
    proxied, rest = split(description)
    if not proxied:
        return description, factory
    return rest, ProxiedFactory(factory, clock)
