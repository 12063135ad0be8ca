"""GameProtocol + Router over StringTransport and Clock: every connection rule, no sockets."""

from __future__ import annotations

import struct

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed import messages as m
from gamed.config import Settings
from gamed.events import EventBus
from gamed.interfaces import IConnectionObserver, IMiddleware
from gamed.pipeline import Pipeline, Veto
from gamed.protocol import CLOSE_FLUSH_SECONDS, GameFactory, GameProtocol
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.telemetry import ServerMetrics


def frame(obj: object) -> bytes:
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


def parse(data: bytes) -> list[object]:
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        out.append(orjson.loads(data[i + 4 : i + 4 + n]))
        i += 4 + n
    assert i == len(data), "server frames must never be split"
    return out


class Client:
    """One fake connection: a protocol on a StringTransport."""

    def __init__(self, harness: Harness, port: int) -> None:
        self.harness = harness
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7000),
        )
        self.proto: GameProtocol = harness.factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def send(self, *objs: object) -> None:
        self.proto.dataReceived(b"".join(frame(o) for o in objs))

    def received(self) -> list[object]:
        out = parse(self.transport.value())
        self.transport.clear()
        return out

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def connect(self, uid: int, **extra: object) -> None:
        self.send({"Connect": {"room_id": 0, "user_id": uid, **extra}})
        assert self.received() == [{"ConnectionAck": {"user_id": uid}}]

    def join(self, uid: int, room: int, nick: str = "") -> list[object]:
        self.send({"RoomJoin": {"user_id": uid, "room_id": room, "nickname": nick or f"n{uid}"}})
        return self.received()


class Harness:
    def __init__(self, middleware: tuple = (), **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.settings = Settings(**settings)
        self.events = EventBus()
        self.seen: list[object] = []
        self.events.subscribe(self.seen.append)
        self.metrics = ServerMetrics()
        self.rooms = RoomService(self.clock, self.settings.max_room_users, self.events)
        self.router = Router(
            self.settings, self.clock, self.rooms, Pipeline(middleware), self.metrics, self.events
        )
        self.factory = GameFactory(self.router, self.clock)
        self._port = 40000

    def client(self) -> Client:
        self._port += 1
        return Client(self, self._port)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def h() -> Harness:
    return Harness()


def error(code: int, contains: str = "") -> object:
    return ("Error", code, contains)


def assert_error(msgs: list[object], code: int, contains: str = "") -> None:
    assert len(msgs) == 1, msgs
    (err,) = msgs
    assert err["Error"]["code"] == code, err
    assert contains in err["Error"]["message"], err


# -- connection lifecycle ---------------------------------------------------------------


def test_tcp_nodelay_is_requested_and_peer_is_real(h: Harness) -> None:
    calls = []
    t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5151))
    t.setTcpNoDelay = lambda on: calls.append(on)
    p = h.factory.buildProtocol(None)
    p.makeConnection(t)
    assert calls == [True]
    assert (p.ctx.peer_host, p.ctx.peer_port) == ("127.0.0.9", 5151)
    assert p.ctx.connected_at == h.clock.seconds()


def test_frames_before_connect_get_401_but_heartbeat_is_answered(h: Harness) -> None:
    c = h.client()
    c.send({"RoomJoin": {"user_id": 1, "room_id": 1, "nickname": "a"}})
    assert_error(c.received(), 401, "Connect")
    c.send("HeartBeat")
    assert c.received() == [{"HeartBeatResponse": {"timestamp": int(h.clock.seconds())}}]
    assert not c.closed


def test_connect_acks_and_registers_session(h: Harness) -> None:
    c = h.client()
    c.connect(7, nickname="neo")
    assert h.router.sessions[7] is c.proto
    assert c.proto.nickname == "neo"
    assert h.metric("gamed_sessions") == 1


def test_repeated_connect_same_id_reacks_other_id_conflicts(h: Harness) -> None:
    c = h.client()
    c.connect(7)
    c.send({"Connect": {"room_id": 0, "user_id": 7}})
    assert c.received() == [{"ConnectionAck": {"user_id": 7}}]
    c.send({"Connect": {"room_id": 0, "user_id": 8}})
    assert_error(c.received(), 409, "already connected")


