"""protocol.md, rule by rule, over real sockets against a real `twistd -n gamed`."""

from __future__ import annotations

import struct

import orjson
import pytest

from tests.integration.conftest import GamedProcess, WireClient, heartbeat_ok

pytestmark = pytest.mark.slow

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


def test_oversize_length_prefix_gets_413_and_close(server: GamedProcess) -> None:
    c = server.client(1)
    c.send_raw(struct.pack(">I", 1024 * 1024))
    (err,) = c.expect_closed()
    assert err["Error"]["code"] == 413
    assert heartbeat_ok(server.client())


def test_max_frame_bytes_option(gamed) -> None:
    srv = gamed("--max-frame-bytes", "128")
    c = srv.client(1)
    c.send_payload(b'"HeartBeat"' + b" " * (128 - 11))  # exactly at the limit
    assert "HeartBeatResponse" in c.recv()
    c.send_payload(b" " * 129)
    (err,) = c.expect_closed()
    assert err["Error"]["code"] == 413


def test_empty_frame_is_400_and_connection_stays(server: GamedProcess) -> None:
    c = server.client(1)
    c.send_payload(b"")
    c.recv_error(400)
    assert heartbeat_ok(c)


# -- Message shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'"\xff\xfe"', "invalid UTF-8 at byte 1"),
        (b'{"RoomLeave": {"user_id": 1, "room_id": 1, "room_id": 2}}', "duplicate key 'room_id'"),
        (b'{"Warp": {"x": 1}}', "unknown message type"),
        (b'{"ChatMessage": {"user_id": 1, "room_id": 1}}', "missing field 'message'"),
        (b'{"ChatMessage": {"user_id": "1", "room_id": 1, "message": "x"}}', "user_id"),
        (b'{"RoomJoin": {"user_id": 1, "room_id": -1, "nickname": "x"}}', "room_id"),
        (b'{"RoomJoin": {"user_id": 1, "room_id": 4294967296, "nickname": "x"}}', "room_id"),
        (b'{"HeartBeat": null, "RoomLeave": {}}', "exactly one key"),
        (b"[]", "got an array"),
        (b'"ChatMessage"', "needs its fields"),
        (
            b'{"PlayerAction": {"room_id": 1, "action": {"Fly": {}}}}',
            "unknown action",
        ),
    ],
)
def test_malformed_messages_get_400_and_connection_stays(
    server: GamedProcess, payload: bytes, needle: str
) -> None:
    c = server.client(1)
    c.send_payload(payload)
    assert needle in c.recv_error(400)
    assert heartbeat_ok(c)


def test_unknown_extra_fields_are_ignored(server: GamedProcess) -> None:
    c = server.client()
    c.send({"Connect": {"room_id": 0, "user_id": 5, "client_version": "9.9", "extra": [1]}})
    assert c.recv() == {"ConnectionAck": {"user_id": 5}}
    c.send({"HeartBeat": None})
    assert "HeartBeatResponse" in c.recv()


def test_heartbeat_response_carries_unix_seconds(server: GamedProcess) -> None:
    import time

    c = server.client(1)
    c.send("HeartBeat")
    ts = c.recv()["HeartBeatResponse"]["timestamp"]
    assert abs(ts - time.time()) < 5


def test_user_id_must_be_the_connections_own(server: GamedProcess) -> None:
    c = server.client(1)
    c.send({"RoomJoin": {"user_id": 2, "room_id": 1, "nickname": "x"}})
    c.recv_error(403)


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


def test_one_room_at_a_time_and_rejoin(server: GamedProcess) -> None:
    a, b = server.client(1), server.client(2)
    a.join(1)
    b.join(1)
    a.recv()
    assert b.join(1) == {"RoomJoinSuccess": {"room_id": 1, "user_count": 2}}
    a.expect_silence()
    b.send({"RoomJoin": {"user_id": 2, "room_id": 2, "nickname": "b"}})
    assert b.recv() == {"RoomLeaveSuccess": {"room_id": 1, "user_count": 1}}
    assert b.recv() == {"RoomJoinSuccess": {"room_id": 2, "user_count": 1}}
    assert a.recv()["UserLeftRoom"]["user_id"] == 2


