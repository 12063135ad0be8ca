"""One load-generator connection: an ``asyncio.Protocol`` (not streams, for speed).

The protocol keeps the receive path cheap (see ``wire.FrameReader``) and offers a
small awaitable API for the handshake steps (``expect``). Scenarios subclass it and
override ``on_echo`` / ``on_message``; every wait is bounded by a timeout so a
silent or broken server turns into a counted failure, never a hang.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from typing import Any, cast

from gamed.bench import wire, wsframe
from gamed.bench.stats import Counters


class ServerError(Exception):
    """The server answered a step with ``Error{code}``."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(f"Error {code}: {message}")
        self.code = code
        self.message = message


class Closed(ConnectionError):
    """The connection went away while a step was waiting for its answer."""


class BenchClient(asyncio.Protocol):
    """A gamed client whose every received frame is counted in shared ``Counters``."""

    def __init__(self, user_id: int, counters: Counters, *, track_echoes: bool = False) -> None:
        self.user_id = user_id
        self.counters = counters
        self.nickname = f"u{user_id}"
        self.room_id: int | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = wire.FrameReader(wire.own_marker(user_id) if track_echoes else None)
        #: WebSocket mode (``use_websocket``): the handshake's outcome, the mask key.
        self.ws_open: asyncio.Future[None] | None = None
        self.ws_close_code: int | None = None
        self._ws_key = b""
        self._ws_request = self._ws_accept = self._ws_head = b""
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: True once we started closing, so the loss is not counted as a disconnect.
        self.closing = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack the same
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.ws_open is not None:
            self.transport.write(self._ws_request)

    def use_websocket(self, host: str, port: int, path: str = "/ws") -> None:
        """Speak WebSocket (gamed's ``/ws``): same messages, text frames instead of prefixes."""
        marker = self.reader._marker
        self.reader = wsframe.WsFrameReader(marker)
        self._ws_key = os.urandom(4)
        self._ws_request, self._ws_accept = wsframe.handshake_request(host, port, path)
        self.ws_open = asyncio.get_running_loop().create_future()

    def _ws_handshake(self, data: bytes) -> bytes | None:
        """Collect the 101 response; the bytes after it, or None while it is incomplete."""
        assert self.ws_open is not None
        head = self._ws_head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._ws_head = head
            return None
        self._ws_head = b""
        try:
            wsframe.check_handshake_response(head[:end], self._ws_accept)
        except wire.WireError as e:
            self.ws_open.set_exception(e)
            self.abort()
            return None
        self.ws_open.set_result(None)
        return head[end + 4 :]

    def _ws_control(self) -> None:
        control = self.reader.control  # type: ignore[attr-defined]
        for opcode, payload in control:
            if opcode == wsframe.PING:
                self._write(wsframe.encode(wsframe.PONG, payload, self._ws_key))
            elif opcode == wsframe.CLOSE:
                self.ws_close_code, _ = wsframe.parse_close(payload)
                self._write(wsframe.encode(wsframe.CLOSE, payload[:2], self._ws_key))
        control.clear()

    def data_received(self, data: bytes) -> None:
        if self.ws_open is not None and not self.ws_open.done():
            rest = self._ws_handshake(data)
            if not rest:
                return
            data = rest
        try:
            batch = self.reader.feed(data)
        except wire.WireError as e:
            self.counters.error("bad_frame")
            self._fail_waiters(Closed(str(e)))
            self.abort()
            return
        if batch.chats:
            self.counters.deliveries += batch.chats
            if batch.echoes:
                for seq, sent_ns in batch.echoes:
                    self.on_echo(seq, sent_ns)
        for payload in batch.others:
            try:
                tag, body = wire.decode(payload)
            except wire.WireError:
                self.counters.error("bad_frame")
                continue
            if tag == "Error":
                code = body.get("code") if isinstance(body, dict) else None
                msg = body.get("message", "") if isinstance(body, dict) else ""
                self.counters.error(code)
                if self._waiters:
                    self._fail_waiters(ServerError(code, msg))
                self.on_error(code, msg)
                continue
            fut = self._waiters.pop(tag, None)
            if fut is not None and not fut.done():
                fut.set_result(body)
            self.on_message(tag, body)
        if self.ws_open is not None and self.reader.control:  # type: ignore[attr-defined]
            self._ws_control()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.counters.disconnects += 1
        self._fail_waiters(Closed(f"connection lost: {exc}" if exc else "connection closed"))
        if self.ws_open is not None and not self.ws_open.done():
            self.ws_open.set_exception(Closed("connection lost during the WebSocket handshake"))
            self.ws_open.exception()
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_lost()

    # -- hooks for scenarios ---------------------------------------------------------

    def on_echo(self, seq: int, sent_ns: int) -> None:
        """One of this client's own probe chats came back."""

    def on_message(self, tag: str, body: Any) -> None:
        """Any non-chat frame other than ``Error``."""

    def on_error(self, code: Any, message: str) -> None:
        """An ``Error`` frame (already counted)."""

    def on_lost(self) -> None:
        """The connection is gone (after waiters were failed)."""

    # -- sending and waiting ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send length-prefixed frames (``wire``'s); as text messages in WebSocket mode."""
        if self.ws_open is not None:
            data = wsframe.text_frames(data, self._ws_key)
        self._write(data)

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def expect(self, tag: str) -> asyncio.Future[Any]:
        """A future for the next frame with ``tag`` (fails on ``Error`` or close).

        Register it *before* sending the request so a fast answer is not missed.
        """
        fut = self._waiters.get(tag)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            if self.closed.done():
                fut.set_exception(Closed("connection closed"))
            else:
                self._waiters[tag] = fut
        return fut

    async def request(self, data: bytes, tag: str, timeout: float) -> Any:
        """Send ``data`` and wait (bounded) for the reply ``tag``; returns its body."""
        fut = self.expect(tag)
        self.send(data)
        return await asyncio.wait_for(fut, timeout)

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be awaiting it any more

    async def handshake(self, timeout: float, room_id: int | None = None) -> None:
        """``Connect`` -> ``ConnectionAck``, then ``RoomJoin`` -> ``RoomJoinSuccess``."""
        await self.request(wire.connect(self.user_id), "ConnectionAck", timeout)
        if room_id is not None:
            await self.request(
                wire.room_join(self.user_id, room_id, self.nickname), "RoomJoinSuccess", timeout
            )
            self.room_id = room_id

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            if self.ws_open is not None and self.ws_open.done():
                payload = wsframe.close_payload(1000)
                self._write(wsframe.encode(wsframe.CLOSE, payload, self._ws_key))
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


async def open_client(
    client: BenchClient, host: str, port: int, timeout: float, transport: str = "tcp"
) -> asyncio.Transport:
    """Connect ``client`` to ``host:port`` within ``timeout`` seconds.

    ``transport`` ``ws``: a WebSocket to ``/ws`` on that port, handshake included.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    if transport == "ws":
        client.use_websocket(host, port)
    tcp, _ = await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout)
    if client.ws_open is not None:
        await asyncio.wait_for(client.ws_open, max(0.001, timeout - (loop.time() - started)))
    return tcp


async def close_all(clients: Sequence[BenchClient], timeout: float = 5.0) -> None:
    """Close every connection and wait (bounded) until the loop saw them go."""
    for c in clients:
        c.close()
    pending = [c.closed for c in clients if c.transport is not None and not c.closed.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=timeout)
        for c in clients:
            if c.transport is not None and not c.closed.done():
                c.abort()
        if still:
            await asyncio.wait(still, timeout=1.0)
