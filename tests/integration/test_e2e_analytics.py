"""Analytics end to end: real `twistd -n gamed` processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.integration.helpers import GAME_ROOM, GamedProcess, WireClient, live_game, move

Gamed = Callable[..., GamedProcess]

ROOM = 77


def flushed(realtime: dict[str, Any]) -> bool:
    """Every queued event aggregated and every delta committed to SQLite."""
    return (
        realtime["queue"]["pending"] == 0
        and realtime["dirty"] == {"users": 0, "rooms": 0}
        and realtime["flush"]["in_flight"] == 0
        and realtime["flush"]["last_at"] is not None
    )


def chats(c: WireClient, n: int) -> None:
    for _ in range(n):
        c.until("ChatMessage")


def test_counts_are_exact_and_survive_sigterm_and_restart(gamed: Gamed, tmp_path: Path) -> None:
    data = tmp_path / "analytics-data"
    server = gamed("--data-dir", str(data))
    started = time.monotonic()
    a, b = server.client(11), server.client(12)
    assert "RoomJoinSuccess" in a.join(ROOM)
    assert "RoomJoinSuccess" in b.join(ROOM)
    a.until("UserJoinedRoom")
    a.chat(ROOM, "one")
    a.chat(ROOM, "two")
    b.chat(ROOM, "three")
    chats(a, 3)
    chats(b, 3)
    b.chat(ROOM + 1, "not a member")
    b.recv_error(404)
    b.send({"RoomLeave": {"user_id": 12, "room_id": ROOM}})
    b.until("RoomLeaveSuccess")
    a.close()
    b.close()
    server.wait_json(  # both sessions have ended, and the plugin has seen it
        "/analytics/realtime", lambda rt: rt["events_by_type"]["UserDisconnected"] == 2
    )
    elapsed = time.monotonic() - started  # no session can have lasted longer
    u11 = server.get_json("/analytics/users/11")[1]
    u12 = server.get_json("/analytics/users/12")[1]
    still = server.client(13)  # connected when SIGTERM comes: its session must be kept too
    assert "RoomJoinSuccess" in still.join(ROOM)

    assert (u11["total_sessions"], u11["messages_sent"], u11["errors"]) == (1, 2, 0)
    assert u11["rooms_created"] == 1
    assert u11["favourite_rooms"] == [{"room_id": ROOM, "visits": 1}]
    # Durations are checked exactly on a Clock (test_analytics_web.py::
    # test_a_session_through_the_router); here only that they are seconds of this run.
    assert 0 <= u11["total_playtime_seconds"] <= elapsed
    assert 0 <= u12["total_playtime_seconds"] <= elapsed
    assert (u12["total_sessions"], u12["messages_sent"], u12["errors"]) == (1, 1, 1)
    room = server.wait_json(f"/analytics/rooms/{ROOM}", lambda r: r["total_sessions"] == 3)
    assert room["peak_users"] == 2
    assert room["total_messages"] == 3
    assert room["completed_sessions"] == 2
    assert room["times_created"] == 2  # created by 11; emptied; created again by 13
    assert room["last_creator"] == 13
    assert 0 <= room["average_session_seconds"] <= elapsed
    assert server.get_json(f"/analytics/rooms/{ROOM + 1}")[0] == 404
    assert server.get_json("/analytics/users/999")[0] == 404
    assert server.get_json("/analytics/users/x")[0] == 400
    _status, top = server.get_json("/analytics/top?by=messages&limit=2")
    assert top["users"] == [{"user_id": 11, "messages": 2}, {"user_id": 12, "messages": 1}]

    assert server.terminate() in (0, -signal.SIGTERM)
    again = gamed("--data-dir", str(data))
    assert again.get_json("/analytics/users/11") == (200, u11)
    assert again.get_json("/analytics/users/12") == (200, u12)
    u13 = again.get_json("/analytics/users/13")[1]
    assert u13["total_sessions"] == 1 and u13["total_playtime_seconds"] > 0
    after = again.get_json(f"/analytics/rooms/{ROOM}")[1]
    assert after["completed_sessions"] == 3, "13's room session was closed by the shutdown"
    assert {k: after[k] for k in ("total_sessions", "total_messages", "peak_users")} == {
        "total_sessions": 3,
        "total_messages": 3,
        "peak_users": 2,
    }
    _, rt = again.get_json("/analytics/realtime")
    assert rt["dropped"] == {"queue": 0, "storage": 0, "subscriber": 0}


def test_kill_9_loses_at_most_one_flush_interval(gamed: Gamed, tmp_path: Path) -> None:
    data = tmp_path / "analytics-data"
    config = tmp_path / "gamed.toml"
    config.write_text("[middleware.analytics]\nflush_interval = 0.5\n")
    server = gamed("--data-dir", str(data), "--config", str(config))
    c = server.client(21)
    c.join(ROOM)
    for i in range(5):
        c.chat(ROOM, f"m{i}")
    chats(c, 5)
    server.wait_json("/analytics/users/21", lambda u: u["messages_sent"] == 5)
    server.wait_json("/analytics/realtime", flushed)
    server.proc.kill()
    server.proc.wait(5)
    again = gamed("--data-dir", str(data), "--config", str(config))
    status, u = again.get_json("/analytics/users/21")
    assert status == 200 and u["messages_sent"] == 5 and u["total_sessions"] == 1


def test_stream_delivers_events_to_an_http_client(server: GamedProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("GET", "/analytics/stream?types=MessageSent,RoomJoined")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type").startswith("text/event-stream")
        c = server.client(31)
        c.join(ROOM)
        c.chat(ROOM, "streamed")
        seen: list[tuple[str, dict[str, Any]]] = []
        kind = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            b.get("message_type") == "ChatMessage" for _, b in seen
        ):
            line = resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((kind, orjson.loads(line[6:])))
        assert [k for k, _ in seen] == ["MessageSent", "RoomJoined", "MessageSent", "MessageSent"]
        assert seen[1][1]["room_id"] == ROOM and seen[1][1]["user_id"] == 31
        assert seen[-1][1] == {
            "type": "MessageSent",
            "at": seen[-1][1]["at"],
            "user_id": 31,
            "room_id": ROOM,
            "message_type": "ChatMessage",
        }
        assert server.get_json("/analytics/realtime")[1]["stream_clients"] == 1
    finally:
        conn.close()
    server.wait_json("/analytics/realtime", lambda rt: rt["stream_clients"] == 0)


def test_games_are_counted_in_analytics(gamed: Gamed) -> None:
    server = gamed("--round-limit", "1")
    a, b = live_game(server, 41, 42)
    move(a)
    a.until("ActionResult")
    move(b)
    ended, _ = a.until("GameEnded")
    winner = ended["winner"]["user_id"] if ended["winner"] else None
    room = server.wait_json(f"/analytics/rooms/{GAME_ROOM}", lambda r: r["games_finished"] == 1)
    assert room["games_played"] == 1
    assert room["average_game_seconds"] >= 0
    for uid in (41, 42):
        u = server.wait_json(f"/analytics/users/{uid}", lambda u: u["games_played"] == 1)
        assert u["games_won"] == (1 if uid == winner else 0)
