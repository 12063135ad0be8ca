"""The WebSocket port against a real `twistd -n gamed`: conformance from a real client library
(`websockets`), raw-socket clients for what a library will not do (never read, never pong),
and mixed TCP + WebSocket rooms, games, takeover and security limits."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from gamed.bench import wsframe
from tests.integration.helpers import GAME_ROOM as ROOM
from tests.integration.helpers import (
    GamedProcess,
    attack,
    flood_until_dropped,
    heartbeat_ok,
    move,
    until,
)


class WsClient:
    """WireClient's interface over a real WebSocket client (`websockets`, sync API)."""

    def __init__(self, srv: GamedProcess, timeout: float = 5.0, **kw: Any) -> None:
        kw.setdefault("ping_interval", None)  # the server pings; we answer (the library does)
        kw.setdefault("open_timeout", timeout)
        kw.setdefault("close_timeout", timeout)
        # __enter__: websockets 17 wants connect() as a context manager; older ones
        # return the connection, whose __enter__ is itself. Closed in close().
        self.ws: ClientConnection = ws_connect(srv.ws_url, **kw).__enter__()
        self.timeout = timeout
        self.user_id: int | None = None
        srv.clients.append(self)  # type: ignore[arg-type]  # closed by the fixtures, as TCP ones

    def send_text(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            self.ws.send(text, text=True)
        else:
            self.ws.send(text)

    def send(self, obj: Any) -> None:
        self.ws.send(orjson.dumps(obj).decode())

    def connect(self, user_id: int, **extra: Any) -> None:
        self.send({"Connect": {"room_id": 0, "user_id": user_id, **extra}})
        assert self.recv() == {"ConnectionAck": {"user_id": user_id}}
        self.user_id = user_id

    def join(self, room_id: int, nickname: str | None = None) -> Any:
        nick = nickname or f"u{self.user_id}"
        self.send({"RoomJoin": {"user_id": self.user_id, "room_id": room_id, "nickname": nick}})
        return self.recv()

    def chat(self, room_id: int, text: str) -> None:
        self.send({"ChatMessage": {"user_id": self.user_id, "room_id": room_id, "message": text}})

    def recv(self, timeout: float | None = None) -> Any:
        """The next message, decoded; TimeoutError, or EOFError once closed (``close_code``)."""
        try:
            data = self.ws.recv(timeout=timeout or self.timeout)
        except TimeoutError:
            raise TimeoutError("no message from the server") from None
        except ConnectionClosed:
            raise EOFError("server closed the connection") from None
        assert isinstance(data, str), "replies are text messages"
        return orjson.loads(data)

    def recv_error(self, code: int) -> str:
        msg = self.recv()
        assert "Error" in msg, msg
        assert msg["Error"]["code"] == code, msg
        return msg["Error"]["message"]

    def expect_closed(self, timeout: float = 5.0) -> list[Any]:
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.recv(max(0.01, deadline - time.monotonic())))
            except EOFError:
                return got
        raise AssertionError(f"connection still open after {timeout}s; got {got}")

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def close_reason(self) -> str:
        return self.ws.close_reason or ""

    def close(self) -> None:
        self.ws.close()


class RawWs:
    """A WebSocket on a bare socket: does only what the test says (no pong, no reading)."""

    def __init__(self, port: int, origin: str | None = None, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        request, accept = wsframe.handshake_request("127.0.0.1", port, "/ws", origin)
        self.sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)  # byte by byte: not one byte past the handshake
            assert chunk, "closed during the handshake"
            head += chunk
        wsframe.check_handshake_response(head[:-4], accept)
        self.reader = wsframe.WsFrameReader()

    def send(self, obj: Any) -> None:
        self.sock.sendall(wsframe.encode(wsframe.TEXT, orjson.dumps(obj)))

    def read_until_closed(self, timeout: float) -> tuple[list[Any], list[tuple[int, bytes]]]:
        """Messages and control frames until the server closes the TCP connection."""
        msgs: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                return msgs, self.reader.control
            msgs += [orjson.loads(p) for p in self.reader.feed(data).others]
            for opcode, payload in self.reader.control:
                if opcode == wsframe.CLOSE:  # our half of the close handshake
                    self.sock.sendall(wsframe.encode(wsframe.CLOSE, payload[:2]))
        raise AssertionError(f"still open after {timeout}s: {msgs} {self.reader.control}")


