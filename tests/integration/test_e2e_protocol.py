"""protocol.md over real sockets against a real `twistd -n gamed`: one smoke test per part.

The rules themselves (every error code, limit and notice) are unit tests on a
StringTransport and a Clock: tests/unit/test_protocol.py and test_codec.py.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import orjson

from tests.integration.helpers import GamedProcess, two_in_room

# -- Framing -------------------------------------------------------------------------------


def test_frames_in_one_write_and_split_byte_by_byte(server: GamedProcess) -> None:
    c = server.client()
    data = b"".join(
        struct.pack(">I", len(p)) + p
        for p in (orjson.dumps({"Connect": {"room_id": 0, "user_id": 1}}), b'"HeartBeat"')
    )
    for i in range(len(data)):
        c.send_raw(data[i : i + 1])
    assert c.recv() == {"ConnectionAck": {"user_id": 1}}
    assert "HeartBeatResponse" in c.recv()
    c.send_raw(data[4 + 0 : 0] + struct.pack(">I", 11) + b'"HeartBeat"' * 1)
    assert "HeartBeatResponse" in c.recv()


# -- Message shape -------------------------------------------------------------------------


def test_heartbeat_response_carries_unix_seconds(server: GamedProcess) -> None:
    c = server.client(1)
    c.send("HeartBeat")
    ts = c.recv()["HeartBeatResponse"]["timestamp"]
    assert abs(ts - time.time()) < 5


# -- Rooms ----------------------------------------------------------------------------------


def test_room_life_join_notices_chat_leave(server: GamedProcess) -> None:
    a, b, c = server.client(1), server.client(2), server.client(3)
    assert a.join(10, "ann") == {"RoomJoinSuccess": {"room_id": 10, "user_count": 1}}
    assert server.stats()["rooms"]["count"] == 1
    assert b.join(10, "bob") == {"RoomJoinSuccess": {"room_id": 10, "user_count": 2}}
    assert a.recv() == {
        "UserJoinedRoom": {"room_id": 10, "user_id": 2, "nickname": "bob", "user_count": 2}
    }
    c.join(10, "cat")
    a.recv(), b.recv()
    for i in range(5):
        (a if i % 2 else c).chat(10, f"m{i}")
    seen = [[member.recv()["ChatMessage"]["message"] for _ in range(5)] for member in (a, b, c)]
    # Every member sees the same order, and each sender's chats in the order sent.
    assert seen[0] == seen[1] == seen[2]
    assert [x for x in seen[0] if x in ("m0", "m2", "m4")] == ["m0", "m2", "m4"]
    assert [x for x in seen[0] if x in ("m1", "m3")] == ["m1", "m3"]
    a.send({"RoomLeave": {"user_id": 1, "room_id": 10}})
    assert a.recv() == {"RoomLeaveSuccess": {"room_id": 10, "user_count": 2}}
    for member in (b, c):
        assert member.recv() == {
            "UserLeftRoom": {"room_id": 10, "user_id": 1, "nickname": "ann", "user_count": 2}
        }
    b.close()
    assert c.recv() == {
        "UserLeftRoom": {"room_id": 10, "user_id": 2, "nickname": "bob", "user_count": 1}
    }
    c.send({"RoomLeave": {"user_id": 3, "room_id": 10}})
    assert c.recv() == {"RoomLeaveSuccess": {"room_id": 10, "user_count": 0}}
    assert server.stats()["rooms"]["count"] == 0


# -- Connection lifecycle ---------------------------------------------------------------------


def test_second_connect_takes_over(server: GamedProcess) -> None:
    old, peer = two_in_room(server, 6)
    new = server.client(1)
    got = old.expect_closed()
    assert got == [{"Error": {"code": 409, "message": "replaced by a new connection"}}]
    assert peer.recv()["UserLeftRoom"]["user_id"] == 1
    assert new.join(6) == {"RoomJoinSuccess": {"room_id": 6, "user_count": 2}}


def test_sigterm_notifies_clients_and_exits_cleanly(
    gamed: Callable[..., GamedProcess],
) -> None:
    server = gamed()
    a, b = two_in_room(server, 1)
    status = server.terminate(timeout=10)
    for c in (a, b):
        got = c.expect_closed()
        assert got[-1] == {"SystemMessage": {"message": "server is shutting down"}}, got
    assert status in (0, -15)
    log = server.log()
    assert "Traceback" not in log
    assert "Server Shut Down" in log
