"""Unit tests of gamed.client: command parsing, framing across chunks, output formatting,
and the session's reactions, with a fake clock and an in-memory transport (no sockets,
no sleeps)."""

from __future__ import annotations

import struct

import orjson
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gamed import client as c
from gamed import codec
from gamed import messages as m

# -- parse_line ---------------------------------------------------------------------


def state(room: int | None = 5) -> c.ClientState:
    return c.ClientState(user_id=7, nickname="neo", room=room)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello there", m.ChatMessage(7, 5, "hello there")),
        ("//slash at start", m.ChatMessage(7, 5, "/slash at start")),
        ("/start", m.StartGame(5)),
        ("/ready", m.ToggleReady(5)),
        ("/move 1 2.5 -90", m.PlayerAction(5, m.Move(1.0, 2.5, -90.0))),
        ("/attack 8 15", m.PlayerAction(5, m.Attack(8, 15))),
        ("/use health potion", m.PlayerAction(5, m.UseItem("health potion"))),
        ("/hb", m.HeartBeat()),
        ('/raw {"HeartBeat": null}', c.RawPayload(b'{"HeartBeat": null}')),
        ("/quit", c.QUIT),
        ("/help", c.HELP_CMD),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_line(line: str, expected: object) -> None:
    assert c.parse_line(line, state()) == expected


def test_join_switches_room_and_optionally_nickname() -> None:
    s = state(room=None)
    assert c.parse_line("/join 9", s) == m.RoomJoin(7, 9, "neo")
    assert s.room == 9
    assert c.parse_line("/join 3 trinity", s) == m.RoomJoin(7, 3, "trinity")
    assert (s.room, s.nickname) == (3, "trinity")
    # the next chat goes to the new room at once (the server handles frames in order)
    assert c.parse_line("hi", s) == m.ChatMessage(7, 3, "hi")


def test_leave_clears_room() -> None:
    s = state(room=5)
    assert c.parse_line("/leave", s) == m.RoomLeave(7, 5)
    assert s.room is None


@pytest.mark.parametrize(
    ("line", "room", "complaint"),
    [
        ("hello", None, "not in a room"),
        ("/leave", None, "not in a room"),
        ("/start", None, "not in a room"),
        ("/join", 5, "usage: /join"),
        ("/join five", 5, "ROOM must be an integer"),
        ("/move 1 2", 5, "usage: /move"),
        ("/move 1 x 3", 5, "Y must be a number"),
        ("/attack 8", 5, "usage: /attack"),
        ("/attack 8 lots", 5, "DAMAGE must be an integer"),
        ("/use", 5, "usage: /use"),
        ("/raw", 5, "usage: /raw"),
        ("/dance", 5, "unknown command /dance"),
    ],
)
def test_parse_line_errors(line: str, room: int | None, complaint: str) -> None:
    with pytest.raises(c.UsageError, match=complaint):
        c.parse_line(line, state(room))


def test_encode_command() -> None:
    assert c.encode_command(m.HeartBeat()) == b'\x00\x00\x00\x0b"HeartBeat"'
    assert c.encode_command(c.RawPayload(b"not json")) == b"\x00\x00\x00\x08not json"


# -- formatting -----------------------------------------------------------------------

