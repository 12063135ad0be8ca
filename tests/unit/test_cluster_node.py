"""ClusterNode on a FakeLink (tests/unit/fakes.py) and a Clock: envelopes in and out,
takeover kicks, the lease tick, and failing fast while Redis is down. The scripts
themselves run against a real redis-server in tests/integration/test_cluster.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gamed import codec
from gamed import messages as m
from gamed.cluster import envelope as env
from gamed.cluster import node as node_module
from gamed.cluster.directory import Seat, room_keys
from gamed.cluster.node import ClusterNode
from gamed.cluster.pages import ClusterPage
from gamed.config import Settings
from gamed.errors import Refusal
from gamed.events import EventBus
from gamed.rooms import RoomService
from tests.unit.fakes import FakeConnection, FakeLink, Member


class World:
    def __init__(self, replies: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.rooms = RoomService(self.clock, 10, EventBus())
        self.link = FakeLink()
        answers = replies or {}
        self.link.reply = lambda command: answers.get(command[0])
        self.node = ClusterNode(
            Settings(redis="redis://127.0.0.1:6379/0", node_id="me"),
            self.clock,
            self.rooms,
            link_factory=lambda *args: self.link,
        )
        self.node.startService()

    def deliver(self, payload: bytes) -> None:
        self.link.handlers["gamed:n:me"](payload)


@pytest.fixture
def w() -> World:
    return World()


def test_envelopes_round_trip() -> None:
    frame = codec.frame(m.SystemMessage("hi"))
    kind, header, body = env.split(env.members(7, "b", 2, 5, frame + frame))
    assert (kind, header) == (env.MEMBERS, [b"7", b"b", b"2", b"5"])
    assert list(env.frames(body)) == [frame, frame]
    assert env.split(env.kick(3, "99")) == (env.KICK, [b"3", b"99"], b"")
    with pytest.raises(env.BadEnvelope):
        env.split(b"garbage")
    with pytest.raises(env.BadEnvelope):
        list(env.frames(frame[:-1]))


def test_a_room_with_only_local_members_publishes_nothing(w: World) -> None:
    a, b = Member(1), Member(2)
    room = w.rooms.join(a, 5)
    w.rooms.join(b, 5)
    w.link.published.clear()
    w.rooms.broadcast_chat(room, b"\x00\x00\x00\x02{}", 0.0)
    assert w.link.published == []
    assert a.frames and b.frames


def test_a_frame_is_published_once_per_other_node(w: World) -> None:
    room = w.rooms.join(Member(1), 5)
    room.remote = {"b": 2, "c": 1}
    frame = codec.frame(m.SystemMessage("x"))
    w.rooms.broadcast_chat(room, frame, 0.0)
    assert w.link.published == [
        ("gamed:n:b", env.room_frame(5, frame)),
        ("gamed:n:c", env.room_frame(5, frame)),
    ]


def test_frames_from_other_nodes_reach_local_members_and_go_no_further(w: World) -> None:
    member = Member(1)
    room = w.rooms.join(member, 5)
    room.remote = {"b": 1}
    frame = codec.frame(m.SystemMessage("from b"))
    w.deliver(env.room_frame(5, frame))
    w.deliver(env.room_frame(6, frame))  # no members here: dropped
    assert member.frames == [frame]
    assert w.link.published == []
    assert w.node.deliveries_in == 1


def test_membership_envelopes_keep_the_remote_counts(w: World) -> None:
    member = Member(1)
    room = w.rooms.join(member, 5)
    notice = codec.frame(m.UserLeftRoom(5, 9, "n9", 2))
    w.deliver(env.members(5, "b", 2, 3))
    assert (room.remote, room.user_count) == ({"b": 2}, 3)
    w.deliver(env.members(5, "b", 0, 1, notice))
    assert (room.remote, room.user_count) == ({}, 1)
    assert member.frames == [notice]


def set_state(w: World, new: str) -> None:
    old, w.link.state = w.link.state, new
    for listener in w.link.listeners:
        listener(old, new)


def test_after_a_gap_members_of_rooms_across_nodes_are_told_what_may_be_missing(
    w: World,
) -> None:
    spanning, alone = Member(1), Member(2)
    w.rooms.join(spanning, 5)
    w.rooms.join(alone, 6)
    w.deliver(env.members(5, "b", 2, 3))  # room 5 has members on node b
    set_state(w, "degraded")
    w.clock.advance(4.0)
    assert spanning.frames == [] and w.node.gaps == 0
    set_state(w, "up")
    (notice,) = [orjson.loads(f[4:]) for f in spanning.frames]
    text = notice["SystemMessage"]["message"]
    assert "interrupted for 4.0s" in text and "may be missing" in text, text
    assert alone.frames == []  # all its members are here: nothing was missed
    assert w.node.gaps == 1
    set_state(w, "up")  # no gap, no notice
    assert len(spanning.frames) == 1


def test_bad_envelopes_are_counted_not_raised(w: World) -> None:
    for payload in (b"", b"Z1\n", b"F\n", b"Fx\nabc", b"M5 b\n", b"K1\n"):
        w.deliver(payload)
    assert w.node.bad_envelopes == 6


def test_frame_envelopes_read_as_the_general_path_reads_them(w: World) -> None:
    """The F fast path (a bare room id) and the general one (anything else) agree."""
    member = Member(1)
    w.rooms.join(member, 5)
    frame = codec.frame(m.SystemMessage("x"))
    w.deliver(b"F5 extra\n" + frame)  # extra header fields: the general path, delivered
    w.deliver(b"F+5\n" + frame)  # int() reads it: the general path, delivered
    w.deliver(b"F5" + frame)  # no header end: counted
    w.deliver(b"F-5\n" + frame)  # no such room: dropped
    assert member.frames == [frame, frame]
    assert (w.node.deliveries_in, w.node.bad_envelopes, w.node.messages_in) == (2, 1, 4)


def test_a_kick_with_a_newer_epoch_closes_the_local_session(w: World) -> None:
    w.link.reply = lambda command: ["", "100"] if command[0] == "SCRIPT:claim" else None
    conn = FakeConnection()
    conn.user_id = 4
    w.node.session_opened(conn)
    w.deliver(env.kick(4, "50"))  # older than ours: ignored
    assert not conn.closing
    w.deliver(env.kick(4, "150"))
    assert conn.closing and conn.close_reason == "replaced"
    assert conn.messages() == [{"Error": {"code": 409, "message": "replaced by a new connection"}}]


def test_a_kick_before_our_claim_is_answered_waits_for_it(w: World) -> None:
    answer: defer.Deferred[Any] = defer.Deferred()
    w.link.reply = lambda command: answer if command[0] == "SCRIPT:claim" else None
    conn = FakeConnection()
    conn.user_id = 4
    w.node.session_opened(conn)
    w.deliver(env.kick(4, "150"))
    assert not conn.closing
    answer.callback(["", "100"])
    assert conn.closing


def test_a_claim_that_replaced_another_node_tells_it(w: World) -> None:
    w.link.reply = lambda command: ["b", "100"] if command[0] == "SCRIPT:claim" else None
    conn = FakeConnection()
    conn.user_id = 4
    w.node.session_opened(conn)
    assert ("gamed:n:b", env.kick(4, "100")) in w.link.published
    w.node.session_closed(conn)
    assert ("SCRIPT:release", "gamed:session:4", "me", "100") in w.link.commands


def test_an_admin_kick_goes_to_the_node_that_holds_the_session(w: World) -> None:
    w.link.reply = lambda command: {"gamed:session:4": "b 100", "gamed:session:5": "me 7"}.get(
        command[1]
    )
    sent: list[bool] = []
    for uid in (4, 5, 6):  # on b, on this node (kick_user's business), on none
        w.node.kick_remote(uid, 403, "kicked by an administrator").addCallback(sent.append)
    assert sent == [True, False, False]
    assert w.link.published == [("gamed:n:b", env.admin_kick(4, 403, "kicked by an administrator"))]


def test_an_admin_kick_envelope_closes_the_local_session(w: World) -> None:
    w.link.reply = lambda command: ["", "100"] if command[0] == "SCRIPT:claim" else None
    conn = FakeConnection()
    conn.user_id = 4
    w.node.session_opened(conn)
    w.deliver(env.admin_kick(9, 403, "no such session here"))  # nobody: nothing happens
    assert not conn.closing
    w.deliver(env.admin_kick(4, 403, "kicked by an administrator"))
    assert conn.closing and conn.close_reason == "kicked"
    assert conn.messages() == [{"Error": {"code": 403, "message": "kicked by an administrator"}}]


def test_an_admin_kick_fails_fast_while_redis_is_down(w: World) -> None:
    w.link.state = "down"
    errors: list[Any] = []
    w.node.kick_remote(4, 403, "x").addErrback(lambda f: errors.append(f.value))
    assert [(e.code, e.message[:19]) for e in errors] == [(503, "cluster unavailable")]


def test_joins_and_connects_fail_fast_while_redis_is_down(w: World) -> None:
    w.link.state = "down"
    conn = FakeConnection()
    conn.user_id = 4
    errors: list[Any] = []
    w.node.join(conn, 5, "n").addErrback(lambda f: errors.append(f.value))
    assert [(e.code, e.message[:19]) for e in errors] == [(503, "cluster unavailable")]
    with pytest.raises(Refusal) as refused:
        w.node.require()
    assert refused.value.message.startswith("cluster unavailable")


def test_a_lost_lease_makes_the_node_register_again(w: World) -> None:
    answers = {"SCRIPT:lease": "new", "SMEMBERS": [b"5"], "SCRIPT:sync": [1, [], ["me", 1]]}
    w.link.reply = lambda command: answers.get(command[0])
    w.rooms.join(Member(1, "a"), 5)
    before = w.node.reregistrations
    w.clock.advance(1.0)
    assert w.node.reregistrations == before + 1
    syncs = [c for c in w.link.commands if c[0] == "SCRIPT:sync"]
    assert syncs and syncs[-1][-4:] == ("me", 5, 1, "a")
    # a session that ended while Redis could not hear of it (SMEMBERS answered [5]) goes
    assert ("SCRIPT:release", "gamed:session:5", "me", "") in w.link.commands
    assert ("SREM", "gamed:node:me:sessions", 5) in w.link.commands


def test_stopping_takes_the_node_off_the_index(w: World) -> None:
    w.link.reply = lambda command: [] if command[0] == "SMEMBERS" else None
    d = w.node.stopService()
    assert d.called
    assert ("ZREM", "gamed:nodes", "me") in w.link.commands
    assert w.rooms.relay is None


def test_a_new_envelope_kind_is_one_handler_more(w: World) -> None:
    seen: list[tuple[list[bytes], bytes]] = []
    w.node.add_handler(ord("G"), lambda header, body: seen.append((header, body)))
    w.deliver(b"G5 act\nbody")
    assert seen == [([b"5", b"act"], b"body")]
    with pytest.raises(ValueError):
        w.node.add_handler(env.FRAME, lambda header, body: None)
    w.node.publish_to("b", b"G5 x\n")
    assert w.link.published[-1] == ("gamed:n:b", b"G5 x\n")


def render(page: ClusterPage, **args: str) -> tuple[int, Any]:
    request = DummyRequest([b"cluster"])
    request.args = {k.encode(): [v.encode()] for k, v in args.items()}
    out = page.render_GET(request)
    if out is NOT_DONE_YET:
        assert request.finished, "the page waits for Redis"
        out = b"".join(request.written)
    return request.responseCode or 200, orjson.loads(out)


def test_the_cluster_page_reads_one_page_of_the_listing(w: World) -> None:
    answers = {
        "ZRANGE": ["me", "1764540000000"],
        "ZREVRANGE": ["7", "3", "5", "1"],
    }
    w.link.reply = lambda command: answers.get(command[0])
    status, body = render(ClusterPage(w.node), offset="0", limit="2")
    assert status == 200
    assert body["rooms"]["rooms"] == [
        {"room_id": 7, "user_count": 3},
        {"room_id": 5, "user_count": 1},
    ]
    assert body["nodes"] == [{"node": "me", "lease_deadline_ms": 1764540000000}]
    assert ("ZREVRANGE", "gamed:rooms", 0, 1, "WITHSCORES") in w.link.commands
    assert render(ClusterPage(w.node), limit="x")[0] == 400
    w.link.state = "down"
    status, body = render(ClusterPage(w.node))
    assert status == 503 and body["error"].startswith("cluster unavailable")


def test_the_default_node_id_is_host_and_pid_made_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module.socket, "gethostname", lambda: "box one/é")
    monkeypatch.setattr(node_module.os, "getpid", lambda: 42)
    assert node_module.default_node_id() == "box_one__:42"
    monkeypatch.setattr(node_module.socket, "gethostname", lambda: "game-1.example")
    assert node_module.default_node_id() == "game-1.example:42"


def test_seated_and_left_tell_the_other_nodes_our_count(w: World) -> None:
    a, b = Member(1), Member(2)
    room = w.rooms.join(a, 5)
    w.node.seated(room, Seat(3, {"me": 1, "b": 2}))
    assert (room.remote, room.user_count) == ({"b": 2}, 3)
    assert w.link.published[-1] == ("gamed:n:b", env.members(5, "me", 1, 3))
    w.rooms.join(b, 5)
    w.node.seated(room, Seat(4, {"me": 2, "b": 2}))
    w.rooms.leave(b, 5)
    w.node.left(room, b)
    assert room.user_count == 3
    assert w.link.published[-1] == ("gamed:n:b", env.members(5, "me", 1, 3))
    assert ("SCRIPT:leave", *room_keys(5, "me"), 2, "me", 5) in w.link.commands
    w.rooms.leave(a, 5)
    w.node.left(room, a)  # the last one here: the room leaves the node's set too
    assert w.link.published[-1] == ("gamed:n:b", env.members(5, "me", 0, 2))
    assert ("SREM", "gamed:node:me:rooms", 5) in w.link.commands