def test_takeover_replaces_older_connection(h: Harness) -> None:
    old, other = h.client(), h.client()
    old.connect(1)
    other.connect(2)
    old.join(1, 5)
    other.join(2, 5)
    old.received()
    new = h.client()
    new.connect(1)
    assert_error(old.received(), 409, "replaced by a new connection")
    assert old.closed
    assert other.received() == [
        {"UserLeftRoom": {"room_id": 5, "user_id": 1, "nickname": "n1", "user_count": 1}}
    ]
    assert h.router.sessions[1] is new.proto
    old.lose()  # the old socket finally closes: must not unregister the new session
    assert h.router.sessions[1] is new.proto
    assert h.metric("gamed_disconnects_total", reason="replaced") == 1


def test_idle_timeout_closes_after_silence_only(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    h.clock.advance(20)
    c.send("HeartBeat")  # resets the idle clock
    h.clock.advance(20)
    assert not c.closed
    h.clock.advance(10.5)
    assert c.closed
    (notice,) = c.received()[1:]
    assert "no frame for 30 seconds" in notice["SystemMessage"]["message"]
    c.lose()
    assert h.metric("gamed_disconnects_total", reason="idle") == 1


def test_idle_timeout_zero_disables_it() -> None:
    h = Harness(idle_timeout=0)
    c = h.client()
    h.clock.advance(10_000)
    assert not c.closed
    assert not h.clock.getDelayedCalls()


def test_connection_cap_answers_503_then_closes() -> None:
    h = Harness(max_connections=2)
    a, b = h.client(), h.client()
    c = h.client()
    assert_error(c.received(), 503, "server full")
    assert c.closed and not a.closed and not b.closed
    assert len(h.router.connections) == 2
    c.lose()
    assert h.metric("gamed_connections") == 2
    a.lose()
    d = h.client()
    assert not d.closed


def test_oversize_length_prefix_gets_413_and_close_and_stops_parsing(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.proto.dataReceived(struct.pack(">I", 65537) + b"x" * 10 + frame("HeartBeat"))
    assert_error(c.received(), 413, "65537 bytes exceeds the limit of 65536")
    assert c.closed


def test_frame_at_limit_is_accepted() -> None:
    h = Harness(max_frame_bytes=100)
    c = h.client()
    payload = b'"HeartBeat"' + b" " * 89
    assert len(payload) == 100
    c.send(payload)
    assert list(c.received()[0]) == ["HeartBeatResponse"]


def test_frames_split_byte_by_byte_and_batched(h: Harness) -> None:
    c = h.client()
    data = frame({"Connect": {"room_id": 0, "user_id": 3}}) + frame("HeartBeat")
    for i in range(len(data)):
        c.proto.dataReceived(data[i : i + 1])
    msgs = c.received()
    assert [next(iter(x)) for x in msgs] == ["ConnectionAck", "HeartBeatResponse"]


def test_bad_json_gets_400_and_connection_stays(h: Harness) -> None:
    c = h.client()
    for bad in (b"", b"{", b"\xff\xfe", b"[1,2]", b'{"A":1,"B":2}', b'{"Nope":{}}', b"42"):
        c.send(bad)
        assert_error(c.received(), 400)
    assert not c.closed
    c.connect(1)
    assert h.metric("gamed_messages_received_total", type="invalid") == 7


def test_client_that_does_not_read_is_dropped_not_buffered() -> None:
    h = Harness(max_outgoing_bytes=4096)
    reader, sink = h.client(), h.client()
    reader.connect(1)
    sink.connect(2)
    reader.join(1, 9)
    sink.join(2, 9)
    reader.received()
    # The transport reports its buffer is over the high-water mark:
    sink.proto.pauseProducing()
    chat = {"ChatMessage": {"user_id": 1, "room_id": 9, "message": "x" * 200}}
    for _ in range(30):  # ~7 KB for the sink
        reader.send(chat)
        reader.received()
    assert sink.proto.close_reason == "slow" and sink.closed
    sink.lose()
    reader.send(chat)
    left, echoed = reader.received()  # the room goes on without it
    assert left["UserLeftRoom"]["user_id"] == 2
    assert echoed["ChatMessage"]["user_id"] == 1
    assert h.metric("gamed_disconnects_total", reason="slow") == 1


def test_backlog_resets_when_transport_drains() -> None:
    h = Harness(max_outgoing_bytes=4096)
    a = h.client()
    a.connect(1)
    a.join(1, 1)
    a.proto.pauseProducing()
    for _ in range(3):
        a.proto.send_frame(b"x" * 1000)
    a.proto.resumeProducing()
    a.proto.pauseProducing()
    for _ in range(3):
        a.proto.send_frame(b"x" * 1000)
    assert a.proto.close_reason == "closed" and not a.proto.closing


def test_drain_notifies_everyone_and_fires_when_all_gone(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    a.join(1, 2)
    b.connect(2)
    b.join(2, 2)
    a.received()
    d = h.router.drain("bye now")
    fired = []
    d.addCallback(fired.append)
    for c in (a, b):
        assert c.received() == [{"SystemMessage": {"message": "bye now"}}]
        assert c.closed
    a.lose()
    assert not fired
    assert b.received() == []  # no leave notices while draining
    b.lose()
    assert fired == [None]
    late = h.client()
    assert_error(late.received(), 503, "shutting down")


def test_drain_aborts_stragglers_after_grace() -> None:
    h = Harness(shutdown_grace=2)
    a = h.client()
    aborted = []
    a.transport.abortConnection = lambda: aborted.append(True)
    h.router.drain()
    h.clock.advance(2.1)
    assert aborted


def test_close_aborts_a_peer_that_never_reads_the_final_error(h: Harness) -> None:
    c = h.client()
    aborted = []
    c.transport.abortConnection = lambda: aborted.append(True)
    c.proto.dataReceived(struct.pack(">I", 10**6))
    h.clock.advance(CLOSE_FLUSH_SECONDS + 0.1)
    assert aborted


# -- ids and rooms ----------------------------------------------------------------------------


def test_user_id_must_match_connection(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.send({"RoomJoin": {"user_id": 2, "room_id": 1, "nickname": "x"}})
    assert_error(c.received(), 403, "not this connection's user")
    c.join(1, 1)
    c.send({"ChatMessage": {"user_id": 2, "room_id": 1, "message": "x"}})
    assert_error(c.received(), 403)
    c.send({"RoomLeave": {"user_id": 2, "room_id": 1}})
    assert_error(c.received(), 403)


def test_join_notices_counts_and_order(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    assert a.join(1, 5, "alice") == [{"RoomJoinSuccess": {"room_id": 5, "user_count": 1}}]
    assert b.join(2, 5, "bob") == [{"RoomJoinSuccess": {"room_id": 5, "user_count": 2}}]
    assert a.received() == [
        {"UserJoinedRoom": {"room_id": 5, "user_id": 2, "nickname": "bob", "user_count": 2}}
    ]
    assert [x.user_id for x in h.rooms.members(5)] == [1, 2]


def test_rejoin_same_room_resends_success_only(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    a.join(1, 5)
    b.join(2, 5)
    a.received()
    assert a.join(1, 5) == [{"RoomJoinSuccess": {"room_id": 5, "user_count": 2}}]
    assert b.received() == []


def test_joining_another_room_leaves_first_with_notices(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    a.join(1, 5)
    b.join(2, 5)
    a.received()
    assert b.join(2, 6) == [
        {"RoomLeaveSuccess": {"room_id": 5, "user_count": 1}},
        {"RoomJoinSuccess": {"room_id": 6, "user_count": 1}},
    ]
    assert a.received() == [
        {"UserLeftRoom": {"room_id": 5, "user_id": 2, "nickname": "n2", "user_count": 1}}
    ]
    assert h.rooms.room_of(2).room_id == 6


@pytest.mark.parametrize("room", [0, 1_000_001, 4_294_967_295])
def test_room_id_range_is_422(h: Harness, room: int) -> None:
    c = h.client()
    c.connect(1)
    assert_error(c.join(1, room), 422, "1..1000000")
    c.send({"ChatMessage": {"user_id": 1, "room_id": room, "message": "x"}})
    assert_error(c.received(), 422)


def test_full_room_is_409_and_you_stay_where_you_were() -> None:
    h = Harness(max_room_users=2)
    cs = [h.client() for _ in range(3)]
    for i, c in enumerate(cs, 1):
        c.connect(i)
    cs[0].join(1, 1)
    cs[1].join(2, 1)
    cs[2].join(3, 2)
    assert_error(cs[2].join(3, 1), 409, "full")
    assert h.rooms.room_of(3).room_id == 2


def test_leave_rules(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    a.send({"RoomLeave": {"user_id": 1, "room_id": 5}})
    assert_error(a.received(), 404, "not in room 5")
    a.join(1, 5)
    b.join(2, 5)
    a.received()
    a.send({"RoomLeave": {"user_id": 1, "room_id": 5}})
    assert a.received() == [{"RoomLeaveSuccess": {"room_id": 5, "user_count": 1}}]
    assert b.received() == [
        {"UserLeftRoom": {"room_id": 5, "user_id": 1, "nickname": "n1", "user_count": 1}}
    ]
    b.send({"RoomLeave": {"user_id": 2, "room_id": 5}})
    assert b.received() == [{"RoomLeaveSuccess": {"room_id": 5, "user_count": 0}}]
    assert h.rooms.get(5) is None and len(h.rooms) == 0


def test_disconnect_leaves_room_with_notice(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    a.join(1, 5)
    b.join(2, 5)
    a.received()
    b.lose()
    assert a.received() == [
        {"UserLeftRoom": {"room_id": 5, "user_id": 2, "nickname": "n2", "user_count": 1}}
    ]
    assert 2 not in h.router.sessions


# -- chat -----------------------------------------------------------------------------


def test_chat_goes_to_every_member_sender_included_in_order(h: Harness) -> None:
    cs = [h.client() for _ in range(3)]
    for i, c in enumerate(cs, 1):
        c.connect(i)
        c.join(i, 4)
    for c in cs:
        c.received()
    for n in range(3):
        cs[n % 2].send({"ChatMessage": {"user_id": n % 2 + 1, "room_id": 4, "message": f"m{n}"}})
    for c in cs:
        assert [x["ChatMessage"]["message"] for x in c.received()] == ["m0", "m1", "m2"]
    assert h.rooms.get(4).message_count == 3
    assert h.metric("gamed_chat_deliveries_total") == 9


def test_chat_extra_fields_are_dropped_on_rebroadcast(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.join(1, 4)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "hi", "evil": "x"}})
    assert c.received() == [{"ChatMessage": {"user_id": 1, "room_id": 4, "message": "hi"}}]


def test_chat_needs_membership(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "x"}})
    assert_error(c.received(), 404, "not in room 4")
    c.join(1, 3)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "x"}})
    assert_error(c.received(), 404)


def test_chat_length_in_utf8_bytes(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.join(1, 4)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": ""}})
    assert_error(c.received(), 422, "empty")
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "é" * 500}})  # 1000 bytes
    assert len(c.received()) == 1 and not c.closed
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "é" * 500 + "x"}})
    assert_error(c.received(), 413, "1001 bytes")
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "x" * 1001}})
    assert_error(c.received(), 413)


