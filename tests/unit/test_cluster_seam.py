"""The router over the cluster seam (ICluster): a RoomJoin the cluster answers later.

FakeCluster (tests/unit/fakes.py) holds each join's Deferred until the test fires
it: a second join while one is in flight, a connection lost meanwhile, a full room
and an unavailable cluster, and counts that come from the cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from twisted.python.failure import Failure

from gamed import codec
from gamed import messages as m
from gamed.errors import Refusal
from gamed.pipeline import Pipeline
from gamed.router import Router
from gamed.solo import NullCluster
from tests.unit.fakes import (
    FakeCluster,
    FakeConnection,
    HarnessBase,
    RouterClient,
    assert_error,
)


class Harness(HarnessBase):
    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        self.cluster = FakeCluster()
        self.router = Router(
            self.settings,
            self.clock,
            self.rooms,
            Pipeline(),
            self.metrics,
            self.events,
            cluster=self.cluster,
        )

    def client(self, uid: int) -> RouterClient:
        self._port += 1
        c = RouterClient(self.router, self.clock, self._port)
        c.connect(uid)
        return c


@pytest.fixture
def h() -> Harness:
    return Harness()


def send_join(c: RouterClient, uid: int, room: int) -> None:
    c.send({"RoomJoin": {"user_id": uid, "room_id": room, "nickname": f"n{uid}"}})


def test_one_process_joins_are_answered_at_once() -> None:
    h = HarnessBase()
    router = Router(h.settings, h.clock, h.rooms, Pipeline(), h.metrics, h.events)
    assert isinstance(router.cluster, NullCluster) and not router.cluster
    conn = FakeConnection(router, h.clock).open()
    conn.receive(b'{"Connect":{"room_id":0,"user_id":1}}')
    conn.receive(b'{"RoomJoin":{"user_id":1,"room_id":5,"nickname":"a"}}')
    assert conn.messages()[-1] == {"RoomJoinSuccess": {"room_id": 5, "user_count": 1}}


def test_a_join_waits_for_the_cluster_and_shows_its_count(h: Harness) -> None:
    a = h.client(1)
    send_join(a, 1, 7)
    assert a.received() == []  # in flight
    (room_id, d) = h.cluster.joins[0]
    assert room_id == 7
    d.callback(12)  # the seat: FakeCluster.seated makes 12 the room's cluster count
    assert a.received() == [{"RoomJoinSuccess": {"room_id": 7, "user_count": 12}}]
    assert ("seated", 7, 12) in h.cluster.calls
    assert h.rooms.room_of(1) is not None


def test_a_second_join_while_one_is_in_flight_gets_409(h: Harness) -> None:
    a = h.client(1)
    send_join(a, 1, 7)
    send_join(a, 1, 8)
    assert_error(a.received(), 409, "join in progress")
    assert len(h.cluster.joins) == 1
    h.cluster.joins[0][1].callback(1)
    assert a.received() == [{"RoomJoinSuccess": {"room_id": 7, "user_count": 1}}]
    send_join(a, 1, 8)  # the first is over: a new join goes through
    assert len(h.cluster.joins) == 2


def test_a_connection_lost_during_its_join_gives_the_seat_back(h: Harness) -> None:
    a = h.client(1)
    send_join(a, 1, 7)
    a.conn.lose()
    h.cluster.joins[0][1].callback(1)
    assert ("unseat", 1, 7) in h.cluster.calls
    assert h.rooms.get(7) is None
    assert ("closed", 1) in h.cluster.calls


def test_a_session_replaced_during_its_join_gives_the_seat_back(h: Harness) -> None:
    a = h.client(1)
    send_join(a, 1, 7)
    b = h.client(1)  # the same user again: a takes over
    assert a.conn.closing
    h.cluster.joins[0][1].callback(1)
    assert ("unseat", 1, 7) in h.cluster.calls
    assert h.rooms.room_of(1) is None
    assert b.received() == []


@pytest.mark.parametrize(
    ("refusal", "code", "text"),
    [
        (Refusal(409, "room 7 is full (2 users)"), 409, "full"),
        (Refusal(503, "cluster unavailable: no connection to Redis"), 503, "cluster unavailable"),
    ],
)
def test_a_join_the_cluster_refuses_is_an_error(
    h: Harness, refusal: Refusal, code: int, text: str
) -> None:
    a = h.client(1)
    send_join(a, 1, 6)
    h.cluster.joins[0][1].callback(1)
    a.received()
    send_join(a, 1, 7)
    h.cluster.joins[1][1].errback(Failure(refusal))
    assert_error(a.received(), code, text)
    assert h.rooms.room_of(1).room_id == 6  # a refused join leaves the user where it was


def test_an_unexpected_failure_is_a_500_not_a_crash(h: Harness) -> None:
    a = h.client(1)
    send_join(a, 1, 7)
    h.cluster.joins[0][1].errback(Failure(RuntimeError("boom")))
    assert_error(a.received(), 500, "RoomJoin")
    assert h.rooms.room_of(1) is None


def test_connect_is_refused_with_503_while_the_cluster_is_down(h: Harness) -> None:
    h.cluster.state = "down"
    conn = FakeConnection(h.router, h.clock).open()
    conn.receive(b'{"Connect":{"room_id":0,"user_id":1}}')
    assert_error(conn.messages(), 503, "cluster unavailable")
    assert h.router.sessions == {}


def test_leave_notices_show_the_cluster_count(h: Harness) -> None:
    a, b = h.client(1), h.client(2)
    send_join(a, 1, 7)
    h.cluster.joins[0][1].callback(5)
    send_join(b, 2, 7)
    h.cluster.joins[1][1].callback(6)
    a.received()
    b.received()
    a.send({"RoomLeave": {"user_id": 1, "room_id": 7}})
    assert a.received() == [m_dict(m.RoomLeaveSuccess(7, 5))]
    assert b.received() == [m_dict(m.UserLeftRoom(7, 1, "n1", 5))]
    assert ("left", 7, 1) in h.cluster.calls


def m_dict(msg: object) -> dict[str, object]:
    return orjson.loads(codec.frame(msg)[4:])


def test_the_connect_ack_waits_for_the_claim(h: Harness) -> None:
    h.cluster.hold_claims = True
    conn = FakeConnection(h.router, h.clock).open()
    conn.receive(b'{"Connect":{"room_id":0,"user_id":1}}')
    assert conn.messages() == []
    h.cluster.claims[0].callback(None)
    assert conn.messages() == [{"ConnectionAck": {"user_id": 1}}]


def test_a_claim_that_fails_refuses_the_session(h: Harness) -> None:
    h.cluster.hold_claims = True
    conn = FakeConnection(h.router, h.clock).open()
    conn.receive(b'{"Connect":{"room_id":0,"user_id":1}}')
    h.cluster.claims[0].errback(Failure(Refusal(503, "cluster unavailable: timeout")))
    assert_error(conn.messages(), 503, "cluster unavailable")
    assert conn.closing and conn.close_reason == "refused"
    conn.lose()
    assert h.router.sessions == {}


def test_a_connection_replaced_before_its_claim_is_answered_gets_no_ack(h: Harness) -> None:
    h.cluster.hold_claims = True
    first = FakeConnection(h.router, h.clock).open()
    first.receive(b'{"Connect":{"room_id":0,"user_id":1}}')
    second = FakeConnection(h.router, h.clock).open()
    second.receive(b'{"Connect":{"room_id":0,"user_id":1}}')
    h.cluster.claims[0].callback(None)
    h.cluster.claims[1].callback(None)
    assert_error(first.messages(), 409, "replaced")
    assert second.messages() == [{"ConnectionAck": {"user_id": 1}}]


BUILD = """
import json, sys, tempfile
from twisted.internet.testing import MemoryReactorClock
from gamed import tap
options = tap.Options()
options.parseOptions(["--port", "tcp:7001", "--metrics-port", "none", "--ws-port", "none",
                      "--data-dir", tempfile.mkdtemp(), *sys.argv[1:]])
