"""Games end to end: real `twistd -n gamed` processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.integration.conftest import WireClient

ROOM = 42


def until(c: WireClient, tag: str, timeout: float = 5.0) -> tuple[dict, list[Any]]:
    """Read frames until one tagged ``tag``; returns its body and what came before it."""
    skipped: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {tag} within {timeout}s; got {skipped}"
        msg = c.recv(left)
        if isinstance(msg, dict) and tag in msg:
            return msg[tag], skipped
        skipped.append(msg)


def act(c: WireClient, action: dict) -> None:
    c.send({"PlayerAction": {"room_id": ROOM, "action": action}})


def move(c: WireClient, x: float = 1.0) -> None:
    act(c, {"Move": {"x": x, "y": 2.0, "direction": 0.0}})


def attack(c: WireClient, target: int, damage: int) -> None:
    act(c, {"Attack": {"target_id": target, "damage": damage}})


def live_game(server: Any, uid_a: int = 1, uid_b: int = 2) -> tuple[WireClient, WireClient]:
    """Two players in ROOM with a game InProgress, A to play."""
    a, b = server.client(uid_a), server.client(uid_b)
    assert "RoomJoinSuccess" in a.join(ROOM)
    assert "RoomJoinSuccess" in b.join(ROOM)
    until(a, "UserJoinedRoom")
    a.send({"StartGame": {"room_id": ROOM}})
    until(a, "GameStarted")
    until(b, "GameStarted")
    b.send({"ToggleReady": {"room_id": ROOM}})
    for c in (a, b):
        assert until(c, "GameInProgress")[0] == {"room_id": ROOM, "current_turn": uid_a, "round": 1}
    return a, b


def test_full_game_to_game_ended_with_winner_and_scores(gamed: Any) -> None:
    server = gamed("--round-limit", "3")
    a, b = live_game(server)
    b.send({"ChatMessage": {"user_id": 2, "room_id": ROOM, "message": "gl"}})
    plan = [(a, attack, (2, 7)), (b, attack, (1, 3)), (a, move, (1.5,)), (b, move, (2.5,))]
    plan += [(a, attack, (2, 1)), (b, act, ({"UseItem": {"item_id": "potion"}},))]
    for who, fn, args in plan:
        fn(who, *args)
        for c in (a, b):
            until(c, "ActionResult")
    ended_a, _ = until(a, "GameEnded")
    ended_b, _ = until(b, "GameEnded")
    assert ended_a == ended_b
    assert ended_a["winner"]["user_id"] == 1 and ended_a["winner"]["score"] == -3
    assert ended_a["final_scores"] == [[1, -3], [2, -8]]
    stats = server.stats()
    assert stats["games"]["ended_total"] == 1 and stats["games"]["actions_total"] == 6
    cache = stats["cache"]
    assert cache["l1_hits"] > 0 and cache["hit_rate"] > 0
    status, metrics = server.http("/metrics")
    assert status == 200
    assert b'gamed_cache_hits_total{tier="l1"}' in metrics
    assert b"gamed_cache_compression_saved_bytes_total" in metrics


def test_not_your_turn_is_409_and_state_errors(server: Any) -> None:
    a, b = live_game(server)
    move(b)
    assert "not your turn" in b.recv_error(409)
    a.send({"StartGame": {"room_id": ROOM}})
    a.recv_error(409)
    b.send({"ToggleReady": {"room_id": ROOM}})
    b.recv_error(409)
    a.send({"StartGame": {"room_id": ROOM + 1}})
    a.recv_error(404)
    attack(a, 99, 1)
    a.recv_error(422)
    move(a)
    body, _ = until(b, "ActionResult")
    assert body["game_state"]["current_turn"] == 2


def test_turn_timeout_passes_the_turn(gamed: Any) -> None:
    server = gamed("--turn-timeout", "2")
    a, b = live_game(server)
    started = time.monotonic()
    body, _ = until(b, "GameInProgress", timeout=5)
    assert body == {"room_id": ROOM, "current_turn": 2, "round": 1}
    assert 1.5 < time.monotonic() - started < 4.5
    move(b)
    assert until(a, "ActionResult")[0]["game_state"]["round"] == 2


def test_leaver_ends_a_two_player_game(server: Any) -> None:
    a, b = live_game(server)
    b.send({"RoomLeave": {"user_id": 2, "room_id": ROOM}})
    assert "RoomLeaveSuccess" in b.recv()
    until(a, "UserLeftRoom")
    ended, _ = until(a, "GameEnded")
    assert ended["winner"]["user_id"] == 1 and ended["final_scores"] == [[1, 0]]
    assert server.stats()["games"]["active"] == 0


def test_dropped_player_reconnects_within_grace_and_keeps_the_seat(gamed: Any) -> None:
    server = gamed("--reconnect-grace", "2", "--turn-timeout", "30")
    a, b = live_game(server)
    b.close()
    notice, _ = until(a, "SystemMessage")
    assert notice["message"] == "player u2 (user 2) is away: seat held for 2 seconds"
    move(a)
    until(a, "ActionResult")
    b2 = server.client()
    b2.send({"Connect": {"room_id": 0, "user_id": 2}})
    assert b2.recv() == {"ConnectionAck": {"user_id": 2}}
    assert b2.recv() == {"RoomJoinSuccess": {"room_id": ROOM, "user_count": 2}}
    started = b2.recv()["GameStarted"]
    assert [p["user_id"] for p in started["players"]] == [1, 2]
    assert b2.recv()["GameInProgress"] == {"room_id": ROOM, "current_turn": 2, "round": 1}
    assert until(a, "SystemMessage")[0]["message"] == "player u2 (user 2) is back"
    time.sleep(2.3)  # past the old grace: the seat must still be there
    move(b2)
    assert until(a, "ActionResult")[0]["user_id"] == 2
    stats = server.stats()["games"]
    assert stats["seats_reclaimed_total"] == 1 and stats["seats_expired_total"] == 0


def test_dropped_player_not_back_in_time_is_removed(gamed: Any) -> None:
    server = gamed("--reconnect-grace", "1")
    a, b = live_game(server)
    b.close()
    until(a, "SystemMessage")
    left, _ = until(a, "UserLeftRoom", timeout=4)
    assert left["user_id"] == 2 and left["user_count"] == 1
    ended, _ = until(a, "GameEnded")
    assert ended["winner"]["user_id"] == 1
    b2 = server.client(2)  # too late: no seat, no room
    b2.expect_silence(0.3)
    assert server.stats()["games"]["seats_expired_total"] == 1


def test_spectator_joining_gets_the_game_state(server: Any) -> None:
    a, b = live_game(server)
    attack(a, 2, 4)
    until(b, "ActionResult")
    s = server.client(3)
    assert "RoomJoinSuccess" in s.join(ROOM)
    started = s.recv()["GameStarted"]
    assert [p["score"] for p in started["players"]] == [0, -4]
    assert s.recv()["GameInProgress"] == {"room_id": ROOM, "current_turn": 2, "round": 1}
    assert orjson.loads(server.http("/stats")[1])["games"]["in_progress"] == 1