def test_game_messages_are_refused_cleanly_without_a_game_service(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.send({"StartGame": {"room_id": 1}})
    assert_error(c.received(), 404, "games")


# -- middleware hooks ------------------------------------------------------------------


@implementer(IMiddleware, IConnectionObserver)
class Recorder:
    name = "recorder"

    def __init__(self, veto_tag: str | None = None, refuse_host: str | None = None) -> None:
        self.veto_tag = veto_tag
        self.refuse_host = refuse_host
        self.calls: list[tuple] = []

    def before_process(self, ctx, message):
        self.calls.append(("before", ctx.user_id, message.TAG))
        if message.TAG == self.veto_tag:
            return Veto(429, "slow down")
        return None

    def after_process(self, ctx, message, result):
        self.calls.append(("after", message.TAG, None if result is None else result.code))

    def connection_opened(self, ctx):
        self.calls.append(("opened", ctx.peer_host))
        if ctx.peer_host == self.refuse_host:
            return Veto(403, "blocked address")
        return None

    def connection_closed(self, ctx, reason):
        self.calls.append(("closed", reason))


def test_middleware_veto_sends_error_and_after_sees_refusal() -> None:
    rec = Recorder(veto_tag="ChatMessage")
    h = Harness(middleware=(rec,))
    c = h.client()
    c.connect(1)
    c.join(1, 1)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 1, "message": "x"}})
    assert_error(c.received(), 429, "slow down")
    assert ("after", "ChatMessage", 429) in rec.calls
    assert ("after", "RoomJoin", None) in rec.calls
    c.lose()
    assert rec.calls[-1] == ("closed", "closed")


