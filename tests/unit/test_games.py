"""Games through the real Router and GameProtocol, on StringTransport and an injected Clock."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from gamed import events as ev
from gamed import messages as m
from gamed.cache import CacheConfig
from gamed.config import Settings
from gamed.events import EventBus
from gamed.games import Games
from gamed.interfaces import IGameService
from gamed.pipeline import Pipeline
from gamed.protocol import GameFactory
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.telemetry import ServerMetrics
from tests.unit.fakes import frame
from tests.unit.fakes import parse_frames as parse

ROOM = 5
# What a player who comes back to a running game is sent, in order.
RESUMED_TAGS = [
    "ConnectionAck",
    "RoomJoinSuccess",
    "GameStarted",
    "GameInProgress",
    "SystemMessage",
]


class Client:
    def __init__(self, h: Harness, uid: int) -> None:
        h.port += 1
        self.uid = uid
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", h.port))
        self.proto = h.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self.send({"Connect": {"room_id": 0, "user_id": uid}})

    def send(self, obj: object) -> None:
        self.proto.dataReceived(frame(obj))

    def got(self) -> list[dict]:
        out = parse(self.transport.value())
        self.transport.clear()
        return out

    def tags(self) -> list[str]:
        return [next(iter(m)) if isinstance(m, dict) else m for m in self.got()]

    def join(self, room: int = ROOM) -> None:
        self.send({"RoomJoin": {"user_id": self.uid, "room_id": room, "nickname": f"n{self.uid}"}})

    def start(self, room: int = ROOM) -> None:
        self.send({"StartGame": {"room_id": room}})

    def ready(self, room: int = ROOM) -> None:
        self.send({"ToggleReady": {"room_id": room}})

    def act(self, action: dict, room: int = ROOM) -> None:
        self.send({"PlayerAction": {"room_id": room, "action": action}})

    def move(self, x: float = 1.0) -> None:
        self.act({"Move": {"x": x, "y": 2.0, "direction": 0.5}})

    def attack(self, target: int, damage: int) -> None:
        self.act({"Attack": {"target_id": target, "damage": damage}})

    def drop(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))

    def error(self) -> tuple[int, str]:
        msgs = self.got()
        assert len(msgs) == 1 and "Error" in msgs[0], msgs
        return msgs[0]["Error"]["code"], msgs[0]["Error"]["message"]


class Harness:
    def __init__(self, cache_config: CacheConfig | None = None, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        defaults: dict[str, object] = {"idle_timeout": 0, "round_limit": 3, "turn_timeout": 30}
        self.settings = Settings(**{**defaults, **settings})
        self.events = EventBus()
        self.seen: list[object] = []
        self.events.subscribe(self.seen.append)
        self.rooms = RoomService(self.clock, self.settings.max_room_users, self.events)
        self.registry = CollectorRegistry()
        self.games = Games(
            self.clock,
            self.rooms,
            self.events,
            self.settings,
            self.registry,
            cache_config=cache_config,
        )
        self.router = Router(
            self.settings,
            self.clock,
            self.rooms,
            Pipeline(),
            ServerMetrics(),
            self.events,
            self.games,
        )
        self.factory = GameFactory(self.router, self.clock)
        self.port = 40000

    def client(self, uid: int, join: bool = True) -> Client:
        c = Client(self, uid)
        if join:
            c.join()
        c.got()
        return c

    def players(self, n: int = 2) -> list[Client]:
        cs = [self.client(i + 1) for i in range(n)]
        for c in cs:
            c.got()
        return cs

    def live(self, n: int = 2) -> list[Client]:
        """n players in a game that is InProgress; everyone's inbox emptied."""
        cs = self.players(n)
        cs[0].start()
        for c in cs[1:]:
            c.ready()
        for c in cs:
            c.got()
        return cs


@pytest.fixture
def h() -> Harness:
    return Harness()


def body(msgs: list[dict], tag: str) -> dict:
    found = [m[tag] for m in msgs if isinstance(m, dict) and tag in m]
    assert found, (tag, msgs)
    return found[-1]


# -- StartGame / ToggleReady ------------------------------------------------------------


