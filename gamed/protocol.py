"""One client connection: framing, limits, idle time-out, back-pressure.

The protocol is thin: it turns bytes into frames and hands them to its
``IConnectionHandler`` (the Router); it turns frames from the router and the
room service into writes. It is the router's ``IConnection`` (and so the
rooms' ``IRoomClient``) and owns the ``ConnectionContext`` that middleware sees.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import struct
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed.connection import ConnectionBase
from gamed.fdlimit import FD_HEADROOM, FdLimit, raise_nofile
from gamed.interfaces import IConnection, IConnectionHandler, IMessageContext
from gamed.messages import SystemMessage
from gamed.turnwrite import TurnWriter, socket_transport

_log = Logger()
_ids = itertools.count(1)

#: The frame's length prefix (``Int32StringReceiver.structFormat``), read in place.
_unpack_prefix = struct.Struct("!I").unpack_from

#: How long a connection we closed may take to flush before we abort it.
CLOSE_FLUSH_SECONDS = 5.0

#: Partial-frame bytes released (frames completed, connections closed) before the
#: allocator is asked to return free memory to the OS, and the delay before it is.
TRIM_AFTER_BYTES = 8 * 1024 * 1024
TRIM_DELAY_SECONDS = 1.0


def _find_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None elsewhere (musl, macOS): then nothing is trimmed.

    Partial frames are 64 KiB buffers from the C heap; after a churn of
    thousands of them are freed, glibc keeps the pages unless the free space
    is at the top of the heap, so RSS stays at its peak although the memory
    is free (measured: 82 MiB after, 48 MiB after a trim, 47 MiB before).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_malloc_trim = _find_malloc_trim()


@implementer(IMessageContext)
class ConnectionContext:
    """What middleware may know of (and do to) a connection."""

    __slots__ = (
        "_conn",
        "clock",
        "connected_at",
        "connection_id",
        "frame_size",
        "peer_host",
        "peer_port",
        "received_at",
        "user_id",
    )

    def __init__(
        self, conn: IConnection, peer_host: str, peer_port: int, clock: IReactorTime
    ) -> None:
        # None once the connection is lost: a context kept by a plugin does not
        # keep the connection (and its buffers) alive.
        self._conn: IConnection | None = conn
        self.connection_id = next(_ids)
        self.user_id: int | None = None
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.clock = clock
        self.connected_at = self.received_at = clock.seconds()
        self.frame_size = 0

    def notify(self, text: str) -> None:
        if self._conn is not None:
            self._conn.send(SystemMessage(text))

    def disconnect(self, code: int, text: str) -> None:
        if self._conn is not None:
            self._conn.disconnect(code, text, reason="kicked")

    def __repr__(self) -> str:
        return f"<conn {self.connection_id} user={self.user_id} {self.peer_host}:{self.peer_port}>"


class IStreamTransport(ITCPTransport, IConsumer):
    """What GameProtocol uses of its transport: writes, closes and aborts, a producer slot."""


#: How often the factory looks for clients that do not read what is sent to them.
SWEEP_SECONDS = 0.1


def buffered_bytes(transport: object) -> int | None:
    """Bytes a Twisted ``FileDescriptor`` holds unsent; None for another kind of transport."""
    try:
        t: Any = transport
        n: int = len(t.dataBuffer) - t.offset + t._tempDataLen
        return n
    except AttributeError:
        return None


class _Periodic:
    """A sweep driven by one re-armed ``DelayedCall`` (``_call``); ``stop`` cancels it."""

    _call: IDelayedCall | None = None

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class OutputSweep(_Periodic):
    """Finds clients that do not read: a periodic look at the transports with output queued.

    Twisted keeps what a socket would not take in the transport's buffer. Instead of
    registering every connection as its transport's streaming producer (which made
    Twisted compare the buffer with its high-water mark on every write), this looks
    every ``SWEEP_SECONDS`` at the transports the reactor is waiting to write to
    (``IReactorFDSet.getWriters``: none at all when every client keeps up) and at the
    connections it paused. Over the transport's ``bufferSize`` (its high-water mark)
    the connection is paused as before: its input is no longer read and what is still
    sent to it counts against ``--max-outgoing-bytes`` (``GameProtocol.send_frame``);
    back under the mark it is resumed and the count starts over. A buffer already past
    the mark by more than the limit is dropped at once.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._fds: Any = reactor if IReactorFDSet.providedBy(reactor) else None
        self._call: IDelayedCall | None = None
        #: Connections paused by the sweep (or by a transport), with the transport that
        #: holds their bytes.
        self.paused: dict[GameProtocol, object] = {}

    def start(self) -> None:
        if self._call is None and self._fds is not None:
            self._call = self._reactor.callLater(SWEEP_SECONDS, self._tick)

    def _tick(self) -> None:
        self._call = None
        try:
            self.sweep()
        finally:
            self._call = self._reactor.callLater(SWEEP_SECONDS, self._tick)

    def sweep(self) -> None:
        for transport in self._fds.getWriters() if self._fds is not None else ():
            proto = getattr(transport, "protocol", None)
            while proto is not None and not isinstance(proto, GameProtocol):
                proto = getattr(proto, "wrappedProtocol", None)  # TLS, PROXY protocol
            if proto is not None and proto not in self.paused:
                self.check(proto, transport)
        for proto, transport in list(self.paused.items()):
            self.check(proto, transport)

    def check(self, proto: GameProtocol, transport: object) -> None:
        if proto.closing:
            self.paused.pop(proto, None)
            return
        held = buffered_bytes(transport)
        if held is None:
            return
        mark: int = getattr(transport, "bufferSize", 0)
        if held > mark:
            if held - mark > proto._max_backlog:
                proto._too_slow()
            elif not proto.paused:
                self.paused[proto] = transport
                proto.pauseProducing()
        elif proto.paused:
            proto.resumeProducing()