def ws_metric(srv: GamedProcess, line: str) -> bool:
    _status, body = srv.http("/metrics")
    return line in body.decode()


# -- conformance ------------------------------------------------------------------------------


def test_connect_chat_and_errors_over_websocket(server: GamedProcess) -> None:
    c = WsClient(server)
    c.connect(1)
    assert c.join(7) == {"RoomJoinSuccess": {"room_id": 7, "user_count": 1}}
    c.chat(7, "hello from a browser")
    assert c.recv()["ChatMessage"]["message"] == "hello from a browser"
    c.send_text("{nope")
    assert "not valid" in c.recv_error(400)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 7}})
    c.recv_error(400)  # the same shape errors as TCP
    c.close()
    assert c.close_code == 1000


def test_fragmented_message_is_one_message(server: GamedProcess) -> None:
    c = WsClient(server)
    payload = orjson.dumps({"Connect": {"room_id": 0, "user_id": 4}}).decode()
    c.ws.send([payload[:7], payload[7:20], payload[20:]])  # an iterable: one fragmented message
    assert c.recv() == {"ConnectionAck": {"user_id": 4}}


def test_binary_is_refused_with_1003(server: GamedProcess) -> None:
    c = WsClient(server)
    c.ws.send(b'"HeartBeat"')
    assert c.expect_closed() == []
    assert c.close_code == 1003


def test_invalid_utf8_is_refused_with_1007(server: GamedProcess) -> None:
    c = WsClient(server)
    c.send_text(b'"\xc3\x28"')
    c.expect_closed()
    assert c.close_code == 1007


def test_oversize_is_413_then_1009(gamed: Any) -> None:
    srv = gamed("--max-frame-bytes", "1024")
    c = WsClient(srv)
    c.send_text("x" * 2000)
    msgs = c.expect_closed()
    assert [m["Error"]["code"] for m in msgs] == [413]
    assert c.close_code == 1009
    assert ws_metric(srv, 'gamed_frames_refused_total{reason="oversize"} 1.0')


