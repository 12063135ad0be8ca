"""The Router's rules on fake connections (tests/unit/fakes.py): no transport, no framing.

Every test drives the router as a transport would (connection_made,
frame_received, connection_lost) through FakeConnection, which records what
the router wrote to it and how it closed it.
"""

from __future__ import annotations

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gamed import events as ev
from gamed import messages as m
from gamed.games import Games, NullGames
from gamed.interfaces import (
    IConnection,
    IConnectionHandler,
    IConnectionObserver,
    IGameService,
    IMessageContext,
    IMiddleware,
    IServerControl,
)
from gamed.pipeline import Pipeline, Veto
from gamed.router import DRAIN_FLUSH_SECONDS, Router
from tests.unit.fakes import (
    FakeServerControl,
    HarnessBase,
    RouterClient,
    assert_error,
)


class Harness(HarnessBase):
    def __init__(self, middleware: tuple = (), games: bool = False, **settings: object) -> None:
        super().__init__(**settings)
        self.games = Games(self.clock, self.rooms, self.events, self.settings) if games else None
        self.router = Router(
            self.settings,
            self.clock,
            self.rooms,
            Pipeline(middleware),
            self.metrics,
            self.events,
            self.games,
        )

    def client(self) -> RouterClient:
        self._port += 1
        return RouterClient(self.router, self.clock, self._port)


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- interfaces ---------------------------------------------------------------------------


def test_router_and_fakes_provide_their_interfaces(h: Harness) -> None:
    verifyObject(IConnectionHandler, h.router)
    verifyObject(IServerControl, h.router)
    verifyObject(IGameService, h.router.games)
    assert isinstance(h.router.games, NullGames)  # games off unless given
    c = h.client()
    verifyObject(IConnection, c.conn)
    verifyObject(IMessageContext, c.conn.ctx)
    verifyObject(IServerControl, FakeServerControl())
    verifyObject(IGameService, NullGames())


def test_control_counts_connections_and_reports_game_status(h: Harness) -> None:
    a, _b = h.client(), h.client()
    a.connect(1)
    assert h.router.connection_count() == 2
    assert h.router.game_status(5) is None  # games off
    a.lose()
    assert h.router.connection_count() == 1


def test_game_status_comes_from_the_game_service() -> None:
    h = Harness(games=True)
    assert h.router.games is h.games
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    a.join(1, 5)
    b.join(2, 5)
    assert h.router.game_status(5) is None
    a.send({"StartGame": {"room_id": 5}})
    assert h.router.game_status(5) == "Waiting"


def test_drain_aborts_stragglers_through_the_interface() -> None:
    h = Harness(shutdown_grace=2)
    a = h.client()
    h.router.drain()
    assert not a.closed, "clients get the grace to leave on their own"
    h.clock.advance(2)
    assert a.closed and a.conn.close_reason == "shutdown" and not a.conn.aborted
    h.clock.advance(DRAIN_FLUSH_SECONDS)
    assert a.conn.aborted


def test_an_expired_seat_event_removes_the_member(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    b.connect(2)
    a.join(1, 5)
    b.join(2, 5)
    a.received()
    h.events.emit(ev.SeatExpired(2, 5, h.clock.seconds()))
    assert a.received() == [
        {"UserLeftRoom": {"room_id": 5, "user_id": 2, "nickname": "n2", "user_count": 1}}
    ]
    assert h.rooms.room_of(2) is None


# -- connections and sessions ------------------------------------------------------------


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
    assert h.router.sessions[7] is c.conn
    assert c.conn.nickname == "neo"
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
    assert h.router.sessions[1] is new.conn
    old.lose()  # the old socket finally closes: must not unregister the new session
    assert h.router.sessions[1] is new.conn
    assert h.metric("gamed_disconnects_total", reason="replaced") == 1


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


def test_bad_json_gets_400_and_connection_stays(h: Harness) -> None:
    c = h.client()
    for bad in (b"", b"{", b"\xff\xfe", b"[1,2]", b'{"A":1,"B":2}', b'{"Nope":{}}', b"42"):
        c.send(bad)
        assert_error(c.received(), 400)
    assert not c.closed
    c.connect(1)
    assert h.metric("gamed_messages_received_total", type="invalid") == 7


# -- ids and rooms ---------------------------------------------------------------------------


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


# -- chat ------------------------------------------------------------------------------------


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


# -- middleware hooks --------------------------------------------------------------------------


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


# -- text rules: control characters ------------------------------------------------------


@pytest.mark.parametrize(
    "nick", ["ne\x00o", "neo\n", "\x1b[31mred", "a\x7fb", "a\x9bb", "evil\u202egnp.exe", "a\u2028b"]
)
def test_control_characters_in_a_nickname_are_422_at_connect_and_join(
    h: Harness, nick: str
) -> None:
    c = h.client()
    c.send({"Connect": {"room_id": 0, "user_id": 1, "nickname": nick}})
    assert_error(c.received(), 422, "nickname contains a control character (U+")
    assert c.conn.user_id is None
    c.connect(1, nickname="neo")
    c.join(1, 5, "neo")
    assert_error(c.join(1, 6, nick), 422, "control character")
    assert h.rooms.room_of(1).room_id == 5  # the refused join left you where you were


def test_nicknames_with_spaces_accents_and_emoji_are_fine(h: Harness) -> None:
    c = h.client()
    c.connect(1, nickname="Zoë the 🐉")
    assert c.join(1, 5, "دینا 李 ‍👩‍💻")[0]["RoomJoinSuccess"]["room_id"] == 5


@pytest.mark.parametrize("text", ["nul\x00", "bell\x07", "esc \x1b[2J", "cr\r", "del\x7f", "\x9b"])
def test_chat_refuses_control_characters_except_tab_and_newline(h: Harness, text: str) -> None:
    c = h.client()
    c.connect(1)
    c.join(1, 4)
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": text}})
    assert_error(c.received(), 422, "control character")
    c.send({"ChatMessage": {"user_id": 1, "room_id": 4, "message": "line 1\n\tline 2 \u00a0 é"}})
    assert c.received() == [
        {"ChatMessage": {"user_id": 1, "room_id": 4, "message": "line 1\n\tline 2 \u00a0 é"}}
    ]