def test_start_game_needs_membership_two_members_and_no_game(h: Harness) -> None:
    a = h.client(1)
    a.start(ROOM + 1)
    code, text = a.error()
    assert code == 404 and "not in room" in text
    loner = h.client(9, join=False)
    loner.start()
    assert loner.error()[0] == 404
    a.start()
    assert a.error()[0] == 409  # alone
    b = h.client(2)
    a.got()
    a.start()
    started = body(a.got(), "GameStarted")
    assert started["room_id"] == ROOM
    assert [(p["user_id"], p["ready"], p["score"], p["position"]) for p in started["players"]] == [
        (1, True, 0, None),
        (2, False, 0, None),
    ]
    assert body(b.got(), "GameStarted") == started
    b.start()
    assert b.error() == (409, f"a game is already waiting for players to be ready in room {ROOM}")


def test_room_id_out_of_range_is_422_before_anything(h: Harness) -> None:
    a = h.client(1)
    a.start(0)
    assert a.error()[0] == 422


def test_toggle_ready_updates_then_goes_live(h: Harness) -> None:
    a, b, c = h.players(3)
    a.ready()
    assert a.error()[0] == 404  # no game yet
    a.start()
    for x in (a, b, c):
        x.got()
    b.ready()
    assert body(a.got(), "PlayerReadyUpdate") == {"room_id": ROOM, "user_id": 2, "ready": True}
    b.ready()
    assert body(c.got(), "PlayerReadyUpdate")["ready"] is False
    a.got()
    b.ready()
    c.ready()
    msgs = a.got()
    assert [next(iter(m)) for m in msgs] == ["PlayerReadyUpdate", "GameInProgress"]
    assert msgs[-1]["GameInProgress"] == {"room_id": ROOM, "current_turn": 1, "round": 1}
    started = [e for e in h.seen if isinstance(e, ev.GameStarted)]
    assert [(e.room_id, e.players) for e in started] == [(ROOM, (1, 2, 3))]
    c.got()
    c.ready()
    assert c.error()[0] == 409  # not Waiting any more


def test_spectator_cannot_ready_or_act(h: Harness) -> None:
    a, b = h.players(2)
    a.start()
    s = h.client(3)
    s.ready()
    assert s.error()[0] == 409
    b.ready()
    s.got()
    s.move()
    code, text = s.error()
    assert code == 409 and "not your turn" in text


# -- PlayerAction -----------------------------------------------------------------------


def test_actions_turns_rounds_and_the_winner(h: Harness) -> None:
    a, b = h.live(2)
    b.move()
    assert b.error()[0] == 409
    a.attack(2, 5)
    msgs = b.got()
    res = body(msgs, "ActionResult")
    assert res["user_id"] == 1
    assert res["action"] == {"Attack": {"target_id": 2, "damage": 5}}
    state = res["game_state"]
    assert state["status"] == "InProgress"
    assert state["current_turn"] == 2 and state["round"] == 1
    assert [p["score"] for p in state["players"]] == [0, -5]
    b.move(3.5)
    state = body(a.got(), "ActionResult")["game_state"]
    assert state["players"][1]["position"] == {"x": 3.5, "y": 2.0, "direction": 0.5}
    assert (state["current_turn"], state["round"]) == (1, 2)
    a.act({"UseItem": {"item_id": "potion"}})
    assert body(b.got(), "ActionResult")["action"] == {"UseItem": {"item_id": "potion"}}
    a.got()
    b.attack(1, 1)
    a.move()
    b.move()  # round 3 ends: round_limit 3
    msgs = a.got()
    assert [next(iter(m)) for m in msgs] == [
        "ActionResult",
        "ActionResult",
        "ActionResult",
        "GameEnded",
    ]
    last = msgs[2]["ActionResult"]["game_state"]
    assert last["status"] == "Finished" and last["current_turn"] is None and last["round"] == 3
    ended = msgs[3]["GameEnded"]
    assert ended["winner"]["user_id"] == 1 and ended["winner"]["score"] == -1
    assert ended["final_scores"] == [[1, -1], [2, -5]]
    (event,) = [e for e in h.seen if isinstance(e, ev.GameEnded)]
    assert event.winner == 1 and event.final_scores == ((1, -1), (2, -5))
    a.move()
    assert a.error()[0] == 404  # the game is over
    a.start()
    assert "GameStarted" in a.got()[0]  # a new game may start


