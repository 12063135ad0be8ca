"""Games across nodes: one owner per game, actions forwarded to it, failover from snapshots.

``ClusterGames`` is the IGameService the router calls on a node of a cluster; it wraps
the node's ``Games`` (which runs every game this node owns, unchanged) and decides,
per room, where a game message goes (docs/cluster.md, "Games across nodes"):

- the owner is the node that accepted the StartGame: it took the room's game lease
  (``GameLeases.acquire``, a fencing token), made every member of the room (from the
  room's members hash in Redis, any node) a player, and tells the nodes with members
  that it owns the game (an ``o`` envelope);
- a member on another node sends its ToggleReady/PlayerAction/StartGame there as an
  ``a`` envelope; the owner applies it for a stand-in (``RemotePlayer``) whose
  ``send_frame`` goes back as an ``f`` envelope (errors, spectator state). Game events
  are room broadcasts: the rooms core relays them to every node with members;
- after every change the owner writes the snapshot under its token (coalesced: one
  write in flight per game) and renews the lease in between; a refused write or
  renewal means another node owns the game now: ``Games.abandon``;
- a node with members in a room owned elsewhere checks the lease every ``lease.ttl``
  seconds (and at once when the cluster reports the owner dead): if it ran out, it
  takes the game over with a larger token and resumes from the snapshot with the
  members present now (``Games.restore``), or, with nothing to resume from, tells its
  members the game ended. An owner whose own members all left hands the game over the
  same way (``d`` envelope), since its broadcasts would reach nobody.

Envelopes (kind byte ``G`` on the node channel, gamed.cluster.envelope's layout)::

    Ga <room> <user> <node>\\n<client message JSON>   a game message from <user> on <node>
    Gj <room> <user> <node>\\n                        <user> joined: send it the state
    Gl <room> <user> <node>\\n                        <user> left the room
    Gf <room> <user> <node>\\n<frames>                frames for <user> (from the owner)
    Go <room> <token> <node>\\n                       <node> owns the room's game now
    Gx <room> 0 <node>\\n                             no game here (any more): forget it
    Gd <room> 0 <node>\\n                             the owner let the game go: take it over
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed import codec
from gamed import messages as m
from gamed.cluster.envelope import MEMBERS
from gamed.cluster.gamelease import GameLeases
from gamed.cluster.link import DOWN
from gamed.errors import Refusal
from gamed.games import Game, Games, SnapshotError, member_room
from gamed.interfaces import IGameService, IRoomClient
from gamed.rooms import RoomService

_log = Logger()

GAME = ord("G")
#: Snapshot writes in flight per game (one per change, pipelined); past it, changes coalesce.
WRITES_IN_FLIGHT = 8
#: The answer to a game message while the owner re-confirms its lease (after a stall).
UNSURE = "cluster unavailable: the game's server is confirming it still runs this game; try again"
#: Game messages waiting for an answer from Redis (owner lookup, lease) per room.
PENDING_MAX = 64

#: ``roster(room_id)``: the room's members in the whole cluster, (user, node, nickname).
Roster = Callable[[int], "defer.Deferred[list[tuple[int, str, str]]]"]
#: ``send(node, envelope)``: publish on that node's channel (in order, never waits).
Send = Callable[[str, bytes], object]


def _unbound(*args: Any) -> Any:
    raise RuntimeError("ClusterGames used before bind()")


def envelope(op: bytes, room_id: int, number: int, node: str, body: bytes = b"") -> bytes:
    return b"G%s %d %d %s\n" % (op, room_id, number, node.encode()) + body


@implementer(IRoomClient)
class RemotePlayer:
    """A member on another node as the owner's Games sees it: frames go back by envelope."""

    __slots__ = ("_cluster", "nickname", "node", "room_id", "user_id")

    def __init__(
        self, cluster: ClusterGames, room_id: int, user_id: int, node: str, nickname: str = ""
    ) -> None:
        self._cluster = cluster
        self.room_id = room_id
        self.user_id = user_id
        self.node = node
        self.nickname = nickname or f"user{user_id}"

    def send_frame(self, frame: bytes) -> None:
        c = self._cluster
        c.send(self.node, envelope(b"f", self.room_id, self.user_id, c.node_id, frame))


