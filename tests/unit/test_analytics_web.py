"""Analytics over HTTP and SSE, inside a real service tree on a MemoryReactorClock (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor as real_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gamed import events as ev
from gamed.middleware.analytics.middleware import Analytics, AnalyticsService
from gamed.store import SqliteStore
from tests.unit.fakes import MemoryServer, send


class Tree(MemoryServer):
    """makeService(--middleware analytics) on a MemoryReactorClock, started at 15:00 UTC;
    game and HTTP clients on StringTransports."""

    def __init__(self, tmp_path: Path, config: str = "") -> None:
        args = ["--middleware", "analytics"]
        if config:
            cfg = tmp_path / "gamed.toml"
            cfg.write_text(f"[middleware.analytics]\n{config}\n")
            args += ["--config", str(cfg)]
        reactor = MemoryReactorClock()
        reactor.advance(1_767_225_600 + 15 * 3600)  # 15:00 UTC
        super().__init__(tmp_path, *args, reactor=reactor, start=True)
        self.hub: Analytics = self.router.pipeline.middleware[0].hub
        self.site.timeOut = None  # no idle timer on the global reactor

    def connect(self, user_id: int) -> Any:
        proto = self.client()
        send(proto, {"Connect": {"room_id": 0, "user_id": user_id}})
        return proto

    def open(self, path: bytes) -> tuple[Any, StringTransport]:
        """An HTTP/1.0 request on a fresh channel; the response accumulates in the transport."""
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET " + path + b" HTTP/1.0\r\nHost: test\r\n\r\n")
        return proto, transport

    def get(self, path: bytes) -> tuple[int, Any]:
        _, transport = self.open(path)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert transport.disconnecting, "a JSON response is complete at once (InlineStore)"
        return status, orjson.loads(body)

    def tick(self) -> None:
        self.reactor.advance(0.25)


def join(proto: Any, room_id: int) -> None:
    send(proto, {"RoomJoin": {"user_id": proto.user_id, "room_id": room_id, "nickname": "n"}})


def chat(proto: Any, room_id: int, text: str = "hi") -> None:
    send(proto, {"ChatMessage": {"user_id": proto.user_id, "room_id": room_id, "message": text}})


def sse_events(transport: StringTransport) -> list[tuple[str, dict[str, Any]]]:
    _, _, body = transport.value().partition(b"\r\n\r\n")
    out = []
    for block in body.split(b"\n\n"):
        lines = dict(
            line.split(b": ", 1) for line in block.split(b"\n") if line and b": " in line[:7]
        )
        if b"event" in lines:
            out.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path)
    yield t
    t.stop()


# -- a whole session through the real router ---------------------------------------------------


def test_a_session_through_the_router(tree: Tree) -> None:
    a, b = tree.connect(1), tree.connect(2)
    join(a, 5)
    join(b, 5)
    chat(a, 5)
    chat(a, 5)
    chat(b, 5)
    chat(b, 6)  # not in room 6: Error 404
    tree.reactor.advance(20)  # under the 30 s idle timeout
    send(b, {"RoomLeave": {"user_id": 2, "room_id": 5}})
    a.transport.loseConnection()
    a.connectionLost(None)
    tree.tick()
    status, user = tree.get(b"/analytics/users/1")
    assert status == 200
    assert user["total_sessions"] == 1
    assert user["messages_sent"] == 2
    assert user["rooms_created"] == 1
    assert user["favourite_rooms"] == [{"room_id": 5, "visits": 1}]
    assert user["total_playtime_seconds"] == pytest.approx(20)
    assert user["activity_by_hour"][15] > 0
    _, user2 = tree.get(b"/analytics/users/2")
    assert (user2["messages_sent"], user2["errors"], user2["total_playtime_seconds"]) == (1, 1, 0)
    status, room = tree.get(b"/analytics/rooms/5")
    assert status == 200
    assert room["total_sessions"] == 2
    assert room["peak_users"] == 2
    assert room["total_messages"] == 3
    assert room["completed_sessions"] == 2
    assert room["average_session_seconds"] == pytest.approx(20)
    assert room["popular_hours"] == [{"hour": 15, "joins": 2}]
    assert tree.get(b"/analytics/rooms/6")[0] == 404, "a refused chat does not make a room"
    status, top = tree.get(b"/analytics/top?by=messages&limit=1")
    assert (status, top["users"]) == (200, [{"user_id": 1, "messages": 2}])


def test_json_endpoints_validate_their_input(tree: Tree) -> None:
    assert tree.get(b"/analytics/users/abc")[0] == 400
    assert tree.get(b"/analytics/users/-1")[0] == 400
    assert tree.get(b"/analytics/users/4294967296")[0] == 400
    assert tree.get(b"/analytics/users/12")[0] == 404
    assert tree.get(b"/analytics/users/1/2")[0] == 400
    assert tree.get(b"/analytics/rooms/0")[0] == 400
    assert tree.get(b"/analytics/rooms/1000001")[0] == 400
    assert tree.get(b"/analytics/rooms/7")[0] == 404
    assert tree.get(b"/analytics/top?by=karma")[0] == 400
    assert tree.get(b"/analytics/top?limit=0")[0] == 400
    assert tree.get(b"/analytics/top?limit=101")[0] == 400
    assert tree.get(b"/analytics/top?by=wins&limit=100") == (
        200,
        {"by": "wins", "limit": 100, "users": []},
    )
    assert tree.get(b"/analytics/recent?limit=x")[0] == 400
    status, index = tree.get(b"/analytics/")
    assert status == 200 and "Error" in index["event_types"]


def test_realtime_and_recent(tree: Tree) -> None:
    tree.connect(1)
    tree.tick()
    status, rt = tree.get(b"/analytics/realtime")
    assert status == 200
    assert rt["total_processed"] == 2  # UserConnected + MessageSent(Connect)
    assert rt["events_last_minute"] == 2
    assert rt["buffer_use_percent"] == 0
    assert rt["events_by_type"]["UserConnected"] == 1
    status, recent = tree.get(b"/analytics/recent?limit=1")
    assert recent["events"] == [
        {
            "type": "MessageSent",
            "at": tree.reactor.seconds() - 0.25,
            "user_id": 1,
            "room_id": None,
            "message_type": "Connect",
        }
    ]


def test_stats_section_and_prometheus(tree: Tree) -> None:
    tree.connect(1)
    tree.tick()
    _, stats = tree.get(b"/stats")
    assert stats["analytics"]["total_processed"] == 2
    _proto, transport = tree.open(b"/metrics")
    text = transport.value().decode()
    assert 'gamed_analytics_events_total{type="UserConnected"} 1.0' in text
    assert 'gamed_analytics_events_dropped_total{reason="queue"} 0.0' in text
    assert "gamed_analytics_flush_seconds_bucket" in text
    assert "gamed_analytics_store_bytes" in text


# -- Server-Sent Events ----------------------------------------------------------------------------


def test_stream_delivers_filtered_events_and_heartbeats(tree: Tree) -> None:
    proto, transport = tree.open(b"/analytics/stream?types=MessageSent,RoomJoined")
    head = transport.value()
    assert b"200 OK" in head.split(b"\r\n", 1)[0]
    assert b"text/event-stream" in head
    a = tree.connect(1)
    join(a, 5)
    chat(a, 5, "hello")
    tree.tick()
    got = sse_events(transport)
    assert [(kind, body.get("message_type")) for kind, body in got] == [
        ("MessageSent", "Connect"),
        ("RoomJoined", None),
        ("MessageSent", "RoomJoin"),
        ("MessageSent", "ChatMessage"),
    ]
    assert got[1][1] == {
        "type": "RoomJoined",
        "room_id": 5,
        "user_id": 1,
        "user_count": 1,
        "at": tree.reactor.seconds() - 0.25,
    }
    assert not transport.disconnecting
    tree.reactor.advance(15)
    assert transport.value().endswith(b": keepalive\n\n")
    assert len(tree.hub.streams) == 1
    proto.connectionLost(Failure(ConnectionDone()))
    assert tree.hub.streams == set()


def test_stream_rejects_unknown_types(tree: Tree) -> None:
    _, transport = tree.open(b"/analytics/stream?types=MessageSent,Bogus")
    assert b" 400 " in transport.value().split(b"\r\n", 1)[0]
    assert b"Bogus" in transport.value()
    assert tree.hub.streams == set()


def test_a_slow_stream_client_is_dropped(tmp_path: Path) -> None:
    tree = Tree(tmp_path, "sse_max_backlog = 2048")
    try:
        _proto, transport = tree.open(b"/analytics/stream")
        (client,) = tree.hub.streams
        transport.producer.pauseProducing()  # the socket buffer passed its high-water mark
        assert client.paused
        a = tree.connect(1)
        for _ in range(60):
            send(a, "HeartBeat")
        tree.tick()
        assert transport.disconnecting or getattr(transport, "aborted", False) or client.closed
        assert tree.hub.streams == set()
        assert tree.hub.dropped_by_reason()["subscriber"] == 1
        tree.tick()
        text = tree.open(b"/metrics")[1].value().decode()
        assert 'gamed_analytics_events_dropped_total{reason="subscriber"} 1.0' in text
    finally:
        tree.stop()


def test_stream_client_limit(tmp_path: Path) -> None:
    tree = Tree(tmp_path, "max_stream_clients = 1")
    try:
        tree.open(b"/analytics/stream")
        _, second = tree.open(b"/analytics/stream")
        assert b" 503 " in second.value().split(b"\r\n", 1)[0]
    finally:
        tree.stop()


def test_stop_finishes_streams_and_flushes(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    _, transport = tree.open(b"/analytics/stream")
    game = tree.connect(1)
    d = tree.service.stopService()
    fired: list[Any] = []
    d.addBoth(fired.append)
    assert fired == [], "the final flush waits for the server's clients to leave"
    assert b"SystemMessage" in game.transport.value()  # the drain told it to go
    game.connectionLost(Failure(ConnectionDone()))  # ...and it went
    tree.reactor.advance(0.05)
    assert len(fired) == 1
    assert transport.disconnecting
    again = Tree(tmp_path)
    try:
        user = again.get(b"/analytics/users/1")[1]
        assert (user["total_sessions"], user["total_playtime_seconds"]) == (1, 0.0)
    finally:
        again.stop()


# -- the real SqliteStore, its thread and the real reactor -------------------------------------------


@pytest_twisted.inlineCallbacks
def test_real_store_flushes_in_its_thread(tmp_path: Path):
    path = str(tmp_path / "analytics.sqlite3")
    hub = Analytics(real_reactor, CollectorRegistry(), path)
    service = AnalyticsService(hub)
    service.startService()
    try:
        assert isinstance(hub.store, SqliteStore)
        t = real_reactor.seconds()
        hub.on_event(ev.UserConnected(3, "h", t))
        hub.on_event(ev.UserDisconnected(3, 2.5, "closed", t + 2.5))
        hub.process()
        yield hub.flush()
        assert hub.aggregates.users == {}
        hub.on_event(ev.UserConnected(3, "h", t + 5))
        user = yield hub.user(3)
        assert (user["total_sessions"], user["total_playtime_seconds"]) == (2, 2.5)
        top = yield hub.top("playtime", 5)
        assert top == [{"user_id": 3, "playtime": 2.5}]
    finally:
        yield service.stopService()
    assert hub.store is None
    reopened = SqliteStore(path, reactor=real_reactor)
    try:
        row = reopened.run_sync(lambda c: c.execute("SELECT sessions FROM users").fetchall())
        assert row == [(2,)]
    finally:
        reopened.close()