@pytest.mark.parametrize("room_id", [0, 1_000_001])
def test_room_id_out_of_range_is_422(server: GamedProcess, room_id: int) -> None:
    c = server.client(1)
    assert c.join(room_id)["Error"]["code"] == 422


def test_full_room_is_409(gamed) -> None:
    srv = gamed("--max-room-users", "2")
    a, b, c = srv.client(1), srv.client(2), srv.client(3)
    a.join(4)
    b.join(4)
    assert c.join(4)["Error"]["code"] == 409


def test_chat_rules(server: GamedProcess) -> None:
    c = server.client(1)
    c.chat(3, "hi")
    assert "not in room 3" in c.recv_error(404)
    c.join(3)
    c.chat(3, "")
    c.recv_error(422)
    c.chat(3, "ü" * 500)
    assert c.recv()["ChatMessage"]["message"] == "ü" * 500
    c.chat(3, "x" * 1001)
    c.recv_error(413)


def test_disconnect_sends_user_left_room(server: GamedProcess) -> None:
    a, b = server.client(1), server.client(2)
    a.join(8)
    b.join(8)
    a.recv()
    b.sock.close()
    assert a.recv()["UserLeftRoom"] == {
        "room_id": 8,
        "user_id": 2,
        "nickname": "u2",
        "user_count": 1,
    }


# -- Connection lifecycle ---------------------------------------------------------------------


def test_frames_before_connect_get_401(server: GamedProcess) -> None:
    c = server.client()
    c.send({"ChatMessage": {"user_id": 1, "room_id": 1, "message": "x"}})
    c.recv_error(401)
    assert heartbeat_ok(c)
    c.connect(1)


def test_second_connect_takes_over(server: GamedProcess) -> None:
    old, peer = server.client(1), server.client(2)
    old.join(6)
    peer.join(6)
    old.recv()
    new = server.client(1)
    got = old.expect_closed()
    assert got == [{"Error": {"code": 409, "message": "replaced by a new connection"}}]
    assert peer.recv()["UserLeftRoom"]["user_id"] == 1
    assert new.join(6) == {"RoomJoinSuccess": {"room_id": 6, "user_count": 2}}


def test_idle_connection_is_closed(gamed) -> None:
    srv = gamed("--idle-timeout", "1")
    idle = srv.client(1)
    got = idle.expect_closed(timeout=5)
    assert "no frame for 1 seconds" in got[-1]["SystemMessage"]["message"]
    assert heartbeat_ok(srv.client())


def test_connection_cap_is_503(gamed) -> None:
    srv = gamed("--max-connections", "2")
    a, b = srv.client(1), srv.client(2)
    c = WireClient(srv.port)
    got = c.expect_closed()
    assert got[0]["Error"]["code"] == 503
    assert heartbeat_ok(a) and heartbeat_ok(b)


def test_sigterm_notifies_clients_and_exits_cleanly(server: GamedProcess) -> None:
    a, b = server.client(1), server.client(2)
    a.join(1)
    b.join(1)
    a.recv()
    status = server.terminate(timeout=10)
    for c in (a, b):
        got = c.expect_closed()
        assert got[-1] == {"SystemMessage": {"message": "server is shutting down"}}, got
    assert status in (0, -15)
    log = server.log()
    assert "Traceback" not in log
    assert "Server Shut Down" in log


# -- Error codes ----------------------------------------------------------------------------


def test_games_are_refused_with_an_error_not_a_crash(server: GamedProcess) -> None:
    c = server.client(1)
    c.send({"StartGame": {"room_id": 1}})
    c.recv_error(404)
    assert heartbeat_ok(c)