class _Owned:
    """A game this node owns: its token, the snapshot writer's state, the renewal timer."""

    __slots__ = ("checking", "dirty", "inflight", "nodes", "renew", "token", "valid_until")

    def __init__(self, token: int, valid_until: float) -> None:
        self.token = token
        #: The lease surely holds until then: the send time of the last acknowledged
        #: acquire/renew/write plus the TTL (this node's clock; a stall runs past it).
        self.valid_until = valid_until
        self.inflight = 0  # snapshot writes sent, not answered (pipelined, in order)
        self.dirty = False  # a change not written yet (a write failed, or too many in flight)
        self.checking = False  # a refused write/renewal is being looked into
        self.renew: IDelayedCall | None = None
        self.nodes: dict[int, str] = {}  # remote players' nodes (user -> node)


@implementer(IGameService)
class ClusterGames:
    """IGameService of a cluster node: local games as before, remote ones by envelope."""

    def __init__(self, games: Games, rooms: RoomService, clock: IReactorTime) -> None:
        self.games = games
        self.rooms = rooms
        self.clock = clock
        # Bound by ``bind`` when the node's link exists (after twistd's fork).
        self.leases: GameLeases = None  # type: ignore[assignment]
        self.node_id = ""
        self.send: Send = _unbound
        self.roster: Roster = _unbound
        games.watcher = self
        games.lease_ok = self.lease_ok
        self._owned: dict[int, _Owned] = {}
        self._owner_of: dict[int, str] = {}  # rooms with local members, game owned elsewhere
        self._pending: dict[int, list[tuple[IRoomClient, Any]]] = {}
        self._watch: IDelayedCall | None = None
        self._handed: dict[int, bool] = {}  # rooms whose owner let the game go (d envelope)
        self.forwarded = 0  # game messages sent to their owner
        self.applied_remote = 0  # messages from other nodes applied here
        self.takeovers = 0  # games resumed here after their owner died or let go
        self.lost = 0  # takeovers with nothing to resume: the game ended
        self.fenced = 0  # games abandoned here: another node owns them now
        self.handoffs = 0  # games let go because this node's members all left
        self.regained = 0  # leases that ran out (Redis away) and were taken back

    # -- life -------------------------------------------------------------------------

    def bind(self, leases: GameLeases, send: Send, roster: Roster) -> None:
        """The node's Redis side: lease scripts, its publish, the room roster."""
        self.leases = leases
        self.node_id = leases.node_id
        self.send = send
        self.roster = roster

    @property
    def watch_interval(self) -> float:
        """How often a node checks the leases of games owned elsewhere (half the TTL)."""
        return self.leases.ttl / 2

    def start(self) -> None:
        """Start the watchdog: is each remote owner still holding its lease?"""
        if self._watch is None:
            self._watch = self.clock.callLater(self.watch_interval, self._watchdog)

    def stop(self) -> None:
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        for owned in self._owned.values():
            if owned.renew is not None and owned.renew.active():
                owned.renew.cancel()

    # -- IGameService: the router's calls ---------------------------------------------

    def handle(self, client: IRoomClient, message: Any) -> None:
        room_id = message.room_id
        if member_room(self.rooms, client, room_id) is None:
            raise Refusal(404, f"not in room {room_id}")
        pending = self._pending.get(room_id)
        if pending is not None:
            if len(pending) >= PENDING_MAX:
                raise Refusal(503, "cluster busy: too many game messages waiting for Redis")
            pending.append((client, message))
            return
        self._route(client, message, may_ask=True)

    def _route(self, client: IRoomClient, message: Any, may_ask: bool) -> None:
        """Here, to the owner, or (owner unknown) after asking Redis who owns it."""
        room_id = message.room_id
        if room_id in self._owned:
            if not self.lease_ok(room_id):
                raise Refusal(503, UNSURE)
            self.games.handle(client, message)
            return
        owner = self._owner_of.get(room_id)
        if owner is not None:
            self._forward(owner, client, message)
            return
        if message.TAG == "StartGame":
            self._pending[room_id] = []
            d = self._start(room_id, client, message)
            d.addErrback(self._failed_pending, room_id, client)
        elif may_ask:
            self._pending[room_id] = [(client, message)]
            self._lookup(room_id).addErrback(self._failed_pending, room_id)
        else:
            self.games.handle(client, message)  # no game anywhere: the usual 404

    def member_joined(self, client: IRoomClient, room_id: int) -> None:
        owner = self._owner_of.get(room_id)
        if room_id in self._owned:
            self.games.member_joined(client, room_id)
        elif owner is not None:
            self.send(owner, envelope(b"j", room_id, client.user_id, self.node_id))
        else:
            room = self.rooms.get(room_id)
            if room is None or not room.remote:
                return  # every member is here: no game can run elsewhere

            # A game may run elsewhere: learn its owner (one HMGET per join), then ask it.
            def found(owner: str | None) -> None:
                if owner is not None and owner != self.node_id:
                    self.send(owner, envelope(b"j", room_id, client.user_id, self.node_id))

            self._learn_owner(room_id).addCallbacks(found, self._log_failure)

    def member_left(self, client: IRoomClient, room_id: int) -> None:
        owner = self._owner_of.get(room_id)
        if room_id in self._owned:
            if self.rooms.get(room_id) is None:
                # The last member here left: this node's broadcasts would reach nobody.
                # The node that takes the game over drops the leaver (not in its roster).
                self._let_go(room_id)
            else:
                self.games.member_left(client, room_id)
        elif owner is not None:
            self.send(owner, envelope(b"l", room_id, client.user_id, self.node_id))
            if self.rooms.get(room_id) is None:
                del self._owner_of[room_id]  # no local members left: not our concern
        else:
            self.games.member_left(client, room_id)

    def connection_lost(self, client: IRoomClient, room_id: int) -> bool:
        # Seats are held only where the game runs; a player elsewhere who drops leaves.
        if room_id in self._owned:
            return self.games.connection_lost(client, room_id)
        return False

    def game_state(self, room_id: int) -> str | None:
        return self.games.game_state(room_id)

    def game_of_user(self, user_id: int) -> int | None:
        return self.games.game_of_user(user_id)

    def game_detail(self, room_id: int) -> dict[str, Any] | None:
        detail = self.games.game_detail(room_id)
        if detail is not None:
            detail["owner"] = self.node_id
        return detail

    def is_away(self, user_id: int) -> bool:
        return self.games.is_away(user_id)

    def reclaim(self, user_id: int) -> int | None:
        return self.games.reclaim(user_id)

    def reclaimed(self, client: IRoomClient, room_id: int) -> None:
        self.games.reclaimed(client, room_id)

    # -- the watcher (Games tells the owner about every change) -----------------------

    def game_changed(self, game: Game) -> None:
        owned = self._owned.get(game.room_id)
        if owned is None:
            return
        if owned.inflight >= WRITES_IN_FLIGHT:
            owned.dirty = True  # Redis is slow: the next answer writes the latest state
            return
        self._write(game.room_id, owned)

    def game_ended(self, room_id: int) -> None:
        owned = self._owned.pop(room_id, None)
        if owned is None:
            return
        self._cancel_renew(owned)
        self.leases.release(room_id, owned.token).addErrback(self._log_failure)
        for node in self._nodes_of(room_id, owned):
            self.send(node, envelope(b"x", room_id, 0, self.node_id))

    # -- envelopes from other nodes -----------------------------------------------------

    def receive(self, fields: list[bytes], body: bytes) -> None:
        """A ``G`` envelope (its header fields and body); bad ones raise ValueError."""
        if len(fields) != 4:
            raise ValueError(f"game envelope with {len(fields)} header fields")
        op, room_id, number, node = fields[0], int(fields[1]), int(fields[2]), fields[3].decode()
        if op == b"f":
            self._deliver(room_id, number, body)
        elif op == b"a":
            self._remote_act(room_id, number, node, body)
        elif op == b"j":
            self._remote_joined(room_id, number, node)
        elif op == b"l":
            self._remote_left(room_id, number, node)
        elif op == b"o":
            if self.rooms.get(room_id) is not None and node != self.node_id:
                self._owner_of[room_id] = node
        elif op == b"x":
            if self._owner_of.get(room_id) == node:
                del self._owner_of[room_id]
        elif op == b"d":
            if self._owner_of.get(room_id) == node:
                self._handed[room_id] = True
                self._take_over(room_id, dead_owner=node)
        else:
            raise ValueError(f"unknown game envelope op {op!r}")

    def node_left_room(self, room_id: int, node: str) -> None:
        """``node`` has no members in ``room_id`` any more (it died and was swept, or its
        members left): its players leave the game here; a game it owned is taken over now.

        Safe even if ``node`` is alive: an owner whose members all left has already let
        the game go (its last snapshot was queued before its membership change), and an
        owner that still ran the game would be fenced at its next write or renewal."""
        owned = self._owned.get(room_id)
        if owned is not None:
            for uid in [u for u, n in owned.nodes.items() if n == node]:
                del owned.nodes[uid]
                self.games.member_left(RemotePlayer(self, room_id, uid, node), room_id)
        elif self._owner_of.get(room_id) == node:
            self._take_over(room_id, dead_owner=node)

    def node_dead(self, node: str) -> None:
        """The cluster declared ``node`` dead: take over its games, drop its players."""
        for room_id, owner in list(self._owner_of.items()):
            if owner == node:
                self._take_over(room_id, dead_owner=node)
        for room_id, owned in list(self._owned.items()):
            gone = [uid for uid, n in owned.nodes.items() if n == node]
            for uid in gone:
                del owned.nodes[uid]
                self.games.member_left(RemotePlayer(self, room_id, uid, node), room_id)

    def _deliver(self, room_id: int, user_id: int, frames: bytes) -> None:
        room = self.rooms.room_of(user_id)
        if room is None or room.room_id != room_id:
            return  # the user left that room meanwhile: the frames are not for it any more
        member = room.members.get(user_id)
        if member is not None:
            member.send_frame(frames)

    def _remote_act(self, room_id: int, user_id: int, node: str, body: bytes) -> None:
        player = RemotePlayer(self, room_id, user_id, node)
        owned = self._owned.get(room_id)
        if owned is None:
            # The sender thinks this node owns the game: it does not (any more).
            self.send(node, envelope(b"x", room_id, 0, self.node_id))
            text = f"the game of room {room_id} is not on this server (any more): send it again"
            player.send_frame(codec.frame(m.Error(503, text)))
            return
        owned.nodes[user_id] = node
        if not self.lease_ok(room_id):
            player.send_frame(codec.frame(m.Error(503, UNSURE)))
            return
        self.applied_remote += 1
        try:
            self.games.apply(player, codec.decode(body), [])
        except Refusal as refusal:
            player.send_frame(codec.frame(m.Error(refusal.code, refusal.message)))
        except Exception:
            _log.failure(
                "applying a game message of user {uid} from {node}", uid=user_id, node=node
            )
            player.send_frame(codec.frame(m.Error(500, "internal error in the game's server")))

    def _remote_joined(self, room_id: int, user_id: int, node: str) -> None:
        if room_id in self._owned:
            self.games.member_joined(RemotePlayer(self, room_id, user_id, node), room_id)
        else:
            self.send(node, envelope(b"x", room_id, 0, self.node_id))

    def _remote_left(self, room_id: int, user_id: int, node: str) -> None:
        owned = self._owned.get(room_id)
        if owned is not None:
            owned.nodes.pop(user_id, None)
            self.games.member_left(RemotePlayer(self, room_id, user_id, node), room_id)

    # -- forwarding and owner lookup ----------------------------------------------------

    def _forward(self, owner: str, client: IRoomClient, message: Any) -> None:
        body = codec.encode(message)
        if (
            self.send(owner, envelope(b"a", message.room_id, client.user_id, self.node_id, body))
            is False
        ):
            raise Refusal(503, "cluster unavailable: the game's server cannot be reached now")
        self.forwarded += 1

    def _learn_owner(self, room_id: int) -> defer.Deferred[str | None]:
        def got(found: tuple[str, int] | None) -> str | None:
            if found is None:
                self._owner_of.pop(room_id, None)
                return None
            owner = found[0]
            if owner != self.node_id and self.rooms.get(room_id) is not None:
                self._owner_of[room_id] = owner
            return owner

        d: defer.Deferred[Any] = self.leases.owner(room_id)
        return d.addCallback(got)

    def _lookup(self, room_id: int) -> defer.Deferred[None]:
        """Find the owner of the room's game, then run what waited for it."""
        return self._learn_owner(room_id).addCallback(lambda _: self._flush(room_id))

    def _flush(self, room_id: int) -> None:
        """Run the game messages that waited, in order, as if they came now (without
        asking Redis again); one that waits anew (a StartGame) holds back the rest."""
        waiting = self._pending.pop(room_id, [])
        for i, (client, message) in enumerate(waiting):
            again = self._pending.get(room_id)
            if again is not None:
                again.extend(waiting[i:])
                return
            if member_room(self.rooms, client, room_id) is None:
                continue  # left meanwhile
            try:
                self._route(client, message, may_ask=False)
            except Refusal as refusal:
                client.send_frame(codec.frame(m.Error(refusal.code, refusal.message)))

    def _failed_pending(
        self, failure: Failure, room_id: int, first: IRoomClient | None = None
    ) -> None:
        """Redis could not answer: ``first`` (a StartGame's sender) and every waiting game
        message get a 503."""
        why = failure.getErrorMessage() or repr(failure.value)
        _log.warn("game message for room {room}: {why}", room=room_id, why=why)
        error = codec.frame(m.Error(503, f"cluster unavailable: {why}"))
        if first is not None:
            first.send_frame(error)
        for client, _message in self._pending.pop(room_id, []):
            client.send_frame(error)

    # -- starting a game ------------------------------------------------------------------

    @defer.inlineCallbacks
    def _start(self, room_id: int, client: IRoomClient, message: Any) -> Any:
        sent = self.clock.seconds()
        got = yield self.leases.acquire(room_id)
        if not got.ok:
            # Another node runs the room's game: it answers (409, or it starts one).
            if self.rooms.get(room_id) is not None:
                self._owner_of[room_id] = got.owner
            self._forward(got.owner, client, message)
            self._flush(room_id)
            return
        owned = _Owned(got.token, sent + self.leases.ttl)
        try:
            members = yield self.roster(room_id)
        except Exception:
            self.leases.release(room_id, got.token).addErrback(self._log_failure)
            raise
        room = member_room(self.rooms, client, room_id)
        if room is None:
            self.leases.release(room_id, got.token).addErrback(self._log_failure)
            self._flush(room_id)  # the starter left meanwhile
            return
        local = room.members
        players: list[IRoomClient] = list(local.values())
        for uid, node, nick in members:
            if uid not in local and node != self.node_id:
                players.append(RemotePlayer(self, room_id, uid, node, nick))
                owned.nodes[uid] = node
        self._owned[room_id] = owned
        try:
            self.games.apply(client, message, players)
        except Refusal as refusal:
            del self._owned[room_id]
            self.leases.release(room_id, got.token).addErrback(self._log_failure)
            client.send_frame(codec.frame(m.Error(refusal.code, refusal.message)))
        else:
            self._announce(room_id, owned)
            self._arm_renew(room_id, owned)
        self._flush(room_id)

    def _announce(self, room_id: int, owned: _Owned) -> None:
        for node in self._nodes_of(room_id, owned):
            self.send(node, envelope(b"o", room_id, owned.token, self.node_id))

    def _nodes_of(self, room_id: int, owned: _Owned) -> set[str]:
        room = self.rooms.get(room_id)
        nodes = set(owned.nodes.values())
        if room is not None:
            nodes.update(room.remote)
        nodes.discard(self.node_id)
        return nodes

    # -- owning: snapshots, renewals, fencing ---------------------------------------------

    def _write(self, room_id: int, owned: _Owned) -> None:
        blob = self.games.snapshot_blob(room_id)
        game = self.games.live(room_id)
        if blob is None or game is None:
            return
        owned.inflight += 1
        owned.dirty = False
        d = self.leases.write(room_id, owned.token, blob, game.seq)
        d.addCallback(self._written, room_id, owned, self.clock.seconds(), owned.token)
        d.addErrback(self._write_failed, room_id, owned)

    def _written(self, ok: bool, room_id: int, owned: _Owned, sent: float, token: int) -> None:
        owned.inflight -= 1
        if token != owned.token:
            return  # sent under the token this node held before it took the lease back
        if not ok:
            self._fenced_out(room_id, owned)
            return
        owned.valid_until = max(owned.valid_until, sent + self.leases.ttl)
        if owned.dirty and not owned.inflight and self._owned.get(room_id) is owned:
            self._write(room_id, owned)
        else:
            self._arm_renew(room_id, owned)

    def _write_failed(self, failure: Failure, room_id: int, owned: _Owned) -> None:
        # Redis did not answer: the game goes on here; the next change (or renewal) tries
        # again. If the lease runs out meanwhile, the next write is refused: fenced.
        owned.inflight -= 1
        _log.warn(
            "snapshot of room {room} not written: {why}",
            room=room_id,
            why=failure.getErrorMessage(),
        )
        owned.dirty = True
        self._arm_renew(room_id, owned)

    def _arm_renew(self, room_id: int, owned: _Owned) -> None:
        if self._owned.get(room_id) is not owned:
            return
        if owned.renew is not None and owned.renew.active():
            owned.renew.reset(self.leases.renew_interval)
        else:
            owned.renew = self.clock.callLater(
                self.leases.renew_interval, self._renew, room_id, owned
            )

    def lease_ok(self, room_id: int) -> bool:
        """May this node change the room's game now? Not when its lease may have run out
        (a stall, Redis away past the TTL) while another node could have taken the game
        (the room has members elsewhere): it renews first; if that is refused, it was
        fenced and stops. Keeps a stalled owner from sending stale events after waking."""
        owned = self._owned.get(room_id)
        if owned is None or self.clock.seconds() < owned.valid_until:
            return True
        room = self.rooms.get(room_id)
        if room is None or not room.remote:
            return True  # no other node has members: nobody can take it over
        if not owned.inflight and not owned.checking:
            self._cancel_renew(owned)
            self._renew(room_id, owned)
        return False

    def _cancel_renew(self, owned: _Owned) -> None:
        if owned.renew is not None and owned.renew.active():
            owned.renew.cancel()
        owned.renew = None

    def _renew(self, room_id: int, owned: _Owned) -> None:
        owned.renew = None
        if self._owned.get(room_id) is not owned or owned.inflight or owned.checking:
            return
        if owned.dirty:  # a write failed: write now (it renews too)
            self._write(room_id, owned)
            return

        sent = self.clock.seconds()

        def renewed(ok: bool) -> None:
            if not ok:
                self._fenced_out(room_id, owned)
            else:
                owned.valid_until = sent + self.leases.ttl
                self._arm_renew(room_id, owned)

        def failed(failure: Failure) -> None:
            _log.warn(
                "game lease of room {room}: {why}", room=room_id, why=failure.getErrorMessage()
            )
            self._arm_renew(room_id, owned)

        self.leases.renew(room_id, owned.token).addCallbacks(renewed, failed)

    def _fenced_out(self, room_id: int, owned: _Owned) -> None:
        """A write or renewal was refused: the lease ran out. If no other node held the
        game since, take it back (new token) and go on; else stop here."""
        if self._owned.get(room_id) is not owned or owned.checking:
            return
        owned.checking = True
        self._cancel_renew(owned)
        sent = self.clock.seconds()

        def again(got: Any) -> None:
            owned.checking = False
            if self._owned.get(room_id) is not owned:
                return
            if got.ok:
                owned.token = got.token
                owned.valid_until = sent + self.leases.ttl
                self.regained += 1
                self._write(room_id, owned)
            else:
                self._stop_fenced(room_id, owned)

        def failed(failure: Failure) -> None:
            owned.checking = False
            owned.dirty = True  # Redis away again: try later, as after a failed write
            self._arm_renew(room_id, owned)

        self.leases.again(room_id, owned.token).addCallbacks(again, failed)

    def _stop_fenced(self, room_id: int, owned: _Owned) -> None:
        """Another node owns the game now (this one stalled or was cut off): stop here."""
        del self._owned[room_id]
        self._cancel_renew(owned)
        self.fenced += 1
        _log.warn("game of room {room}: another node owns it now; stopped here", room=room_id)
        self.games.abandon(room_id, None)
        room = self.rooms.get(room_id)
        if room is not None:
            # Only this node's members: the others heard from the new owner already.
            text = "this game continues on another server"
            self.rooms.deliver(room, codec.frame(m.SystemMessage(text)))
            self._learn_owner(room_id).addErrback(self._log_failure)

    def _let_go(self, room_id: int) -> None:
        """Hand the game to the nodes with players: last snapshot, then a ``d`` envelope."""
        owned = self._owned[room_id]
        nodes = self._nodes_of(room_id, owned)
        blob = self.games.snapshot_blob(room_id)
        game = self.games.live(room_id)
        del self._owned[room_id]
        self._cancel_renew(owned)
        self.games.abandon(room_id, None)
        if blob is None or game is None or not nodes:
            self.leases.release(room_id, owned.token).addErrback(self._log_failure)
            return
        self.handoffs += 1

        def written(ok: bool) -> None:
            # The last snapshot is in (same token): the nodes with players resume from it,
            # taking the lease from this node as from a dead one.
            if ok:
                for node in nodes:
                    self.send(node, envelope(b"d", room_id, 0, self.node_id))

        d = self.leases.write(room_id, owned.token, blob, game.seq)
        d.addCallbacks(written, self._log_failure)

    # -- taking over ------------------------------------------------------------------------

    def _watchdog(self) -> None:
        self._watch = self.clock.callLater(self.watch_interval, self._watchdog)
        for room_id in list(self._owner_of):
            if self.rooms.get(room_id) is None:
                del self._owner_of[room_id]
            elif room_id not in self._pending:
                self._take_over(room_id)

    def _take_over(self, room_id: int, dead_owner: str = "") -> None:
        if room_id in self._pending or room_id in self._owned:
            return
        self._pending[room_id] = []
        d = self._resume(room_id, dead_owner)
        d.addErrback(self._failed_pending, room_id)

    @defer.inlineCallbacks
    def _resume(self, room_id: int, dead_owner: str) -> Any:
        sent = self.clock.seconds()
        got = yield self.leases.acquire(room_id, resume=True, dead_owner=dead_owner)
        previous = self._owner_of.get(room_id, "")
        handed = self._handed.pop(room_id, False)  # a d envelope asked for this takeover
        if not got.ok:
            if got.owner and got.owner != self.node_id:
                self._owner_of[room_id] = got.owner  # alive, or another survivor won
            elif room_id in self._owner_of:
                # Its lease ran out and no snapshot is left: the game is gone.
                del self._owner_of[room_id]
                self._game_lost(room_id, "it was not saved", everyone=False)
            self._flush(room_id)
            return
        owned = _Owned(got.token, sent + self.leases.ttl)
        try:
            snap = self.games.read_snapshot(got.snapshot or b"")
        except SnapshotError as e:
            self._owner_of.pop(room_id, None)
            self.leases.release(room_id, got.token).addErrback(self._log_failure)
            self._game_lost(room_id, str(e), everyone=True)
            self._flush(room_id)
            return
        # Redis failing here: the waiting messages get 503, the lease (ours, with the new
        # token) runs out or is taken again by the next watchdog round.
        members = yield self.roster(room_id)
        self._owner_of.pop(room_id, None)
        gone = dead_owner or previous  # its lease ran out or it let go: its members are not players
        present = set()
        for uid, node, _nick in members:
            if node == self.node_id:
                if self.rooms.room_of(uid) is not None:
                    present.add(uid)
            elif node != gone:
                present.add(uid)
                owned.nodes[uid] = node
        self._owned[room_id] = owned
        self.takeovers += 1
        moved = handed and dead_owner != "" and dead_owner == previous
        if self.games.restore(snap, present, moved=moved) is not None and room_id in self._owned:
            if self.rooms.get(room_id) is None:
                self._let_go(room_id)  # its members here left while it was being resumed
            else:
                self._announce(room_id, owned)
                self._arm_renew(room_id, owned)
        self._flush(room_id)

    def _game_lost(self, room_id: int, why: str, everyone: bool) -> None:
        """The game's server is gone and its game cannot go on: say so, clearly.

        ``everyone``: this node holds the lease, so it tells the whole room; otherwise
        each node that knew of the game tells its own members.
        """
        self.lost += 1
        _log.warn("game of room {room} cannot be resumed: {why}", room=room_id, why=why)
        text = f"the game's server stopped and the game could not be resumed ({why}): it ended"
        frames = codec.frame(m.SystemMessage(text)) + codec.frame(m.GameEnded(room_id, None, []))
        room = self.rooms.get(room_id)
        if room is None:
            return
        if everyone:
            self.rooms.broadcast(room_id, frames)
        else:
            self.rooms.deliver(room, frames)

    # -- stats ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "owned": len(self._owned),
            "owned_elsewhere": len(self._owner_of),
            "forwarded_total": self.forwarded,
            "applied_remote_total": self.applied_remote,
            "takeovers_total": self.takeovers,
            "lost_total": self.lost,
            "fenced_total": self.fenced,
            "handoffs_total": self.handoffs,
            "regained_total": self.regained,
        }

    def _log_failure(self, failure: Failure) -> None:
        _log.warn("cluster game step failed: {why}", why=failure.getErrorMessage())


