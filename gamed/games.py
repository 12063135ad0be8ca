"""Turn-based games in rooms: the IGameService the router calls.

One game per room. The rules are protocol.md's Games section; every choice it
left open is written down in docs/games.md. Turn time-outs and reconnect
grace periods are DelayedCalls on the injected clock.

Where the state lives: the ``Game`` objects are kept in ``self._games`` (the
authority, never evicted, dropped when the game ends) *and* in the
``GameStateCache`` under ``game_state:{room_id}``, which is the read path of
every game message. The cache holds the very same object, never a copy, so
a cached entry cannot be stale; an entry lost to eviction or expiry is a miss
that is repaired from ``self._games``. A game can therefore never be
corrupted by the cache, only slowed down by a miss. ``user_game:{user_id}``
holds the room id of each player's game, read when a player reconnects.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from twisted.application.service import IService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gamed import codec
from gamed import events as ev
from gamed import messages as m
from gamed.cache import BlobCodec, CacheCollector, CacheConfig, GameStateCache, make_sweeper
from gamed.config import Settings
from gamed.errors import Refusal
from gamed.interfaces import IGameService, IRoomClient
from gamed.rooms import Room, RoomService

_log = Logger()

WAITING, IN_PROGRESS, FINISHED = "Waiting", "InProgress", "Finished"
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
#: Longest ``UseItem.item_id`` accepted (it is echoed to the whole room).
ITEM_ID_MAX_CHARS = 64
#: Format of ``Games.snapshot``; ``restore`` refuses any other.
SNAPSHOT_VERSION = 1
#: A turn restored from a snapshot has at least this long (or the whole turn time-out,
#: if shorter) before it times out: the failover was not the player's fault.
RESUME_TURN_FLOOR = 5.0


def member_room(rooms: RoomService, client: IRoomClient, room_id: int) -> Room | None:
    """Room ``room_id`` if ``client`` (this very connection) is its member, else None.

    A game message is taken only from a member; after a wait (Redis) the sender may have
    left, or joined again on another connection, meanwhile.
    """
    room = rooms.room_of(client.user_id)
    if room is None or room.room_id != room_id or room.members.get(client.user_id) is not client:
        return None
    return room


class SnapshotError(ValueError):
    """A snapshot this server cannot restore (other version, missing or bad fields)."""


class GameWatcher(Protocol):
    """Told about every change of a game (the cluster writes its snapshot from this)."""

    def game_changed(self, game: Game) -> None: ...

    def game_ended(self, room_id: int) -> None: ...


class Player:
    """One seat in a game."""

    __slots__ = ("away", "nickname", "position", "ready", "score", "user_id")

    def __init__(self, user_id: int, nickname: str, ready: bool) -> None:
        self.user_id = user_id
        self.nickname = nickname
        self.score = 0
        self.ready = ready
        self.position: dict[str, float] | None = None
        self.away = False

    def wire(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "nickname": self.nickname,
            "score": self.score,
            "ready": self.ready,
            "position": self.position,
        }


class Game:
    """A room's game: players in room join order, whose turn, which round."""

    __slots__ = (
        "by_id",
        "created_at",
        "live_at",
        "players",
        "room_id",
        "round",
        "seq",
        "status",
        "timer",
        "turn",
    )

    def __init__(self, room_id: int, now: float) -> None:
        self.room_id = room_id
        self.status = WAITING
        self.players: list[Player] = []
        self.by_id: dict[int, Player] = {}
        self.turn = 0  # index into players while InProgress
        self.round = 0
        self.created_at = now
        self.live_at: float | None = None  # when it went InProgress
        self.timer: IDelayedCall | None = None
        self.seq = 0  # changes so far: a snapshot's age (bumped before each watcher call)

    def add(self, player: Player) -> None:
        self.players.append(player)
        self.by_id[player.user_id] = player

    @property
    def current(self) -> Player | None:
        return self.players[self.turn] if self.status == IN_PROGRESS else None

    def state(self) -> dict[str, Any]:
        """The protocol's game-state object."""
        current = self.current
        return {
            "room_id": self.room_id,
            "status": self.status,
            "players": [p.wire() for p in self.players],
            "current_turn": current.user_id if current is not None else None,
            "round": self.round,
            "started_at": int(self.created_at),
        }