def test_draw_has_no_winner(h: Harness) -> None:
    h = Harness(round_limit=1)
    a, b = h.live(2)
    a.move()
    b.move()
    ended = body(a.got(), "GameEnded")
    assert ended["winner"] is None and ended["final_scores"] == [[1, 0], [2, 0]]


def test_bad_attack_target_and_long_item_are_422_and_keep_the_turn(h: Harness) -> None:
    a, b = h.live(2)
    a.attack(99, 1)
    assert a.error()[0] == 422
    a.act({"UseItem": {"item_id": "x" * 65}})
    assert a.error()[0] == 422
    a.attack(2, -(2**31))  # a heal to the i32 ceiling, then clamped
    b.got()
    assert body(a.got(), "ActionResult")["game_state"]["players"][1]["score"] == 2**31 - 1


def test_action_before_ready_is_409(h: Harness) -> None:
    a, _b = h.players(2)
    a.start()
    a.got()
    a.move()
    assert a.error()[0] == 409


# -- time-outs ---------------------------------------------------------------------------


def test_turn_timeout_passes_the_turn_and_can_end_the_game() -> None:
    h = Harness(turn_timeout=2, round_limit=2)
    a, b = h.live(2)
    h.clock.advance(1.9)
    assert a.got() == []
    h.clock.advance(0.1)
    assert body(b.got(), "GameInProgress") == {"room_id": ROOM, "current_turn": 2, "round": 1}
    b.move()  # acting re-arms the timer for the next player
    h.clock.advance(1.5)
    assert "GameInProgress" not in str(a.got()[1:])
    h.clock.advance(0.5)
    assert body(a.got(), "GameInProgress") == {"room_id": ROOM, "current_turn": 2, "round": 2}
    h.clock.advance(2)
    msgs = a.got()
    assert [next(iter(m)) for m in msgs] == ["GameEnded"]
    assert h.games.turn_timeouts == 3
    assert h.clock.getDelayedCalls() == []


# -- leavers -----------------------------------------------------------------------------


def test_leaver_ends_a_two_player_game_with_the_other_as_winner(h: Harness) -> None:
    a, b = h.live(2)
    b.send({"RoomLeave": {"user_id": 2, "room_id": ROOM}})
    msgs = a.got()
    assert [next(iter(m)) for m in msgs] == ["UserLeftRoom", "GameEnded"]
    ended = msgs[1]["GameEnded"]
    assert ended["winner"]["user_id"] == 1 and ended["final_scores"] == [[1, 0]]
    assert h.games.stats()["active"] == 0
    assert h.clock.getDelayedCalls() == []


def test_leaver_with_the_turn_passes_it(h: Harness) -> None:
    a, b, c = h.live(3)
    a.send({"RoomLeave": {"user_id": 1, "room_id": ROOM}})
    assert body(b.got(), "GameInProgress") == {"room_id": ROOM, "current_turn": 2, "round": 1}
    b.move()
    c.got()
    c.move()
    assert body(b.got(), "ActionResult")["game_state"]["round"] == 2


def test_last_player_leaving_with_the_turn_advances_the_round(h: Harness) -> None:
    a, b, c = h.live(3)
    a.move()
    b.move()
    for x in (a, b, c):
        x.got()
    c.join(ROOM + 1)  # joining another room leaves this one
    assert body(a.got(), "GameInProgress") == {"room_id": ROOM, "current_turn": 1, "round": 2}


def test_leaver_in_waiting_game_can_make_everyone_ready(h: Harness) -> None:
    a, b, c = h.players(3)
    a.start()
    b.ready()
    a.got()
    c.send({"RoomLeave": {"user_id": 3, "room_id": ROOM}})
    assert body(a.got(), "GameInProgress")["current_turn"] == 1


def test_waiting_game_left_by_all_but_one_ends_without_winner(h: Harness) -> None:
    a, b = h.players(2)
    a.start()
    a.got()
    b.send({"RoomLeave": {"user_id": 2, "room_id": ROOM}})
    assert body(a.got(), "GameEnded")["winner"] is None
    assert not [e for e in h.seen if isinstance(e, ev.GameEnded)]


