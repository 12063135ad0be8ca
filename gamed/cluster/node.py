"""ClusterNode: this process as a node of the cluster (docs/cluster.md).

The router's ``ICluster``: it claims sessions and seats through the directory's
scripts, relays room frames to the other nodes of a room, and applies what other
nodes publish to this node's channel. A service: it starts after twistd's fork
(the node id defaults to host:pid of the process that serves), holds the node's
lease, sweeps dead nodes, and re-registers this node's sessions and members when
Redis comes back without them.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed import codec
from gamed import messages as m
from gamed.cluster import envelope as env
from gamed.cluster.directory import Directory, Full, Seat, Synced, channel
from gamed.cluster.link import DOWN, UP, ClusterUnavailable, RedisLink
from gamed.cluster.url import parse_redis_url
from gamed.config import NODE_ID, Settings
from gamed.errors import Refusal
from gamed.interfaces import ICluster, IConnection, IRoomClient
from gamed.rooms import Room, RoomService

_log = Logger()

#: The lease's time to live, and how often it is refreshed and dead nodes are swept.
LEASE_TTL_MS = 3000
TICK_SECONDS = 1.0
#: A dead node's members are gone from every room within this bound (docs/cluster.md):
#: its last refresh + TTL, then at most one tick until a survivor's sweep, then the
#: cleanup's round trips (reply timeouts bound them).
CLEANUP_BOUND_SECONDS = LEASE_TTL_MS / 1000 + TICK_SECONDS + 1.0

LinkFactory = Callable[..., RedisLink]


def default_node_id() -> str:
    """host:pid: unique per process on a host; computed after twistd's fork. A host name
    with characters a node id may not have (keys, channels, envelopes) gets ``_`` for them."""
    node = f"{socket.gethostname()}:{os.getpid()}"
    if not NODE_ID.fullmatch(node):
        node = re.sub(r"[^A-Za-z0-9_.:@-]", "_", node)[-64:]
    return node


class Claim:
    """This node's session of a user: the connection, and its epoch once Redis answered."""

    __slots__ = ("conn", "epoch", "kicked")

    def __init__(self, conn: IConnection) -> None:
        self.conn = conn
        self.epoch: str | None = None
        #: The newest epoch another node claimed while ours was unanswered.
        self.kicked = 0


def unavailable(reason: object) -> Refusal:
    return Refusal(503, f"cluster unavailable: {reason}")