class _Seat:
    """A dropped player's held seat."""

    __slots__ = ("call", "room_id")

    def __init__(self, room_id: int, call: IDelayedCall) -> None:
        self.room_id = room_id
        self.call = call


@implementer(IGameService)
class Games:
    """Game rules, turns, turn timers and reconnect grace; never sees a transport."""

    def __init__(
        self,
        clock: IReactorTime,
        rooms: RoomService,
        events: ev.EventBus,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        cache_config: CacheConfig | Mapping[str, Any] | None = None,
    ) -> None:
        self._clock = clock
        self._rooms = rooms
        # Also where an expired seat is reported (SeatExpired): the router
        # listens there, so this service never needs a reference to it.
        self._events = events
        self.round_limit = settings.round_limit
        self.turn_timeout = settings.turn_timeout
        self.reconnect_grace = settings.reconnect_grace
        if cache_config is None:
            cache_config = settings.for_plugin("cache")
        if not isinstance(cache_config, CacheConfig):
            cache_config = CacheConfig.from_mapping(cache_config)
        # Values are live Game objects and room ids: nothing to serialise, so
        # compression never applies to them (see docs/cache.md).
        self.cache = GameStateCache(clock, cache_config)
        # Snapshots (cluster failover) use the cache's serializer and compression rule.
        self.blob = BlobCodec(cache_config)
        self.watcher: GameWatcher | None = None
        #: Cluster only: ``lease_ok(room_id)``, False while this node is not sure it still
        #: owns the game (a turn time-out then waits a second and asks again).
        self.lease_ok: Callable[[int], bool] | None = None
        self.service: IService = make_sweeper(self.cache, clock)
        self.service.setName("game-cache-sweeper")
        if registry is not None:
            registry.register(CacheCollector(self.cache))
        self._games: dict[int, Game] = {}
        self._away: dict[int, _Seat] = {}
        self.started = 0  # games that went InProgress
        self.ended = 0
        self.actions = 0
        self.turn_timeouts = 0
        self.leavers = 0
        self.seats_held = 0
        self.seats_reclaimed = 0
        self.seats_expired = 0
        self.restored = 0  # games resumed here from another node's snapshot
        self.restore_dropped = 0  # players removed by a restore (not present any more)
        self.abandoned = 0  # games stopped here because another node owns them now

    # -- lookups (through the cache) -----------------------------------------------------

    def game(self, room_id: int) -> Game | None:
        """The room's game: a cache read, repaired from the authority on a miss.

        Rooms without a game are answered by the game table without a cache
        lookup, so a cache miss always means an entry lost to eviction or TTL.
        """
        if room_id not in self._games:
            return None
        key = f"game_state:{room_id}"
        game = self.cache.get(key)
        if game is None:
            game = self._games[room_id]
            self.cache.set(key, game)
        return game

    def game_state(self, room_id: int) -> str | None:
        """The status of the room's game, for monitoring: no cache read, no side effects."""
        game = self._games.get(room_id)
        return None if game is None else game.status

    def game_detail(self, room_id: int) -> dict[str, Any] | None:
        """The room's game for an operator; reads ``self._games`` (no cache, no side effects)."""
        game = self._games.get(room_id)
        if game is None:
            return None
        current = game.current
        timer = game.timer
        left: float | None = None
        if current is not None and timer is not None and timer.active():
            left = round(max(0.0, timer.getTime() - self._clock.seconds()), 3)
        return {
            "status": game.status,
            "round": game.round,
            "round_limit": self.round_limit,
            "current_turn": current.user_id if current is not None else None,
            "turn_time_left": left,
            "turn_timeout": self.turn_timeout,
            "created_at": game.created_at,
            "live_at": game.live_at,
            "players": [
                {
                    "user_id": p.user_id,
                    "nickname": p.nickname,
                    "score": p.score,
                    "ready": p.ready,
                    "away": p.away,
                }
                for p in game.players
            ],
        }

    def is_away(self, user_id: int) -> bool:
        return user_id in self._away

    def game_of_user(self, user_id: int) -> int | None:
        """Room id of the game ``user_id`` plays in, or None (read through ``user_game:``)."""
        key = f"user_game:{user_id}"
        room_id = self.cache.get(key)
        if room_id is not None:
            game = self._games.get(room_id)
            if game is not None and user_id in game.by_id:
                return room_id
            self.cache.remove(key)  # stale: the seat went with its player
            return None
        room = self._rooms.room_of(user_id)
        if room is not None:
            game = self._games.get(room.room_id)
            if game is not None and user_id in game.by_id:
                self.cache.set(key, room.room_id)
                return room.room_id
        return None

    # -- IGameService -------------------------------------------------------------------

    def handle(self, client: IRoomClient, message: Any) -> None:
        room = member_room(self._rooms, client, message.room_id)
        if room is None:
            raise Refusal(404, f"not in room {message.room_id}")
        self.apply(client, message, list(room.members.values()))

    def apply(self, client: IRoomClient, message: Any, members: list[IRoomClient]) -> None:
        """A game message from a member whose membership the caller checked.

        ``members`` are the room's members in join order (StartGame makes them the
        players); in a cluster the owner of the game passes the members of every node,
        those elsewhere as stand-ins whose ``send_frame`` reaches them.
        """
        room_id = message.room_id
        tag = message.TAG
        if tag == "PlayerAction":
            self._act(client, room_id, message.action)
        elif tag == "ToggleReady":
            self._toggle_ready(client, room_id)
        elif tag == "StartGame":
            self._start(client, room_id, members)
        else:  # pragma: no cover - the router only routes these three
            raise Refusal(400, f"not a game message: {tag}")

    def member_joined(self, client: IRoomClient, room_id: int) -> None:
        game = self.game(room_id)
        if game is not None:
            self._send_state(client, game)

    def member_left(self, client: IRoomClient, room_id: int) -> None:
        uid = client.user_id
        seat = self._away.pop(uid, None)
        if seat is not None and seat.call.active():
            seat.call.cancel()
        game = self._games.get(room_id)
        if game is None:
            return
        player = game.by_id.get(uid)
        if player is not None:
            self.leavers += 1
            self._remove_player(game, player)
            self._changed(game)

    def connection_lost(self, client: IRoomClient, room_id: int) -> bool:
        if self.reconnect_grace <= 0:
            return False
        uid = client.user_id
        game = self._games.get(room_id)
        player = game.by_id.get(uid) if game is not None else None
        if player is None:
            return False
        player.away = True
        call = self._clock.callLater(self.reconnect_grace, self._grace_expired, uid)
        self._away[uid] = _Seat(room_id, call)
        self.seats_held += 1
        text = (
            f"player {player.nickname} (user {uid}) is away: "
            f"seat held for {self.reconnect_grace:g} seconds"
        )
        self._rooms.broadcast(room_id, codec.frame(m.SystemMessage(text)))
        return True

    def reclaim(self, user_id: int) -> int | None:
        seat = self._away.pop(user_id, None)
        if seat is None:
            return None
        if seat.call.active():
            seat.call.cancel()
        self.seats_reclaimed += 1
        return seat.room_id

    def reclaimed(self, client: IRoomClient, room_id: int) -> None:
        uid = client.user_id
        game = self.game(room_id)
        nickname = client.nickname
        if game is not None:
            player = game.by_id.get(uid)
            if player is not None:
                player.away = False
                nickname = player.nickname
            self._send_state(client, game)
        text = f"player {nickname} (user {uid}) is back"
        self._rooms.broadcast(room_id, codec.frame(m.SystemMessage(text)))

    # -- the rules ----------------------------------------------------------------------

    def _start(self, client: IRoomClient, room_id: int, present: list[IRoomClient]) -> None:
        game = self.game(room_id)
        if game is not None:
            raise Refusal(409, f"a game is already {_doing(game.status)} in room {room_id}")
        away = self._away
        members = [c for c in present if c.user_id not in away]
        if len(members) < 2:
            raise Refusal(
                409, f"a game needs at least 2 players in the room, there are {len(members)}"
            )
        game = Game(room_id, self._clock.seconds())
        for c in members:
            game.add(Player(c.user_id, c.nickname, ready=c is client))
        self._games[room_id] = game
        cache = self.cache
        cache.set(f"game_state:{room_id}", game)
        for p in game.players:
            cache.set(f"user_game:{p.user_id}", room_id)
        self._broadcast(room_id, m.GameStarted(room_id, [p.wire() for p in game.players]))
        self._changed(game)

    def _toggle_ready(self, client: IRoomClient, room_id: int) -> None:
        game = self.game(room_id)
        if game is None:
            raise Refusal(404, f"no game in room {room_id}: send StartGame first")
        if game.status != WAITING:
            raise Refusal(409, f"the game in room {room_id} is already in progress")
        player = game.by_id.get(client.user_id)
        if player is None:
            raise Refusal(
                409, "you are not a player in this game (you joined after it was started)"
            )
        player.ready = not player.ready
        if player.ready and all(p.ready for p in game.players):
            self._go_live(game)
        else:
            self._broadcast(room_id, m.PlayerReadyUpdate(room_id, player.user_id, player.ready))
        self._changed(game)

    def _act(self, client: IRoomClient, room_id: int, action: m.Action) -> None:
        game = self.game(room_id)
        if game is None:
            raise Refusal(404, f"no game in room {room_id}")
        if game.status != IN_PROGRESS:
            raise Refusal(
                409, f"the game in room {room_id} has not started: players are not all ready"
            )
        current = game.players[game.turn]
        uid = client.user_id
        if current.user_id != uid:
            raise Refusal(409, f"not your turn: it is user {current.user_id}'s turn")
        tag = action.TAG
        if isinstance(action, m.Move):
            current.position = {"x": action.x, "y": action.y, "direction": action.direction}
        elif isinstance(action, m.Attack):
            target = game.by_id.get(action.target_id)
            if target is None:
                raise Refusal(422, f"attack target {action.target_id} is not a player in this game")
            target.score = max(I32_MIN, min(I32_MAX, target.score - action.damage))
        elif len(action.item_id) > ITEM_ID_MAX_CHARS:
            raise Refusal(422, f"item_id is longer than {ITEM_ID_MAX_CHARS} characters")
        self.actions += 1
        finished = self._advance(game)
        wire = {
            tag: action
        }  # orjson writes the slotted dataclass's fields (see codec.action_to_wire)
        self._broadcast(room_id, m.ActionResult(room_id, uid, wire, game.state()))
        if finished:
            self._end(game)
        else:
            self._arm_timer(game)
            self._changed(game)

    def _go_live(self, game: Game, announce: bool = True) -> None:
        game.status = IN_PROGRESS
        game.round = 1
        game.turn = 0
        now = self._clock.seconds()
        game.live_at = now
        self.started += 1
        if announce:
            room_id = game.room_id
            self._broadcast(room_id, m.GameInProgress(room_id, game.players[0].user_id, 1))
        self._arm_timer(game)
        if self._events.active:
            players = tuple(p.user_id for p in game.players)
            self._events.emit(ev.GameStarted(game.room_id, players, now))

    def _advance(self, game: Game) -> bool:
        """Pass the turn; True when that finished the last round."""
        game.turn += 1
        if game.turn >= len(game.players):
            if game.round >= self.round_limit:
                game.status = FINISHED
                game.turn = 0
                return True
            game.turn = 0
            game.round += 1
        return False

    def _arm_timer(self, game: Game, delay: float | None = None) -> None:
        if delay is None:
            delay = self.turn_timeout
        timer = game.timer
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            game.timer = self._clock.callLater(delay, self._turn_timed_out, game)

    def _announce_turn(self, game: Game) -> None:
        current = game.players[game.turn]
        self._broadcast(game.room_id, m.GameInProgress(game.room_id, current.user_id, game.round))
        self._arm_timer(game)

    def _turn_timed_out(self, game: Game) -> None:
        game.timer = None
        if self._games.get(game.room_id) is not game or game.status != IN_PROGRESS:
            return
        if self.lease_ok is not None and not self.lease_ok(game.room_id):
            game.timer = self._clock.callLater(1.0, self._turn_timed_out, game)
            return
        self.turn_timeouts += 1
        if self._advance(game):
            self._end(game)
        else:
            self._announce_turn(game)
            self._changed(game)

    def _remove_player(self, game: Game, player: Player, announce: bool = True) -> None:
        """The leave rules. ``announce=False`` (a restore, which sends the whole state
        after): a turn passed or a game gone live is not announced; GameEnded still is."""
        index = game.players.index(player)
        del game.players[index]
        del game.by_id[player.user_id]
        self.cache.remove(f"user_game:{player.user_id}")
        if len(game.players) < 2:
            self._end(game)
            return
        if game.status == WAITING:
            if all(p.ready for p in game.players):
                self._go_live(game, announce)
            return
        if index < game.turn:
            game.turn -= 1
        elif index == game.turn:
            # The leaver had the turn: it passes to whoever now sits at ``index``.
            if game.turn >= len(game.players):
                if game.round >= self.round_limit:
                    game.status = FINISHED
                    game.turn = 0
                    self._end(game)
                    return
                game.turn = 0
                game.round += 1
            if announce:
                self._announce_turn(game)
            else:
                self._arm_timer(game)  # a full turn for the player it passed to

    def _drop(self, game: Game) -> None:
        """Forget the game here: timer, game table, cache keys (no message)."""
        if game.timer is not None and game.timer.active():
            game.timer.cancel()
        game.timer = None
        game.status = FINISHED
        del self._games[game.room_id]
        self.cache.remove(f"game_state:{game.room_id}")
        for p in game.players:
            self.cache.remove(f"user_game:{p.user_id}")

    def _end(self, game: Game, result: bool = True) -> None:
        """GameEnded to the room; ``result=False`` (an aborted game): no winner."""
        room_id = game.room_id
        live_at = game.live_at
        went_live = live_at is not None
        self._drop(game)
        winner = _winner(game.players) if went_live and result else None
        scores = [[p.user_id, p.score] for p in game.players]
        self.ended += 1
        self._broadcast(room_id, m.GameEnded(room_id, winner.wire() if winner else None, scores))
        if self.watcher is not None:
            self.watcher.game_ended(room_id)
        if live_at is not None and self._events.active:
            now = self._clock.seconds()
            self._events.emit(
                ev.GameEnded(
                    room_id,
                    now - live_at,
                    winner.user_id if winner else None,
                    tuple((u, s) for u, s in scores),
                    now,
                )
            )

    def _grace_expired(self, user_id: int) -> None:
        seat = self._away.get(user_id)
        if seat is None:
            return
        self.seats_expired += 1
        # The router hears this (synchronously) and removes the member with the
        # usual notices, which calls member_left: the seat and the player go.
        self._events.emit(ev.SeatExpired(user_id, seat.room_id, self._clock.seconds()))
        self._away.pop(user_id, None)
        game = self._games.get(seat.room_id)
        if game is not None and user_id in game.by_id:  # nobody removed the member
            self.leavers += 1
            self._remove_player(game, game.by_id[user_id])
            self._changed(game)

    def _changed(self, game: Game) -> None:
        """A turn (or any state change) was applied: bump ``seq``, tell the watcher."""
        if self._games.get(game.room_id) is not game:
            return  # it ended on the way: the watcher heard game_ended
        game.seq += 1
        if self.watcher is not None:
            self.watcher.game_changed(game)

    # -- snapshots (cluster failover: docs/cluster.md) -------------------------------------

    def snapshot(self, room_id: int) -> dict[str, Any] | None:
        """Everything needed to resume the room's game elsewhere; None without a game.

        ``turn_deadline`` is a reading of this server's clock (the reactor's: Unix time),
        so another node can compute the time left on the turn.
        """
        game = self._games.get(room_id)
        if game is None:
            return None
        timer = game.timer
        deadline = timer.getTime() if timer is not None and timer.active() else None
        return {
            "v": SNAPSHOT_VERSION,
            "room_id": room_id,
            "seq": game.seq,
            "status": game.status,
            "round": game.round,
            "turn": game.turn,
            "created_at": game.created_at,
            "live_at": game.live_at,
            "turn_deadline": deadline,
            "players": [
                {
                    "user_id": p.user_id,
                    "nickname": p.nickname,
                    "score": p.score,
                    "ready": p.ready,
                    "position": p.position,
                    "away": p.away,
                }
                for p in game.players
            ],
        }

    def snapshot_blob(self, room_id: int) -> bytes | None:
        """``snapshot`` through the cache's serializer (orjson, zlib above the threshold)."""
        snap = self.snapshot(room_id)
        return None if snap is None else self.blob.dumps(snap)

    def read_snapshot(self, blob: bytes) -> dict[str, Any]:
        """A blob from ``snapshot_blob`` (any node's) back to a checked snapshot."""
        try:
            snap = self.blob.loads(blob)
        except ValueError as e:
            raise SnapshotError(f"unreadable snapshot: {e}") from None
        return check_snapshot(snap)

    def restore(
        self, snap: Mapping[str, Any], present: Collection[int], *, moved: bool = False
    ) -> Game | None:
        """Resume a game from another node's snapshot, with the room members present now.

        Players not in ``present`` are removed as leavers, by the rules of docs/games.md
        ("Players who leave"): the turn passes, fewer than 2 players ends the game. Held
        seats are not carried over (a player's connection was on some node; the ones
        still present are back, the others are gone). The room gets a SystemMessage
        saying the game resumed, then the state as a spectator gets it (GameStarted,
        GameInProgress); the turn timer runs on from the snapshot's deadline, with at
        least ``RESUME_TURN_FLOOR`` seconds. Returns the game, None if it ended here.
        ``moved``: the previous server let the game go (its members left), it did not stop.
        """
        check_snapshot(snap)
        room_id = snap["room_id"]
        if room_id in self._games:
            raise SnapshotError(f"room {room_id} already has a game on this server")
        game = Game(room_id, snap["created_at"])
        game.status = snap["status"]
        game.round = snap["round"]
        game.turn = snap["turn"]
        game.live_at = snap["live_at"]
        game.seq = snap["seq"]
        for p in snap["players"]:
            player = Player(p["user_id"], p["nickname"], p["ready"])
            player.score = p["score"]
            player.position = p["position"]
            game.add(player)
        self._games[room_id] = game
        cache = self.cache
        cache.set(f"game_state:{room_id}", game)
        for p in game.players:
            cache.set(f"user_game:{p.user_id}", room_id)
        self.restored += 1
        gone = [p for p in game.players if p.user_id not in present]
        why = (
            "moved to another server"
            if moved
            else "resumed on another server after its server stopped"
        )
        text = f"the game {why} (round {game.round})"
        if gone:
            names = ", ".join(f"{p.nickname} (user {p.user_id})" for p in gone)
            text += f"; left the game: {names}"
        self._broadcast(room_id, m.SystemMessage(text))
        for p in gone:
            self.restore_dropped += 1
            self._remove_player(game, p, announce=False)
            if self._games.get(room_id) is not game:
                return None
        self._broadcast(room_id, m.GameStarted(room_id, [p.wire() for p in game.players]))
        if game.status == IN_PROGRESS:
            current = game.players[game.turn]
            self._broadcast(room_id, m.GameInProgress(room_id, current.user_id, game.round))
            if game.timer is None or not game.timer.active():
                now = self._clock.seconds()
                deadline = snap["turn_deadline"]
                floor = min(RESUME_TURN_FLOOR, self.turn_timeout)
                left = self.turn_timeout if deadline is None else deadline - now
                self._arm_timer(game, max(floor, min(left, self.turn_timeout)))
        self._changed(game)
        return game

    def abandon(self, room_id: int, text: str | None) -> bool:
        """Stop the room's game here without a result and say ``text`` to the room.

        For an owner that lost its lease: a newer owner may be running the game, so no
        GameEnded and no watcher call (a fenced-out owner must not write anything).
        """
        game = self._games.get(room_id)
        if game is None:
            return False
        self._drop(game)
        self.abandoned += 1
        if text is not None:
            self._broadcast(room_id, m.SystemMessage(text))
        return True

    def live(self, room_id: int) -> Game | None:
        """The room's game object, or None (no cache read: for the cluster's snapshot writer)."""
        return self._games.get(room_id)

    def abort(self, room_id: int, text: str) -> bool:
        """End the room's game now without a winner: SystemMessage ``text``, then GameEnded."""
        game = self._games.get(room_id)
        if game is None:
            return False
        self._broadcast(room_id, m.SystemMessage(text))
        self._end(game, result=False)
        return True

    # -- output ---------------------------------------------------------------------------

    def _broadcast(self, room_id: int, message: object) -> None:
        self._rooms.broadcast(room_id, codec.frame(message))

    def _send_state(self, client: IRoomClient, game: Game) -> None:
        """The current state as existing messages: GameStarted (players), then GameInProgress."""
        room_id = game.room_id
        client.send_frame(codec.frame(m.GameStarted(room_id, [p.wire() for p in game.players])))
        if game.status == IN_PROGRESS:
            current = game.players[game.turn]
            client.send_frame(codec.frame(m.GameInProgress(room_id, current.user_id, game.round)))

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The ``games`` section of /stats."""
        waiting = sum(1 for g in self._games.values() if g.status == WAITING)
        return {
            "active": len(self._games),
            "waiting": waiting,
            "in_progress": len(self._games) - waiting,
            "players": sum(len(g.players) for g in self._games.values()),
            "away": len(self._away),
            "started_total": self.started,
            "ended_total": self.ended,
            "actions_total": self.actions,
            "turn_timeouts_total": self.turn_timeouts,
            "leavers_total": self.leavers,
            "seats_held_total": self.seats_held,
            "seats_reclaimed_total": self.seats_reclaimed,
            "seats_expired_total": self.seats_expired,
            "restored_total": self.restored,
            "restore_dropped_total": self.restore_dropped,
            "abandoned_total": self.abandoned,
            "snapshots": self.blob.stats(),
            "round_limit": self.round_limit,
            "turn_timeout_seconds": self.turn_timeout,
            "reconnect_grace_seconds": self.reconnect_grace,
        }

    def cache_stats(self) -> dict[str, Any]:
        """The ``cache`` section of /stats."""
        return self.cache.stats()


@implementer(IGameService)
class NullGames:
    """The game service of a server with games off: game messages get 404, no seat is held.

    Lets the router call its game service unconditionally instead of testing
    for None at every step.
    """

    def handle(self, client: IRoomClient, message: object) -> None:
        raise Refusal(404, "games are not enabled on this server")

    def member_left(self, client: IRoomClient, room_id: int) -> None:
        pass

    def member_joined(self, client: IRoomClient, room_id: int) -> None:
        pass

    def connection_lost(self, client: IRoomClient, room_id: int) -> bool:
        return False

    def game_state(self, room_id: int) -> str | None:
        return None

    def game_of_user(self, user_id: int) -> int | None:
        return None

    def game_detail(self, room_id: int) -> dict[str, Any] | None:
        return None

    def is_away(self, user_id: int) -> bool:
        return False

    def reclaim(self, user_id: int) -> int | None:
        return None

    def reclaimed(self, client: IRoomClient, room_id: int) -> None:
        pass


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_num(v: object) -> bool:
    return type(v) in (int, float)


def _check_player(p: object) -> bool:
    if not isinstance(p, dict):
        return False
    pos = p.get("position")
    return (
        _is_int(p.get("user_id"))
        and isinstance(p.get("nickname"), str)
        and _is_int(p.get("score"))
        and type(p.get("ready")) is bool
        and type(p.get("away")) is bool
        and (pos is None or (isinstance(pos, dict) and all(_is_num(v) for v in pos.values())))
    )


def check_snapshot(snap: Any) -> dict[str, Any]:
    """``snap`` if it is a snapshot ``restore`` can use; else SnapshotError saying why."""
    if not isinstance(snap, dict):
        raise SnapshotError("a snapshot is a JSON object")
    if snap.get("v") != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot version {snap.get('v')!r}, this server reads {SNAPSHOT_VERSION}"
        )
    players = snap.get("players")
    if not isinstance(players, list) or not all(_check_player(p) for p in players):
        raise SnapshotError("snapshot players are not a list of player objects")
    if len({p["user_id"] for p in players}) != len(players):
        raise SnapshotError("a player is in the snapshot twice")
    if len(players) < 2:
        raise SnapshotError("a snapshot has at least 2 players")
    status: Any = snap.get("status")
    turn: Any = snap.get("turn")
    if status not in (WAITING, IN_PROGRESS):
        raise SnapshotError(f"snapshot status {status!r} is not a running game")
    if not (_is_int(turn) and _is_int(snap.get("round")) and _is_int(snap.get("seq"))):
        raise SnapshotError("snapshot turn, round and seq must be integers")
    if status == IN_PROGRESS and not 0 <= turn < len(players):
        raise SnapshotError(f"snapshot turn {turn} is not a player index")
    if not _is_int(snap.get("room_id")) or not _is_num(snap.get("created_at")):
        raise SnapshotError("snapshot room_id and created_at are missing")
    for key in ("live_at", "turn_deadline"):
        if snap.get(key) is not None and not _is_num(snap[key]):
            raise SnapshotError(f"snapshot {key} must be a number or null")
    return snap


def _winner(players: list[Player]) -> Player | None:
    """The one player with the highest score; None for a draw (or no players)."""
    if not players:
        return None
    best = max(p.score for p in players)
    top = [p for p in players if p.score == best]
    return top[0] if len(top) == 1 else None


def _doing(status: str) -> str:
    return "waiting for players to be ready" if status == WAITING else "in progress"