PLAYERS = [
    {"user_id": 7, "nickname": "neo", "score": 10, "ready": True, "position": None},
    {"user_id": 8, "nickname": "trinity", "score": -5, "ready": True, "position": None},
]
GAME_STATE = {
    "room_id": 5,
    "status": "InProgress",
    "players": PLAYERS,
    "current_turn": 8,
    "round": 2,
    "started_at": 1700000000,
}


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (m.ConnectionAck(7), "* connected as user 7"),
        (m.HeartBeatResponse(1700000000), "* heartbeat ok (server time 1700000000)"),
        (m.Error(404, "not in room 5"), "! Error 404: not in room 5"),
        (m.RoomJoinSuccess(5, 1), "* joined room 5 (1 user)"),
        (m.UserJoinedRoom(5, 8, "trinity", 3), "* trinity(8) joined room 5 (3 users)"),
        (m.RoomLeaveSuccess(5, 2), "* left room 5 (2 users)"),
        (m.UserLeftRoom(5, 8, "trinity", 2), "* trinity(8) left room 5 (2 users)"),
        (m.ChatMessage(7, 5, "hello"), "[room 5] neo(7): hello"),
        (m.ChatMessage(99, 5, "who am I"), "[room 5] #99: who am I"),
        (m.SystemMessage("server shutting down"), "** server shutting down"),
        (
            m.GameStarted(5, PLAYERS),
            "* game started in room 5: neo(7), trinity(8) (type /ready)",
        ),
        (m.PlayerReadyUpdate(5, 8, True), "* #8 is ready in room 5"),
        (m.PlayerReadyUpdate(5, 7, False), "* neo(7) is not ready in room 5"),
        (m.GameInProgress(5, 7, 1), "* room 5 round 1: turn of neo(7) (your turn)"),
        (m.GameInProgress(5, 8, 1), "* room 5 round 1: turn of #8"),
        (
            m.ActionResult(5, 7, {"Move": {"x": 1.0, "y": 2.5, "direction": 0.0}}, GAME_STATE),
            "* [room 5] neo(7) moves to (1, 2.5) facing 0; scores: neo(7)=10, trinity(8)=-5",
        ),
        (
            m.ActionResult(5, 7, {"Attack": {"target_id": 8, "damage": 5}}, GAME_STATE),
            "* [room 5] neo(7) attacks trinity(8) for 5; scores: neo(7)=10, trinity(8)=-5",
        ),
        (
            m.ActionResult(5, 7, {"UseItem": {"item_id": "potion"}}, GAME_STATE),
            "* [room 5] neo(7) uses potion; scores: neo(7)=10, trinity(8)=-5",
        ),
        (
            m.GameEnded(5, PLAYERS[0], [[7, 10], [8, -5]]),
            "* game over in room 5: neo(7) wins; final scores: neo(7)=10, #8=-5",
        ),
        (
            m.GameEnded(5, None, [[7, 0]]),
            "* game over in room 5: no winner; final scores: neo(7)=0",
        ),
    ],
)
def test_format_server_messages(msg: object, expected: str) -> None:
    fmt = c.Formatter(user_id=7, nicks={7: "neo"})
    assert fmt.format(*codec.decode_any(codec.encode(msg))) == expected


def test_formatter_learns_nicknames() -> None:
    fmt = c.Formatter(user_id=7)
    fmt.format("UserJoinedRoom", {"room_id": 5, "user_id": 8, "nickname": "tri", "user_count": 2})
    assert fmt.format("ChatMessage", {"user_id": 8, "room_id": 5, "message": "x"}) == (
        "[room 5] tri(8): x"
    )


@pytest.mark.parametrize(
    ("tag", "body", "expected"),
    [
        ("Mystery", {"a": 1}, 'Mystery {"a":1}'),
        ("Error", {"code": 400}, 'Error {"code":400}'),  # missing field: generic form
        ("ChatMessage", "odd", 'ChatMessage "odd"'),
        ("HeartBeat", None, "HeartBeat"),
    ],
)
def test_format_fallback(tag: str, body: object, expected: str) -> None:
    assert c.Formatter().format(tag, body) == expected


# -- session, with an in-memory transport and a fake clock ------------------------------


class Harness:
    """A Session wired to a StringTransport and a Clock, recording everything."""

    def __init__(self, **opts: object) -> None:
        self.clock = Clock()
        self.out: list[str] = []
        self.notes: list[str] = []
        self.fatals: list[str] = []
        self.stops: list[int] = []
        self.opts = c.Options(user_id=7, nickname="neo", **opts)  # type: ignore[arg-type]
        self.session = c.Session(
            self.opts,
            self.clock,
            self.out.append,
            self.notes.append,
            self.stops.append,
            self.fatals.append,
        )
        self.proto = c.ClientProtocol(self.session)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def sent(self) -> list[tuple[str, object]]:
        """Decode and clear what the client has written."""
        data, out = self.transport.value(), []
        self.transport.clear()
        while data:
            (n,) = struct.unpack(">I", data[:4])
            out.append(codec.decode_any(data[4 : 4 + n]))
            data = data[4 + n :]
        return out

    def feed(self, *msgs: object) -> None:
        self.proto.dataReceived(b"".join(codec.frame(x) for x in msgs))

    def server_closes(self) -> None:
        self.transport.loseConnection()
        self.proto.connectionLost(Failure(ConnectionError("closed")))


