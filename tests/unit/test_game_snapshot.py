"""Game snapshots and restore (cluster failover), on two Games services and a Clock each.

Node "a" plays, writes snapshots through the cache's serializer; node "b" restores one
with the members it has now. No router: the Games service is driven directly, as the
cluster layer drives it.
"""

from __future__ import annotations

import zlib

import orjson
import pytest
from twisted.internet.task import Clock

from gamed import messages as m
from gamed.cache import BLOB_RAW, BLOB_ZLIB, BlobCodec, CacheConfig
from gamed.config import Settings
from gamed.events import EventBus
from gamed.games import (
    IN_PROGRESS,
    RESUME_TURN_FLOOR,
    SNAPSHOT_VERSION,
    WAITING,
    Game,
    Games,
    SnapshotError,
    check_snapshot,
)
from gamed.rooms import RoomService
from tests.unit.fakes import Member, parse_frames

ROOM = 7
START = 1_767_225_600.0


class Node:
    """One server's game side: a Clock, a RoomService with Members, Games."""

    def __init__(self, cache: CacheConfig | None = None, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        defaults: dict[str, object] = {"round_limit": 3, "turn_timeout": 30}
        self.settings = Settings(**{**defaults, **settings})
        self.rooms = RoomService(self.clock, 1000, EventBus())
        self.games = Games(self.clock, self.rooms, EventBus(), self.settings, cache_config=cache)
        self.members: dict[int, Member] = {}
        self.changed: list[int] = []
        self.ended: list[int] = []
        self.games.watcher = self  # type: ignore[assignment]

    def game_changed(self, game: Game) -> None:
        self.changed.append(game.seq)

    def game_ended(self, room_id: int) -> None:
        self.ended.append(room_id)

    def join(self, *uids: int) -> None:
        for uid in uids:
            member = Member(uid, f"n{uid}")
            self.members[uid] = member
            self.rooms.join(member, ROOM)

    def send(self, uid: int, message: object) -> None:
        self.games.handle(self.members[uid], message)

    def live(self, *uids: int) -> None:
        self.join(*uids)
        self.send(uids[0], m.StartGame(ROOM))
        for uid in uids[1:]:
            self.send(uid, m.ToggleReady(ROOM))

    def move(self, uid: int) -> None:
        self.send(uid, m.PlayerAction(ROOM, m.Move(1.0, 2.0, 0.5)))

    def tags(self, uid: int) -> list[str]:
        """Tags of the frames ``uid`` got since the last call."""
        member = self.members[uid]
        out = [next(iter(f)) for f in parse_frames(b"".join(member.frames))]
        member.frames.clear()
        return out

    def inbox(self, uid: int) -> list[dict]:
        member = self.members[uid]
        out = parse_frames(b"".join(member.frames))
        member.frames.clear()
        return out


def test_snapshot_holds_what_a_resume_needs_and_the_watcher_sees_every_turn() -> None:
    a = Node()
    a.live(1, 2, 3)
    assert a.changed == [1, 2, 3]  # StartGame, two ToggleReady (the second goes live)
    a.move(1)
    a.send(2, m.PlayerAction(ROOM, m.Attack(target_id=1, damage=4)))
    assert a.changed[-1] == 5
    a.clock.advance(10)
    snap = a.games.snapshot(ROOM)
    assert snap is not None
    assert (snap["v"], snap["room_id"], snap["seq"], snap["status"]) == (
        SNAPSHOT_VERSION,
        ROOM,
        5,
        IN_PROGRESS,
    )
    assert (snap["round"], snap["turn"]) == (1, 2)
    assert snap["turn_deadline"] == START + 30  # armed after user 2's action, at START
    assert [(p["user_id"], p["score"], p["ready"]) for p in snap["players"]] == [
        (1, -4, True),
        (2, 0, True),
        (3, 0, True),
    ]
    assert snap["players"][0]["position"] == {"x": 1.0, "y": 2.0, "direction": 0.5}
    assert a.games.snapshot(ROOM + 1) is None
    assert check_snapshot(orjson.loads(orjson.dumps(snap))) == snap


def test_snapshot_blob_goes_through_the_cache_serializer_compressed_above_threshold() -> None:
    small = Node()
    small.live(1, 2)
    blob = small.games.snapshot_blob(ROOM)
    assert blob is not None and blob[:1] == BLOB_RAW  # ~400 bytes: under 1024
    assert orjson.loads(blob[1:]) == small.games.snapshot(ROOM)

    big = Node()
    big.live(*range(1, 41))  # 40 players: several KB of JSON
    blob = big.games.snapshot_blob(ROOM)
    assert blob is not None and blob[:1] == BLOB_ZLIB
    raw = orjson.dumps(big.games.snapshot(ROOM))
    assert len(blob) < len(raw) / 3
    assert orjson.loads(zlib.decompress(blob[1:])) == big.games.snapshot(ROOM)
    stats = big.games.stats()["snapshots"]
    assert stats["compressed_blobs"] == 1 and stats["stored_bytes"] == len(blob)

    off = Node(CacheConfig(enable_compression=False))
    off.live(*range(1, 41))
    plain = off.games.snapshot_blob(ROOM)
    assert plain is not None and plain[:1] == BLOB_RAW
    # A node with compression off reads a compressed snapshot (the header says how).
    assert off.games.read_snapshot(blob)["players"][39]["user_id"] == 40


def test_blob_codec_refuses_what_it_did_not_write() -> None:
    codec = BlobCodec(CacheConfig(compress_threshold=8))
    assert codec.loads(codec.dumps({"k": "v" * 50})) == {"k": "v" * 50}
    for bad in (b"", b"X{}", BLOB_ZLIB + b"not zlib", BLOB_RAW + b"{nope"):
        with pytest.raises(ValueError):
            codec.loads(bad)


def test_restore_with_everyone_present_resumes_the_turn_and_its_time() -> None:
    a = Node()
    a.live(1, 2, 3)
    a.move(1)
    a.clock.advance(12)  # user 2 has 18 s left
    blob = a.games.snapshot_blob(ROOM)
    assert blob is not None

    b = Node()
    b.clock.advance(a.clock.seconds() - b.clock.seconds() + 2)  # the failover took 2 s
    b.join(1, 2, 3)
    for uid in (1, 2, 3):
        b.tags(uid)
    game = b.games.restore(b.games.read_snapshot(blob), present={1, 2, 3})
    assert game is not None and game.status == IN_PROGRESS
    msgs = b.inbox(3)
    assert [next(iter(x)) for x in msgs] == ["SystemMessage", "GameStarted", "GameInProgress"]
    assert "resumed on another server" in msgs[0]["SystemMessage"]["message"]
    assert msgs[2]["GameInProgress"] == {"room_id": ROOM, "current_turn": 2, "round": 1}
    assert b.games.stats()["restored_total"] == 1
    assert b.tags(2) == ["SystemMessage", "GameStarted", "GameInProgress"]
    # The turn keeps its deadline: 16 s left, not a fresh 30.
    b.clock.advance(15.9)
    assert b.tags(2) == []
    b.clock.advance(0.2)
    assert b.tags(2) == ["GameInProgress"]  # timed out: user 3's turn
    # And play goes on to the end on b.
    b.move(3)
    assert b.games.game_state(ROOM) == IN_PROGRESS
    assert b.changed == [5, 6, 7]  # seq goes on from the snapshot's 4: restore, time-out, move


def test_restore_drops_players_not_present_by_the_leave_rules() -> None:
    a = Node()
    a.live(1, 2, 3)
    a.move(1)  # user 2's turn
    snap = a.games.snapshot(ROOM)
    assert snap is not None
    b = Node()
    b.clock.advance(a.clock.seconds() - b.clock.seconds())
    b.join(1, 3)  # user 2 was on the dead node
    game = b.games.restore(snap, present={1, 3})
    assert game is not None
    msgs = b.inbox(1)
    text = msgs[0]["SystemMessage"]["message"]
    assert "left the game: n2 (user 2)" in text
    # The leaver had the turn: it passes to user 3, with a full turn; the state is sent once.
    assert [next(iter(x)) for x in msgs] == ["SystemMessage", "GameStarted", "GameInProgress"]
    assert msgs[2] == {"GameInProgress": {"room_id": ROOM, "current_turn": 3, "round": 1}}
    b.clock.advance(29.9)
    assert b.tags(1) == []
    b.clock.advance(0.2)
    assert b.tags(1) == ["GameInProgress"]
    assert [p.user_id for p in game.players] == [1, 3]
    assert b.games.stats()["restore_dropped_total"] == 1


def test_restore_with_one_player_left_ends_the_game_clearly() -> None:
    a = Node()
    a.live(1, 2)
    a.move(1)
    snap = a.games.snapshot(ROOM)
    b = Node()
    b.join(1)
    assert b.games.restore(snap or {}, present={1}) is None
    msgs = b.inbox(1)
    assert [next(iter(x)) for x in msgs] == ["SystemMessage", "GameEnded"]
    assert msgs[1]["GameEnded"]["winner"]["user_id"] == 1  # in progress: the one left wins
    assert b.games.game_state(ROOM) is None and b.ended == [ROOM]


def test_restore_of_a_waiting_game_keeps_ready_flags_and_can_go_live() -> None:
    a = Node()
    a.join(1, 2, 3)
    a.send(1, m.StartGame(ROOM))
    a.send(2, m.ToggleReady(ROOM))  # 1 and 2 ready, 3 not
    snap = a.games.snapshot(ROOM)
    assert snap is not None and snap["status"] == WAITING and snap["turn_deadline"] is None
    b = Node()
    b.join(1, 2)
    game = b.games.restore(snap, present={1, 2})  # 3 gone: everyone left is ready
    assert game is not None and game.status == IN_PROGRESS
    assert "GameInProgress" in b.tags(1)


def test_restore_timer_has_a_floor_when_the_deadline_passed_during_failover() -> None:
    a = Node()
    a.live(1, 2)
    snap = a.games.snapshot(ROOM)
    b = Node()
    b.clock.advance(a.clock.seconds() - b.clock.seconds() + 60)  # deadline long gone
    b.join(1, 2)
    assert b.games.restore(snap or {}, present={1, 2}) is not None
    b.tags(1)
    b.clock.advance(RESUME_TURN_FLOOR - 0.1)
    assert b.tags(1) == []
    b.clock.advance(0.2)
    assert b.tags(1) == ["GameInProgress"]


def test_bad_snapshots_are_refused_with_the_reason() -> None:
    a = Node()
    a.live(1, 2)
    good = a.games.snapshot(ROOM)
    assert good is not None
    cases = [
        ({**good, "v": 2}, "version"),
        ({**good, "players": good["players"][:1]}, "at least 2"),
        ({**good, "players": [good["players"][0]] * 2}, "twice"),
        ({**good, "status": "Finished"}, "not a running game"),
        ({**good, "turn": 5}, "player index"),
        ({**good, "round": "1"}, "integers"),
        ({**good, "live_at": "x"}, "live_at"),
        ({**good, "players": [{"user_id": 1}, {"user_id": 2}]}, "player objects"),
        ([], "JSON object"),
    ]
    for snap, why in cases:
        with pytest.raises(SnapshotError, match=why):
            check_snapshot(snap)
    with pytest.raises(SnapshotError, match="unreadable"):
        a.games.read_snapshot(b"Z garbage")
    with pytest.raises(SnapshotError, match="already has a game"):
        a.games.restore(good, present={1, 2})


def test_abandon_stops_silently_and_abort_ends_without_winner() -> None:
    a = Node()
    a.live(1, 2)
    a.send(1, m.PlayerAction(ROOM, m.Attack(target_id=2, damage=3)))
    a.tags(1)
    assert a.games.abandon(ROOM, "this game moved to another server")
    assert a.tags(1) == ["SystemMessage"]
    assert a.games.game_state(ROOM) is None and a.ended == []  # no watcher call
    assert not a.games.abandon(ROOM, "again")
    a.clock.advance(60)  # no timer left behind
    assert a.tags(1) == []

    a.send(1, m.StartGame(ROOM))
    a.send(2, m.ToggleReady(ROOM))
    a.send(1, m.PlayerAction(ROOM, m.Attack(target_id=2, damage=3)))
    a.tags(2)
    assert a.games.abort(ROOM, "the game's server is gone")
    msgs = a.inbox(2)
    assert [next(iter(x)) for x in msgs] == ["SystemMessage", "GameEnded"]
    assert msgs[1]["GameEnded"]["winner"] is None  # 1 leads, but an aborted game has no result
    assert a.ended == [ROOM] and not a.games.abort(ROOM, "again")


def test_the_snapshot_bench_measures_both_settings() -> None:
    from gamed.bench import snapshot_micro

    two = snapshot_micro.measure(2, calls=1)
    assert two["bytes_on"] == two["bytes_off"] < 1024  # under the threshold: raw either way
    eight = snapshot_micro.measure(8, calls=1)
    assert eight["bytes_on"] < eight["bytes_off"] / 3 and eight["us_on"] >= 0