# -- spectators and reconnects ---------------------------------------------------------------


def test_joiner_gets_the_game_state_as_spectator(h: Harness) -> None:
    a, _b = h.live(2)
    a.attack(2, 3)
    s = h.client(3, join=False)
    s.got()
    s.join()
    msgs = s.got()
    assert [next(iter(m)) for m in msgs] == ["RoomJoinSuccess", "GameStarted", "GameInProgress"]
    assert [p["score"] for p in msgs[1]["GameStarted"]["players"]] == [0, -3]
    assert msgs[2]["GameInProgress"] == {"room_id": ROOM, "current_turn": 2, "round": 1}


def test_dropped_player_reconnects_and_keeps_the_seat() -> None:
    h = Harness(reconnect_grace=10)
    a, b = h.live(2)
    b.drop()
    notice = body(a.got(), "SystemMessage")["message"]
    assert notice == "player n2 (user 2) is away: seat held for 10 seconds"
    assert h.rooms.size(ROOM) == 2
    a.move()
    a.got()
    h.clock.advance(9)
    b2 = Client(h, 2)
    msgs = b2.got()
    assert [next(iter(m)) for m in msgs] == RESUMED_TAGS
    assert msgs[3]["GameInProgress"]["current_turn"] == 2
    assert body(a.got(), "SystemMessage")["message"] == "player n2 (user 2) is back"
    h.clock.advance(5)  # the old grace timer is gone
    b2.got()
    b2.move()
    assert body(a.got(), "ActionResult")["user_id"] == 2
    stats = h.games.stats()
    assert stats["seats_reclaimed_total"] == 1 and stats["seats_expired_total"] == 0


def test_dropped_player_not_back_in_time_is_removed_as_leaver() -> None:
    h = Harness(reconnect_grace=5)
    a, b = h.live(2)
    b.drop()
    a.got()
    h.clock.advance(5)
    msgs = a.got()
    assert [next(iter(m)) for m in msgs] == ["UserLeftRoom", "GameEnded"]
    assert h.rooms.size(ROOM) == 1
    b2 = Client(h, 2)
    assert b2.tags() == ["ConnectionAck"]  # no seat any more
    assert h.games.stats()["seats_expired_total"] == 1


def test_an_expired_seat_is_reported_as_an_event_not_a_call() -> None:
    h = Harness(reconnect_grace=5)
    _a, b = h.live(2)
    b.drop()
    h.clock.advance(5)
    expired = [e for e in h.seen if isinstance(e, ev.SeatExpired)]
    assert expired == [ev.SeatExpired(2, ROOM, h.clock.seconds())]


def test_an_expired_seat_nobody_removes_still_leaves_the_game() -> None:
    """With no router listening, the game service drops the player itself."""
    clock = Clock()
    events = EventBus()
    rooms = RoomService(clock, 10, events)
    games = Games(clock, rooms, events, Settings(reconnect_grace=5))

    class Member:
        def __init__(self, uid: int) -> None:
            self.user_id, self.nickname = uid, f"n{uid}"

        def send_frame(self, frame: bytes) -> None:
            pass

    a, b = Member(1), Member(2)
    for c in (a, b):
        rooms.join(c, ROOM)
    games.handle(a, m.StartGame(room_id=ROOM))
    games.handle(b, m.ToggleReady(room_id=ROOM))
    assert games.game_state(ROOM) == "InProgress"
    assert games.connection_lost(b, ROOM) is True
    clock.advance(5)
    assert games.game_state(ROOM) is None  # two players minus one: the game ended
    assert games.stats()["seats_expired_total"] == 1 and games.stats()["away"] == 0


def test_games_provides_the_game_service_interface(h: Harness) -> None:
    verifyObject(IGameService, h.games)


def test_zero_grace_means_a_drop_is_a_leave() -> None:
    h = Harness(reconnect_grace=0)
    a, b = h.live(2)
    b.drop()
    assert [next(iter(m)) for m in a.got()] == ["UserLeftRoom", "GameEnded"]


def test_non_players_are_not_held(h: Harness) -> None:
    a, _b = h.live(2)
    s = h.client(3)
    a.got()
    s.drop()
    assert [next(iter(m)) for m in a.got()] == ["UserLeftRoom"]


