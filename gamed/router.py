"""From a decoded frame to state changes and replies: the protocol's rules.

The Router owns the session table (user id -> connection, for takeover and the
connection cap), runs the middleware pipeline around each message and
dispatches to one handler per message type. Room state lives in the
RoomService; the router only decides what to send to whom, encoding each
outgoing frame once.

It sees connections only as ``IConnection`` and is their transports'
``IConnectionHandler``: any transport whose connections implement the one and
report to the other is routed by this class unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed import codec
from gamed import events as ev
from gamed import messages as m
from gamed.config import Settings
from gamed.errors import Refusal
from gamed.events import EventBus
from gamed.games import NullGames
from gamed.interfaces import (
    ICluster,
    IConnection,
    IConnectionHandler,
    IGameService,
    IRoomClient,
    IServerControl,
)
from gamed.pipeline import Pipeline, Veto
from gamed.rooms import Room, RoomFull, RoomService
from gamed.solo import NullCluster
from gamed.telemetry import ServerMetrics

_log = Logger()

ROOM_ID_MIN, ROOM_ID_MAX = 1, 1_000_000
CHAT_MAX_BYTES = 1000
NICKNAME_MAX_CHARS = 64
#: Refused in nicknames (docs/protocol.md): C0 and C1 controls and DEL, line and paragraph
#: separators, and the bidirectional embeddings, overrides and isolates that reorder text.
NICKNAME_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: Refused in chat: C0 controls except tab and newline, DEL and C1 controls.
CHAT_REFUSED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: After the drain's grace, how long the clients we close get to flush before an abort.
DRAIN_FLUSH_SECONDS = 1.0


#: ``authenticate(user_id, token) -> None``; raises Refusal(401) to refuse.
Authenticator = Callable[[int, "str | None"], None]


@implementer(IConnectionHandler, IServerControl)
class Router:
    """The protocol's rules over IConnections, and the server as plugins see it."""

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        rooms: RoomService,
        pipeline: Pipeline,
        metrics: ServerMetrics,
        events: EventBus,
        games: IGameService | None = None,
        cluster: ICluster | None = None,
    ) -> None:
        """``games`` is the game service; None means games are off (``NullGames``).
        ``cluster`` is the node of a cluster (gamed.cluster); None: one process."""
        self.settings = settings
        self.clock = clock
        self.rooms = rooms
        self.pipeline = pipeline
        self.metrics = metrics
        self.events = events
        # The per-frame counters, held here: two attribute loads less per frame.
        self._received = metrics.received
        self._processing = metrics.processing
        self.authenticate: Authenticator | None = None
        #: Game rules; NullGames refuses game messages with 404 and holds no seat.
        self.games: IGameService = NullGames() if games is None else games
        #: Sessions and seats across nodes; NullCluster (false) in one process.
        self.cluster: ICluster = NullCluster() if cluster is None else cluster
        #: Connections whose RoomJoin waits for the cluster (never in one process).
        self._joining: set[IConnection] = set()
        #: Re-reads the config and reloads plugins; set by gamed.tap.
        self.reloader: Callable[[], Any] | None = None
        # Totals of connections that have closed; live ones are summed at scrape.
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self.frames_refused: dict[str, int] = {"oversize": 0, "invalid": 0}
        self.connections: set[IConnection] = set()
        self.sessions: dict[int, IConnection] = {}
        self.draining = False
        self._drained: defer.Deferred[None] | None = None
        self._drain_over = False  # a drain ran to its end: later calls fire at once
        self.started_at = clock.seconds()
        self.set_pipeline(pipeline)
        self._handlers: dict[type, Callable[[IConnection, Any], None]] = {
            m.Connect: self._on_connect,
            m.HeartBeat: self._on_heartbeat,
            m.RoomJoin: self._on_room_join,
            m.RoomLeave: self._on_room_leave,
            m.ChatMessage: self._on_chat,
            m.StartGame: self._on_game_message,
            m.ToggleReady: self._on_game_message,
            m.PlayerAction: self._on_game_message,
        }
        # The game service reports a seat nobody reclaimed as an event.
        events.subscribe(self._on_event)

    def set_pipeline(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        failures = self.metrics.middleware_failures
        pipeline.on_failure = lambda plugin, phase: failures.labels(plugin, phase).inc()

    # -- connections ------------------------------------------------------------------

    def connection_made(self, conn: IConnection) -> None:
        if self.draining:
            self.metrics.connections_refused.labels("draining").inc()
            conn.disconnect(503, "server is shutting down", reason="refused")
            return
        if len(self.connections) >= self.settings.max_connections:
            self.metrics.connections_refused.labels("full").inc()
            conn.disconnect(
                503, f"server full ({self.settings.max_connections} connections)", reason="refused"
            )
            return
        if self.pipeline:
            veto = self.pipeline.connection_opened(conn.ctx)
            if veto is not None:
                self.metrics.connections_refused.labels("vetoed").inc()
                conn.disconnect(veto.code, veto.message, reason="refused")
                return
        self.connections.add(conn)
        self.metrics.connections.inc()

    def connection_lost(self, conn: IConnection, reason: str) -> None:
        if conn not in self.connections:
            return  # refused at accept: never counted
        self.connections.discard(conn)
        self._joining.discard(conn)
        self.closed_bytes_in += conn.bytes_in
        self.closed_bytes_out += conn.bytes_out
        self.metrics.connections.dec()
        self.metrics.disconnected(reason)
        uid = conn.user_id
        if uid is not None and self.sessions.get(uid) is conn:
            del self.sessions[uid]
            self.metrics.sessions.dec()
            room = self.rooms.room_of(uid)
            held = (
                room is not None
                and not self.draining
                and room.members.get(uid) is conn
                and self.games.connection_lost(conn, room.room_id)
            )
            if not held:
                self._leave_current_room(conn, notify_leaver=False)
            self.cluster.session_closed(conn)
            now = self.clock.seconds()
            self.events.emit(ev.UserDisconnected(uid, now - conn.ctx.connected_at, reason, now))
        if self.pipeline:
            self.pipeline.connection_closed(conn.ctx, reason)
        if self._drained is not None and not self.connections:
            d, self._drained = self._drained, None
            d.callback(None)

    def drain(self, text: str = "server is shutting down") -> defer.Deferred[None]:
        """Start the drain (or join the one under way); fires when no client is left.

        Every client gets ``text`` and every room with a game a notice; clients
        may finish what they are doing and leave (new ones get Error 503
        meanwhile, see ``connection_made``). After ``shutdown_grace`` the rest
        are closed, and aborted if still there ``DRAIN_FLUSH_SECONDS`` later:
        the Deferred fires then at the latest, so a stop is always bounded.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self._drained is not None:  # under way: end with it

            def join(result: object) -> object:
                d.callback(None)
                return result

            self._drained.addBoth(join)
            return d
        self.draining = True
        if self._drain_over or not self.connections:
            self._drain_over = True
            d.callback(None)
            return d
        self._drained = d
        notice = codec.frame(m.SystemMessage(text))
        for conn in list(self.connections):
            conn.send_frame(notice)
        for room in self.rooms.rooms():
            state = self.games.game_state(room.room_id)  # NullGames: always None
            if state is not None:
                game_notice = m.SystemMessage(
                    f"{text}: the game in room {room.room_id} ({state}) cannot finish"
                )
                # This node's members only: in a cluster the game goes on elsewhere.
                self.rooms.deliver(room, codec.frame(game_notice))
        grace = self.settings.shutdown_grace
        calls: list[Any] = []

        def finish() -> None:
            if self._drained is d:
                self._drained = None
                d.callback(None)

        def close_the_rest() -> None:
            if self._drained is not d:
                return
            _log.info(
                "{n} clients still connected after {grace}s; closing them",
                n=len(self.connections),
                grace=grace,
            )
            for conn in list(self.connections):
                conn.close("shutdown")
            calls.append(self.clock.callLater(DRAIN_FLUSH_SECONDS, give_up))

        def give_up() -> None:
            if self._drained is d:
                _log.warn(
                    "{n} clients did not close in {flush}s; aborting them",
                    n=len(self.connections),
                    flush=DRAIN_FLUSH_SECONDS,
                )
                for conn in list(self.connections):
                    conn.abort()
                finish()

        def ended(result: object) -> object:
            self._drain_over = True
            for call in calls:
                if call.active():
                    call.cancel()
            return result

        calls.append(self.clock.callLater(grace, close_the_rest))
        d.addBoth(ended)
        return d

    # -- frames -----------------------------------------------------------------------

    def frame_received(self, conn: IConnection, data: bytes) -> None:
        started = perf_counter()
        try:
            # Any: a plugin may hand back a replacement message of its own.
            msg: Any = codec.decode(data)
        except codec.DecodeError as e:
            self._received["invalid"] += 1
            self.frame_refused(conn, "invalid", len(data))
            conn.send_error(400, str(e))
            self._processing["invalid"].observe(perf_counter() - started)
            return
        tag = msg.TAG
        self._received[tag] += 1
        ctx = conn.ctx
        pipeline = self.pipeline
        active = pipeline.active
        result: Refusal | None = None
        if active:
            outcome = pipeline.before(ctx, msg)
            if isinstance(outcome, Veto):
                result = Refusal(outcome.code, outcome.message, outcome.close)
            else:
                msg = outcome
        if result is None:
            try:
                if conn.user_id is None and tag != "Connect" and tag != "HeartBeat":
                    raise Refusal(401, "not connected: send Connect first")
                self._handlers[type(msg)](conn, msg)
            except Refusal as refusal:
                result = refusal
            except Exception:
                _log.failure("handling {tag} from {ctx}", tag=tag, ctx=ctx)
                result = Refusal(500, f"internal error while handling {tag}")
        if result is not None:
            if result.close:
                conn.disconnect(result.code, result.message, reason="refused")
            else:
                conn.send_error(result.code, result.message)
        if active:
            pipeline.after(ctx, msg, result)
        self._processing[tag].observe(perf_counter() - started)

    # -- handlers -----------------------------------------------------------------------

    def _own_id(self, conn: IConnection, user_id: int) -> None:
        if user_id != conn.user_id:
            raise Refusal(403, f"user_id {user_id} is not this connection's user ({conn.user_id})")

    @staticmethod
    def _room_id(room_id: int) -> None:
        if not ROOM_ID_MIN <= room_id <= ROOM_ID_MAX:
            raise Refusal(422, f"room_id must be {ROOM_ID_MIN}..{ROOM_ID_MAX}, got {room_id}")

    @staticmethod
    def _nickname(nickname: str) -> None:
        """The nickname rules of Connect and RoomJoin (docs/protocol.md)."""
        if len(nickname) > NICKNAME_MAX_CHARS:
            raise Refusal(422, f"nickname is longer than {NICKNAME_MAX_CHARS} characters")
        bad = NICKNAME_REFUSED.search(nickname)
        if bad is not None:
            raise Refusal(422, f"nickname contains a control character (U+{ord(bad.group()):04X})")

    def _on_connect(self, conn: IConnection, msg: m.Connect) -> None:
        uid = msg.user_id
        if conn.user_id is not None:
            if conn.user_id == uid:
                conn.send(m.ConnectionAck(uid))
                return
            raise Refusal(409, f"already connected as user {conn.user_id}")
        nickname = msg.nickname
        if nickname is not None:
            self._nickname(nickname)
        if self.authenticate is not None:
            self.authenticate(uid, msg.token)
        self.cluster.require()  # 503 at once when the cluster cannot register the session
        old = self.sessions.get(uid)
        seat: int | None = None
        if old is not None:
            # A player whose old connection is still (half-)open keeps the seat:
            # the new connection takes it over, as after a reconnect.
            room = self.rooms.room_of(uid)
            if (
                room is not None
                and room.members.get(uid) is old
                and self.games.game_of_user(uid) == room.room_id
            ):
                seat = room.room_id
            else:
                self._leave_current_room(old, notify_leaver=False)
            del self.sessions[uid]
            self.metrics.sessions.dec()
            old.disconnect(409, "replaced by a new connection", reason="replaced")
            now = self.clock.seconds()
            self.events.emit(ev.UserDisconnected(uid, now - old.ctx.connected_at, "replaced", now))
        conn.user_id = uid
        conn.ctx.user_id = uid
        conn.nickname = nickname or f"user{uid}"
        self.sessions[uid] = conn
        self.metrics.sessions.inc()
        # The ack waits for the cluster's claim (NullCluster: fired already), so a client
        # that moves to another node after its ack is the newer session there.
        d = self.cluster.session_opened(conn)
        box: list[Any] = []
        d.addBoth(box.append)
        if box and not isinstance(box[0], Failure):
            self._connected(conn, uid, seat)  # one process: at once, errors are the handler's
            return
        d.addCallback(lambda _: self._claimed(conn, uid, seat, box[0]))

    def _claimed(self, conn: IConnection, uid: int, seat: int | None, result: object) -> None:
        if isinstance(result, Failure):
            self._not_connected(result, conn)
            return
        try:
            self._connected(conn, uid, seat)
        except Exception:
            _log.failure("acknowledging the Connect of user {uid}", uid=uid)
            conn.disconnect(500, "internal error while handling Connect", reason="refused")

    def _not_connected(self, failure: Failure, conn: IConnection) -> None:
        """The cluster could not claim the session: refuse it (fail closed)."""
        refusal = failure.value
        if not isinstance(refusal, Refusal):
            _log.failure("claiming a session", failure)
            refusal = Refusal(503, "cluster unavailable: the session could not be claimed")
        conn.disconnect(refusal.code, refusal.message, reason="refused")

    def _connected(self, conn: IConnection, uid: int, seat: int | None) -> None:
        """The session is ours: ack it, then hand back a held seat, if any."""
        if self.sessions.get(uid) is not conn:
            return  # closed or replaced while the claim was in flight
        conn.send(m.ConnectionAck(uid))
        self.events.emit(ev.UserConnected(uid, conn.ctx.peer_host, self.clock.seconds()))
        room_id = self.games.reclaim(uid) if seat is None else seat
        if room_id is not None and self.rooms.get(room_id) is not None:
            room = self.rooms.join(conn, room_id)  # replaces the held member
            conn.send(m.RoomJoinSuccess(room_id, room.user_count))
            self.games.reclaimed(conn, room_id)
        stale = self.rooms.room_of(uid)
        if stale is not None and stale.members.get(uid) is not conn:
            # A seat nobody reclaimed (e.g. games were switched off): release it.
            self._remove_member(stale, stale.members[uid], None)

    def _on_heartbeat(self, conn: IConnection, msg: m.HeartBeat) -> None:
        conn.send(m.HeartBeatResponse(int(self.clock.seconds())))

    def _on_room_join(self, conn: IConnection, msg: m.RoomJoin) -> None:
        self._own_id(conn, msg.user_id)
        room_id = msg.room_id
        self._room_id(room_id)
        self._nickname(msg.nickname)
        current = self.rooms.room_of(conn.user_id)
        if current is not None and current.room_id == room_id:
            conn.send(m.RoomJoinSuccess(room_id, current.user_count))
            return
        if conn in self._joining:
            raise Refusal(409, "join in progress")
        # The cluster takes the seat (capacity check and seat in one step) before the user
        # leaves its current room, as in one process: a full room leaves it where it was.
        # NullCluster's Deferred has fired already: one process stays synchronous.
        d = self.cluster.join(conn, room_id, msg.nickname)
        box: list[Any] = []
        d.addBoth(box.append)
        if box:
            self._seat(conn, room_id, msg.nickname, box[0])
            return
        self._joining.add(conn)
        d.addCallback(lambda _: self._seat_later(conn, room_id, msg.nickname, box[0]))

    def _seat_later(self, conn: IConnection, room_id: int, nickname: str, seat: object) -> None:
        """A join the cluster answered later: errors go to the client, not the caller."""
        self._joining.discard(conn)
        try:
            self._seat(conn, room_id, nickname, seat)
        except Refusal as refusal:
            if conn in self.connections:
                conn.send_error(refusal.code, refusal.message)
        except Exception:
            _log.failure("seating user {uid} in room {room}", uid=conn.user_id, room=room_id)
            if conn in self.connections:
                conn.send_error(500, "internal error while handling RoomJoin")

    def _seat(self, conn: IConnection, room_id: int, nickname: str, seat: object) -> None:
        """Put ``conn`` in ``room_id`` once the cluster gave it a seat (``seat``; None in
        one process: the room service's count decides); raises Refusal."""
        if isinstance(seat, Failure):
            seat.raiseException()
        uid = conn.user_id
        if seat is None:
            if self.rooms.size(room_id) >= self.rooms.max_room_users:
                raise Refusal(409, f"room {room_id} is full ({self.rooms.max_room_users} users)")
        elif uid is None or self.sessions.get(uid) is not conn:
            self.cluster.unseat(uid if uid is not None else 0, room_id)  # gone meanwhile
            return
        current = self.rooms.room_of(uid)
        if current is not None:
            if current.room_id == room_id:
                conn.send(m.RoomJoinSuccess(room_id, current.user_count))
                return
            self._leave_current_room(conn, notify_leaver=True)
        conn.nickname = nickname or conn.nickname
        try:
            room = self.rooms.join(conn, room_id)
        except RoomFull:  # checked above, or the cluster admitted more than this node's limit
            if seat is not None:
                self.cluster.unseat(conn.user_id, room_id)
            raise Refusal(409, f"room {room_id} is full") from None
        if seat is not None:
            self.cluster.seated(room, seat)
        count = room.user_count
        conn.send(m.RoomJoinSuccess(room_id, count))
        if count > 1:
            self._to_others(
                room, conn, m.UserJoinedRoom(room_id, conn.user_id, conn.nickname, count)
            )
        self.games.member_joined(conn, room_id)
        self.metrics.rooms.set(len(self.rooms))

    def _on_room_leave(self, conn: IConnection, msg: m.RoomLeave) -> None:
        self._own_id(conn, msg.user_id)
        self._room_id(msg.room_id)
        current = self.rooms.room_of(conn.user_id)
        if current is None or current.room_id != msg.room_id:
            raise Refusal(404, f"not in room {msg.room_id}")
        self._leave_current_room(conn, notify_leaver=True)

    def _on_chat(self, conn: IConnection, msg: m.ChatMessage) -> None:
        if msg.user_id != conn.user_id:
            self._own_id(conn, msg.user_id)
        room = self.rooms.room_of(conn.user_id)
        if room is None or room.room_id != msg.room_id:
            self._room_id(msg.room_id)
            raise Refusal(404, f"not in room {msg.room_id}")
        text = msg.message
        # A char is at most 4 UTF-8 bytes: only long texts need the exact count.
        size = len(text) if len(text) * 4 <= CHAT_MAX_BYTES else len(text.encode())
        if size == 0:
            raise Refusal(422, "empty chat message")
        if size > CHAT_MAX_BYTES:
            raise Refusal(413, f"chat message of {size} bytes exceeds {CHAT_MAX_BYTES} bytes")
        if not text.isprintable():  # fast for plain text; tabs, newlines, non-ASCII look closer
            bad = CHAT_REFUSED.search(text)
            if bad is not None:
                raise Refusal(
                    422,
                    f"chat contains a control character (U+{ord(bad.group()):04X}); "
                    "only tab and newline are allowed",
                )
        self.metrics.chat_deliveries += self.rooms.broadcast_chat(
            room, codec.frame_chat(msg), conn.ctx.received_at
        )

    def _on_game_message(self, conn: IConnection, msg: Any) -> None:
        self._room_id(msg.room_id)
        self.games.handle(conn, msg)

    # -- helpers ------------------------------------------------------------------------

    def _to_others(self, room: Room, conn: IConnection, notice: object) -> None:
        self.rooms.broadcast(room.room_id, codec.frame(notice), exclude=conn)

    def _leave_current_room(self, conn: IConnection, notify_leaver: bool) -> None:
        uid = conn.user_id
        room = self.rooms.room_of(uid) if uid is not None else None
        if room is None:
            return
        if room.members.get(uid) is not conn:
            return  # another connection of this user holds the seat
        self._remove_member(room, conn, conn if notify_leaver else None)

    def _remove_member(self, room: Room, member: IRoomClient, notify: IConnection | None) -> None:
        """Take ``member`` out of ``room`` with the usual notices, and out of its game."""
        self.rooms.leave(member, room.room_id)
        self.cluster.left(room, member)
        count = room.user_count
        if notify is not None:
            notify.send(m.RoomLeaveSuccess(room.room_id, count))
        if count and (not self.draining or room.remote):
            notice = m.UserLeftRoom(room.room_id, member.user_id, member.nickname, count)
            frame = codec.frame(notice)
            if not self.draining:
                # the room object: emptied here, its members on other nodes still hear of it
                self.rooms.broadcast_room(room, frame)
            elif self.rooms.relay is not None:
                self.rooms.relay(room, frame)  # draining: only the other nodes' members
        self.metrics.rooms.set(len(self.rooms))
        self.games.member_left(member, room.room_id)

    def _on_event(self, event: object) -> None:
        """EventBus subscriber: a held seat expired, so its member leaves the room."""
        if type(event) is ev.SeatExpired:
            self.remove_from_room(event.user_id)

    def frame_refused(self, conn: IConnection, reason: str, size: int) -> None:
        self.frames_refused[reason] = self.frames_refused.get(reason, 0) + 1
        if self.pipeline:
            self.pipeline.frame_refused(conn.ctx, reason, size)

    def error_sent(self, code: int) -> None:
        self.metrics.error_sent(code)

    # -- IServerControl -------------------------------------------------------------------

    def connected_user_ids(self) -> list[int]:
        return list(self.sessions)

    def kick_user(self, user_id: int, code: int, text: str) -> bool:
        conn = self.sessions.get(user_id)
        if conn is None:
            return False
        conn.disconnect(code, text, reason="kicked")
        return True

    def kick_host(self, host: str, code: int, text: str) -> int:
        victims = [c for c in self.connections if c.ctx.peer_host == host]
        for conn in victims:
            conn.disconnect(code, text, reason="kicked")
        return len(victims)

    def set_pipeline_timer(self, observer: Any) -> None:
        self.pipeline.timer = observer

    def set_authenticator(self, authenticate: Authenticator | None) -> None:
        self.authenticate = authenticate

    def reload_config(self) -> Any:
        if self.reloader is None:
            raise RuntimeError("this server has no config reloader")
        return self.reloader()

    def connection_count(self) -> int:
        return len(self.connections)

    def kick_user_anywhere(self, user_id: int, code: int, text: str) -> defer.Deferred[bool]:
        if self.kick_user(user_id, code, text):
            return defer.succeed(True)
        d: defer.Deferred[bool] = self.cluster.kick_remote(user_id, code, text)
        return d

    def game_status(self, room_id: int) -> str | None:
        return self.games.game_state(room_id)

    def remove_from_room(self, user_id: int) -> bool:
        """Remove the user (live or a held seat) from its room, with notices."""
        room = self.rooms.room_of(user_id)
        if room is None:
            return False
        member = room.members[user_id]
        self._remove_member(room, member, None)
        return True

    def bytes_totals(self) -> tuple[int, int]:
        """(received, sent) over the process lifetime, live connections included."""
        live = self.connections
        return (
            self.closed_bytes_in + sum(c.bytes_in for c in live),
            self.closed_bytes_out + sum(c.bytes_out for c in live) + self.rooms.bytes_out,
        )