def test_frames_split_and_merged_across_chunks() -> None:
    h = Harness()
    data = b"".join(
        codec.frame(x)
        for x in (m.ConnectionAck(7), m.ChatMessage(8, 5, "héllo"), m.RoomJoinSuccess(5, 2))
    )
    for i in range(len(data)):  # one byte per chunk: every split point, UTF-8 included
        h.proto.dataReceived(data[i : i + 1])
    assert h.out == ["* connected as user 7", "[room 5] #8: héllo", "* joined room 5 (2 users)"]
    h.out.clear()
    h.proto.dataReceived(data)  # and all three in one chunk
    assert len(h.out) == 3


def test_connect_then_join_on_ack() -> None:
    h = Harness(room=5, token="tok")
    assert h.sent() == [
        ("Connect", {"room_id": 5, "user_id": 7, "token": "tok", "nickname": "neo"})
    ]
    h.feed(m.ConnectionAck(7))
    assert h.sent() == [("RoomJoin", {"user_id": 7, "room_id": 5, "nickname": "neo"})]


def test_no_ack_times_out() -> None:
    h = Harness(timeout=5.0)
    h.clock.advance(5)
    assert h.fatals == ["no ConnectionAck from the server within 5 s"]
    assert h.transport.disconnecting
    h.proto.connectionLost(Failure(ConnectionError("closed")))
    assert h.stops == [1]


def test_say_mode_chats_after_join_then_exits_zero() -> None:
    h = Harness(room=5, say=["hi", "bye"], wait=1.0)
    h.feed(m.ConnectionAck(7))
    h.sent()
    h.feed(m.RoomJoinSuccess(5, 1))
    assert h.sent() == [
        ("ChatMessage", {"user_id": 7, "room_id": 5, "message": "hi"}),
        ("ChatMessage", {"user_id": 7, "room_id": 5, "message": "bye"}),
    ]
    h.feed(m.ChatMessage(7, 5, "hi"))
    h.clock.advance(0.99)
    assert not h.transport.disconnecting
    h.clock.advance(0.02)
    assert h.transport.disconnecting
    h.proto.connectionLost(Failure(ConnectionError("closed")))
    assert h.stops == [0]
    assert h.out[-1] == "[room 5] neo(7): hi"
    assert h.fatals == []


def test_say_mode_join_refused_exits_one() -> None:
    h = Harness(room=5, say=["hi"])
    h.feed(m.ConnectionAck(7), m.Error(409, "room 5 is full"))
    assert h.fatals == ["could not join room 5: Error 409: room 5 is full"]
    h.proto.connectionLost(Failure(ConnectionError("closed")))
    assert h.stops == [1]


def test_server_close_after_error_exits_one_with_reason() -> None:
    h = Harness()
    h.feed(m.Error(401, "bad token"))
    h.server_closes()
    assert h.fatals == ["server closed the connection: Error 401: bad token"]
    assert h.stops == [1]


def test_server_close_without_error() -> None:
    h = Harness()
    h.feed(m.ConnectionAck(7), m.SystemMessage("bye"))
    h.server_closes()
    assert h.fatals == ["server closed the connection"]
    assert h.stops == [1]


