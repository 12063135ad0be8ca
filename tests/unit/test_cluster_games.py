"""ClusterGames on an in-memory cluster: nodes with their own Clock, a fake Redis for the
game lease (the Lua scripts' rules, tested against a real redis-server in
tests/integration/test_cluster_gamelease.py), and a bus that delivers envelopes and room
relays in order when the test drains it. A dead node is one whose clock stops and
whose envelopes are dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gamed import messages as m
from gamed.cluster.gamelease import Acquired
from gamed.cluster.games import ClusterGames
from gamed.cluster.link import ClusterUnavailable
from gamed.config import Settings
from gamed.events import EventBus
from gamed.games import Games
from gamed.rooms import Room, RoomService
from tests.unit.fakes import Member, parse_frames

ROOM = 9
TTL = 5.0
START = 1_767_225_600.0


class FakeRedis:
    """The game keys as the Lua scripts keep them, with expiry on the cluster's time."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.leases: dict[int, tuple[str, int, float]] = {}  # room -> owner, token, expires
        self.snapshots: dict[int, bytes] = {}
        self.fence: dict[int, int] = {}
        self.members: dict[int, dict[int, tuple[str, str]]] = {}  # room -> uid -> node, nick
        self.writes = 0
        self.down = False
        self.drop_writes = False

    def lease(self, room_id: int) -> tuple[str, int] | None:
        held = self.leases.get(room_id)
        if held is None or held[2] <= self.cluster.now:
            self.leases.pop(room_id, None)
            return None
        return held[0], held[1]


