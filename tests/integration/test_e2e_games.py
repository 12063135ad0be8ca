"""Games end to end: real `twistd -n gamed` processes, real sockets on 127.0.0.1.

One smoke test per part of the game service; its rules (turn order, errors,
leavers, spectators, expiry of a held seat) are unit tests on a Clock in
tests/unit/test_games.py.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.helpers import GAME_ROOM as ROOM
from tests.integration.helpers import GamedProcess, act, attack, live_game, move

Gamed = Callable[..., GamedProcess]


def test_full_game_to_game_ended_with_winner_and_scores(gamed: Gamed) -> None:
    server = gamed("--round-limit", "3")
    a, b = live_game(server)
    b.send({"ChatMessage": {"user_id": 2, "room_id": ROOM, "message": "gl"}})
    plan = [(a, attack, (2, 7)), (b, attack, (1, 3)), (a, move, (1.5,)), (b, move, (2.5,))]
    plan += [(a, attack, (2, 1)), (b, act, ({"UseItem": {"item_id": "potion"}},))]
    for who, fn, args in plan:
        fn(who, *args)
        for c in (a, b):
            c.until("ActionResult")
    ended_a, _ = a.until("GameEnded")
    ended_b, _ = b.until("GameEnded")
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


def test_turn_timeout_passes_the_turn(gamed: Gamed) -> None:
    """The real reactor's timer passes the turn; when exactly is the Clock-driven
    unit test's business (test_turn_timeout_passes_the_turn_and_can_end_the_game)."""
    server = gamed("--turn-timeout", "1")
    a, b = live_game(server)
    body, before = b.until("GameInProgress", timeout=15)  # generous: 1 s plus a loaded machine
    assert body == {"room_id": ROOM, "current_turn": 2, "round": 1}
    assert not [x for x in before if "ActionResult" in x], "the turn passed without an action"
    games = server.stats()["games"]
    assert (games["turn_timeouts_total"], games["actions_total"]) == (1, 0)
    move(b)
    assert a.until("ActionResult")[0]["game_state"]["round"] == 2


def test_dropped_player_reconnects_within_grace_and_keeps_the_seat(gamed: Gamed) -> None:
    """A real socket drop holds the seat and a new connection takes it back. That the
    old grace timer is gone after the reclaim is the unit test's business
    (test_dropped_player_reconnects_and_keeps_the_seat, on a Clock)."""
    server = gamed("--reconnect-grace", "30", "--turn-timeout", "60")
    a, b = live_game(server)
    b.close()
    notice, _ = a.until("SystemMessage")
    assert notice["message"] == "player u2 (user 2) is away: seat held for 30 seconds"
    move(a)
    a.until("ActionResult")
    b2 = server.client()
    b2.send({"Connect": {"room_id": 0, "user_id": 2}})
    assert b2.recv() == {"ConnectionAck": {"user_id": 2}}
    assert b2.recv() == {"RoomJoinSuccess": {"room_id": ROOM, "user_count": 2}}
    started = b2.recv()["GameStarted"]
    assert [p["user_id"] for p in started["players"]] == [1, 2]
    assert b2.recv()["GameInProgress"] == {"room_id": ROOM, "current_turn": 2, "round": 1}
    assert a.until("SystemMessage")[0]["message"] == "player u2 (user 2) is back"
    move(b2)
    assert a.until("ActionResult")[0]["user_id"] == 2
    stats = server.stats()["games"]
    assert stats["seats_reclaimed_total"] == 1 and stats["seats_expired_total"] == 0