def test_heartbeats_every_interval_and_auto_replies_are_quiet() -> None:
    h = Harness(heartbeat=10.0)
    h.feed(m.ConnectionAck(7))
    h.sent()
    h.clock.advance(9.9)
    assert h.sent() == []
    h.clock.advance(0.1)
    assert h.sent() == [("HeartBeat", None)]
    h.feed(m.HeartBeatResponse(1))
    assert h.out == ["* connected as user 7"]  # the automatic reply is not printed
    h.session.handle_line("/hb")  # a manual one is
    assert h.sent() == [("HeartBeat", None)]
    h.feed(m.HeartBeatResponse(2))
    assert h.out[-1] == "* heartbeat ok (server time 2)"


def test_interactive_lines() -> None:
    h = Harness()
    ready: list[bool] = []
    h.session.on_ready = lambda: ready.append(True)
    h.feed(m.ConnectionAck(7))
    assert ready == [True]
    h.sent()
    h.session.handle_line("hello")
    assert h.notes == ["! not in a room (use /join ROOM)"]
    h.session.handle_line("/join 5")
    h.session.handle_line("hello")
    h.session.handle_line('/raw {"Bogus": 1}')
    h.session.handle_line("/join 5 trinity")
    h.feed(m.ChatMessage(7, 5, "hello"))
    assert h.out[-1] == "[room 5] trinity(7): hello"
    assert h.sent() == [
        ("RoomJoin", {"user_id": 7, "room_id": 5, "nickname": "neo"}),
        ("ChatMessage", {"user_id": 7, "room_id": 5, "message": "hello"}),
        ("Bogus", 1),
        ("RoomJoin", {"user_id": 7, "room_id": 5, "nickname": "trinity"}),
    ]
    h.session.handle_line("/help")
    assert "/join ROOM [NICK]" in h.notes[-1]
    h.session.handle_line("/quit")
    assert h.transport.disconnecting
    h.proto.connectionLost(Failure(ConnectionError("closed")))
    assert h.stops == [0]


def test_input_end_waits_then_exits_zero() -> None:
    h = Harness(wait=2.0)
    h.feed(m.ConnectionAck(7))
    h.session.input_ended()
    h.clock.advance(1.9)
    assert not h.transport.disconnecting
    h.clock.advance(0.1)
    assert h.transport.disconnecting


def test_json_mode_prints_raw_payloads() -> None:
    h = Harness(json=True)
    h.feed(m.ConnectionAck(7), m.ChatMessage(8, 5, "x"))
    assert [orjson.loads(x) for x in h.out] == [
        {"ConnectionAck": {"user_id": 7}},
        {"ChatMessage": {"user_id": 8, "room_id": 5, "message": "x"}},
    ]


def test_unreadable_frame_is_reported_not_fatal() -> None:
    h = Harness()
    h.proto.dataReceived(codec.frame_payload(b"\xffnot json"))
    h.feed(m.ConnectionAck(7))
    assert h.out[0].startswith("? unreadable frame")
    assert h.out[1] == "* connected as user 7"


def test_interrupt_is_not_reported_as_a_server_close() -> None:
    h = Harness()
    h.feed(m.ConnectionAck(7))
    h.session.interrupted()  # reactor shutdown (Ctrl-C) closes the connection
    h.server_closes()
    assert (h.fatals, h.stops) == ([], [130])


def test_connection_failed() -> None:
    h = Harness(port=7001)
    h.session.connection_failed(Failure(ConnectionRefusedError("refused")))
    assert h.fatals == ["cannot connect to 127.0.0.1:7001: refused"]
    assert h.stops == [1]


# -- command line -----------------------------------------------------------------------


def test_parse_args_defaults_and_say() -> None:
    o = c.parse_args(["--user-id", "7", "--room", "5", "--say", "a", "--say", "b"])
    assert (o.host, o.port, o.user_id, o.room, o.say, o.wait) == (
        "127.0.0.1",
        7000,
        7,
        5,
        ["a", "b"],
        1.0,
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--user-id", "x"],
        ["--user-id", "-1"],
        ["--user-id", "7", "--say", "hi"],  # --say needs --room
        ["--user-id", "7", "--timeout", "0"],
    ],
)
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        c.parse_args(argv)
    assert e.value.code == 2