class FakeLeases:
    """GameLeases' contract on FakeRedis, answering at once (or failing while it is down)."""

    def __init__(self, redis: FakeRedis, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id
        self.ttl = TTL
        self.renew_interval = TTL / 3
        self.fenced = 0

    def _up(self) -> None:
        if self.redis.down:
            raise ClusterUnavailable("redis is down")

    def _mine(self, room_id: int, token: int) -> bool:
        ok = self.redis.lease(room_id) == (self.node_id, token)
        self.fenced += not ok
        return ok

    def _hold(self, room_id: int, token: int) -> None:
        self.redis.leases[room_id] = (self.node_id, token, self.redis.cluster.now + TTL)

    def acquire(self, room_id: int, *, resume: bool = False, dead_owner: str = "") -> Any:
        if self.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        r = self.redis
        held = r.lease(room_id)
        if held is not None and held[0] not in (self.node_id, dead_owner):
            return defer.succeed(Acquired(False, held[0], held[1], None))
        snap = None
        if resume:
            snap = r.snapshots.get(room_id)
            if snap is None:
                return defer.succeed(Acquired(False, "", 0, None))
        else:
            r.snapshots.pop(room_id, None)
        token = r.fence[room_id] = r.fence.get(room_id, 0) + 1
        self._hold(room_id, token)
        return defer.succeed(Acquired(True, self.node_id, token, snap))

    def again(self, room_id: int, token: int) -> Any:
        if self.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        r = self.redis
        held = r.lease(room_id)
        if held is not None and held[0] != self.node_id:
            return defer.succeed(Acquired(False, held[0], held[1], None))
        if r.fence.get(room_id, 0) != token:
            return defer.succeed(Acquired(False, "", 0, None))
        new = r.fence[room_id] = token + 1
        self._hold(room_id, new)
        return defer.succeed(Acquired(True, self.node_id, new, None))

    def renew(self, room_id: int, token: int) -> Any:
        if self.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        ok = self._mine(room_id, token)
        if ok:
            self._hold(room_id, token)
        return defer.succeed(ok)

    def write(self, room_id: int, token: int, blob: bytes, seq: int) -> Any:
        if self.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        ok = self._mine(room_id, token)
        if ok and not self.redis.drop_writes:
            self.redis.snapshots[room_id] = blob
            self.redis.writes += 1
            self._hold(room_id, token)
        return defer.succeed(ok)

    def release(self, room_id: int, token: int) -> Any:
        if self.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        ok = self._mine(room_id, token)
        if ok:
            self.redis.leases.pop(room_id, None)
            self.redis.snapshots.pop(room_id, None)
        return defer.succeed(ok)

    def owner(self, room_id: int) -> Any:
        if self.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        return defer.succeed(self.redis.lease(room_id))


class Node:
    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.clock = Clock()
        self.clock.advance(cluster.now)
        self.alive = True
        self.publish_ok = True
        settings = Settings(round_limit=2, turn_timeout=30, reconnect_grace=0)
        self.rooms = RoomService(self.clock, 100, EventBus())
        self.rooms.relay = self.relay
        self.games = Games(self.clock, self.rooms, EventBus(), settings)
        self.leases = FakeLeases(cluster.redis, node_id)
        self.cg = ClusterGames(self.games, self.rooms, self.clock)
        self.cg.bind(self.leases, self.send, self.roster)  # type: ignore[arg-type]
        self.cg.start()
        self.members: dict[int, Member] = {}

    def send(self, node: str, payload: bytes) -> bool:
        if not self.publish_ok:
            return False  # the link is down: RedisLink.publish drops and says so
        if self.alive:
            self.cluster.queue.append((node, payload))
        return True

    def relay(self, room: Room, frame: bytes) -> None:
        for node in room.remote:
            self.send(node, b"F%d\n" % room.room_id + frame)

    def roster(self, room_id: int) -> Any:
        if self.cluster.redis.down:
            return defer.fail(ClusterUnavailable("redis is down"))
        seats = self.cluster.redis.members.get(room_id, {})
        return defer.succeed([(uid, node, nick) for uid, (node, nick) in seats.items()])

    def receive(self, payload: bytes) -> None:
        end = payload.index(b"\n")
        kind, head, body = payload[:1], payload[1:end], payload[end + 1 :]
        if kind == b"F":
            room = self.rooms.get(int(head))
            if room is not None:
                self.rooms.deliver(room, body)
        else:
            assert kind == b"G"
            self.cg.receive(head.split(b" "), body)

    # -- players ------------------------------------------------------------------------

    def join(self, uid: int) -> Member:
        member = Member(uid, f"n{uid}")
        self.members[uid] = member
        self.rooms.join(member, ROOM)
        self.cluster.seated(self, uid)
        self.cg.member_joined(member, ROOM)
        return member

    def leave(self, uid: int) -> None:
        member = self.members.pop(uid)
        self.rooms.leave(member, ROOM)
        self.cluster.unseated(self, uid)
        self.cg.member_left(member, ROOM)

    def send_game(self, uid: int, message: object) -> None:
        try:
            self.cg.handle(self.members[uid], message)
        except Exception as e:  # a Refusal: what the router would send back
            code = getattr(e, "code", 500)
            self.members[uid].send_frame(_frame(m.Error(code, str(getattr(e, "message", e)))))

    def inbox(self, uid: int) -> list[dict]:
        member = self.members[uid]
        out = parse_frames(b"".join(member.frames))
        member.frames.clear()
        return out


def _frame(msg: object) -> bytes:
    from gamed import codec

    return codec.frame(msg)


class Cluster:
    def __init__(self, *names: str) -> None:
        self.now = START
        self.redis = FakeRedis(self)
        self.queue: deque[tuple[str, bytes]] = deque()
        self.nodes = {name: Node(self, name) for name in names}

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def drain(self) -> None:
        for _ in range(10_000):
            if not self.queue:
                return
            name, payload = self.queue.popleft()
            node = self.nodes[name]
            if node.alive:
                node.receive(payload)
        raise AssertionError("the bus never went quiet")

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Time passes on every live node (in steps, draining the bus in between)."""
        end = self.now + seconds
        while self.now < end:
            dt = min(step, end - self.now)
            self.now += dt
            for node in self.nodes.values():
                if node.alive:
                    node.clock.advance(dt)
            self.drain()

    def kill(self, name: str) -> None:
        self.nodes[name].alive = False

    def _remote(self) -> None:
        """Every node's Room.remote from the members map (the rooms core's job)."""
        seats = self.redis.members.get(ROOM, {})
        for node in self.nodes.values():
            room = node.rooms.get(ROOM)
            if room is None:
                continue
            counts: dict[str, int] = {}
            for other, _nick in seats.values():
                if other != node.node_id:
                    counts[other] = counts.get(other, 0) + 1
            room.remote = counts
            room.total = len(seats)

    def seated(self, node: Node, uid: int) -> None:
        self.redis.members.setdefault(ROOM, {})[uid] = (node.node_id, f"n{uid}")
        self._remote()

    def unseated(self, node: Node, uid: int) -> None:
        self.redis.members.get(ROOM, {}).pop(uid, None)
        self._remote()

    def clean_up(self, name: str) -> None:
        """The dead node's members leave the members map (the node sweep's job)."""
        seats = self.redis.members.get(ROOM, {})
        for uid in [u for u, (n, _) in seats.items() if n == name]:
            del seats[uid]
        self._remote()


def tags(msgs: list[dict]) -> list[str]:
    return [next(iter(x)) for x in msgs]


def move(node: Node, uid: int) -> None:
    node.send_game(uid, m.PlayerAction(ROOM, m.Move(1.0, 2.0, 0.0)))


@pytest.fixture
def two() -> Cluster:
    """Node A has user 1, node B users 2 and 3; user 2 started a game on B (the owner)."""
    c = Cluster("A", "B")
    c["A"].join(1)
    c["B"].join(2)
    c["B"].join(3)
    c.drain()
    c["B"].send_game(2, m.StartGame(ROOM))
    c.drain()
    return c


def game_on_b(*, ready: bool, more_on_b: tuple[int, ...] = ()) -> Cluster:
    """Node A has users 1 and 3, node B user 2 (and ``more_on_b``); user 2 started a game on
    B (the owner). With ``ready``, users 1 and 3 are ready too: the game is in progress."""
    c = Cluster("A", "B")
    a, b = c["A"], c["B"]
    a.join(1)
    a.join(3)
    for uid in (2, *more_on_b):
        b.join(uid)
    c.drain()
    b.send_game(2, m.StartGame(ROOM))
    c.drain()
    if ready:
        a.send_game(1, m.ToggleReady(ROOM))
        a.send_game(3, m.ToggleReady(ROOM))
        c.drain()
    return c


def test_a_game_between_players_on_two_nodes_runs_to_game_ended(two: Cluster) -> None:
    a, b = two["A"], two["B"]
    assert two.redis.lease(ROOM) == ("B", 1)
    assert a.cg._owner_of == {ROOM: "B"}  # told by the owner
    started = a.inbox(1)
    assert tags(started) == ["GameStarted"]
    assert [p["user_id"] for p in started[0]["GameStarted"]["players"]] == [2, 3, 1]
    a.send_game(1, m.ToggleReady(ROOM))  # forwarded to B
    b.send_game(3, m.ToggleReady(ROOM))
    two.drain()
    assert tags(a.inbox(1)) == ["PlayerReadyUpdate", "GameInProgress"]
    # Out of turn on A: the owner's 409 comes back to user 1 only.
    move(a, 1)
    two.drain()
    (err,) = a.inbox(1)
    assert err["Error"]["code"] == 409 and "not your turn" in err["Error"]["message"]
    for _ in range(2):  # two rounds of 2, 3, 1
        move(b, 2)
        move(b, 3)
        two.drain()
        move(a, 1)
        two.drain()
    msgs = a.inbox(1)
    assert tags(msgs)[-1] == "GameEnded"
    assert tags(b.inbox(2))[-1] == "GameEnded"
    assert two.redis.writes >= 8  # a snapshot after every change
    assert two.redis.lease(ROOM) is None and ROOM not in two.redis.snapshots
    assert a.cg._owner_of == {} and b.cg._owned == {}
    assert a.cg.stats()["forwarded_total"] == 4 and b.cg.stats()["applied_remote_total"] == 4


def test_start_game_from_a_second_node_while_one_runs_is_409(two: Cluster) -> None:
    a = two["A"]
    a.cg._owner_of.clear()  # as if A had not heard of it: it asks the lease
    a.send_game(1, m.StartGame(ROOM))
    two.drain()
    (err,) = [x for x in a.inbox(1) if "Error" in x]
    assert err["Error"]["code"] == 409
    assert a.cg._owner_of == {ROOM: "B"}


def test_owner_death_resumes_on_the_survivor_within_the_lease_ttl() -> None:
    c = game_on_b(ready=True)
    a, b = c["A"], c["B"]
    move(b, 2)  # user 1's turn next
    c.drain()
    a.inbox(1)
    c.kill("B")
    c.advance(TTL + TTL)  # the lease runs out, then A's watchdog takes over
    msgs = a.inbox(1)
    assert "SystemMessage" in tags(msgs)
    text = next(x for x in msgs if "SystemMessage" in x)["SystemMessage"]["message"]
    assert "resumed on another server" in text and "n2 (user 2)" in text
    assert c.redis.lease(ROOM) == ("A", 2)
    assert a.cg.stats()["takeovers_total"] == 1
    # User 2 was on the dead node: dropped; 1 and 3 play on, to the end.
    game = a.games.live(ROOM)
    assert game is not None and [p.user_id for p in game.players] == [1, 3]
    for _ in range(4):
        current = game.players[game.turn].user_id
        move(a, current)
        c.drain()
        if a.games.live(ROOM) is None:
            break
    assert tags(a.inbox(3))[-1] == "GameEnded"
    assert c.redis.lease(ROOM) is None


def test_a_dead_owner_named_by_the_cluster_is_taken_over_at_once(two: Cluster) -> None:
    a = two["A"]
    two.kill("B")
    a.inbox(1)
    a.cg.node_dead("B")  # the node sweep: no wait for the lease TTL
    two.drain()
    msgs = a.inbox(1)
    # Only user 1 is left: the game ends clearly, user 1 the only player.
    assert tags(msgs) == ["SystemMessage", "GameEnded"]
    assert two.redis.lease(ROOM) is None


def test_the_sweep_of_a_dead_owner_hands_its_game_over_before_the_lease_ttl() -> None:
    c = game_on_b(ready=False)
    a = c["A"]
    c.kill("B")
    c.clean_up("B")  # the node sweep removed B's members: node A hears "B has 0 here"
    a.cg.node_left_room(ROOM, "B")
    c.drain()
    assert c.redis.lease(ROOM) == ("A", 2)  # at once, though B's lease had seconds left
    assert a.games.live(ROOM) is not None
    # And as the owner: players of a node that has nobody left in the room leave the game.
    a.cg.node_left_room(ROOM, "A")  # not a remote node: nothing to drop
    game = a.games.live(ROOM)
    assert game is not None and [p.user_id for p in game.players] == [1, 3]


def test_a_stalled_owner_that_comes_back_is_fenced_and_tells_its_players() -> None:
    c = game_on_b(ready=False, more_on_b=(4,))
    b = c["B"]
    b.alive = False  # B stalls: no clock, no envelopes in or out
    c.advance(TTL + TTL)
    assert c.redis.lease(ROOM) == ("A", 2)
    b.alive = True
    b.inbox(4)
    b.clock.advance(TTL)  # B wakes up: its renewal is refused
    c.drain()
    assert b.cg.stats()["fenced_total"] == 1 and b.games.live(ROOM) is None
    msgs = b.inbox(4)
    assert {"SystemMessage": {"message": "this game continues on another server"}} in msgs
    assert c.redis.lease(ROOM) == ("A", 2)  # nothing B did touched A's lease


def test_a_woken_owner_sends_no_stale_event_before_its_lease_is_confirmed() -> None:
    c = game_on_b(ready=True)
    a, b = c["A"], c["B"]
    game = b.games.live(ROOM)
    assert game is not None and game.players[game.turn].user_id == 2
    b.alive = False  # B stalls with user 2 to play
    c.advance(TTL + TTL)  # A takes over
    assert c.redis.lease(ROOM) == ("A", 2)
    a.inbox(1)
    renewals: list[defer.Deferred[bool]] = []
    real_renew = b.leases.renew

    def slow_renew(room_id: int, token: int) -> defer.Deferred[bool]:
        d: defer.Deferred[bool] = defer.Deferred()
        d.addCallback(lambda _: real_renew(room_id, token))
        renewals.append(d)
        return d

    b.leases.renew = slow_renew  # type: ignore[method-assign]
    b.alive = True
    b.clock.advance(c.now - b.clock.seconds())  # B wakes: its clock jumped, timers due
    b.inbox(2)
    move(b, 2)  # not applied: B's lease may be gone, B asks Redis first
    (err,) = b.inbox(2)
    assert err["Error"]["code"] == 503 and "confirming" in err["Error"]["message"]
    assert renewals
    for d in renewals:
        d.callback(None)  # Redis answers: refused
    c.drain()
    assert tags(a.inbox(1)) == []  # nothing stale reached node A
    assert b.games.live(ROOM) is None and b.cg.stats()["fenced_total"] == 1
    assert b.inbox(2) == [{"SystemMessage": {"message": "this game continues on another server"}}]


def test_a_woken_owner_holds_its_turn_timer_until_the_lease_is_confirmed() -> None:
    c = game_on_b(ready=True)
    a, b = c["A"], c["B"]
    b.leases.renew = lambda *_: defer.Deferred()  # type: ignore[method-assign]  # no answer
    b.alive = False
    c.advance(TTL + TTL)  # A takes over (and the game goes on there)
    assert c.redis.lease(ROOM) == ("A", 2)
    a.inbox(1)
    b.inbox(2)
    b.alive = True
    b.clock.advance(c.now - b.clock.seconds() + 21)  # B wakes; user 2's turn times out on B
    c.drain()
    assert tags(a.inbox(1)) == [] and "GameInProgress" not in tags(b.inbox(2))
    game = b.games.live(ROOM)
    assert game is not None and game.timer is not None and game.timer.active()


def test_an_owner_whose_members_all_left_hands_the_game_over(two: Cluster) -> None:
    a, b = two["A"], two["B"]
    a.send_game(1, m.ToggleReady(ROOM))
    b.send_game(3, m.ToggleReady(ROOM))
    two.drain()
    b.leave(2)
    b.leave(3)
    two.drain()
    # Users 2 and 3 left: user 1, alone, wins; the game ended and nobody is stuck.
    assert tags(a.inbox(1))[-1] == "GameEnded"


def test_handoff_with_players_left_continues_on_their_node() -> None:
    c = game_on_b(ready=True)
    a, b = c["A"], c["B"]
    a.inbox(1)
    b.leave(2)  # B has nobody left in the room: it hands the game to A
    c.drain()
    msgs = a.inbox(1)
    assert any(
        "moved to another server" in x.get("SystemMessage", {}).get("message", "") for x in msgs
    )
    assert c.redis.lease(ROOM) == ("A", 2) and a.cg.stats()["takeovers_total"] == 1
    assert b.cg.stats()["handoffs_total"] == 1
    game = a.games.live(ROOM)
    assert game is not None and [p.user_id for p in game.players] == [1, 3]


def test_an_owner_that_died_before_its_first_snapshot_ends_the_game_clearly(two: Cluster) -> None:
    a = two["A"]
    two.redis.snapshots.pop(ROOM)  # as if B died before its first write landed
    two.redis.drop_writes = True
    two.kill("B")
    a.inbox(1)
    two.advance(TTL + TTL)
    msgs = a.inbox(1)
    assert tags(msgs) == ["SystemMessage", "GameEnded"]
    assert "could not be resumed" in msgs[0]["SystemMessage"]["message"]
    assert a.cg._owner_of == {}


def test_redis_down_answers_game_messages_with_503_and_local_games_go_on() -> None:
    c = Cluster("A")
    a = c["A"]
    a.join(1)
    a.join(2)
    c.redis.down = True
    a.send_game(1, m.StartGame(ROOM))  # the lease cannot be taken: no game
    c.drain()
    (err,) = a.inbox(1)
    assert err["Error"]["code"] == 503 and "cluster unavailable" in err["Error"]["message"]
    c.redis.down = False
    a.send_game(1, m.StartGame(ROOM))
    a.send_game(2, m.ToggleReady(ROOM))
    c.drain()
    c.redis.down = True  # snapshots fail now: the game goes on here
    move(a, 1)
    c.advance(TTL)
    assert a.games.live(ROOM) is not None and "ActionResult" in tags(a.inbox(2))
    assert c.redis.lease(ROOM) is None  # it ran out while Redis was away
    c.redis.down = False
    c.advance(TTL)  # refused, but nobody held the game since: A takes it back
    assert c.redis.lease(ROOM) == ("A", 2) and a.cg.stats()["regained_total"] == 1
    assert a.games.live(ROOM) is not None and a.cg.stats()["fenced_total"] == 0
    move(a, 2)
    assert "ActionResult" in tags(a.inbox(1))


def test_a_forward_the_link_cannot_publish_is_refused_with_503(two: Cluster) -> None:
    a = two["A"]
    a.inbox(1)
    a.publish_ok = False
    a.send_game(1, m.ToggleReady(ROOM))
    (err,) = a.inbox(1)
    assert err["Error"]["code"] == 503 and "cannot be reached" in err["Error"]["message"]
    assert a.cg.stats()["forwarded_total"] == 0


def test_a_spectator_on_another_node_gets_the_state_from_the_owner(two: Cluster) -> None:
    a = two["A"]
    a.cg._owner_of.clear()  # as a node that never heard of the game: it asks the lease
    a.join(4)
    two.drain()
    msgs = a.inbox(4)
    assert tags(msgs) == ["GameStarted"]  # the state, sent by B to user 4 only
    assert sorted(p["user_id"] for p in msgs[0]["GameStarted"]["players"]) == [1, 2, 3]
    assert a.cg._owner_of == {ROOM: "B"}
    a.send_game(4, m.ToggleReady(ROOM))  # a spectator: B's 409 comes back
    two.drain()
    (err,) = a.inbox(4)
    assert err["Error"]["code"] == 409


def test_a_stale_owner_mapping_gets_503_then_the_next_message_finds_the_truth(
    two: Cluster,
) -> None:
    a, b = two["A"], two["B"]
    assert b.games.abort(ROOM, "stopped by an operator")
    two.drain()
    assert a.cg._owner_of == {}  # the owner's x reached A
    a.inbox(1)
    a.cg._owner_of[ROOM] = "B"  # as if that x had been lost
    a.send_game(1, m.ToggleReady(ROOM))
    two.drain()
    (err,) = a.inbox(1)
    assert err["Error"]["code"] == 503 and "send it again" in err["Error"]["message"]
    assert a.cg._owner_of == {}  # B said so (x): A asks the lease next time
    a.send_game(1, m.ToggleReady(ROOM))
    two.drain()
    (err,) = a.inbox(1)
    assert err["Error"]["code"] == 404 and "no game" in err["Error"]["message"]


def test_the_collector_shows_what_the_stats_say(two: Cluster) -> None:
    from prometheus_client import CollectorRegistry

    from gamed.cluster.games import ClusterGamesCollector

    registry = CollectorRegistry()
    registry.register(ClusterGamesCollector(two["B"].cg))
    assert registry.get_sample_value("gamed_cluster_games_owned") == 1
    assert registry.get_sample_value("gamed_cluster_games_elsewhere") == 0
    two["A"].send_game(1, m.ToggleReady(ROOM))
    two.drain()
    assert registry.get_sample_value("gamed_cluster_games_applied_remote_total") == 1
    assert registry.get_sample_value("gamed_cluster_games_takeovers_total") == 0