def members_key(room_id: int) -> str:
    """The room's cluster membership (the rooms core's join script): uid -> "node\\tnick"."""
    return f"gamed:{{room:{room_id}}}:members"


def parse_roster(flat: Any) -> list[tuple[int, str, str]]:
    """HGETALL of ``members_key`` as (user, node, nickname), in the hash's order."""
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in flat or ()]
    out = []
    for uid, value in zip(items[::2], items[1::2], strict=True):
        node, _, nick = value.partition("\t")
        out.append((int(uid), node, nick))
    return out


class NodeGames(Service):
    """ClusterGames on a ClusterNode: bound when the node's link exists (the node's
    ``startService`` ran: this service is added after it), reading ``G`` envelopes, and
    told when a node has no members left in a room (the node's ``M`` envelope with 0)."""

    name = "cluster-games"

    def __init__(self, node: Any, cgames: ClusterGames) -> None:
        self.node = node
        self.cgames = cgames

    def startService(self) -> None:
        super().startService()
        node, cg = self.node, self.cgames
        link = node.link

        def send(target: str, payload: bytes) -> bool:
            up = link.state != DOWN  # RedisLink.publish drops (and counts) while down
            node.publish_to(target, payload)
            return up

        def roster(room_id: int) -> defer.Deferred[list[tuple[int, str, str]]]:
            d: defer.Deferred[Any] = link.execute("HGETALL", members_key(room_id))
            return d.addCallback(parse_roster)

        cg.bind(GameLeases(link, node.node_id), send, roster)
        node.add_handler(GAME, cg.receive)
        # The node's M handler keeps room.remote; this one also hears "0 members here".
        members = node.handlers[MEMBERS]

        def on_members(header: list[bytes], body: bytes) -> None:
            members(header, body)
            if header[2] == b"0":
                cg.node_left_room(int(header[0]), header[1].decode())

        node.handlers[MEMBERS] = on_members
        cg.start()

    def stopService(self) -> Any:
        self.cgames.stop()
        return super().stopService()