def test_connection_veto_refuses_before_any_parsing() -> None:
    rec = Recorder(refuse_host="127.0.0.1")
    h = Harness(middleware=(rec,))
    c = h.client()
    assert_error(c.received(), 403, "blocked address")
    assert c.closed
    c.send({"Connect": {"room_id": 0, "user_id": 1}})
    assert c.received() == []
    assert h.metric("gamed_connections_refused_total", reason="vetoed") == 1


def test_a_raising_plugin_is_counted_and_the_message_still_handled() -> None:
    @implementer(IMiddleware)
    class Broken:
        name = "broken"

        def before_process(self, ctx, message):
            raise RuntimeError("boom")

        def after_process(self, ctx, message, result):
            raise RuntimeError("boom")

    h = Harness(middleware=(Broken(),))
    c = h.client()
    c.connect(1)  # still acked
    assert h.metric("gamed_middleware_failures_total", plugin="broken", phase="before") == 1
    assert h.metric("gamed_middleware_failures_total", plugin="broken", phase="after") == 1


def test_handler_crash_is_500_and_connection_survives(h: Harness) -> None:
    c = h.client()
    c.connect(1)

    def explode(conn, msg):
        raise ZeroDivisionError

    h.router._handlers[m.HeartBeat] = explode
    c.send("HeartBeat")
    assert_error(c.received(), 500, "internal error")
    assert not c.closed
    c.join(1, 1)