@implementer(ICluster)
class ClusterNode(Service):
    """One node's share of the cluster: the router's ICluster and the lease's keeper."""

    name = "cluster"

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        rooms: RoomService,
        registry: Any = None,
        link_factory: LinkFactory = RedisLink,
    ) -> None:
        if settings.redis is None:
            raise ValueError("a cluster node needs --redis")
        self.settings = settings
        self.address = parse_redis_url(settings.redis)
        self.reactor = reactor
        self.clock = reactor
        self.rooms = rooms
        self.registry = registry
        self._link_factory = link_factory
        self.node_id: str = settings.node_id or ""
        self.link: RedisLink | None = None
        self.directory: Directory | None = None
        self._token = ""
        self._loop: task.LoopingCall | None = None
        self._ticking = False
        self._dirty = False  # a change Redis did not take: re-register on the next tick
        self._claims: dict[int, Claim] = {}
        self._joins: Counter[int] = Counter()  # room id -> joins in flight (keep the room set)
        self._cleaning: set[str] = set()
        #: The envelope kinds this node reads (gamed.cluster.envelope); games add theirs.
        self.handlers: dict[int, Callable[[list[bytes], bytes], None]] = {
            env.FRAME: self._on_frame,
            env.MEMBERS: self._on_members,
            env.KICK: self._on_kick,
            env.ADMIN_KICK: self._on_admin_kick,
        }
        # plain ints, read at scrape time (ClusterCollector)
        self.messages_out = 0
        self.messages_in = 0
        self.deliveries_in = 0
        self.bad_envelopes = 0
        self.kicks_sent = 0
        self.kicks_received = 0
        self.nodes_swept = 0
        self.members_swept = 0
        self.reregistrations = 0
        self.lease_ok_at: float | None = None
        #: While the link is not up: when it left up, and the rooms that had members elsewhere.
        self._gap: tuple[float, set[int]] | None = None
        #: Times this node told its members that messages from other nodes may be missing.
        self.gaps = 0
        self.lease_conflict = False
        if registry is not None:
            registry.register(ClusterCollector(self))

    def __bool__(self) -> bool:
        return True

    # -- lifecycle -----------------------------------------------------------------------

    def startService(self) -> None:
        """After twistd's fork: the pid in the default node id is the serving process's."""
        super().startService()
        if not self.node_id:
            self.node_id = default_node_id()
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        link = self._link_factory(
            self.address, self.reactor, self.clock, self.node_id, self.registry
        )
        self.link = link
        self.directory = Directory(link, self.node_id)
        self.rooms.relay = self.relay
        link.subscribe(channel(self.node_id), self._on_message)
        link.on_state(self._on_state)
        link.start()
        loop = task.LoopingCall(self._tick)
        loop.clock = self.clock
        self._loop = loop
        loop.start(TICK_SECONDS, now=True).addErrback(
            lambda f: _log.failure("cluster tick loop stopped", f)
        )
        _log.info(
            "cluster node {node} on {redis}; lease {ttl} ms, dead nodes cleaned within {bound} s",
            node=self.node_id,
            redis=self.address.display(),
            ttl=LEASE_TTL_MS,
            bound=CLEANUP_BOUND_SECONDS,
        )

    def stopService(self) -> defer.Deferred[None]:
        """Leave the cluster cleanly (after the drain): seats, sessions, lease; then close."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        link, directory = self.link, self.directory
        if link is None or directory is None:
            return defer.succeed(None)
        self.rooms.relay = None
        d: defer.Deferred[Any]
        if link.state == DOWN:
            d = defer.succeed(None)
        else:
            d = self._cleanup(self.node_id, local=False)
            d.addCallback(lambda _: directory.leave_index())
            d.addErrback(lambda f: _log.warn("leaving the cluster: {e}", e=f.getErrorMessage()))
        d.addBoth(lambda _: link.stop())
        return d.addBoth(lambda _: None)

    @property
    def state(self) -> str:
        return self.link.state if self.link is not None else DOWN

    def _on_state(self, old: str, new: str) -> None:
        _log.info("cluster link {old} -> {new}", old=old, new=new)
        if old == UP and self._gap is None:
            spanning = {room.room_id for room in self.rooms.rooms() if room.remote}
            self._gap = (self.clock.seconds(), spanning)
        elif new == UP and self._gap is not None:
            self._close_gap()
        if new != DOWN and (old == DOWN or new == UP):
            # Back from down: whatever Redis holds now, make this node's part true again.
            # Subscriber back (degraded -> up): membership envelopes sent to us meanwhile
            # are lost, so the rooms' node lists are read again (sync answers them).
            self._dirty = True
            self.reactor.callLater(0, self._tick)

    def _close_gap(self) -> None:
        """Back up after a gap: what other nodes published to this node meanwhile is lost
        (pub/sub keeps nothing), so the members of rooms that span nodes are told, never
        left to guess (docs/cluster.md, Failure modes)."""
        assert self._gap is not None
        since, spanning = self._gap
        self._gap = None
        seconds = self.clock.seconds() - since
        spanning |= {room.room_id for room in self.rooms.rooms() if room.remote}
        notice = codec.frame(
            m.SystemMessage(
                f"the link to the other servers was interrupted for {seconds:.1f}s: messages "
                "from players on other servers in that time may be missing"
            )
        )
        told = 0
        for room_id in sorted(spanning):
            room = self.rooms.get(room_id)
            if room is not None and room.members:
                told += self.rooms.deliver(room, notice)
        if told:
            self.gaps += 1
            _log.warn(
                "cluster link back after {s:.1f}s: told {n} members of {r} rooms that spanned "
                "nodes that messages from other nodes may be missing",
                s=seconds,
                n=told,
                r=len(spanning),
            )

    def _tick(self) -> None:
        """Every second: refresh the lease (re-register if it was gone), sweep dead nodes."""
        if self._ticking or not self.running or self.directory is None or self.state == DOWN:
            return  # (not running: a stopped node must not take its lease again)
        self._ticking = True
        directory = self.directory

        def leased(result: str) -> defer.Deferred[Any] | None:
            if result == "other":
                if not self.lease_conflict:
                    _log.error(
                        "cluster: node id {node} is leased by another process; "
                        "waiting for its lease to end (give each node its own --node-id)",
                        node=self.node_id,
                    )
                self.lease_conflict = True
                return None
            self.lease_conflict = False
            self.lease_ok_at = self.clock.seconds()
            if result == "new" or self._dirty:
                self.reregister()
            return directory.sweep().addCallback(self._swept)

        def done(result: object) -> None:
            self._ticking = False
            if isinstance(result, Failure):
                _log.debug("cluster tick: {e}", e=result.getErrorMessage())

        directory.lease(self._token, LEASE_TTL_MS).addCallback(leased).addBoth(done)

    def _swept(self, dead: list[str]) -> None:
        for node in dead:
            if node != self.node_id and node not in self._cleaning:
                _log.info("cluster: node {node} is gone; removing its members", node=node)
                self._cleanup(node, local=True).addErrback(lambda _: None)  # logged there

    def _cleanup(self, node: str, local: bool) -> defer.Deferred[Any]:
        """Remove ``node``'s members (notices to the rooms' other nodes), sessions and keys.

        ``local``: apply the notices here too (a survivor cleaning a dead node).
        """
        directory = self.directory
        assert directory is not None
        self._cleaning.add(node)

        def rooms_of(room_ids: list[int]) -> defer.Deferred[Any]:
            return defer.gatherResults(
                [
                    directory.sync(rid, [], node=node).addCallback(
                        self._tell_gone, rid, node, local
                    )
                    for rid in room_ids
                ],
                consumeErrors=True,
            )

        def sessions(_: object) -> defer.Deferred[Any]:
            return directory.node_sessions(node).addCallback(
                lambda uids: defer.gatherResults(
                    [directory.release(uid, "", node=node) for uid in uids], consumeErrors=True
                )
            )

        def finished(result: object) -> object:
            self._cleaning.discard(node)
            if isinstance(result, Failure):
                _log.warn(
                    "cluster: cleanup of node {node} failed ({e}); retried on a later sweep",
                    node=node,
                    e=result.getErrorMessage(),
                )
                if local:
                    directory.mourn(node).addErrback(lambda _: None)
            elif local:
                self.nodes_swept += 1
            return result

        d = directory.node_rooms(node).addCallback(rooms_of).addCallback(sessions)
        d.addCallback(lambda _: directory.drop_node(node))
        return d.addBoth(finished)

    def _tell_gone(self, synced: Synced, room_id: int, node: str, local: bool) -> None:
        """``node``'s members of ``room_id`` were removed: tell the room's other nodes."""
        if local:
            self.members_swept += len(synced.removed)
        count = synced.count + len(synced.removed)
        notices = []
        for uid, nick in synced.removed:
            count -= 1
            notices.append(codec.frame(m.UserLeftRoom(room_id, uid, nick, count)))
        payload = env.members(room_id, node, 0, synced.count, b"".join(notices))
        for other in synced.nodes:
            if other == self.node_id:
                if local:
                    self._on_message(payload)
            elif other != node:
                self._publish(other, payload)

    # -- re-registration -------------------------------------------------------------------

    def reregister(self) -> None:
        """Make Redis hold this node's sessions and members again (after a restart that lost
        them, an outage that lost our changes, or a stall that got us swept)."""
        directory = self.directory
        if directory is None:
            return
        self._dirty = False
        self.reregistrations += 1
        _log.info(
            "cluster: registering {s} sessions and the members of {r} rooms",
            s=len(self._claims),
            r=len(self.rooms),
        )
        for uid, claim in list(self._claims.items()):
            self._claim(uid, claim, claim.epoch or "").addErrback(self._failed)

        def rooms(known: list[int]) -> None:
            for room_id in sorted(set(known) | {r.room_id for r in self.rooms.rooms()}):
                self._sync_room(room_id)

        def sessions(known: list[int]) -> None:
            # sessions that ended here while Redis could not hear of it
            for uid in known:
                if uid not in self._claims:
                    directory.release(uid, "").addErrback(self._failed)
                    directory.forget_session(uid).addErrback(self._failed)

        directory.node_rooms(self.node_id).addCallbacks(rooms, self._failed)
        directory.node_sessions(self.node_id).addCallbacks(sessions, self._failed)

    def _failed(self, failure: Failure) -> None:
        """A change Redis did not take: the next tick with the link up re-registers."""
        self._dirty = True
        if not failure.check(ClusterUnavailable):
            _log.failure("cluster: a Redis change failed", failure)

    def _sync_room(self, room_id: int) -> None:
        directory = self.directory
        assert directory is not None
        room = self.rooms.get(room_id)
        members = [(uid, c.nickname) for uid, c in room.members.items()] if room else []

        def synced(result: Synced) -> None:
            now = self.rooms.get(room_id)
            if now is not None and now is room:
                self._set_remote(now, result.nodes, result.count)
            elif not members and not self._joins[room_id]:
                directory.forget_room(room_id).addErrback(self._failed)

        directory.sync(room_id, members).addCallbacks(synced, self._failed)

    def _set_remote(self, room: Room, nodes: dict[str, int], count: int) -> None:
        """The room's nodes as Redis has them; tell each what we have here."""
        me = self.node_id
        room.remote = {n: c for n, c in nodes.items() if n != me and c > 0}
        room.total = count
        if room.remote:
            payload = env.members(room.room_id, me, len(room.members), count)
            for node in room.remote:
                self._publish(node, payload)

    # -- ICluster ------------------------------------------------------------------------

    def require(self) -> None:
        if self.state == DOWN:
            raise unavailable("no connection to Redis")

    def session_opened(self, conn: IConnection) -> defer.Deferred[None]:
        uid = conn.user_id
        claim = Claim(conn)
        self._claims[uid] = claim

        def failed(failure: Failure) -> None:
            if self._claims.get(uid) is claim:
                del self._claims[uid]
            if failure.check(ClusterUnavailable):
                raise unavailable(failure.getErrorMessage())
            _log.failure("cluster: claiming the session of user {uid}", failure, uid=uid)
            raise unavailable("the session could not be claimed")

        return self._claim(uid, claim, "").addCallbacks(lambda _: None, failed)

    def _claim(self, uid: int, claim: Claim, epoch: str) -> defer.Deferred[None]:
        """Claim (``epoch`` "") or re-register (its epoch) a session; fires when answered."""
        directory = self.directory
        if directory is None:
            return defer.fail(unavailable("the node is not started"))

        def claimed(reply: tuple[str, str]) -> None:
            first, second = reply
            if self._claims.get(uid) is not claim:
                return  # closed meanwhile: session_closed released it
            if first == "lost":
                self._kick(uid, claim)  # a newer session of the user is on ``second``
                return
            claim.epoch = second
            if first not in ("", "kept", self.node_id):
                self.kicks_sent += 1
                self._publish(first, env.kick(uid, second))
            if claim.kicked > int(second):
                self._kick(uid, claim)

        return directory.claim(uid, epoch).addCallback(claimed)

    def session_closed(self, conn: IConnection) -> None:
        uid = conn.user_id
        claim = self._claims.get(uid)
        if claim is None or claim.conn is not conn:
            return
        del self._claims[uid]
        directory = self.directory
        if directory is None or self.state == DOWN:
            self._dirty = directory is not None
            return
        if claim.epoch is not None:
            directory.release(uid, claim.epoch).addErrback(self._failed)
        directory.forget_session(uid).addErrback(self._failed)

    def join(self, conn: IConnection, room_id: int, nickname: str) -> defer.Deferred[Seat]:
        directory = self.directory
        if directory is None or self.state == DOWN:
            return defer.fail(unavailable("no connection to Redis"))
        limit = self.rooms.max_room_users
        self._joins[room_id] += 1

        def done(result: Seat | Full | Failure) -> Seat:
            self._joins[room_id] -= 1
            if not self._joins[room_id]:
                del self._joins[room_id]
            if isinstance(result, Failure):
                if result.check(ClusterUnavailable):
                    raise unavailable(result.getErrorMessage())
                _log.failure("cluster join of room {room}", result, room=room_id)
                raise unavailable("join failed")
            if isinstance(result, Full):
                raise Refusal(409, f"room {room_id} is full ({limit} users)")
            return result

        d = directory.join(room_id, conn.user_id, nickname or conn.nickname, limit)
        return d.addBoth(done)

    def seated(self, room: object, seat: object) -> None:
        assert isinstance(room, Room) and isinstance(seat, Seat)
        self._set_remote(room, seat.nodes, seat.count)

    def unseat(self, user_id: int, room_id: int) -> None:
        directory = self.directory
        if directory is None:
            return
        d = directory.leave(room_id, user_id)
        d.addCallbacks(lambda _: self._forget_if_empty(room_id), self._failed)

    def left(self, room: object, member: IRoomClient) -> None:
        assert isinstance(room, Room)
        directory = self.directory
        if directory is None:
            return
        if room.remote:
            room.total = max(room.total - 1, len(room.members))
            payload = env.members(room.room_id, self.node_id, len(room.members), room.total)
            for node in room.remote:
                self._publish(node, payload)
        if self.state == DOWN:
            self._dirty = True
            return
        room_id = room.room_id

        def counted(count: int) -> None:
            if self.rooms.get(room_id) is room and room.remote:
                room.total = max(count, len(room.members))

        directory.leave(room_id, member.user_id).addCallbacks(counted, self._failed)
        if not room.members:
            self._forget_if_empty(room_id)

    def _forget_if_empty(self, room_id: int) -> None:
        """The room left this node: off the node's room set (after the leave, same link)."""
        if self.rooms.get(room_id) is None and not self._joins[room_id]:
            self._joins.pop(room_id, None)
            assert self.directory is not None
            self.directory.forget_room(room_id).addErrback(self._failed)

    def health(self) -> dict[str, Any]:
        link = self.link
        age = None if self.lease_ok_at is None else self.clock.seconds() - self.lease_ok_at
        body: dict[str, Any] = {
            "state": self.state,
            "node": self.node_id,
            "redis": self.address.display(),
            "lease_age_seconds": None if age is None else round(age, 3),
            "lease_conflict": self.lease_conflict,
            "remote_rooms": sum(1 for r in self.rooms.rooms() if r.remote),
            "sessions": len(self._claims),
            "messages_out": self.messages_out,
            "messages_in": self.messages_in,
            "bad_envelopes": self.bad_envelopes,
            "kicks_sent": self.kicks_sent,
            "kicks_received": self.kicks_received,
            "nodes_swept": self.nodes_swept,
            "members_swept": self.members_swept,
            "reregistrations": self.reregistrations,
            "gaps_notified": self.gaps,
            "cleanup_bound_seconds": CLEANUP_BOUND_SECONDS,
        }
        if link is not None:
            try:
                body["link"] = link.health()
            except NotImplementedError:  # pragma: no cover - the link stub
                pass
        return body

    # -- fan-out -------------------------------------------------------------------------

    def relay(self, room: Room, frame: bytes) -> None:
        """RoomService's relay: the frame once to each other node of the room, in call order
        on the one command connection (order per sender holds)."""
        link = self.link
        if link is None:
            return
        payload = b"F%d\n%s" % (room.room_id, frame)  # env.room_frame, inlined
        publish = link.publish
        for node in room.remote:
            publish(channel(node), payload)
        self.messages_out += len(room.remote)

    def add_handler(self, kind: int, handler: Callable[[list[bytes], bytes], None]) -> None:
        """Read envelopes of ``kind`` (one byte, e.g. ``ord("G")`` for games across nodes)
        with ``handler(header_fields, body)``; the kinds of gamed.cluster.envelope are taken."""
        if kind in self.handlers:
            raise ValueError(f"envelope kind {chr(kind)!r} is taken")
        self.handlers[kind] = handler

    def publish_to(self, node: str, payload: bytes) -> None:
        """One envelope to ``node``'s channel, in order after everything this node sent."""
        self._publish(node, payload)

    def _publish(self, node: str, payload: bytes) -> None:
        if self.link is not None:
            self.link.publish(channel(node), payload)
            self.messages_out += 1

    def _on_message(self, payload: bytes) -> None:
        """One envelope from another node (the subscriber link, in order)."""
        self.messages_in += 1
        if payload[:1] == b"F":
            # the relayed chat's envelope (nearly every message): no header list, no table
            end = payload.find(b"\n")
            head = payload[1:end]
            if end > 1 and head.isdigit():  # else the general path below says what it is
                try:  # (as the general path handles a handler's failure)
                    room = self.rooms.get(int(head))
                    if room is not None:
                        self.deliveries_in += self.rooms.deliver(room, payload[end + 1 :])
                except (env.BadEnvelope, ValueError, IndexError):
                    self.bad_envelopes += 1
                except Exception:
                    _log.failure("cluster: handling a {kind!r} envelope", kind="F")
                return
        try:
            kind, header, body = env.split(payload)
            handler = self.handlers[kind]
        except (env.BadEnvelope, KeyError):
            self.bad_envelopes += 1
            return
        try:
            handler(header, body)
        except (env.BadEnvelope, ValueError, IndexError):
            self.bad_envelopes += 1
        except Exception:
            _log.failure("cluster: handling a {kind!r} envelope", kind=chr(kind))

    def _on_frame(self, header: list[bytes], body: bytes) -> None:
        room = self.rooms.get(int(header[0]))
        if room is not None:
            self.deliveries_in += self.rooms.deliver(room, body)

    def _on_members(self, header: list[bytes], body: bytes) -> None:
        room = self.rooms.get(int(header[0]))
        node = header[1].decode()
        n, total = int(header[2]), int(header[3])
        if room is None or node == self.node_id:
            return
        if n > 0:
            room.remote[node] = n
        else:
            room.remote.pop(node, None)
        room.total = max(total, len(room.members))
        for frame in env.frames(body):
            self.deliveries_in += self.rooms.deliver(room, frame)

    def _on_kick(self, header: list[bytes], body: bytes) -> None:
        uid, epoch = int(header[0]), int(header[1])
        claim = self._claims.get(uid)
        if claim is None:
            return
        self.kicks_received += 1
        if claim.epoch is None:
            claim.kicked = max(claim.kicked, epoch)  # decided when our claim is answered
        elif int(claim.epoch) < epoch:
            self._kick(uid, claim)

    def kick_remote(self, user_id: int, code: int, text: str) -> defer.Deferred[bool]:
        """An operator's kick of a user whose session another node holds: True once the kick
        is on its way to that node, False when no other node holds one."""
        directory = self.directory
        if directory is None or self.state == DOWN:
            return defer.fail(unavailable("no connection to Redis"))

        def send(node: str | None) -> bool:
            if node is None or node == self.node_id:
                return False
            self._publish(node, env.admin_kick(user_id, code, text))
            return True

        def failed(failure: Failure) -> Failure:
            failure.trap(ClusterUnavailable)
            raise unavailable(failure.getErrorMessage())

        return directory.session_node(user_id).addCallbacks(send, failed)

    def _on_admin_kick(self, header: list[bytes], body: bytes) -> None:
        uid, code = int(header[0]), int(header[1])
        claim = self._claims.get(uid)
        if claim is not None:
            claim.conn.disconnect(code, body.decode(errors="replace"), reason="kicked")

    def _kick(self, uid: int, claim: Claim) -> None:
        """Another node holds the user's newer session: close ours with the 409 of takeover."""
        if self._claims.get(uid) is claim:
            del self._claims[uid]
        claim.conn.disconnect(409, "replaced by a new connection", reason="replaced")
        if self.directory is not None and uid not in self._claims:
            self.directory.forget_session(uid).addErrback(self._failed)