class ClusterGamesCollector(Collector):
    """Games across nodes at scrape time (``ClusterGames.stats``; nothing on the hot path)."""

    HELP = {
        "forwarded_total": "Game messages forwarded to the node that runs the game",
        "applied_remote_total": "Game messages from other nodes applied here (this node owns)",
        "takeovers_total": "Games resumed here from a snapshot (owner died or let go)",
        "lost_total": "Games that could not be resumed and ended (no or unreadable snapshot)",
        "fenced_total": "Games stopped here because another node took them over",
        "handoffs_total": "Games handed to another node (this node's members all left)",
        "regained_total": "Leases that ran out (Redis away) and were taken back",
    }

    def __init__(self, cgames: ClusterGames) -> None:
        self._cgames = cgames

    def collect(self) -> Iterator[Metric]:
        stats = self._cgames.stats()
        yield GaugeMetricFamily(
            "gamed_cluster_games_owned", "Games this node runs (owns)", value=stats["owned"]
        )
        yield GaugeMetricFamily(
            "gamed_cluster_games_elsewhere",
            "Rooms with members here whose game runs on another node",
            value=stats["owned_elsewhere"],
        )
        for key, text in self.HELP.items():
            name = "gamed_cluster_games_" + key.removesuffix("_total")
            yield CounterMetricFamily(name, text, value=stats[key])

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("gamed_cluster_games_owned", "")
        yield GaugeMetricFamily("gamed_cluster_games_elsewhere", "")
        for key in self.HELP:
            yield CounterMetricFamily("gamed_cluster_games_" + key.removesuffix("_total"), "")