def test_events_for_connect_join_leave_disconnect(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.join(1, 3)
    h.clock.advance(12)
    c.lose()
    kinds = [type(e).__name__ for e in h.seen]
    assert kinds == [
        "UserConnected",
        "RoomCreated",
        "RoomJoined",
        "RoomLeft",
        "RoomDeleted",
        "UserDisconnected",
    ]
    assert h.seen[-1].session_seconds == 12


def test_input_after_an_oversize_prefix_is_not_read(h: Harness) -> None:
    c = h.client()
    c.proto.dataReceived(struct.pack(">I", 10**6))
    c.proto.dataReceived(struct.pack(">I", 10**6) + frame("HeartBeat"))
    assert_error(c.received(), 413)
    assert h.router.frames_refused["oversize"] == 1


def test_takeover_ends_the_old_session_in_the_event_stream(h: Harness) -> None:
    old = h.client()
    old.connect(1)
    h.clock.advance(7)
    new = h.client()
    new.connect(1)
    kinds = [(type(e).__name__, getattr(e, "reason", None)) for e in h.seen]
    assert kinds == [
        ("UserConnected", None),
        ("UserDisconnected", "replaced"),
        ("UserConnected", None),
    ]
    assert h.seen[1].session_seconds == 7
    old.lose()  # the old socket closing later emits nothing more
    assert len(h.seen) == 3
