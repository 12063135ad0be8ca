"""Fakes shared by the unit tests. Each is checked against its interface with verifyObject."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from gamed import codec
from gamed.interfaces import (
    IConnection,
    IConnectionHandler,
    IGameService,
    IMessageContext,
    IServerControl,
)
from gamed.messages import Error, SystemMessage

# -- IConnection / IServerControl fakes (router and plugin tests) ---------------------------

_fake_connection_ids = itertools.count(1)


@implementer(IMessageContext)
class FakeConnectionContext:
    """The IMessageContext of a FakeConnection."""

    def __init__(
        self, conn: FakeConnection, peer_host: str, peer_port: int, clock: IReactorTime
    ) -> None:
        self._conn = conn
        self.connection_id = next(_fake_connection_ids)
        self.user_id: int | None = None
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.clock = clock
        self.connected_at = clock.seconds()
        self.frame_size = 0

    def notify(self, text: str) -> None:
        self._conn.send(SystemMessage(text))

    def disconnect(self, code: int, text: str) -> None:
        self._conn.disconnect(code, text, reason="kicked")


@implementer(IConnection)
class FakeConnection:
    """An IConnection with no transport: records every frame written and how it was closed.

    It keeps the contract of a real connection that the router relies on:
    output after ``close`` is dropped, input after ``close`` is not read,
    ``send_error`` is counted by the handler. ``open``, ``receive`` and
    ``lose`` play the transport's part.
    """

    def __init__(
        self,
        handler: IConnectionHandler | None = None,
        clock: IReactorTime | None = None,
        peer_host: str = "127.0.0.1",
        peer_port: int = 40000,
    ) -> None:
        self.handler = handler
        self.ctx = FakeConnectionContext(self, peer_host, peer_port, clock or Clock())
        self.user_id: int | None = None
        self.nickname = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames: list[bytes] = []  # every length-prefixed frame written, in order
        self.closing = False
        self.close_reason = "closed"
        self.aborted = False

    # -- IConnection ------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        if not self.closing:
            self.frames.append(frame)

    def send(self, message: object) -> None:
        frame = codec.frame(message)
        self.bytes_out += len(frame)
        self.send_frame(frame)

    def send_error(self, code: int, text: str) -> None:
        if self.handler is not None:
            self.handler.error_sent(code)
        self.send(Error(code, text))

    def disconnect(self, code: int, text: str, reason: str) -> None:
        if self.closing:
            return
        self.send_error(code, text)
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    # -- the transport's part -----------------------------------------------------------

    def open(self) -> FakeConnection:
        """Report the connection to its handler (as a transport does on accept)."""
        assert self.handler is not None
        self.handler.connection_made(self)
        return self

    def receive(self, payload: bytes) -> None:
        """One frame payload from the peer; ignored once closing, as a real connection does."""
        assert self.handler is not None
        self.bytes_in += len(payload) + 4
        if self.closing:
            return
        self.ctx.frame_size = len(payload)
        self.handler.frame_received(self, payload)

    def lose(self) -> None:
        """The peer is gone: tell the handler, with the reason given to ``close``."""
        assert self.handler is not None
        self.closing = True
        self.handler.connection_lost(self, self.close_reason)

    # -- reading what was written -------------------------------------------------------

    def messages(self) -> list[Any]:
        """Decode and forget the frames written so far."""
        out = []
        for frame in self.frames:
            (n,) = struct.unpack(">I", frame[:4])
            assert n == len(frame) - 4, "a frame must be written whole"
            out.append(orjson.loads(frame[4:]))
        self.frames.clear()
        return out


@implementer(IServerControl)
class FakeServerControl:
    """An IServerControl that records what a plugin asks of the server.

    ``connections`` are open connections (only counted), ``sessions`` the
    connected user ids, ``games`` an optional IGameService that answers
    ``game_status``.
    """

    def __init__(self) -> None:
        self.connections: set[object] = set()
        self.sessions: list[int] = []
        self.games: IGameService | None = None
        self.kicked: list[tuple[Any, ...]] = []
        self.removed: list[int] = []
        self.authenticator: Any = None
        self.timer: Any = "unset"
        self.reloads = 0

    def connected_user_ids(self) -> list[int]:
        return list(self.sessions)

    def kick_user(self, user_id: int, code: int, text: str) -> bool:
        self.kicked.append(("user", user_id, code))
        return user_id in self.sessions

    def kick_host(self, host: str, code: int, text: str) -> int:
        self.kicked.append(("host", host, code))
        return 0

    def remove_from_room(self, user_id: int) -> bool:
        self.removed.append(user_id)
        return False

    def set_authenticator(self, authenticate: Any) -> None:
        self.authenticator = authenticate

    def set_pipeline_timer(self, observer: Any) -> None:
        self.timer = observer

    def reload_config(self) -> Any:
        self.reloads += 1
        return {"reloaded": []}

    def connection_count(self) -> int:
        return len(self.connections)

    def game_status(self, room_id: int) -> str | None:
        return None if self.games is None else self.games.game_state(room_id)