#: How often idle connections are looked for: a connection is closed between
#: ``idle_timeout`` and ``idle_timeout + IDLE_SWEEP_SECONDS`` after its last frame.
IDLE_SWEEP_SECONDS = 1.0


class IdleWatched(Protocol):
    """What ``IdleSweep`` needs of a connection (``GameProtocol``, ``WebSocketConnection``)."""

    closing: bool

    def check_idle(self, now: float) -> None: ...


class IdleSweep(_Periodic):
    """The idle time-out of every connection of a factory, one timer for all.

    A timer per connection (a ``DelayedCall`` re-armed as frames arrive) cost about
    0.5 KiB of each idle connection; this looks at every watched connection's
    ``last_seen`` once a second instead, while any is watched.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.conns: set[IdleWatched] = set()
        self._call: IDelayedCall | None = None
        #: Seconds between looks (WebSocket connections, which ping at half the
        #: time-out, look more often under a short time-out).
        self.interval = IDLE_SWEEP_SECONDS

    def watch(self, conn: IdleWatched) -> None:
        self.conns.add(conn)
        if self._call is None:
            self._call = self._clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = None
        now = self._clock.seconds()
        for conn in list(self.conns):
            if conn.closing:
                self.conns.discard(conn)
            else:
                conn.check_idle(now)
        if self.conns:
            self._call = self._clock.callLater(self.interval, self._tick)


class PartialFrames:
    """The server-wide budget for bytes of partly received frames.

    A client that sends most of a large frame and then stalls (or many that do)
    would otherwise hold up to ``--max-frame-bytes`` each for as long as the
    idle time-out allows. Each connection reports what it holds after a read
    that leaves bytes buffered; past ``limit()`` the connections whose partial
    frame is oldest are closed with Error 503 until the total fits. A read
    that leaves nothing buffered (the usual case: whole frames) costs one
    truthiness test and never comes here.
    """

    def __init__(
        self,
        limit: Callable[[], int],
        clock: IReactorTime | None = None,
        trim: Callable[[], object] | None = _malloc_trim,
    ) -> None:
        self.limit = limit
        self.total = 0
        self.closed = 0  # connections closed to keep within the budget
        self._episode: int | None = None  # ``closed`` when the current episode began
        # Bytes released since the allocator was last trimmed; past TRIM_AFTER_BYTES
        # a trim runs TRIM_DELAY_SECONDS later (once, however many follow).
        self._clock = clock
        self._trim = trim if clock is not None else None
        self._released = 0
        self._trim_call: IDelayedCall | None = None
        self.trims = 0
        # Holders in the order their current partial frame began (dicts keep
        # insertion order): the first is the oldest.
        self._holders: dict[GameProtocol, None] = {}

    def update(self, conn: GameProtocol, held: int) -> None:
        before = conn.partial_bytes
        conn.partial_bytes = held
        self.total += held - before
        if held < before:
            if self._trim is not None:
                self._released += before - held
                if self._released >= TRIM_AFTER_BYTES and self._trim_call is None:
                    assert self._clock is not None
                    self._trim_call = self._clock.callLater(TRIM_DELAY_SECONDS, self._trim_now)
            if self._episode is not None and self.total <= self.limit() // 2:
                _log.info(
                    "partial frames back under --max-partial-bytes: {n} connections were closed",
                    n=self.closed - self._episode,
                )
                self._episode = None
        holders = self._holders
        if not held:
            holders.pop(conn, None)
            return
        if held < before or not before:
            # A new partial frame (the last one completed): it goes to the back.
            holders.pop(conn, None)
            holders[conn] = None
        if self.total > self.limit():
            self._evict()

    def _trim_now(self) -> None:
        self._trim_call = None
        self._released = 0
        self.trims += 1
        assert self._trim is not None
        self._trim()

    def stop(self) -> None:
        """Cancel a pending trim (the listener is going away)."""
        if self._trim_call is not None and self._trim_call.active():
            self._trim_call.cancel()
        self._trim_call = None

    def _evict(self) -> None:
        limit = self.limit()
        while self.total > limit and self._holders:
            oldest = next(iter(self._holders))
            if self._episode is None:  # one line per episode, not one per connection
                self._episode = self.closed
                _log.warn(
                    "partial frames hold {total} bytes, over --max-partial-bytes {limit}: "
                    "closing the oldest with Error 503 (first {ctx}, {held} bytes)",
                    ctx=oldest.ctx,
                    held=oldest.partial_bytes,
                    total=self.total,
                    limit=limit,
                )
            self.closed += 1
            oldest.drop_partial_frame()
            self.update(oldest, 0)


@implementer(IConnection, IPushProducer)
class GameProtocol(ConnectionBase, Int32StringReceiver):
    """A client on a TCP stream of 4-byte length-prefixed frames."""

    transport_name = "tcp"

    # Set by makeConnection / connectionMade before any other method runs.
    transport: IStreamTransport
    ctx: ConnectionContext

    #: Bytes of a partial frame this connection holds, as last told to ``partials``.
    partial_bytes = 0

    def __init__(
        self,
        handler: IConnectionHandler,
        clock: IReactorTime,
        partials: PartialFrames | None = None,
    ) -> None:
        self.handler = handler
        self.clock = clock
        self._partials = partials or PartialFrames(lambda: handler.settings.max_partial_bytes)
        # The settings when the connection opened: its frame, backlog and idle limits
        # (a reload applies to connections opened after it). One reference, not a copy
        # of each limit.
        self._settings = settings = handler.settings
        self.MAX_LENGTH = settings.max_frame_bytes
        # Every attribute is set here, in one order: instances then share their dict's
        # keys (Python's split tables), which a class-level default assigned later on
        # some connections would undo (measured: +0.25 KiB RSS per idle connection).
        self._init_state()
        self._backlog = 0  # bytes written while the transport's buffer was over its high mark
        #: Frames queued this reactor turn for the factory's ``TurnWriter`` (None: none).
        self._out: list[bytes] | None = None
        self._turn: TurnWriter | None = None  # set at connectionMade when the socket allows
        self._raw: Any = None  # the TCP connection the TurnWriter sends on
        self._abort_call: IDelayedCall | None = None
        # Per-connection byte counts (folded into the router's totals on close):
        # an attribute add per write is cheaper than a locked Prometheus counter.
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def _max_backlog(self) -> int:
        return self._settings.max_outgoing_bytes

    @property
    def _idle_timeout(self) -> float:
        return self._settings.idle_timeout

    # -- connection life -------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        try:
            transport.setTcpNoDelay(True)  # see docs/performance.md: Nagle costs ~40 ms at p99
        except (AttributeError, OSError):
            pass  # not TCP (tests, UNIX sockets)
        peer = transport.getPeer()
        self.ctx = ConnectionContext(
            self, getattr(peer, "host", "unknown"), getattr(peer, "port", 0), self.clock
        )
        self.last_seen = self.ctx.connected_at
        # Slow clients are found by the factory's sweep (``OutputSweep``), not by
        # registering as the transport's producer: that made Twisted check the
        # buffer on every write (7.4% of the reactor thread in fan-out).
        factory = self.factory
        if isinstance(factory, GameFactory):
            self._raw = socket_transport(transport)
            if self._raw is not None:
                self._turn = factory.turn
        self._route_output()
        self.handler.connection_made(self)
        if not self.closing and self._idle_timeout > 0 and isinstance(factory, GameFactory):
            factory.idle.watch(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        call = self._abort_call
        if call is not None:
            if call.active():
                call.cancel()
            self._abort_call = None
        self._unprocessed = b""
        self._out = None  # the socket is gone: what was queued this turn goes with it
        factory = self.factory
        if isinstance(factory, GameFactory):
            factory.sweep.paused.pop(self, None)
            factory.idle.conns.discard(self)
        if self.partial_bytes:
            self._partials.update(self, 0)
        self.handler.connection_lost(self, self.close_reason)
        # Break the reference cycles, so that refcounting frees a closed connection
        # at once (with its buffers), not the cyclic GC some time later: the
        # context's back-reference and a ``send_frame`` bound to this object (or
        # to the transport) go; a context a plugin still holds is inert.
        self.ctx._conn = None
        self.send_frame = self._drop  # type: ignore[method-assign]
        if isinstance(factory, GameFactory):
            factory.connection_closed()

    def check_idle(self, now: float) -> None:
        """Close with a notice after ``idle_timeout`` seconds without a frame (``IdleSweep``)."""
        timeout = self._idle_timeout
        if not self.closing and now - self.last_seen >= timeout:
            self.send(SystemMessage(f"closing: no frame for {timeout:g} seconds"))
            self.close("idle")

    # -- input ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.closing:
            return  # we are closing this connection: its input is no longer read
        # Int32StringReceiver.dataReceived's loop, less its check for the legacy ``recvd``
        # attribute after every frame: that check reads ``self.__dict__``, which makes
        # CPython build a dict object for the instance (64 bytes per connection that
        # ever sent a frame, and a dict lookup per frame). The length prefix is read in
        # place (``unpack_from``) instead of from a slice.
        alldata = self._unprocessed + data
        self._unprocessed = alldata
        offset = 0
        end = len(alldata)
        limit = self.MAX_LENGTH
        while end - offset >= 4 and not self.paused:
            (length,) = _unpack_prefix(alldata, offset)
            if length > limit:
                self.lengthLimitExceeded(length)  # it drops what is buffered
                break
            stop = offset + 4 + length
            if stop > end:
                self._unprocessed = alldata[offset:]
                break
            frame = alldata[offset + 4 : stop]
            offset = stop
            self.stringReceived(frame)
        else:
            self._unprocessed = alldata[offset:]
        if self._unprocessed or self.partial_bytes:
            self._partials.update(self, len(self._unprocessed))

    def drop_partial_frame(self) -> None:
        """Closed to keep within --max-partial-bytes: Error 503, the partial frame dropped."""
        self.disconnect(
            503, "server busy: too many partly received frames, send it again", reason="partial"
        )
        self._unprocessed = b""

    def stringReceived(self, data: bytes) -> None:
        if self.closing:
            return  # frames pipelined behind a fatal one are not processed
        self.last_seen = now = self.clock.seconds()
        ctx = self.ctx
        ctx.frame_size = len(data)
        ctx.received_at = now  # the frame's one clock read, for every plugin
        self.handler.frame_received(self, data)

    def lengthLimitExceeded(self, length: int) -> None:
        self.handler.frame_refused(self, "oversize", length)
        self.disconnect(
            413,
            f"frame of {length} bytes exceeds the limit of {self.MAX_LENGTH} bytes",
            reason="oversize",
        )
        self._unprocessed = b""  # the stream cannot be trusted past this point

    # -- output ---------------------------------------------------------------------

    # ``send_frame`` is what rooms call once per member per broadcast, so it is
    # rebound to the cheapest correct writer for the connection's state
    # (``_route_output``): while the client keeps up, ``_queue_frame`` (the factory's
    # ``TurnWriter`` sends the turn's frames on the socket at once: gamed.turnwrite)
    # or the transport's own ``write`` (TLS, PROXY, tests); a counting writer while
    # its buffer is over the high-water mark; a no-op once we are closing. The method
    # below is the general version, used before the connection is made.

    def send_frame(self, frame: bytes) -> None:
        if self.closing:
            return
        if self.paused:
            self._write_while_paused(frame)
        else:
            self.transport.write(frame)

    def _write_while_paused(self, frame: bytes) -> None:
        self._backlog += len(frame)
        if self._backlog > self._max_backlog:
            self._too_slow()
            return
        self.transport.write(frame)

    @staticmethod
    def _drop(frame: bytes) -> None:
        pass

    def _route_output(self) -> None:
        self.flush_output()
        if self.closing:
            self.send_frame = self._drop  # type: ignore[method-assign]
        elif self.paused:
            self.send_frame = self._write_while_paused  # type: ignore[method-assign]
        elif self._turn is not None:
            self.send_frame = self._queue_frame  # type: ignore[method-assign]
        else:
            # The deliberate rebinding of a method to the transport's own writer.
            self.send_frame = self.transport.write  # type: ignore[method-assign,assignment]

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._route_output()

    def resumeProducing(self) -> None:
        factory = self.factory
        if isinstance(factory, GameFactory):
            factory.sweep.paused.pop(self, None)
        self._backlog = 0
        if not self.closing:
            super().resumeProducing()
        self._route_output()

    # -- closing ----------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Close after flushing; abort if the peer does not read it in time."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self._route_output()
        self.transport.loseConnection()
        self._abort_call = self.clock.callLater(CLOSE_FLUSH_SECONDS, self.abort)


class GameFactory(Factory):
    """Builds a GameProtocol per connection, all reporting to one handler (the Router).

    It also keeps the process from running out of file descriptors: at start it
    raises the open-file limit as far as ``--max-connections`` needs (and warns
    if it cannot), and it never holds more connections (refused ones still
    flushing their Error 503 included) than the limit minus ``FD_HEADROOM``:
    past that a new connection is closed at accept, without a reply, and one
    line is logged when such an episode starts and one when it ends. So
    ``accept`` does not fail with EMFILE and the HTTP port keeps answering.
    """

    noisy = False  # no "Starting factory" lines per listener

    def __init__(
        self, handler: IConnectionHandler, clock: IReactorTime, fd_limit: FdLimit | None = None
    ) -> None:
        self.handler = handler
        self.clock = clock
        # One budget for every connection of this listener; the limit is read live
        # (a reload changes it for the next check).
        self.partials = PartialFrames(lambda: handler.settings.max_partial_bytes, clock)
        self.sweep = OutputSweep(clock)
        self.idle = IdleSweep(clock)
        #: Sends each connection's frames of a reactor turn on its socket in one go.
        self.turn = TurnWriter(clock)
        self.fd_limit = fd_limit  # None: read (and raised) when the listener starts
        self.open = 0  # protocols built and not yet lost
        self.fd_refused = 0  # connections closed at accept to keep descriptors free
        self._fd_episode: int | None = None  # fd_refused when the current episode began

    def startFactory(self) -> None:
        if self.fd_limit is None:
            max_connections = self.handler.settings.max_connections
            self.fd_limit = raise_nofile(max_connections)
            if self.fd_limit.short:
                _log.warn("{warning}", warning=self.fd_limit.warning(max_connections))
            elif self.fd_limit.raised_from is not None:
                _log.info(
                    "open-file limit raised from {old} to {new}",
                    old=self.fd_limit.raised_from,
                    new=self.fd_limit.soft,
                )
        self.sweep.start()

    def stopFactory(self) -> None:
        self.partials.stop()
        self.sweep.stop()
        self.idle.stop()
        self.turn.stop()

    def connection_closed(self) -> None:
        self.open -= 1
        if self._fd_episode is not None and self.fd_limit is not None:
            if self.open <= self.fd_limit.connection_cap * 9 // 10:
                _log.info(
                    "accepting game connections again: {n} were closed at accept "
                    "for want of file descriptors",
                    n=self.fd_refused - self._fd_episode,
                )
                self._fd_episode = None

    def buildProtocol(self, addr: Any) -> GameProtocol | None:
        limit = self.fd_limit
        if limit is not None and self.open >= limit.connection_cap:
            self.fd_refused += 1
            if self._fd_episode is None:
                self._fd_episode = self.fd_refused - 1
                _log.warn(
                    "out of file descriptors for game clients: {open} open, open-file limit "
                    "{soft}; new game connections are closed at accept until some close "
                    "({headroom} kept for the HTTP port and files)",
                    open=self.open,
                    soft=limit.soft,
                    headroom=FD_HEADROOM,
                )
            return None  # Twisted closes the socket at once: the descriptor is free again
        self.open += 1
        p = GameProtocol(self.handler, self.clock, self.partials)
        p.factory = self
        return p