def test_a_banned_user_gets_the_error_then_1008(gamed: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "gamed.toml"
    cfg.write_text('[middleware.security]\nblocked_ips = ["127.0.0.0/8"]\n')
    srv = gamed("--config", str(cfg))
    c = WsClient(srv)
    msgs = c.expect_closed()
    assert [m["Error"]["code"] for m in msgs] == [403]
    assert "ip_blocklist" in msgs[0]["Error"]["message"]
    assert c.close_code == 1008


def test_an_origin_not_allowed_gets_403_and_no_socket(server: GamedProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server.ws_url, origin="https://evil.example", open_timeout=5).__enter__()
    assert refused.value.response.status_code == 403
    ok = WsClient(server, origin=f"http://127.0.0.1:{server.ws_port}")  # the page's own origin
    ok.connect(1)
    assert server.stats()["connections"] == 1


def test_ws_origins_option_and_star(gamed: Any) -> None:
    srv = gamed("--ws-origins", "https://*.example.com")
    WsClient(srv, origin="https://play.example.com").connect(1)
    with pytest.raises(InvalidStatus):
        ws_connect(srv.ws_url, origin="http://localhost:8000", open_timeout=5).__enter__()
    anyone = gamed("--ws-origins", "*")
    WsClient(anyone, origin="https://anything.example").connect(1)


def test_pongs_keep_a_quiet_client_past_the_idle_timeout(gamed: Any) -> None:
    srv = gamed("--idle-timeout", "1")
    c = WsClient(srv)  # the library answers the server's pings
    c.connect(1)
    with pytest.raises(TimeoutError):
        c.recv(timeout=2.5)  # 2.5 idle timeouts without a message
    c.send("HeartBeat")
    assert "HeartBeatResponse" in c.recv()


def test_a_client_that_answers_no_ping_is_closed_at_the_idle_timeout(gamed: Any) -> None:
    srv = gamed("--idle-timeout", "1")
    raw = RawWs(srv.ws_port)
    started = time.monotonic()
    msgs, control = raw.read_until_closed(timeout=5)
    assert 0.9 < time.monotonic() - started < 4
    assert msgs == [{"SystemMessage": {"message": "closing: no message or pong for 1 seconds"}}]
    opcodes = [op for op, _ in control]
    assert opcodes == [wsframe.PING, wsframe.CLOSE]
    assert wsframe.parse_close(control[-1][1]) == (1000, "idle")


def test_a_websocket_reader_that_never_reads_is_dropped(gamed: Any) -> None:
    srv = gamed("--max-outgoing-bytes", "65536", "--middleware", "none")
    talker = srv.client(1)
    sink = RawWs(srv.ws_port, rcvbuf=4096)
    sink.send({"Connect": {"room_id": 0, "user_id": 2}})
    sink.send({"RoomJoin": {"user_id": 2, "room_id": 5, "nickname": "sink"}})
    if talker.join(5)["RoomJoinSuccess"]["user_count"] == 1:
        until(talker, "UserJoinedRoom")  # the sink's join came second
    text = "z" * 900
    # at most ~5.5 MB towards the sink: more than the kernel's buffer and ours
    dropped = flood_until_dropped(talker, 5, text)
    assert dropped, "a WebSocket client that never reads must be dropped, not buffered"
    assert heartbeat_ok(talker)
    assert ws_metric(srv, 'gamed_disconnects_total{reason="slow"} 1.0')


def test_sigterm_tells_websocket_clients_then_closes_with_1001(gamed: Any) -> None:
    srv = gamed("--shutdown-grace", "0.5")
    c = WsClient(srv)
    c.connect(1)
    os.kill(srv.pid, signal.SIGTERM)
    msgs = c.expect_closed(timeout=10)
    assert msgs == [{"SystemMessage": {"message": "server is shutting down"}}]
    assert c.close_code == 1001
    assert srv.proc.wait(10) in (0, -signal.SIGTERM)  # twistd re-raises the signal
    assert "Traceback" not in srv.log()


# -- mixed rooms -------------------------------------------------------------------------------


def test_tcp_and_websocket_members_see_the_same_chats_in_the_same_order(
    server: GamedProcess,
) -> None:
    tcp1, tcp2 = server.client(1), server.client(2)
    ws1, ws2 = WsClient(server), WsClient(server)
    ws1.connect(3)
    ws2.connect(4)
    members: list[Any] = [tcp1, ws1, tcp2, ws2]
    for c in members:
        assert "RoomJoinSuccess" in c.join(9)
    for i, c in enumerate(members):  # the UserJoinedRoom notices of those who came after
        for _ in range(len(members) - 1 - i):
            assert "UserJoinedRoom" in c.recv()
    for n in range(5):
        for c in members:
            c.chat(9, f"{c.user_id}:{n}")
    seen = [[c.recv()["ChatMessage"] for _ in range(20)] for c in members]
    assert seen[0] == seen[1] == seen[2] == seen[3]
    assert sorted(x["message"] for x in seen[0]) == sorted(
        f"{u}:{n}" for u in (1, 2, 3, 4) for n in range(5)
    )
    assert ws_metric(server, 'gamed_transport_connections{transport="ws"} 2.0')
    assert ws_metric(server, 'gamed_transport_connections{transport="tcp"} 2.0')


def test_a_game_between_a_tcp_and_a_websocket_player_ends(gamed: Any) -> None:
    srv = gamed("--round-limit", "2")
    a = srv.client(1)
    b = WsClient(srv)
    b.connect(2)
    assert "RoomJoinSuccess" in a.join(ROOM)
    assert "RoomJoinSuccess" in b.join(ROOM)
    until(a, "UserJoinedRoom")
    a.send({"StartGame": {"room_id": ROOM}})
    until(a, "GameStarted")
    until(b, "GameStarted")
    b.send({"ToggleReady": {"room_id": ROOM}})
    for c in (a, b):
        assert until(c, "GameInProgress")[0]["current_turn"] == 1
    plan: list[tuple[Any, Any, tuple[Any, ...]]] = [
        (a, attack, (2, 5)),
        (b, move, (2.0,)),
        (a, move, (1.0,)),
        (b, attack, (1, 2)),
    ]
    for who, fn, args in plan:
        fn(who, *args)
        for c in (a, b):
            until(c, "ActionResult")
    ended_a, _ = until(a, "GameEnded")
    ended_b, _ = until(b, "GameEnded")
    assert ended_a == ended_b
    assert ended_a["winner"]["user_id"] == 1


def test_takeover_across_transports(server: GamedProcess) -> None:
    tcp = server.client(5)
    ws = WsClient(server)
    ws.connect(5)
    assert "replaced" in tcp.recv_error(409)
    tcp.expect_closed()
    assert heartbeat_ok(server.client(6))
    server.client(5)  # the TCP takeover
    assert "replaced" in ws.recv_error(409)
    ws.expect_closed()
    assert ws.close_code == 1008 and ws.close_reason == "replaced"


def test_security_rate_limit_applies_to_websocket_clients(gamed: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "gamed.toml"
    cfg.write_text(
        "[middleware.security]\nallowlist = []\nrate_limit_per_minute = 5\n"
        '[middleware.security.rules]\nflood = "off"\n'
    )
    srv = gamed("--config", str(cfg))
    c = WsClient(srv)
    c.connect(1)
    c.join(5)
    for i in range(6):
        c.chat(5, f"m{i}")
    got = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any("Error" in g for g in got):
        got.append(c.recv())
    codes = [g["Error"]["code"] for g in got if "Error" in g]
    assert codes and codes[0] == 429, got


def test_per_ip_limits_see_the_forwarded_address_only_from_a_trusted_proxy(
    gamed: Any, tmp_path: Path
) -> None:
    cfg = tmp_path / "gamed.toml"
    cfg.write_text('[middleware.security]\nblocked_ips = ["203.0.113.0/24"]\n')
    srv = gamed("--config", str(cfg), "--ws-trusted-proxies", "127.0.0.1")
    behind = WsClient(srv, additional_headers={"X-Forwarded-For": "203.0.113.5"})
    assert [m["Error"]["code"] for m in behind.expect_closed()] == [403]
    assert behind.close_code == 1008
    WsClient(srv, additional_headers={"X-Forwarded-For": "198.51.100.1"}).connect(1)
    untrusted = gamed("--config", str(cfg))  # 127.0.0.1 is not a trusted proxy here
    WsClient(untrusted, additional_headers={"X-Forwarded-For": "203.0.113.5"}).connect(1)


# -- the page --------------------------------------------------------------------------------


def test_the_port_serves_files_and_no_listing(server: GamedProcess) -> None:
    base = f"http://127.0.0.1:{server.ws_port}"
    from gamed.ws_site import STATIC_DIR

    if (STATIC_DIR / "gamed.js").exists():
        with urllib.request.urlopen(f"{base}/gamed.js", timeout=5) as r:
            assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
    if (STATIC_DIR / "index.html").exists():
        with urllib.request.urlopen(f"{base}/", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/html")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/no-such-file.js", timeout=5)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(f"{base}/ws", timeout=5)  # not an upgrade
    assert plain.value.code in (400, 426)


def test_a_proxy_protocol_ws_port_sees_the_real_client(gamed: Any, tmp_path: Path) -> None:
    """--ws-port haproxy:...: the address in the PROXY header is the client's, for the
    security plugin's IP rules as for everything else."""
    cfg = tmp_path / "gamed.toml"
    cfg.write_text('[middleware.security]\nblocked_ips = ["203.0.113.0/24"]\n')
    srv = gamed("--config", str(cfg), "--ws-port", "haproxy:tcp:0:interface=127.0.0.1")

    def through_proxy(source: str) -> RawWs:
        sock = socket.create_connection(("127.0.0.1", srv.ws_port), timeout=5)
        sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 40000 {srv.ws_port}\r\n".encode())
        raw = RawWs.__new__(RawWs)
        raw.sock = sock
        request, accept = wsframe.handshake_request("127.0.0.1", srv.ws_port)  # type: ignore[arg-type]
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        wsframe.check_handshake_response(head[:-4], accept)
        raw.reader = wsframe.WsFrameReader()
        raw.send({"Connect": {"room_id": 0, "user_id": 1}})
        return raw

    msgs, control = through_proxy("203.0.113.7").read_until_closed(timeout=3)
    assert msgs[0]["Error"]["code"] == 403 and "ip_blocklist" in msgs[0]["Error"]["message"]
    assert wsframe.parse_close(control[-1][1]) == (1008, "refused")
    allowed = through_proxy("198.51.100.7")
    deadline = time.monotonic() + 5
    while server_connections(srv) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_connections(srv) == 1
    allowed.sock.close()


def server_connections(srv: GamedProcess) -> int:
    return int(srv.stats()["connections"])