class ClusterCollector(Collector):
    """The node's counters at scrape time (the hot path bumps ints)."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        messages = CounterMetricFamily(
            "gamed_cluster_messages",
            "Envelopes published to other nodes (out) and received from them (in)",
            labels=["direction"],
        )
        messages.add_metric(["out"], node.messages_out)
        messages.add_metric(["in"], node.messages_in)
        yield messages
        yield CounterMetricFamily(
            "gamed_cluster_deliveries_in",
            "Frames from other nodes written to this node's members",
            value=node.deliveries_in,
        )
        yield CounterMetricFamily(
            "gamed_cluster_bad_envelopes", "Envelopes dropped unread", value=node.bad_envelopes
        )
        kicks = CounterMetricFamily(
            "gamed_cluster_takeovers",
            "Sessions closed on another node (sent) or here (received) by a newer Connect",
            labels=["direction"],
        )
        kicks.add_metric(["sent"], node.kicks_sent)
        kicks.add_metric(["received"], node.kicks_received)
        yield kicks
        yield CounterMetricFamily(
            "gamed_cluster_nodes_swept", "Dead nodes this node cleaned up", value=node.nodes_swept
        )
        yield CounterMetricFamily(
            "gamed_cluster_members_swept",
            "Members of dead nodes this node removed from rooms",
            value=node.members_swept,
        )
        yield CounterMetricFamily(
            "gamed_cluster_reregistrations",
            "Times this node wrote its sessions and members to Redis again",
            value=node.reregistrations,
        )
        age = GaugeMetricFamily(
            "gamed_cluster_lease_age_seconds",
            "Seconds since this node's lease was last refreshed (NaN: never)",
        )
        ok = node.lease_ok_at
        age.add_metric([], float("nan") if ok is None else node.clock.seconds() - ok)
        yield age
        yield GaugeMetricFamily(
            "gamed_cluster_remote_rooms",
            "Rooms here with members on other nodes (their chat is relayed)",
            value=sum(1 for r in node.rooms.rooms() if r.remote),
        )

    def describe(self) -> list[Metric]:
        return []
