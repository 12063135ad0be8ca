"""The WebSocket transport: one browser (or other WebSocket) client as an ``IConnection``.

autobahn does the RFC 6455 work (handshake, framing, fragmentation, UTF-8
validation, ping/pong, close handshake); this module maps it onto gamed's
protocol exactly as ``GameProtocol`` maps a TCP stream: one WebSocket text
message is one protocol message (the JSON, without the 4-byte length), reported
to the same ``IConnectionHandler`` (the Router). So rooms, games, takeover,
reconnect grace, the connection cap and every middleware see a WebSocket
client as they see a TCP one.

The router and rooms hand connections length-prefixed frames; a WebSocket
connection strips the 4 bytes and writes one text frame. A broadcast hands
every member the *same* bytes object, so the WebSocket framing of the last
frame is cached per factory and reused by every WebSocket member: one
autobahn ``PreparedMessage`` per broadcast, one ``transport.write`` per member.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import PreparedMessage, TrafficStats
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed import wsmask
from gamed.connection import ConnectionBase
from gamed.interfaces import IConnection, IConnectionHandler
from gamed.messages import SystemMessage
from gamed.protocol import (
    CLOSE_FLUSH_SECONDS,
    IDLE_SWEEP_SECONDS,
    ConnectionContext,
    IdleSweep,
    IStreamTransport,
)
from gamed.turnwrite import TurnWriter, socket_transport

_log = Logger()

#: The close code sent for each ``close(reason)`` (docs/protocol.md, "WebSocket").
CLOSE_CODES: dict[str, int] = {
    "closed": 1000,
    "idle": 1000,
    "shutdown": 1001,
    "refused": 1008,
    "kicked": 1008,
    "auth": 1008,
    "replaced": 1008,
    "binary": 1003,
    "oversize": 1009,
    "error": 1011,
}

#: Origins every server accepts unless ``--ws-origins`` says otherwise (plus the page's own).
LOCAL_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Handshake state autobahn keeps on the connection but never reads once it is open.
_HANDSHAKE_ONLY = frozenset(
    {
        "http_headers",
        "http_request_data",
        "http_request_host",
        "http_request_params",
        "http_request_path",
        "http_request_uri",
        "http_response_data",
        "http_status_line",
        "websocket_extensions",
        "websocket_extensions_in_use",  # always empty: gamed accepts no extension
        "websocket_origin",
        "websocket_protocols",
        "_wskey",
        "_transport_details",
        "_peer_port",  # in ctx
        "is_open",  # fired by then (``_compact`` runs as its callback)
    }
)
#: Values a connection may share with its class while they are equal (see ``_compact``).
_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple)
_MISSING = object()
#: autobahn's event-observer state (``ObservableMixin``): the same ``["message"]`` and
#: ``{"message": None}`` on every connection. Only ``fire`` writes ``_results``, and
#: gamed fires no event (``onMessageEnd``), so every connection can share one pair.
_EVENT_STATE = frozenset({"_valid_events", "_results"})


class _LastFrame:
    """The WebSocket framing of the last length-prefixed frame sent (a broadcast's)."""

    __slots__ = ("data", "frame")

    def __init__(self) -> None:
        self.frame: bytes = b""
        self.data: bytes = b""


def text_message(frame: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame for a length-prefixed protocol frame."""
    return PreparedMessage(memoryview(frame)[4:], False, False, True).payloadHybi  # type: ignore[arg-type]


# -- browser security -------------------------------------------------------------------


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str] | None) -> bool:
    """Whether a handshake from ``origin`` may open a socket.

    No ``Origin`` header: not a browser (a browser always sends one on a
    WebSocket handshake), so nothing cross-site to protect. ``allowed`` None is
    the default: the page's own origin (the ``Host`` it asked for, over http or
    https) and http://localhost / 127.0.0.1 / [::1] on any port. Otherwise the
    configured patterns: exact origins, ``*`` wildcards (``https://*.example.com``,
    ``http://localhost:*``), or ``*`` alone for every origin.
    """
    if not origin:  # autobahn reports a missing header as ""
        return True
    origin = origin.strip().lower().rstrip("/")
    if allowed is None:
        if host and origin in (f"http://{host.lower()}", f"https://{host.lower()}"):
            return True
        patterns: Iterable[str] = LOCAL_ORIGINS
    else:
        patterns = allowed
    for pattern in patterns:
        if pattern == "*" or fnmatchcase(origin, pattern.lower()):
            return True
    return False


def _strip_port(node: str) -> str:
    """``1.2.3.4:80`` -> ``1.2.3.4``, ``[::1]:80`` -> ``::1``, ``"quoted"`` unquoted."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node


def forwarded_chain(headers: dict[str, str]) -> list[str]:
    """Client addresses a proxy chain reports, nearest proxy last (RFC 7239 ``for=`` first)."""
    forwarded = headers.get("forwarded")
    if forwarded:
        chain = []
        for element in forwarded.split(","):
            for pair in element.split(";"):
                key, _, value = pair.strip().partition("=")
                if key.lower() == "for":
                    chain.append(_strip_port(value))
        return chain
    xff = headers.get("x-forwarded-for")
    if xff:
        return [_strip_port(part) for part in xff.split(",") if part.strip()]
    return []


def real_peer(peer: str, headers: dict[str, str], trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer``, unless it is a trusted proxy that says who it forwards.

    Walks the forwarded chain from the right (the nearest hop) and stops at the
    first address that is not a trusted proxy: a client cannot forge its way
    past a proxy that appends what it saw. Untrusted peers' headers are ignored.
    """
    if not trusted or not _in(peer, trusted):
        return peer
    for hop in reversed(forwarded_chain(headers)):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # "unknown", an obfuscated id: no better than the proxy's address
        if not _in(hop, trusted):
            return hop
        peer = hop
    return peer


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class ISocketTransport(IStreamTransport, IPushProducer):
    """What WebSocketConnection uses of its transport: GameProtocol's, plus pausing reads."""


# -- the connection -----------------------------------------------------------------------


# mypy checks the bases of a class with more than one against each other, and
# autobahn's own two disagree on ``peer``: that is what the ignore is for.
@implementer(IConnection, IPushProducer)
class WebSocketConnection(ConnectionBase, WebSocketServerProtocol):  # type: ignore[misc]
    """A client on a WebSocket: text messages in, text messages out."""

    # autobahn's per-frame and per-message state, written on every message (after
    # ``_compact``): in slots, so that the first message does not grow the compacted
    # instance dict past 21 keys, where CPython doubles its table (+0.37 KB). autobahn
    # gives none of them a class default: an unset slot reads as an unset attribute.
    __slots__ = (
        "_isMessageCompressed",
        "current_frame",
        "current_frame_masker",
        "data",
        "frame_data",
        "frame_length",
        "inside_message",
        "message_data",
        "message_data_total_length",
        "message_is_binary",
        "utf8validateIncomingCurrentMessage",
        "utf8validateLast",
    )

    factory: GameWebSocketFactory
    ctx: ConnectionContext
    # Set by makeConnection (the transport WebSocketResource took over from twisted.web).
    transport: ISocketTransport
    # autobahn options (copied from the factory, or shared by ``_compact``), set per
    # connection by the factory when a reload changed them.
    maxFramePayloadSize: int
    maxMessagePayloadSize: int
    #: For the ``transport`` label of gamed_transport_* metrics.
    transport_name = "ws"
    # What the handshake-only attributes read as once ``_compact`` dropped them.
    http_headers: dict[str, str] = {}
    http_request_data = b""
    http_response_data = ""
    http_request_host = http_request_path = http_request_uri = http_status_line = ""
    http_request_params: dict[str, Any] = {}
    websocket_extensions: list[Any] = []
    websocket_protocols: list[str] = []
    websocket_extensions_in_use: Any = ()
    _peer_port = 0
    websocket_origin = ""
    _wskey = ""
    _transport_details: Any = None
    is_open: Any = None
    #: autobahn queues writes only for ``sync``/``chopsize`` sends, which gamed never makes:
    #: one shared empty queue instead of a deque per connection.
    send_queue: Any = ()
    #: ``last_seen`` when this connection was last pinged (``check_idle``): one ping per quiet spell.
    _pinged_at = -1.0

    def __init__(self, handler: IConnectionHandler, clock: IReactorTime) -> None:
        super().__init__()
        self.handler = handler
        self.clock = clock
        settings = handler.settings
        self._max_backlog = settings.max_outgoing_bytes
        self._idle_timeout = settings.idle_timeout
        self._init_state()
        self.paused = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._backlog = 0
        self._opened = False  # reported to the handler (connection_made)
        self._peer_host = "unknown"
        self._peer_port = 0
        self._abort_call: IDelayedCall | None = None
        #: This turn's messages for the factory's ``TurnWriter`` (gamed.turnwrite), the
        #: writer, and the TCP connection it sends on (None: written through ``write``).
        self._out: list[bytes] | None = None
        self._turn: TurnWriter | None = None
        self._raw: Any = None
        self.send_frame = self._drop  # type: ignore[method-assign]  # until the handshake

    # -- connection life -------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peer_host = getattr(peer, "host", "unknown")
        self._peer_port = getattr(peer, "port", 0)
        # twisted.web's HTTPChannel is still the transport's producer after
        # WebSocketResource took the transport over: we replace it, so that a
        # client that does not read pauses *us* (back-pressure, slow-client drop).
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass  # no producer (a transport that did not come from twisted.web)
        self.transport.registerProducer(self, True)
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> None:
        settings = self.handler.settings
        if not origin_allowed(request.origin, request.host, settings.ws_origins):
            _log.info(
                "refused a WebSocket handshake from {peer}: origin {origin!r} not allowed",
                peer=self._peer_host,
                origin=request.origin,
            )
            raise ConnectionDeny(403, "origin not allowed (see --ws-origins)")
        self._peer_host = real_peer(
            self._peer_host, request.headers, self.factory.trusted_proxies()
        )

    def onOpen(self) -> None:
        self.ctx = ConnectionContext(self, self._peer_host, self._peer_port, self.clock)
        self.last_seen = self.ctx.connected_at
        self._opened = True
        self._raw = socket_transport(self.transport)
        if self._raw is not None:
            self._turn = self.factory.turn
        self._route_output()
        self.handler.connection_made(self)
        if not self.closing and self._idle_timeout > 0:
            idle = self.factory.idle
            # A look at least every quarter time-out: the ping at half of it is not skipped.
            idle.interval = min(IDLE_SWEEP_SECONDS, self._idle_timeout / 4)
            idle.watch(self)
        # autobahn fires is_open right after onOpen returns: compact then, not before.
        self.is_open.addCallback(self._compact)

    def _compact(self, result: object = None) -> object:
        """Shrink this open connection's ``__dict__`` to what differs between connections.

        autobahn keeps ~100 attributes per connection (its options copied from the
        factory, handshake data, flags), too many for CPython's key-sharing
        instance dicts: ~3.3 KB of dict per connection, where a GameProtocol's
        is 0.2 KB. Once open, the handshake data goes, the traffic counters are
        the factory's, and every attribute whose value is immutable or a
        factory option is moved to this factory's own subclass the first time it
        is seen, and dropped from any later connection whose value is the same:
        reads give the same value, and a write makes it an instance attribute
        again. (Idle memory per WebSocket connection: docs/performance.md.)
        """
        cls = type(self)
        factory = self.factory
        options = factory.option_names
        # Set by __init__ or autobahn's connectionMade before any read: the factory's own.
        factory_wide = (factory.handler, factory.clock, factory.traffic)
        keep: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in _HANDSHAKE_ONLY:
                continue
            if key in _EVENT_STATE:
                # ObservableMixin's class default is None: share this factory's own.
                own = cls.__dict__.get(key, _MISSING)
                if own is _MISSING:
                    setattr(cls, key, value)
                    continue
                if own == value:
                    continue
            if key == "trafficStats":
                value = factory.traffic  # one for all: gamed never reads them apart
            elif key == "send_queue" and not value:
                continue  # the class's shared empty queue
            shared = getattr(cls, key, _MISSING)
            if shared is _MISSING:
                # Not functions: on a class they would become methods.
                if key in options and callable(value):
                    # perMessageCompressionAccept: a function on a class would be a method.
                    setattr(cls, key, staticmethod(value))
                    continue
                if (
                    type(value) in _IMMUTABLE
                    or key in options
                    or any(value is v for v in factory_wide)
                ):
                    setattr(cls, key, value)
                    continue
            elif shared is value or (
                type(value) in _IMMUTABLE and type(shared) is type(value) and shared == value
            ):
                continue
            keep[key] = value
        state = self.__dict__
        state.clear()
        state.update(keep)
        return result

    def connectionLost(self, reason: Failure | None = None) -> None:
        call = self._abort_call
        if call is not None and call.active():
            call.cancel()
        self._abort_call = None
        self.factory.idle.conns.discard(self)
        self.closing = True
        self.send_frame = self._drop  # type: ignore[method-assign]
        self._out = None  # the socket is gone: what was queued this turn goes with it
        try:
            super().connectionLost(reason)  # type: ignore[arg-type]
        finally:
            if self._opened:
                self._opened = False
                self.handler.connection_lost(self, self.close_reason)

    def check_idle(self, now: float) -> None:
        """Ping a quiet client at half the idle timeout; a pong (or any message) is liveness.

        Browsers answer pings by themselves, so an open page stays connected
        without sending HeartBeat; a peer that is gone is closed at the timeout.
        Called every second by the factory's ``IdleSweep`` (one timer for all
        connections, as on TCP: a ``DelayedCall`` each cost ~0.6 KB per connection).
        """
        if self.closing:
            return
        timeout = self._idle_timeout
        idle_for = now - self.last_seen
        if idle_for >= timeout:
            self.send(SystemMessage(f"closing: no message or pong for {timeout:g} seconds"))
            self.close("idle")
        elif idle_for >= timeout / 2 and self._pinged_at != self.last_seen:
            self._pinged_at = self.last_seen
            self.sendPing()

    # -- input -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        # (The state first: autobahn sets its per-frame slots when the socket opens.)
        if self.state == self.STATE_OPEN and not self.data and not self.inside_message:
            frame: object = self.current_frame  # None between frames (typed without)
            if frame is None:
                # Between messages, with nothing buffered: whole short text frames are
                # taken here (``_take_text_frames``); anything else goes to autobahn.
                data = self._take_text_frames(data)
                if not data:
                    return
        # autobahn's Twisted adapter only adds a debug log line (whose arguments it
        # formats, colours included, on every read) before this call.
        self._dataReceived(data)

    def _take_text_frames(self, data: bytes) -> bytes:
        """Hand each whole, final, masked text frame at the start of ``data`` to
        ``onMessage``; return the rest, from the first byte that is anything else.

        This is the frame a game client sends (one text message, one frame), and the
        case autobahn spends most of a WebSocket server's time on: its parser builds a
        frame header object, a masker and a message buffer per frame and calls seven
        hooks. Here the header is read with a few index operations, the payload unmasked
        with int XOR (gamed.wsmask) and checked as UTF-8 with the codec. Everything
        else stops this loop and goes to autobahn, which then does what it always did:
        a fragment, a control frame (ping, pong, close), an unmasked frame, reserved
        bits or a length not in its minimal encoding (1002), invalid UTF-8 (1007), a
        frame over the size limits (1009), a frame not wholly received yet, a 64-bit
        length, and every byte after a message that started closing the connection.
        """
        n = len(data)
        i = 0
        frame_limit = self.maxFramePayloadSize
        message_limit = self.maxMessagePayloadSize
        while n - i >= 6:
            if data[i] != 0x81:  # FIN, no RSV bits, opcode 1 (text)
                break
            length = data[i + 1]
            if not length & 0x80:  # a client's frame must be masked
                break
            length &= 0x7F
            if length < 126:
                head = i + 2
            elif length == 126 and n - i >= 8:
                length = (data[i + 2] << 8) | data[i + 3]
                if length < 126:
                    break  # not the minimal encoding: autobahn fails it with 1002
                head = i + 4
            else:
                break
            if (0 < frame_limit < length) or (0 < message_limit < length):
                break
            end = head + 4 + length
            if end > n:
                break
            payload = wsmask.unmask(data[head + 4 : end], data[head : head + 4])
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # autobahn fails the connection with 1007, as before
            i = end
            self.onMessage(payload, False)
            if self.closing or self.state != self.STATE_OPEN:
                break  # a close began: autobahn reads the rest (the peer's close reply)
        return data[i:] if i else data

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.closing:
            return
        if isBinary:
            self.handler.frame_refused(self, "invalid", len(payload))
            self._close_with(1003, "binary", "send JSON in text messages")
            return
        self.last_seen = now = self.clock.seconds()
        self.factory.messages += 1
        self.ctx.frame_size = len(payload)
        self.ctx.received_at = now
        try:
            self.handler.frame_received(self, payload)
        except Exception:
            _log.failure("handling a WebSocket message from {ctx}", ctx=self.ctx)
            self._close_with(1011, "error", "internal error")

    def onMessageEnd(self) -> None:
        """autobahn's, minus firing its "message" event for observers (a Deferred and a
        gather per message; gamed registers none): the message goes to onMessage."""
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]  # as autobahn does

    def onFrameEnd(self) -> bool | None:
        """autobahn's, then drop the frame's unmasker (~0.3 KB with its C state): the next
        frame header makes a new one, and nothing reads it between frames."""
        try:
            return super().onFrameEnd()
        finally:
            self.current_frame_masker = None

    def onPing(self, payload: bytes) -> None:
        self._alive()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._alive()

    def _alive(self) -> None:
        """A ping or pong is liveness, but not while a message is half received: as on
        TCP, a partial message does not keep a connection (and its buffer) open."""
        if not self.inside_message and not self.data:
            self.last_seen = self.clock.seconds()

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        """Over --max-frame-bytes: the same Error 413 as TCP, then close 1009 (autobahn)."""
        if not self.closing and self._opened:
            self.handler.frame_refused(self, "oversize", msg_size)
            self.send_error(
                413, f"message of {msg_size} bytes exceeds the limit of {max_msg_size} bytes"
            )
            self.close_reason = "oversize"
        self._closing_now()
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """autobahn fails the connection (invalid UTF-8: 1007, protocol errors: 1002...)."""
        if code == 1007 and not self.closing and self._opened:
            self.handler.frame_refused(self, "invalid", 0)
        self._closing_now()
        super()._fail_connection(code, reason)

    # -- output ----------------------------------------------------------------------

    def _write_open(self, frame: bytes) -> None:
        cache = self.factory.last
        if frame is not cache.frame:
            cache.data = text_message(frame)
            cache.frame = frame  # holds the bytes: its identity cannot be reused meanwhile
        self.transport.write(cache.data)

    def _queue_open(self, frame: bytes) -> None:
        cache = self.factory.last
        if frame is not cache.frame:
            cache.data = text_message(frame)
            cache.frame = frame
        self._queue_frame(cache.data)

    def _write_while_paused(self, frame: bytes) -> None:
        self._backlog += len(frame)
        if self._backlog > self._max_backlog:
            self._too_slow()
            return
        self._write_open(frame)

    @staticmethod
    def _drop(frame: bytes) -> None:
        pass

    def _route_output(self) -> None:
        # What this turn queued goes first: autobahn's own frames (a close, a ping)
        # and the paused writer use the transport's ``write``.
        self.flush_output()
        if self.closing or not self._opened:
            self.send_frame = self._drop  # type: ignore[method-assign]
        elif self.paused:
            self.send_frame = self._write_while_paused  # type: ignore[method-assign]
        elif self._turn is not None:
            self.send_frame = self._queue_open  # type: ignore[method-assign]
        else:
            self.send_frame = self._write_open  # type: ignore[method-assign]

    def send_frame(self, frame: bytes) -> None:  # rebound per state by _route_output
        self._drop(frame)

    # IPushProducer, for the transport: a client that does not read pauses us.

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()
        self._route_output()

    def resumeProducing(self) -> None:
        self._backlog = 0
        self.paused = False
        self.transport.resumeProducing()
        self._route_output()

    # -- closing -----------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Send a close frame (code by ``reason``); abort if the peer does not answer in time."""
        self._close_with(CLOSE_CODES.get(reason, 1000), reason, reason)

    def _close_with(self, code: int, reason: str, text: str) -> None:
        if self.closing:
            return
        self.close_reason = reason
        self._closing_now()
        if self.state == self.STATE_OPEN:
            # sendCloseFrame, not sendClose: autobahn's public call only takes
            # 1000 and 3000-4999, and gamed's mapping uses the RFC 6455 codes.
            self.sendCloseFrame(code=code, reasonUtf8=text.encode()[:123], isReply=False)
        elif self.state != self.STATE_CLOSING:
            self.abort()  # not open yet, or already closed: nothing to say

    def _closing_now(self) -> None:
        """No more output but the close frame; reading goes on for the peer's close reply."""
        if self.closing:
            return
        self.closing = True
        self._route_output()
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        self._abort_call = self.clock.callLater(CLOSE_FLUSH_SECONDS, self.abort)


class GameWebSocketFactory(WebSocketServerFactory):
    """Builds a WebSocketConnection per handshake, all reporting to one handler (the Router)."""

    noisy = False

    def __init__(self, handler: IConnectionHandler, clock: IReactorTime) -> None:
        super().__init__()
        self.handler = handler
        self.clock = clock
        # Short frames unmasked with int XOR instead of a native masker built per frame.
        wsmask.install(autobahn_protocol)
        self.last = _LastFrame()
        #: This factory's own subclass: what its connections share (``_compact``).
        self.connection_class: type[WebSocketConnection] = type(
            "WebSocketConnection", (WebSocketConnection,), {"__module__": __name__}
        )
        self.option_names = frozenset(WebSocketServerProtocol.CONFIG_ATTRS)
        self.traffic = TrafficStats()
        #: The idle time-out of every connection, one timer for all (``check_idle``).
        self.idle = IdleSweep(clock)
        #: Sends each connection's messages of a reactor turn on its socket in one go.
        self.turn = TurnWriter(clock)
        #: Text messages handed to the handler, for gamed_transport_messages_received
        #: (a plain int, read at scrape time).
        self.messages = 0
        self._proxies_key: tuple[str, ...] = ()
        self._proxies: tuple[Network, ...] = ()
        settings = handler.settings
        self.setProtocolOptions(
            # One limit for both transports: a message over --max-frame-bytes is 1009.
            maxFramePayloadSize=settings.max_frame_bytes,
            maxMessagePayloadSize=settings.max_frame_bytes,
            # Close with a close frame and its code rather than dropping the TCP connection.
            failByDrop=False,
            # Timers run on our clock (WebSocketConnection: idle pings, the close
            # flush), not on autobahn's batched timers on the global reactor.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            webStatus=False,
            # "null" (sandboxed frames, file://) is judged by origin_allowed like any origin.
            allowNullOrigin=True,
            # permessage-deflate is not accepted: each member would compress
            # every broadcast again, and gamed's messages are small.
            perMessageCompressionAccept=lambda offers: None,
        )

    def trusted_proxies(self) -> tuple[Network, ...]:
        """--ws-trusted-proxies as networks, re-parsed only when a reload changed them."""
        key = self.handler.settings.ws_trusted_proxies
        if key != self._proxies_key:
            self._proxies = tuple(ipaddress.ip_network(c, strict=False) for c in key)
            self._proxies_key = key
        return self._proxies

    def buildProtocol(self, addr: Any) -> WebSocketConnection:  # type: ignore[override]
        # A reload may have changed --max-frame-bytes: new connections use the new one.
        limit = self.handler.settings.max_frame_bytes
        self.maxFramePayloadSize = self.maxMessagePayloadSize = limit
        proto = self.connection_class(self.handler, self.clock)
        if getattr(proto, "maxFramePayloadSize", limit) != limit:
            # The class holds the limit ``_compact`` saw first; autobahn copies a factory
            # option only to a connection that does not have it already.
            proto.maxFramePayloadSize = proto.maxMessagePayloadSize = limit
        proto.factory = self
        return proto