# -- the cache -------------------------------------------------------------------------------


def test_game_state_lives_in_the_cache_and_eviction_never_corrupts_it() -> None:
    h = Harness(reconnect_grace=10, turn_timeout=1000)
    a, b = h.live(2)
    assert h.games.cache.get(f"game_state:{ROOM}") is h.games._games[ROOM]
    assert h.games.cache.get("user_game:2") == ROOM
    h.games.cache.clear()  # lose everything, as a worst-case eviction
    a.attack(2, 4)
    state = body(b.got(), "ActionResult")["game_state"]
    assert state["players"][1]["score"] == -4 and state["current_turn"] == 2
    assert f"game_state:{ROOM}" in h.games.cache  # repaired on the miss
    h.clock.advance(301)  # TTL: the entries expire; the game does not
    b.attack(1, 1)
    assert body(a.got(), "ActionResult")["game_state"]["players"][0]["score"] == -1


def test_small_cache_many_games() -> None:
    h = Harness(cache_config=CacheConfig(l1_size=4, l2_size=4))
    pairs = []
    for g in range(10):
        room = 100 + g
        x, y = Client(h, 1000 + 2 * g), Client(h, 1001 + 2 * g)
        x.join(room)
        y.join(room)
        x.start(room)
        y.ready(room)
        pairs.append((room, x, y))
    for _ in range(3):
        for room, x, y in pairs:
            x.act({"Move": {"x": 1.0, "y": 1.0, "direction": 0.0}}, room)
            y.act({"Move": {"x": 1.0, "y": 1.0, "direction": 0.0}}, room)
    for _room, x, _y in pairs:
        assert body(x.got(), "GameEnded")["final_scores"] == [[x.uid, 0], [x.uid + 1, 0]]
    s = h.games.cache_stats()
    assert s["evictions"] > 0 and s["misses"] > 0
    assert h.games.stats()["ended_total"] == 10


def test_stats_sections(h: Harness) -> None:
    h.live(2)
    s = h.games.stats()
    assert (s["active"], s["in_progress"], s["players"], s["started_total"]) == (1, 1, 2, 1)
    c = h.games.cache_stats()
    assert c["l1_size"] == 3 and c["hit_rate"] > 0
    assert h.registry.get_sample_value("gamed_cache_entries", {"tier": "l1"}) == 3


def test_game_of_user_reads_through_user_game_keys(h: Harness) -> None:
    h.live(2)
    h.client(3)
    assert h.games.game_of_user(2) == ROOM
    assert h.games.game_of_user(3) is None  # a spectator
    h.games.cache.remove("user_game:2")
    assert h.games.game_of_user(2) == ROOM  # repaired from the rooms and the game
    assert "user_game:2" in h.games.cache


def test_tap_wires_games_cache_sweeper_and_stats(tmp_path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from gamed import tap

    options = tap.Options()
    options.parseOptions(
        ["--port", "tcp:7001", "--metrics-port", "tcp:9701", "--data-dir", str(tmp_path)]
    )
    service = tap.makeService(options, reactor=MemoryReactorClock())
    assert isinstance(service.router.games, Games)
    assert service.getServiceNamed("game-cache-sweeper") is service.router.games.service
    site = next(s for s in service if s.name == "http-listener").factory
    stats = site.resource.children[b"stats"].snapshot()
    assert stats["cache"]["l1_capacity"] == 1000 and stats["games"]["active"] == 0


def test_reconnect_before_the_old_socket_is_seen_dead_keeps_the_seat() -> None:
    """A takeover of a still-open connection moves the seat instead of leaving the game."""
    h = Harness(reconnect_grace=10)
    a, b = h.live(2)
    a.got()
    b2 = Client(h, 2)  # the old connection of user 2 has not been closed yet
    assert body(b.got(), "Error") == {"code": 409, "message": "replaced by a new connection"}
    msgs = b2.got()
    assert [next(iter(m)) for m in msgs] == RESUMED_TAGS
    assert "UserLeftRoom" not in a.tags()
    b.drop()  # the old socket finally closes: nothing changes for the game
    assert h.rooms.size(ROOM) == 2
    a.move()
    assert body(b2.got(), "ActionResult")["user_id"] == 1
