"""One ``send`` per connection per reactor turn, straight to the socket.

Twisted's TCP transport buffers every ``write`` and registers the socket for
writability (``epoll_ctl``); the reactor's next poll reports it writable, ``doWrite``
sends, and the socket is unregistered again (a second ``epoll_ctl``). For a game
server that writes one small frame to each of many connections per turn, that is
two system calls, a poll event and several Python calls per delivery on top of the
``send``, and it is most of what fan-out costs above decoding.

``TurnWriter`` keeps the frames a connection is sent during one turn of the reactor
(its ``send_frame``, TCP or WebSocket, appends to a list: ``ConnectionBase._queue_frame``) and, once the turn's events are
handled (a ``callLater(0)``, which the reactor runs before its next poll), writes
each connection's frames with one ``socket.send``. What the socket does not take,
and everything while Twisted still holds unsent bytes for that transport, goes to
the transport's own ``write``: from there on Twisted buffers, orders and reports
errors exactly as before, and the slow-client sweep (``OutputSweep``) sees those
bytes as it always did. The bytes and their order on the wire are the same; they
leave a poll earlier.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

_log = Logger()


def socket_transport(transport: object) -> Any:
    """The Twisted TCP connection a ``TurnWriter`` may send on for ``transport``, or None.

    Twisted's own TCP connection, whose buffers (``dataBuffer``, ``_tempDataLen``) say
    when it holds nothing unsent; behind the PROXY protocol wrapper (whose ``write``
    hands the bytes straight to it), the connection under it. A TLS transport (it
    encrypts in ``write``) or a test's transport: None, written through ``write``.
    """
    if isinstance(transport, HAProxyProtocolWrapper):
        transport = transport.transport
    if isinstance(transport, Connection) and getattr(transport, "socket", None) is not None:
        return transport
    return None


class TurnWriter:
    """Connections with frames queued this turn, written when the turn's events are done."""

    __slots__ = ("_clock", "call", "dirty", "fallbacks", "sends")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: The pending flush (a ``callLater(0)``), or None when nothing is queued.
        self.call: IDelayedCall | None = None
        #: Connections that queued a frame this turn (each once per turn; one flushed
        #: early, by ``ConnectionBase.flush_output``, is skipped).
        self.dirty: list[Any] = []
        #: Sends made on sockets, and writes handed to Twisted's buffer instead (the
        #: socket was full, failing, or Twisted still held bytes): exported as
        #: gamed_transport_sends_total and gamed_transport_buffered_writes_total.
        self.sends = 0
        self.fallbacks = 0

    def schedule(self) -> None:
        self.call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self.call = None
        dirty = self.dirty
        self.dirty = []
        sends = fallbacks = 0
        for conn in dirty:
            out = conn._out
            if out is None:
                continue  # flushed already (its output was rerouted)
            conn._out = None
            data = out[0] if len(out) == 1 else b"".join(out)
            t = conn._raw
            try:
                if t.dataBuffer or t._tempDataLen:
                    # Twisted still holds bytes for this socket: ours go behind them.
                    t.write(data)
                    fallbacks += 1
                    continue
                try:
                    sent = t.socket.send(data)
                except OSError:
                    # Full (EAGAIN), or failing: Twisted buffers it and, on its own
                    # write, finds the error and closes the connection as usual.
                    t.write(data)
                    fallbacks += 1
                    continue
                sends += 1
                if sent < len(data):
                    t.write(data[sent:])
                    fallbacks += 1
            except Exception:
                _log.failure("writing to {conn}", conn=conn)
        self.sends += sends
        self.fallbacks += fallbacks

    def stop(self) -> None:
        """The listener is going away: write what is queued now, leave nothing scheduled."""
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.flush()