tap.makeService(options, reactor=MemoryReactorClock())
print(json.dumps(sorted(m for m in sys.modules if m.startswith("gamed.cluster"))))
"""


def test_without_redis_nothing_of_the_cluster_is_imported(tmp_path: Path) -> None:
    def loaded(*args: str) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-c", BUILD, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return list(json.loads(run.stdout.splitlines()[-1]))

    assert loaded() == []
    assert "gamed.cluster.node" in loaded("--redis", "redis://127.0.0.1:6379/0")


def test_kick_user_anywhere_kicks_here_else_asks_the_cluster(h: Harness) -> None:
    a = h.client(1)
    here: list[bool] = []
    h.router.kick_user_anywhere(1, 403, "kicked by an administrator").addCallback(here.append)
    assert here == [True]
    assert a.received()[-1] == {"Error": {"code": 403, "message": "kicked by an administrator"}}
    assert not any(c[0] == "kick_remote" for c in h.cluster.calls)  # local: Redis not asked

    h.cluster.elsewhere.add(2)
    answers: list[bool] = []
    for uid in (2, 3):
        h.router.kick_user_anywhere(uid, 403, "bye").addCallback(answers.append)
    assert answers == [True, False]  # 2 is on another node, 3 nowhere
    assert [c for c in h.cluster.calls if c[0] == "kick_remote"] == [
        ("kick_remote", 2, 403),
        ("kick_remote", 3, 403),
    ]


def test_kick_user_anywhere_in_one_process_is_kick_user() -> None:
    h = HarnessBase()
    router = Router(h.settings, h.clock, h.rooms, Pipeline(), h.metrics, h.events)
    answers: list[bool] = []
    router.kick_user_anywhere(5, 403, "x").addCallback(answers.append)
    assert answers == [False]
