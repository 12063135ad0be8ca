"""What the TCP and WebSocket connections share: sending, and the end of a connection.

``ConnectionBase`` is a mixin for ``GameProtocol`` (gamed.protocol) and
``WebSocketConnection`` (gamed.websocket). Each keeps its own ``send_frame``
rebinding (``_route_output``), ``close`` and producer calls; the methods here only
call those, so nothing on the write path gains a call.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger

from gamed import codec
from gamed.interfaces import IConnectionHandler
from gamed.messages import Error
from gamed.turnwrite import TurnWriter


class _Connection(Protocol):
    """What ``ConnectionBase``'s methods use of the class they are mixed into."""

    closing: bool
    close_reason: str
    bytes_out: int

    @property
    def handler(self) -> IConnectionHandler: ...

    @property
    def ctx(self) -> object: ...

    @property
    def transport(self) -> Any: ...

    @property
    def _max_backlog(self) -> int: ...

    def send_frame(self, frame: bytes) -> None: ...

    def send(self, message: object) -> None: ...

    def send_error(self, code: int, text: str) -> None: ...

    def close(self, reason: str) -> None: ...

    def abort(self) -> None: ...

    def _route_output(self) -> None: ...


class _Queued(Protocol):
    """What the turn's output uses of a connection."""

    _out: list[bytes] | None
    _turn: TurnWriter | None

    @property
    def transport(self) -> Any: ...


class ConnectionBase:
    """``IConnection``'s send, send_error, disconnect and abort, and the slow-client drop."""

    _out: list[bytes] | None
    _turn: TurnWriter | None

    def _init_state(self) -> None:
        """The state every connection starts with; called at one place of ``__init__``.

        Each class sets its attributes in one order, so that its instances share
        their dict's keys (see ``GameProtocol.__init__``).
        """
        self.user_id: int | None = None
        self.nickname = ""
        self.closing = False
        self.close_reason = "closed"
        self.last_seen = 0.0

    # -- the turn's output (gamed.turnwrite) ------------------------------------------

    def _queue_frame(self: _Queued, frame: bytes) -> None:
        """Queue ``frame`` for this turn's one send (the connection has a ``TurnWriter``)."""
        out = self._out
        if out is not None:
            out.append(frame)
            return
        self._out = [frame]
        turn = self._turn
        assert turn is not None  # bound only with a TurnWriter (``_route_output``)
        turn.dirty.append(self)
        if turn.call is None:
            turn.schedule()

    def flush_output(self: _Queued) -> None:
        """Hand the bytes queued this turn to the transport now (before the writer
        changes, or a close): they stay ahead of whatever is written next."""
        out = self._out
        if out is not None:
            self._out = None
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def send(self: _Connection, message: object) -> None:
        frame = codec.frame(message)
        self.bytes_out += len(frame)
        self.send_frame(frame)

    def send_error(self: _Connection, code: int, text: str) -> None:
        self.handler.error_sent(code)
        self.send(Error(code, text))

    def stopProducing(self) -> None:
        pass  # the transport is going away; connectionLost does the clean-up

    def _too_slow(self: _Connection) -> None:
        # Logged under the connection's own module (gamed.protocol, gamed.websocket).
        Logger(namespace=type(self).__module__).info(
            "dropping {ctx}: more than {limit} bytes queued that it does not read",
            ctx=self.ctx,
            limit=self._max_backlog,
        )
        self.close_reason = "slow"
        self.abort()

    def disconnect(self: _Connection, code: int, text: str, reason: str) -> None:
        """Send Error{code, text}, then ``close(reason)``: once it is flushed on TCP, with
        the reason's close code on a WebSocket."""
        if self.closing:
            return
        self.send_error(code, text)
        self.close(reason)

    def abort(self: _Connection) -> None:
        """Drop the connection now: queued output is lost, nothing more is written."""
        self.closing = True
        self._route_output()
        self.transport.abortConnection()
