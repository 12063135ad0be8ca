"""WebSocketConnection (+ the WebSocket Site + Router) over StringTransport and Clock.

The handshake goes through the real twisted.web Site and autobahn's
WebSocketResource (which takes the transport over), frames are built by the
client half in gamed.bench.wsframe: no sockets, no sleeps.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import getChildForRequest
from twisted.web.test._util import _render
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from gamed import codec
from gamed import messages as m
from gamed.bench import wsframe
from gamed.interfaces import IConnection
from gamed.protocol import CLOSE_FLUSH_SECONDS
from gamed.router import DRAIN_FLUSH_SECONDS
from gamed.telemetry import TransportCollector
from gamed.websocket import (
    CLOSE_CODES,
    WebSocketConnection,
    forwarded_chain,
    origin_allowed,
    real_peer,
    text_message,
)
from gamed.ws_site import make_ws_site
from tests.unit.fakes import Harness

KEY = b"\x01\x02\x03\x04"


class WsHarness(Harness):
    """The TCP harness (router, rooms, clock) plus the WebSocket port's Site."""

    def __init__(self, static_dir: Path | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.site = make_ws_site(self.router, self.clock, static_dir or Path("/nonexistent"))
        self.ws_factory = self.site.ws_factory

    def ws(self, **kw: Any) -> WsClient:
        self._port += 1
        return WsClient(self, self._port, **kw)


class WsClient:
    """A browser-like client on a StringTransport: handshake through the Site, then frames."""

    def __init__(
        self,
        h: WsHarness,
        port: int,
        origin: str | None = None,
        host: str = "127.0.0.1:7080",
        headers: tuple[tuple[str, str], ...] = (),
        peer: str = "127.0.0.1",
    ) -> None:
        self.h = h
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", peer, port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7080),
        )
        channel = h.site.buildProtocol(self.transport.getPeer())
        self.transport.protocol = channel  # type: ignore[attr-defined]  # as a TCP transport has
        channel.makeConnection(self.transport)
        request, accept = wsframe.handshake_request("127.0.0.1", 7080, "/ws", origin)
        request = request.replace(b"Host: 127.0.0.1:7080", b"Host: " + host.encode())
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers)
        channel.dataReceived(request[:-2] + extra + b"\r\n")
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.proto: WebSocketConnection | None = None
        if self.status == 101:
            wsframe.check_handshake_response(head, accept)
            self.proto = self.transport.protocol  # type: ignore[attr-defined]
            assert isinstance(self.proto, WebSocketConnection)
        self.transport.clear()
        self._pending = rest
        self.close_code: int | None = None
        self.close_reason = ""
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []

    @property
    def conn(self) -> WebSocketConnection:
        assert self.proto is not None, f"handshake refused with {self.status}"
        return self.proto

    def feed(self, data: bytes) -> None:
        self.conn.dataReceived(data)

    def send(self, *objs: object) -> None:
        self.feed(b"".join(wsframe.encode(wsframe.TEXT, dump(o), KEY) for o in objs))

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame the server wrote since the last call: (opcode, payload)."""
        data, self._pending = self._pending + self.transport.value(), b""
        self.transport.clear()
        out, i = [], 0
        while i < len(data):
            b0, b1 = data[i], data[i + 1]
            assert not b1 & 0x80, "server frames are not masked"
            assert b0 & 0x80, "the server does not fragment"
            n, i = b1 & 0x7F, i + 2
            if n == 126:
                (n,), i = struct.unpack(">H", data[i : i + 2]), i + 2
            elif n == 127:
                (n,), i = struct.unpack(">Q", data[i : i + 8]), i + 8
            out.append((b0 & 0x0F, data[i : i + n]))
            i += n
        return out

    def received(self) -> list[Any]:
        """Protocol messages (text frames) since the last call; records close and pings."""
        msgs = []
        for opcode, payload in self.frames():
            if opcode == wsframe.TEXT:
                msgs.append(orjson.loads(payload))
            elif opcode == wsframe.CLOSE:
                code, self.close_reason = wsframe.parse_close(payload)
                self.close_code = code
            elif opcode == wsframe.PING:
                self.pings.append(payload)
            elif opcode == wsframe.PONG:
                self.pongs.append(payload)
            else:
                raise AssertionError(f"unexpected opcode {opcode}")
        return msgs

    def connect(self, uid: int, **extra: object) -> None:
        self.send({"Connect": {"room_id": 0, "user_id": uid, **extra}})
        assert self.received() == [{"ConnectionAck": {"user_id": uid}}]

    def join(self, uid: int, room: int) -> list[Any]:
        self.send({"RoomJoin": {"user_id": uid, "room_id": room, "nickname": f"n{uid}"}})
        return self.received()

    def reply_close(self) -> None:
        """The client's half of the close handshake; the server then drops the TCP connection."""
        self.feed(wsframe.encode(wsframe.CLOSE, struct.pack(">H", self.close_code or 1000), KEY))

    def lose(self) -> None:
        self.conn.connectionLost(Failure(ConnectionError("gone")))


def dump(obj: object) -> bytes:
    return obj if isinstance(obj, bytes) else orjson.dumps(obj)


@pytest.fixture
def h() -> WsHarness:
    return WsHarness()


def error_code(msg: Any) -> int:
    return msg["Error"]["code"]


# -- the connection as the router sees it ---------------------------------------------------


def test_a_websocket_is_an_iconnection_with_the_real_peer(h: WsHarness) -> None:
    c = h.ws()
    assert c.status == 101
    assert verifyObject(IConnection, c.conn)
    assert c.conn in h.router.connections
    assert (c.conn.ctx.peer_host, c.conn.ctx.peer_port) == ("127.0.0.1", h._port)
    assert c.conn.bytes_in > 0  # the handshake counts


def test_connections_after_the_first_open_like_it(h: WsHarness) -> None:
    """What _compact shares with the class must not change later handshakes (a browser
    offers permessage-deflate: refused, the socket opens without it)."""
    deflate = (("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),)
    first = h.ws(headers=deflate)
    first.connect(1)
    second = h.ws(headers=deflate)
    assert second.status == 101
    assert b"permessage-deflate" not in second.transport.value()
    second.connect(2)
    assert len(vars(second.conn)) < 40  # compacted: autobahn alone sets ~100
    second.send("HeartBeat")
    assert "HeartBeatResponse" in second.received()[0]
    # Messages do not grow it back: autobahn's per-frame state is in slots, and the
    # frame's unmasker goes at the frame's end (a whole text frame never makes one).
    assert len(vars(second.conn)) <= 16
    assert getattr(second.conn, "current_frame_masker", None) is None


def test_opening_logs_no_error(h: WsHarness) -> None:
    """Nothing fails inside autobahn's handshake callbacks (they would only show up as
    "Unhandled error in Deferred" when the Deferred is collected)."""
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("isError") or event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for uid in (1, 2, 3):
            h.ws().connect(uid)
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []


def test_one_text_message_is_one_protocol_message_and_replies_are_text(h: WsHarness) -> None:
    c = h.ws()
    c.send({"Connect": {"room_id": 0, "user_id": 7}}, "HeartBeat")
    assert c.received() == [
        {"ConnectionAck": {"user_id": 7}},
        {"HeartBeatResponse": {"timestamp": int(h.clock.seconds())}},
    ]


def test_bad_json_and_bad_shape_get_error_400_as_on_tcp(h: WsHarness) -> None:
    c = h.ws()
    c.send(b"{not json", {"Connect": {"user_id": 1}})
    msgs = c.received()
    assert [error_code(x) for x in msgs] == [400, 400]
    assert c.close_code is None
    assert h.metrics.received["invalid"] == 2


def test_a_fragmented_text_message_is_one_protocol_message(h: WsHarness) -> None:
    c = h.ws()
    payload = orjson.dumps({"Connect": {"room_id": 0, "user_id": 3}})
    parts = [payload[:5], payload[5:11], payload[11:]]
    c.feed(wsframe.encode(wsframe.TEXT, parts[0], KEY, fin=False))
    c.feed(wsframe.encode(wsframe.PING, b"mid", KEY))  # control frames may interleave
    c.feed(wsframe.encode(wsframe.CONTINUATION, parts[1], KEY, fin=False))
    assert c.received() == []  # nothing handled before the last fragment
    assert c.pongs == [b"mid"]
    c.feed(wsframe.encode(wsframe.CONTINUATION, parts[2], KEY, fin=True))
    assert c.received() == [{"ConnectionAck": {"user_id": 3}}]


def test_a_broadcast_reaches_tcp_and_websocket_members_alike(h: WsHarness) -> None:
    tcp, ws1, ws2 = h.client(), h.ws(), h.ws()
    tcp.connect(1)
    ws1.connect(2)
    ws2.connect(3)
    tcp.join(1, 9)
    ws1.join(2, 9)
    ws2.join(3, 9)
    tcp.received(), ws1.received(), ws2.received()
    ws1.send({"ChatMessage": {"user_id": 2, "room_id": 9, "message": "hé"}})
    chat = {"ChatMessage": {"user_id": 2, "room_id": 9, "message": "hé"}}
    assert tcp.received() == ws1.received() == ws2.received() == [chat]


def test_the_last_broadcast_frame_is_framed_once_for_every_websocket_member() -> None:
    h = WsHarness()
    frame = codec.frame(m.SystemMessage("x" * 300))
    cache = h.ws_factory.last
    a, b = h.ws(), h.ws()
    a.conn.send_frame(frame)
    data = cache.data
    b.conn.send_frame(frame)
    assert cache.data is data
    assert cache.data == text_message(frame)
    assert a.received() == b.received() == [{"SystemMessage": {"message": "x" * 300}}]


# -- close codes ----------------------------------------------------------------------------


def test_a_binary_message_is_refused_with_1003(h: WsHarness) -> None:
    c = h.ws()
    c.feed(wsframe.encode(wsframe.BINARY, b'"HeartBeat"', KEY))
    assert c.received() == []
    assert c.close_code == 1003
    assert h.router.frames_refused["invalid"] == 1


def test_invalid_utf8_is_refused_with_1007(h: WsHarness) -> None:
    c = h.ws()
    c.feed(wsframe.encode(wsframe.TEXT, b'{"x": "\xff\xfe"}', KEY))
    c.received()
    assert c.close_code == 1007


def test_a_message_over_max_frame_bytes_gets_413_then_1009() -> None:
    h = WsHarness(max_frame_bytes=128)
    c = h.ws()
    c.feed(wsframe.encode(wsframe.TEXT, b'"' + b"x" * 200 + b'"', KEY))
    (err,) = c.received()
    assert error_code(err) == 413
    assert c.close_code == 1009
    assert h.router.frames_refused["oversize"] == 1
    c.reply_close()
    assert c.transport.disconnecting or c.transport.disconnected


def test_a_reloaded_max_frame_bytes_applies_to_later_connections() -> None:
    """_compact shares the first connection's limit with the class: a later one must not
    keep it after a reload."""
    h = WsHarness(max_frame_bytes=4096)
    h.ws().connect(1)
    h.router.settings = dataclasses.replace(h.router.settings, max_frame_bytes=128)
    c = h.ws()
    c.connect(2)
    c.send({"ChatMessage": {"room_id": 1, "user_id": 2, "message": "x" * 200}})
    msgs = c.received()
    assert error_code(msgs[0]) == 413 and c.close_code == 1009


def test_a_fragmented_message_over_the_limit_is_1009_too() -> None:
    h = WsHarness(max_frame_bytes=128)
    c = h.ws()
    for _ in range(3):
        c.feed(wsframe.encode(wsframe.TEXT if _ == 0 else 0, b"y" * 60, KEY, fin=False))
    c.received()
    assert c.close_code == 1009


def test_a_client_close_is_answered_with_1000_and_reported_as_closed(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    c.feed(wsframe.encode(wsframe.CLOSE, struct.pack(">H", 1000), KEY))
    c.received()
    assert c.close_code == 1000
    c.lose()
    assert h.router.connections == set()
    assert h.metric("gamed_disconnects_total", reason="closed") == 1


@pytest.mark.parametrize(("reason", "code"), sorted(CLOSE_CODES.items()))
def test_every_close_reason_has_its_code(h: WsHarness, reason: str, code: int) -> None:
    c = h.ws()
    c.conn.close(reason)
    c.received()
    assert c.close_code == code
    assert c.close_reason == reason


def test_a_kick_sends_the_error_then_1008(h: WsHarness) -> None:
    c = h.ws()
    c.connect(5)
    assert h.router.kick_user(5, 403, "banned")
    msgs = c.received()
    assert [error_code(x) for x in msgs] == [403]
    assert c.close_code == 1008


def test_refused_at_the_cap_gets_503_then_1008() -> None:
    h = WsHarness(max_connections=1)
    h.ws()
    c = h.ws()
    assert [error_code(x) for x in c.received()] == [503]
    assert c.close_code == 1008
    assert c.conn not in h.router.connections


def test_takeover_from_tcp_to_websocket_and_back(h: WsHarness) -> None:
    tcp = h.client()
    tcp.connect(8)
    ws = h.ws()
    ws.connect(8)
    assert [error_code(x) for x in tcp.received()] == [409]
    assert tcp.closed
    assert h.router.sessions[8] is ws.conn
    tcp2 = h.client()
    tcp2.connect(8)
    assert [error_code(x) for x in ws.received()] == [409]
    assert ws.close_code == 1008 and ws.close_reason == "replaced"
    assert h.router.sessions[8] is tcp2.proto


def test_shutdown_sends_the_notice_then_1001() -> None:
    h = WsHarness(shutdown_grace=2.0)
    c = h.ws()
    c.connect(1)
    done: list[object] = []
    h.router.drain().addBoth(done.append)
    assert c.received() == [{"SystemMessage": {"message": "server is shutting down"}}]
    h.clock.advance(2.0)
    c.received()
    assert c.close_code == 1001
    c.reply_close()
    c.lose()
    assert done == [None]
    assert h.clock.seconds() < 1_000_000 + 2.0 + DRAIN_FLUSH_SECONDS


def test_a_peer_that_never_answers_the_close_is_aborted(h: WsHarness) -> None:
    c = h.ws()
    c.conn.close("kicked")
    assert not c.transport.disconnected
    h.clock.advance(CLOSE_FLUSH_SECONDS)
    assert c.transport.disconnected  # StringTransport.abortConnection


def test_output_after_close_is_dropped(h: WsHarness) -> None:
    c = h.ws()
    c.conn.close("closed")
    c.received()
    c.conn.send(m.SystemMessage("late"))
    c.conn.send_frame(codec.frame(m.SystemMessage("late")))
    assert c.frames() == []


# -- idle time-out and ping/pong ------------------------------------------------------------


def test_a_quiet_client_is_pinged_and_a_pong_keeps_it() -> None:
    h = WsHarness(idle_timeout=30.0)
    c = h.ws()
    h.clock.advance(15)
    c.received()
    assert len(c.pings) == 1
    c.feed(wsframe.encode(wsframe.PONG, c.pings[0], KEY))
    h.clock.advance(20)  # 35 s since open, 20 since the pong
    c.received()
    assert c.close_code is None
    assert len(c.pings) == 2  # pinged again at half the timeout after the pong


def test_one_ping_per_quiet_spell_though_the_sweep_runs_every_second() -> None:
    h = WsHarness(idle_timeout=30.0)
    c = h.ws()
    for _ in range(20):  # 15 s to the ping, then 5 more sweeps without an answer
        h.clock.advance(1)
    c.received()
    assert len(c.pings) == 1 and c.close_code is None


def test_a_short_idle_timeout_still_pings_before_closing() -> None:
    h = WsHarness(idle_timeout=1.0)
    c = h.ws()
    for _ in range(3):  # the sweep looks every 0.25 s
        h.clock.advance(0.25)
    c.received()
    assert len(c.pings) == 1 and c.close_code is None
    h.clock.advance(0.25)
    c.received()
    assert c.close_code == 1000 and c.close_reason == "idle"


def test_idle_connections_share_one_timer() -> None:
    h = WsHarness(idle_timeout=30.0)
    h.ws()
    timers = len(h.clock.getDelayedCalls())
    clients = [h.ws() for _ in range(5)]
    assert len(h.clock.getDelayedCalls()) == timers
    assert len(h.ws_factory.idle.conns) == 6
    assert all(c.conn in h.ws_factory.idle.conns for c in clients)
    for c in clients:
        c.lose()
    assert len(h.ws_factory.idle.conns) == 1  # a lost connection is no longer watched


def test_a_client_that_answers_no_ping_is_closed_at_the_idle_timeout() -> None:
    h = WsHarness(idle_timeout=30.0)
    c = h.ws()
    h.clock.advance(15)
    h.clock.advance(15)
    msgs = c.received()
    assert msgs == [{"SystemMessage": {"message": "closing: no message or pong for 30 seconds"}}]
    assert c.close_code == 1000 and c.close_reason == "idle"


def test_a_client_ping_is_answered_and_counts_as_liveness() -> None:
    h = WsHarness(idle_timeout=30.0)
    c = h.ws()
    h.clock.advance(14)
    c.feed(wsframe.encode(wsframe.PING, b"hi", KEY))
    assert c.frames() == [(wsframe.PONG, b"hi")]
    h.clock.advance(14)
    assert c.received() == []  # 28 s since open but 14 since the ping: no server ping yet


def test_pongs_do_not_keep_a_half_received_message_open() -> None:
    h = WsHarness(idle_timeout=30.0)
    c = h.ws()
    c.feed(wsframe.encode(wsframe.TEXT, b'{"Connect":', KEY, fin=False))
    h.clock.advance(15)
    c.received()
    c.feed(wsframe.encode(wsframe.PONG, c.pings[0], KEY))
    h.clock.advance(15)
    c.received()
    assert c.close_code == 1000 and c.close_reason == "idle"


def test_idle_timeout_zero_never_pings() -> None:
    h = WsHarness(idle_timeout=0.0)
    c = h.ws()
    h.clock.advance(10_000)
    assert c.frames() == []


# -- back-pressure ---------------------------------------------------------------------------


def test_a_client_that_does_not_read_is_dropped_past_max_outgoing_bytes() -> None:
    h = WsHarness(max_outgoing_bytes=4096)
    c = h.ws()
    c.connect(1)
    assert c.transport.producer is c.conn  # we replaced twisted.web's HTTPChannel
    c.conn.pauseProducing()  # what the transport does when its buffer passes the mark
    assert c.transport.producerState == "paused"  # we stop reading it
    frame = codec.frame(m.SystemMessage("z" * 1000))  # 1,034 bytes
    for _ in range(3):
        c.conn.send_frame(frame)
    assert not c.transport.disconnected
    c.conn.send_frame(frame)  # 4,136 queued while paused > 4,096
    assert c.transport.disconnected  # aborted
    c.lose()
    assert h.metric("gamed_disconnects_total", reason="slow") == 1


def test_resume_clears_the_backlog() -> None:
    h = WsHarness(max_outgoing_bytes=4096)
    c = h.ws()
    frame = codec.frame(m.SystemMessage("z" * 1000))
    c.conn.pauseProducing()
    for _ in range(3):
        c.conn.send_frame(frame)
    c.conn.resumeProducing()
    c.conn.pauseProducing()
    for _ in range(3):
        c.conn.send_frame(frame)
    assert not c.transport.disconnected
    assert len(c.received()) == 6


# -- browser security -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://127.0.0.1:7080", True),  # the page's own origin
        ("http://localhost:5173", True),  # a dev server on this machine
        ("http://127.0.0.1:3000", True),
        ("https://evil.example", False),
        ("http://localhost.evil.example", False),
        ("null", False),
    ],
)
def test_default_origins(h: WsHarness, origin: str | None, allowed: bool) -> None:
    c = h.ws(origin=origin)
    assert c.status == (101 if allowed else 403)
    assert len(h.router.connections) == (1 if allowed else 0)


def test_the_page_own_origin_is_the_host_it_asked_for(h: WsHarness) -> None:
    assert h.ws(origin="https://play.example.com", host="play.example.com").status == 101
    assert h.ws(origin="https://play.example.com", host="other.example.com").status == 403


def test_configured_origins_replace_the_default() -> None:
    h = WsHarness(ws_origins=("https://*.example.com",))
    assert h.ws(origin="https://play.example.com").status == 101
    assert h.ws(origin="http://localhost:5173").status == 403
    assert h.ws(origin="http://127.0.0.1:7080").status == 403  # own origin too: as configured
    h2 = WsHarness(ws_origins=("*",))
    assert h2.ws(origin="https://anything.example").status == 101


def test_origin_allowed_is_case_insensitive_and_ignores_a_trailing_slash() -> None:
    assert origin_allowed("HTTPS://Play.Example.com/", None, ("https://play.example.com",))
    assert not origin_allowed("https://play.example.com.evil", None, ("https://play.example.com",))


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    h = WsHarness(ws_trusted_proxies=("10.0.0.0/8",))
    xff = (("X-Forwarded-For", "203.0.113.9, 10.0.0.7"),)
    behind = h.ws(peer="10.0.0.2", headers=xff)
    assert behind.conn.ctx.peer_host == "203.0.113.9"
    direct = h.ws(peer="198.51.100.1", headers=xff)
    assert direct.conn.ctx.peer_host == "198.51.100.1"  # anyone can send the header
    h.router.kick_host("203.0.113.9", 403, "banned")
    assert behind.received() and behind.close_code == 1008
    assert direct.close_code is None


def test_forwarded_header_and_spoofed_left_entries() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = {"forwarded": 'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711", for=10.0.0.5'}
    assert forwarded_chain(headers) == ["192.0.2.60", "2001:db8::1", "10.0.0.5"]
    assert real_peer("10.0.0.1", headers, trusted) == "2001:db8::1"
    # The client wrote "1.1.1.1" itself; the proxy appended what it saw: the rightmost wins.
    spoofed = {"x-forwarded-for": "1.1.1.1, 198.51.100.7"}
    assert real_peer("10.0.0.1", spoofed, trusted) == "198.51.100.7"
    assert real_peer("10.0.0.1", {"x-forwarded-for": "unknown"}, trusted) == "10.0.0.1"
    assert real_peer("10.0.0.1", {}, trusted) == "10.0.0.1"
    assert real_peer("10.0.0.1", spoofed, ()) == "10.0.0.1"


# -- metrics ----------------------------------------------------------------------------------


def test_transport_labels_count_connections_and_messages(h: WsHarness) -> None:
    tcp, ws = h.client(), h.ws()
    tcp.connect(1)
    ws.connect(2)
    ws.send("HeartBeat")
    h.metrics.registry.register(TransportCollector(h.router, h.ws_factory))
    assert h.metric("gamed_transport_connections", transport="tcp") == 1
    assert h.metric("gamed_transport_connections", transport="ws") == 1
    assert h.metric("gamed_transport_messages_received_total", transport="tcp") == 1
    assert h.metric("gamed_transport_messages_received_total", transport="ws") == 2
    # StringTransports: nothing goes through a TurnWriter, so no writer is exported.
    assert h.metric("gamed_transport_sends_total", transport="tcp") == 0


def test_transport_sends_and_buffered_writes_by_writer(h: WsHarness) -> None:
    tcp_w, ws_w = SimpleNamespace(sends=7, fallbacks=1), SimpleNamespace(sends=3, fallbacks=0)
    collector = TransportCollector(h.router, h.ws_factory, {"tcp": tcp_w, "ws": ws_w})
    h.metrics.registry.register(collector)
    assert h.metric("gamed_transport_sends_total", transport="tcp") == 7
    assert h.metric("gamed_transport_sends_total", transport="ws") == 3
    assert h.metric("gamed_transport_buffered_writes_total", transport="tcp") == 1
    assert h.metric("gamed_transport_buffered_writes_total", transport="ws") == 0


# -- the static files -------------------------------------------------------------------------


def http_get(h: WsHarness, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """Render ``path`` from the Site's resource tree on a DummyRequest (which drives File's
    pull producer to the end)."""
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.uri = path.encode()
    resource = getChildForRequest(h.site.resource, request)
    _render(resource, request)
    headers = {k.lower(): v[0] for k, v in request.responseHeaders.getAllRawHeaders()}
    return request.responseCode or 200, headers, b"".join(request.written)


def test_static_files_with_their_types_and_no_listing(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>gamed</title>")
    (tmp_path / "gamed.js").write_text("export const x = 1;\n")
    (tmp_path / "css").mkdir()
    h = WsHarness(static_dir=tmp_path)
    status, headers, body = http_get(h, "/")
    assert status == 200 and body.startswith(b"<!doctype html>")
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    status, headers, body = http_get(h, "/gamed.js")
    assert status == 200 and body == b"export const x = 1;\n"
    assert headers[b"content-type"] == b"text/javascript; charset=utf-8"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert http_get(h, "/css/")[0] == 404  # no directory listing
    assert http_get(h, "/nope.js")[0] == 404
    assert http_get(h, "/../setup.cfg")[0] in (400, 403, 404)


# -- the turn's output (gamed.turnwrite) ------------------------------------------------------


class _TurnSocket:
    """The raw TCP side a TurnWriter sends on: Twisted holds nothing, ``send`` appends to
    the client's StringTransport (so the order of every byte on the wire shows)."""

    def __init__(self, transport: StringTransport) -> None:
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.socket = SimpleNamespace(send=self._send)
        self._transport = transport

    def _send(self, data: bytes) -> int:
        self._transport.write(data)
        return len(data)


def _on_a_turn_writer(h: WsHarness, c: WsClient) -> None:
    c.conn._raw = _TurnSocket(c.transport)
    c.conn._turn = h.ws_factory.turn
    c.conn._route_output()


def test_websocket_messages_of_a_turn_go_out_together_after_it(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    _on_a_turn_writer(h, c)
    c.send("HeartBeat", "HeartBeat")
    assert c.received() == []  # queued for the turn
    h.clock.advance(0)
    assert [next(iter(m)) for m in c.received()] == ["HeartBeatResponse"] * 2
    assert h.ws_factory.turn.sends == 1


def test_a_queued_websocket_message_goes_before_the_close_frame(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    _on_a_turn_writer(h, c)
    c.conn.send(m.SystemMessage("last words"))
    c.conn.close("kicked")  # autobahn writes the close frame through the transport
    h.clock.advance(0)
    frames = c.frames()
    assert [op for op, _ in frames] == [wsframe.TEXT, wsframe.CLOSE]
    assert b"last words" in frames[0][1]


# -- whole text frames, read without autobahn's parser ---------------------------------------


def _text(obj: object, key: bytes = KEY) -> bytes:
    return wsframe.encode(wsframe.TEXT, dump(obj), key)


def _autobahn_reads(c: WsClient) -> list[bytes]:
    """Record what reaches autobahn's own parser from now on."""
    seen: list[bytes] = []
    parse = c.conn._dataReceived

    def spy(data: bytes) -> None:
        seen.append(data)
        parse(data)

    c.conn._dataReceived = spy  # type: ignore[method-assign]
    return seen


def test_whole_text_frames_are_taken_without_autobahns_parser(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    seen = _autobahn_reads(c)
    long_text = "y" * 300  # a 16-bit length
    c.feed(
        _text("HeartBeat")
        + _text({"RoomJoin": {"user_id": 1, "room_id": 7, "nickname": "n1"}}, b"\xff\x00\xaa\x55")
        + _text({"ChatMessage": {"user_id": 1, "room_id": 7, "message": long_text}})
    )
    got = c.received()
    assert [next(iter(m)) for m in got] == ["HeartBeatResponse", "RoomJoinSuccess", "ChatMessage"]
    assert got[2]["ChatMessage"]["message"] == long_text
    assert seen == []  # every byte was read by the fast path


def test_a_ping_between_messages_goes_to_autobahn_in_order(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    seen = _autobahn_reads(c)
    ping = wsframe.encode(wsframe.PING, b"p1", KEY)
    c.feed(_text("HeartBeat") + ping + _text("HeartBeat"))
    assert [next(iter(m)) for m in c.received()] == ["HeartBeatResponse"] * 2
    assert c.pongs == [b"p1"]
    assert seen == [ping + _text("HeartBeat")]  # from the ping on, autobahn read it all
    c.feed(_text("HeartBeat"))  # and the next read is taken again
    assert len(c.received()) == 1 and len(seen) == 1


def test_a_frame_split_across_reads_is_delivered_once_whole(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    frame = _text({"ChatMessage": {"user_id": 1, "room_id": 7, "message": "x" * 200}})
    c.join(1, 7)
    for cut in (1, 3, 7, len(frame) - 1):
        c.feed(frame[:cut])
        assert c.received() == []
        c.feed(frame[cut:])
        assert [next(iter(m)) for m in c.received()] == ["ChatMessage"]


def test_what_the_fast_path_does_not_take_fails_as_autobahn_fails_it(h: WsHarness) -> None:
    bad_utf8 = h.ws()
    bad_utf8.connect(1)
    bad_utf8.feed(_text("HeartBeat") + wsframe.encode(wsframe.TEXT, b'"\xff\xfe"', KEY))
    assert [next(iter(m)) for m in bad_utf8.received()] == ["HeartBeatResponse"]
    assert bad_utf8.close_code == 1007
    unmasked = h.ws()
    unmasked.connect(2)
    unmasked.feed(b"\x81\x0b" + b'"HeartBeat"')  # a client frame without a mask
    unmasked.received()
    assert unmasked.close_code == 1002
    reserved = h.ws()
    reserved.connect(3)
    reserved.feed(bytes([0xC1]) + wsframe.encode(wsframe.TEXT, b'"HeartBeat"', KEY)[1:])  # RSV1
    reserved.received()
    assert reserved.close_code == 1002


def test_frames_after_a_message_that_closes_go_to_autobahn(h: WsHarness) -> None:
    c = h.ws()
    c.connect(1)
    handled: list[bytes] = []
    real = c.conn.handler

    class Closing:
        """The router, but the first message closes the connection (as a kick would)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def frame_received(self, conn: Any, data: bytes) -> None:
            handled.append(data)
            conn.close("kicked")

    c.conn.handler = Closing()  # type: ignore[assignment]
    c.feed(_text("HeartBeat") + _text("HeartBeat"))
    assert len(handled) == 1  # the second arrived after the close began: not handled
    c.received()
    assert c.close_code == 1008


_PIECES = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("ping"), st.binary(max_size=20)),
        st.tuples(st.just("fragments"), st.lists(st.text(max_size=40), min_size=2, max_size=3)),
        st.tuples(
            st.just("bad"), st.sampled_from(["utf8", "unmasked", "rsv", "empty", "nonminimal"])
        ),
    ),
    min_size=1,
    max_size=8,
)


def _frames(pieces: list[tuple[str, Any]], key: bytes) -> list[bytes]:
    """The client frames for ``pieces`` (a fragmented message's frames as one item)."""
    out = []
    for kind, value in pieces:
        if kind == "text":
            out.append(wsframe.encode(wsframe.TEXT, value.encode(), key))
        elif kind == "ping":
            out.append(wsframe.encode(wsframe.PING, value, key))
        elif kind == "fragments":
            parts = [p.encode() for p in value]
            frag = wsframe.encode(wsframe.TEXT, parts[0], key, fin=False)
            for j, part in enumerate(parts[1:], 1):
                frag += wsframe.encode(0, part, key, fin=j == len(parts) - 1)
            out.append(frag)
        else:
            out.append(
                {
                    "utf8": wsframe.encode(wsframe.TEXT, b"ok\xff", key),
                    "unmasked": b"\x81\x02ok",
                    "rsv": bytes([0xC1]) + wsframe.encode(wsframe.TEXT, b"ok", key)[1:],
                    "empty": wsframe.encode(wsframe.TEXT, b"", key),
                    # "ok" with a 16-bit length: RFC 6455 wants the shortest form (1002)
                    "nonminimal": b"\x81\xfe\x00\x02" + key + wsframe.mask(b"ok", key),
                }[value]
            )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=_PIECES,
    by_frame=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
    key=st.binary(min_size=4, max_size=4),
)
def test_the_fast_path_and_autobahn_read_any_stream_alike(
    pieces: list[tuple[str, Any]], by_frame: bool, cuts: list[int], key: bytes
) -> None:
    """Differential: the same bytes, read the same way (frame by frame in groups, or cut
    anywhere), by a connection with the whole-frame path and by one without it: the
    same messages, answers, pongs and close code."""
    frames = _frames(pieces, key)
    stream = b"".join(frames)
    chunks: list[bytes] = []
    if by_frame:  # reads that end on frame boundaries: cuts say how many frames per read
        i = 0
        for cut in [*cuts, len(frames)]:
            if i >= len(frames):
                break
            n = cut % 3 + 1
            chunks.append(b"".join(frames[i : i + n]))
            i += n
    else:
        pos = 0
        for cut in cuts:
            if pos >= len(stream):
                break
            chunks.append(stream[pos : pos + cut])
            pos += cut
        chunks.append(stream[pos:])
    outcomes = []
    for fast in (True, False):
        h = WsHarness()
        c = h.ws()
        c.connect(1)
        seen: list[bytes] = []
        deliver = c.conn.onMessage

        def record(
            payload: bytes, is_binary: bool, deliver: Any = deliver, seen: list[bytes] = seen
        ) -> None:
            seen.append(payload)
            deliver(payload, is_binary)

        c.conn.onMessage = record  # type: ignore[method-assign]
        if not fast:
            c.conn._take_text_frames = lambda data: data  # type: ignore[method-assign]
        for chunk in chunks:
            if c.conn.state != c.conn.STATE_CLOSED:
                c.feed(chunk)
        answers = c.received()
        outcomes.append((seen, answers, c.pongs, c.close_code))
    assert outcomes[0] == outcomes[1]
