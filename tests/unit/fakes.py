"""Fakes and builders shared by the unit tests (no sockets, no real time).

Each fake declares the interface it stands in for, and tests/unit/test_interfaces.py
checks it with ``verifyObject``, so a fake cannot drift from the seam it fakes.
"""

from __future__ import annotations

import io
import itertools
import struct
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from gamed import codec, tap
from gamed.config import Settings
from gamed.errors import Refusal, SharedStateUnavailable
from gamed.events import EventBus
from gamed.interfaces import (
    ICluster,
    IConnection,
    IConnectionHandler,
    IGameService,
    IMessageContext,
    IRoomClient,
    IServerControl,
    ISharedState,
)
from gamed.messages import Error
from gamed.middleware.analytics import middleware as analytics
from gamed.middleware.analytics.middleware import Analytics
from gamed.middleware.registry import PluginEnvironment
from gamed.middleware.security.middleware import make_plugin, validate
from gamed.pipeline import Pipeline
from gamed.protocol import ConnectionContext, GameFactory, GameProtocol
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.telemetry import ServerMetrics

# -- the cluster seam (router and cluster node tests) -----------------------------------


@implementer(ICluster)
class FakeCluster:
    """An ICluster whose joins wait until the test answers them (``joins``: the
    Deferreds in call order, with their room ids), and claims too if asked
    (``hold_claims``); every other call is recorded."""

    def __init__(self, state: str = "up") -> None:
        self.state = state
        self.joins: list[tuple[int, defer.Deferred[Any]]] = []
        #: ``hold_claims``: Connects wait in ``claims`` until the test answers them.
        self.hold_claims = False
        self.claims: list[defer.Deferred[None]] = []
        self.calls: list[tuple[str, Any, ...]] = []
        #: Users whose session another node holds (``kick_remote`` answers True for them).
        self.elsewhere: set[int] = set()

    def __bool__(self) -> bool:
        return True

    def require(self) -> None:
        if self.state == "down":
            raise Refusal(503, "cluster unavailable: no connection to Redis")

    def session_opened(self, conn: IConnection) -> defer.Deferred[None]:
        self.calls.append(("opened", conn.user_id))
        if not self.hold_claims:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.claims.append(d)
        return d

    def session_closed(self, conn: IConnection) -> None:
        self.calls.append(("closed", conn.user_id))

    def join(self, conn: IConnection, room_id: int, nickname: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.joins.append((room_id, d))
        return d

    def seated(self, room: Any, seat: Any) -> None:
        self.calls.append(("seated", room.room_id, seat))
        room.remote, room.total = {"other": 1}, seat

    def unseat(self, user_id: int, room_id: int) -> None:
        self.calls.append(("unseat", user_id, room_id))

    def left(self, room: Any, member: IRoomClient) -> None:
        self.calls.append(("left", room.room_id, member.user_id))
        if room.remote:
            room.total -= 1

    def health(self) -> dict[str, Any]:
        return {"state": self.state}

    def kick_remote(self, user_id: int, code: int, text: str) -> defer.Deferred[bool]:
        """True for users in ``elsewhere`` (their session is on another node)."""
        self.calls.append(("kick_remote", user_id, code))
        return defer.succeed(user_id in self.elsewhere)


class FakeLink:
    """The RedisLink API for node tests: publishes and subscriptions recorded, every command
    answered by ``reply(command)`` (default None), state set by the test."""

    def __init__(self, state: str = "up") -> None:
        self.state = state
        self.published: list[tuple[str, bytes]] = []
        self.commands: list[tuple[Any, ...]] = []
        self.handlers: dict[str, Any] = {}
        self.listeners: list[Any] = []
        self.reply: Any = lambda command: None

    def publish(self, channel: str, payload: bytes) -> bool:
        self.published.append((channel, payload))
        return self.state != "down"

    def execute(self, *command: Any, timeout: float | None = None) -> defer.Deferred[Any]:
        self.commands.append(command)
        return defer.maybeDeferred(self.reply, command)

    def script(self, name: str, source: str) -> Any:
        link = self

        class _Script:
            def run(self, keys: Any, args: Any) -> defer.Deferred[Any]:
                return link.execute("SCRIPT:" + name, *keys, *args)

        return _Script()

    def subscribe(self, channel: str, handler: Any) -> None:
        self.handlers[channel] = handler

    def on_state(self, listener: Any) -> None:
        self.listeners.append(listener)

    def start(self) -> None:
        pass

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def health(self) -> dict[str, Any]:
        return {"state": self.state}


# -- IConnection / IServerControl fakes (router and plugin tests) ---------------------------


@implementer(IConnection)
class FakeConnection:
    """An IConnection with no transport: records every frame written and how it was closed.

    It keeps the contract of a real connection that the router relies on:
    output after ``close`` is dropped, input after ``close`` is not read,
    ``send_error`` is counted by the handler. ``open``, ``receive`` and
    ``lose`` play the transport's part.
    """

    transport_name = "fake"

    def __init__(
        self,
        handler: IConnectionHandler | None = None,
        clock: IReactorTime | None = None,
        peer_host: str = "127.0.0.1",
        peer_port: int = 40000,
    ) -> None:
        self.handler = handler
        self.ctx = ConnectionContext(self, peer_host, peer_port, clock or Clock())
        self.user_id: int | None = None
        self.nickname = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames: list[bytes] = []  # every length-prefixed frame written, in order
        self.closing = False
        self.close_reason = "closed"
        self.aborted = False

    # -- IConnection ------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        if not self.closing:
            self.frames.append(frame)

    def send(self, message: object) -> None:
        frame = codec.frame(message)
        self.bytes_out += len(frame)
        self.send_frame(frame)

    def send_error(self, code: int, text: str) -> None:
        if self.handler is not None:
            self.handler.error_sent(code)
        self.send(Error(code, text))

    def disconnect(self, code: int, text: str, reason: str) -> None:
        if self.closing:
            return
        self.send_error(code, text)
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    # -- the transport's part -----------------------------------------------------------

    def open(self) -> FakeConnection:
        """Report the connection to its handler (as a transport does on accept)."""
        assert self.handler is not None
        self.handler.connection_made(self)
        return self

    def receive(self, payload: bytes) -> None:
        """One frame payload from the peer; ignored once closing, as a real connection does."""
        assert self.handler is not None
        self.bytes_in += len(payload) + 4
        if self.closing:
            return
        self.ctx.frame_size = len(payload)
        self.ctx.received_at = self.ctx.clock.seconds()
        self.handler.frame_received(self, payload)

    def lose(self) -> None:
        """The peer is gone: tell the handler, with the reason given to ``close``."""
        assert self.handler is not None
        self.closing = True
        self.handler.connection_lost(self, self.close_reason)

    # -- reading what was written -------------------------------------------------------

    def messages(self) -> list[Any]:
        """Decode and forget the frames written so far."""
        out = []
        for frame in self.frames:
            (n,) = struct.unpack(">I", frame[:4])
            assert n == len(frame) - 4, "a frame must be written whole"
            out.append(orjson.loads(frame[4:]))
        self.frames.clear()
        return out


@implementer(IServerControl)
class FakeServerControl:
    """An IServerControl that records what a plugin asks of the server.

    ``connections`` are open connections (only counted), ``sessions`` the
    connected user ids, ``hosts`` the peer address of each open connection
    (what ``kick_host`` closes), ``games`` an optional IGameService that
    answers ``game_status``; ``reload_config`` answers ``reload_result``.
    """

    def __init__(self) -> None:
        self.connections: set[object] = set()
        self.sessions: list[int] = []
        self.hosts: list[str] = []
        self.games: IGameService | None = None
        self.kicked: list[tuple[Any, ...]] = []
        self.removed: list[int] = []
        self.authenticator: Any = None
        self.timer: Any = "unset"
        self.reloads = 0
        self.reload_result: Any = {"reloaded": []}

    def connected_user_ids(self) -> list[int]:
        return list(self.sessions)

    def kick_user(self, user_id: int, code: int, text: str) -> bool:
        self.kicked.append(("user", user_id, code))
        return user_id in self.sessions

    def kick_user_anywhere(self, user_id: int, code: int, text: str) -> defer.Deferred[bool]:
        return defer.succeed(self.kick_user(user_id, code, text))

    def kick_host(self, host: str, code: int, text: str) -> int:
        self.kicked.append(("host", host, code))
        return self.hosts.count(host)

    def remove_from_room(self, user_id: int) -> bool:
        self.removed.append(user_id)
        return False

    def set_authenticator(self, authenticate: Any) -> None:
        self.authenticator = authenticate

    def set_pipeline_timer(self, observer: Any) -> None:
        self.timer = observer

    def reload_config(self) -> Any:
        self.reloads += 1
        return self.reload_result

    def connection_count(self) -> int:
        return len(self.connections)

    def game_status(self, room_id: int) -> str | None:
        return None if self.games is None else self.games.game_state(room_id)


# -- a plugin's view of one connection ---------------------------------------------------------

_ctx_ids = itertools.count(1)


@implementer(IMessageContext)
class Ctx:
    """One connection as a middleware sees it.

    ``notify`` is recorded in ``notices``; ``disconnect`` fails the test:
    plugins refuse with a Veto, they never close a connection themselves.
    """

    def __init__(
        self, clock: IReactorTime | None = None, host: str = "10.0.0.1", user_id: int | None = None
    ) -> None:
        self.connection_id = next(_ctx_ids)
        self.user_id = user_id
        self.peer_host = host
        self.peer_port = 5000
        self.clock = clock if clock is not None else Clock()
        self.connected_at = self.clock.seconds()
        self.frame_size = 60
        self.notices: list[str] = []

    @property
    def received_at(self) -> float:
        """The frame arrives now (a test calls the plugin when the frame would arrive)."""
        return self.clock.seconds()

    def notify(self, text: str) -> None:
        self.notices.append(text)

    def disconnect(self, code: int, text: str) -> None:
        raise AssertionError("plugins veto; they do not disconnect directly")


# -- a room member ------------------------------------------------------------------------------


@implementer(IRoomClient)
class Member:
    """A room member that keeps the frames the room service hands it."""

    def __init__(self, user_id: int, nickname: str = "") -> None:
        self.user_id = user_id
        self.nickname = nickname or f"user{user_id}"
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


# -- frames on the wire -------------------------------------------------------------------------


def frame(obj: object) -> bytes:
    """One length-prefixed frame: ``obj`` as JSON, or ``bytes`` as they are."""
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


def parse_frames(data: bytes) -> list[Any]:
    """The frames in ``data``, decoded; the server never splits one."""
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        out.append(orjson.loads(data[i + 4 : i + 4 + n]))
        i += 4 + n
    assert i == len(data), "server frames must never be split"
    return out


def assert_error(msgs: list[Any], code: int, contains: str = "") -> None:
    """``msgs`` is one Error frame, of ``code``, whose message contains ``contains``."""
    assert len(msgs) == 1, msgs
    (err,) = msgs
    assert err["Error"]["code"] == code, err
    assert contains in err["Error"]["message"], err


def send(proto: Any, *objs: object) -> None:
    """Feed ``proto`` one frame per object, as separate reads."""
    for obj in objs:
        proto.dataReceived(frame(obj))


# -- the real service tree on a MemoryReactorClock ----------------------------------------------


def memory_service(
    tmp_path: Path, *extra: str, reactor: MemoryReactorClock | None = None
) -> tuple[MultiService, MemoryReactorClock]:
    """``makeService`` with test ports 7001/7081 (WebSocket)/9701 and a data dir under ``tmp_path``."""
    options = tap.Options()
    options.parseOptions(
        [
            "--port",
            "tcp:7001",
            "--metrics-port",
            "tcp:9701:interface=127.0.0.1",
            "--ws-port",
            "tcp:7081",
            "--data-dir",
            str(tmp_path / "d"),
            *extra,
        ]
    )
    reactor = reactor if reactor is not None else MemoryReactorClock()
    return tap.makeService(options, reactor=reactor), reactor


def admin_token_args(tmp_path: Path, token: bytes) -> list[str]:
    """Write ``token`` to ``tmp_path/admin.token``; the options that point gamed at it."""
    path = tmp_path / "admin.token"
    path.write_bytes(token + b"\n")
    return ["--admin-token-file", str(path)]


class MemoryServer:
    """``makeService`` on a MemoryReactorClock: game clients on StringTransports,
    HTTP resources rendered from DummyRequests. Nothing listens."""

    def __init__(
        self,
        tmp_path: Path,
        *extra: str,
        reactor: MemoryReactorClock | None = None,
        start: bool = False,
    ) -> None:
        self.service, self.reactor = memory_service(tmp_path, *extra, reactor=reactor)
        if start:
            self.service.privilegedStartService()
            self.service.startService()
        self.router: Any = self.service.router  # type: ignore[attr-defined]
        self.site: Any = self.service.getServiceNamed("http-listener").factory  # type: ignore[attr-defined]
        self.factory = GameFactory(self.router, self.reactor)
        self._ports = itertools.count(40001)

    def client(self) -> GameProtocol:
        """A new connection from 127.0.0.1 (a fresh port each time)."""
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", next(self._ports)))
        proto = self.factory.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        return proto

    def get(self, path: bytes) -> tuple[int, DummyRequest, bytes]:
        """(status, request, body) of a resource that answers at once."""
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        body = self.site.getResourceFor(request).render(request)
        assert body is not NOT_DONE_YET
        return request.responseCode or 200, request, body

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()


# -- the security plugin and its admin API ------------------------------------------------------

ADMIN_TOKEN = b"admin-token-0123456789"


class SecurityPlugin:
    """The security plugin as make_plugin builds it, on a Clock and a FakeServerControl;
    ``call`` renders its /admin/ resource from a DummyRequest."""

    def __init__(
        self,
        tmp_path: Path,
        admin: bool = True,
        shared: Any = None,
        clock: Clock | None = None,
        **table: Any,
    ) -> None:
        self.tmp = tmp_path
        if clock is None:
            clock = Clock()
            clock.advance(1_700_000_000)
        self.clock = clock
        self.control = FakeServerControl()
        self.control.reload_result = {"reloaded": ["security"]}
        admin_file = None
        if admin:
            admin_file = tmp_path / "admin.token"
            admin_file.write_bytes(ADMIN_TOKEN + b"\n")
        self.settings = Settings(
            data_dir=str(tmp_path / "data"),
            admin_token_file=str(admin_file) if admin_file else None,
            plugin_config={"security": table},
        )
        env = PluginEnvironment(
            settings=self.settings,
            config=validate(table, self.settings),
            clock=self.clock,
            events=EventBus(),
            registry=CollectorRegistry(),
            rooms=None,
            control=self.control,
            shared=shared,
        )
        self.parts = make_plugin(env)
        self.mw = self.parts.middleware
        self.admin = self.parts.resources[b"admin"]

    def call(
        self, method: str, path: str, body: Any = None, token: bytes | None = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        req = DummyRequest([seg.encode() for seg in path.strip("/").split("/")])
        req.method = method.encode()
        if token is not None:
            req.requestHeaders.addRawHeader(b"authorization", b"Bearer " + token)
        raw = body if isinstance(body, bytes) else (orjson.dumps(body) if body is not None else b"")
        req.content = io.BytesIO(raw)
        out = self.admin.render(req)
        self.last = req
        if out == NOT_DONE_YET:  # a change waiting for its write: answered when it is done
            if not req.finished:
                return 0, None
            out = b"".join(req.written)
        return req.responseCode, orjson.loads(out)


# -- GameProtocol + Router on StringTransports (test_protocol, test_protocol_limits) ----


class ClientVerbs:
    """Connect and RoomJoin for a test client whose subclass says how to send and receive."""

    def send(self, *objs: object) -> None:
        raise NotImplementedError

    def received(self) -> list[object]:
        raise NotImplementedError

    def connect(self, uid: int, **extra: object) -> None:
        self.send({"Connect": {"room_id": 0, "user_id": uid, **extra}})
        assert self.received() == [{"ConnectionAck": {"user_id": uid}}]

    def join(self, uid: int, room: int, nick: str = "") -> list[object]:
        self.send({"RoomJoin": {"user_id": uid, "room_id": room, "nickname": nick or f"n{uid}"}})
        return self.received()


class RouterClient(ClientVerbs):
    """A FakeConnection opened on a router (no transport, no framing), with a client's verbs."""

    def __init__(self, router: IConnectionHandler, clock: IReactorTime, port: int) -> None:
        self.conn = FakeConnection(router, clock, "127.0.0.1", port).open()

    def send(self, *objs: object) -> None:
        for o in objs:
            self.conn.receive(o if isinstance(o, bytes) else orjson.dumps(o))

    def received(self) -> list[object]:
        return self.conn.messages()

    def lose(self) -> None:
        self.conn.lose()

    @property
    def closed(self) -> bool:
        return self.conn.closing


class HarnessBase:
    """A Router's surroundings: a Clock, Settings, an EventBus (every event kept in
    ``seen``), ServerMetrics and a RoomService; subclasses add the Router and clients."""

    def __init__(self, **settings: object) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.settings = Settings(**settings)
        self.events = EventBus()
        self.seen: list[object] = []
        self.events.subscribe(self.seen.append)
        self.metrics = ServerMetrics()
        self.rooms = RoomService(self.clock, self.settings.max_room_users, self.events)
        self._port = 40000

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class Client(ClientVerbs):
    """One fake connection: a protocol on a StringTransport."""

    def __init__(self, harness: Harness, port: int) -> None:
        self.harness = harness
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7000),
        )
        self.proto: GameProtocol = harness.factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def send(self, *objs: object) -> None:
        self.proto.dataReceived(b"".join(frame(o) for o in objs))

    def received(self) -> list[object]:
        out = parse_frames(self.transport.value())
        self.transport.clear()
        return out

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


class Harness(HarnessBase):
    def __init__(self, middleware: tuple = (), **settings: object) -> None:
        super().__init__(**settings)
        self.router = Router(
            self.settings, self.clock, self.rooms, Pipeline(middleware), self.metrics, self.events
        )
        self.factory = GameFactory(self.router, self.clock)

    def client(self) -> Client:
        self._port += 1
        return Client(self, self._port)


# -- the analytics plugin as tap wires it (test_analytics, test_analytics_churn) ------

HOUR = 3600.0
#: 2026-01-01 00:00:00 UTC: the clock starts at midnight, so hour h is DAY + h*HOUR.
DAY = 1_767_225_600.0


class Rig:
    """The plugin as tap wires it: an EventBus, a Clock, a registry, a data dir."""

    def __init__(self, tmp_path: Path, config: dict[str, Any] | None = None, start: bool = True):
        self.clock = Clock()
        self.clock.advance(DAY)
        self.events = EventBus()
        self.registry = CollectorRegistry()
        self.control = FakeServerControl()
        self.data_dir = tmp_path / "data"
        settings = Settings(data_dir=str(self.data_dir), shutdown_grace=1.0)
        env = PluginEnvironment(
            settings=settings,
            config=analytics.validate(config or {}, settings),
            clock=self.clock,
            events=self.events,
            registry=self.registry,
            rooms=None,
            control=self.control,
        )
        self.parts = analytics.make_plugin(env)
        self.mw = self.parts.middleware
        self.hub: Analytics = self.mw.hub
        self.service = self.parts.service
        if start:
            self.service.startService()

    def at(self, hour: float) -> float:
        """Move the clock to ``hour`` hours after midnight; returns the time."""
        target = DAY + hour * HOUR
        assert target >= self.clock.seconds()
        self.clock.advance(target - self.clock.seconds())
        return target

    def emit(self, event: object) -> None:
        self.events.emit(event)

    def message(self, user_id: int | None, message: object, result: object = None) -> None:
        self.mw.after_process(Ctx(self.clock, user_id=user_id), message, result)

    def user(self, user_id: int) -> dict[str, Any] | None:
        return deferred_result(self.hub.user(user_id))

    def room(self, room_id: int) -> dict[str, Any] | None:
        return deferred_result(self.hub.room(room_id))

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def stop(self) -> list[Any]:
        fired: list[Any] = []
        self.service.stopService().addBoth(fired.append)
        return fired


def deferred_result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred should have fired (InlineStore is synchronous)"
    if isinstance(out[0], BaseException) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


# -- ISharedState: an in-memory "Redis" several nodes share (the security plugin's cluster tests) --


class SharedHub:
    """What Redis holds for FakeSharedState nodes: tables, stashes, and who hears notices.

    ``down``: every node's Redis is unreachable (calls fail with SharedStateUnavailable).
    A node in ``deaf`` (its subscriber is down) misses notices, as a real one would.
    Notices are delivered at once, in order, to every other node's watchers.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.tables: dict[str, dict[str, tuple[float, float | None, str]]] = {}
        self.stashes: dict[str, tuple[str, float]] = {}
        self.nodes: list[FakeSharedState] = []
        self.down = False
        self.deaf: set[str] = set()
        self.commands = 0

    def node(self, node_id: str) -> FakeSharedState:
        n = FakeSharedState(self, node_id)
        self.nodes.append(n)
        return n

    def restart(self, lose_data: bool = True) -> None:
        """Redis comes back (empty, without persistence): every node's ready callbacks run."""
        if lose_data:
            self.tables.clear()
            self.stashes.clear()
        self.down = False
        for n in self.nodes:
            for callback in list(n.ready):
                callback()


@implementer(ISharedState)
class FakeSharedState:
    def __init__(self, hub: SharedHub, node_id: str) -> None:
        self.hub = hub
        self.node_id = node_id
        self.watchers: dict[str, list[Any]] = {}
        self.ready: list[Any] = []

    def available(self) -> bool:
        return not self.hub.down

    def _call(self) -> None:
        if self.hub.down:
            raise SharedStateUnavailable("cluster unavailable: Redis is down")
        self.hub.commands += 1

    def put(
        self, table: str, key: str, value: str, version: float, expires_at: float | None
    ) -> defer.Deferred[bool]:
        try:
            self._call()
        except SharedStateUnavailable as e:
            return defer.fail(e)
        rows = self.hub.tables.setdefault(table, {})
        old = rows.get(key)
        if old is not None and old[0] > version:
            return defer.succeed(False)
        rows[key] = (version, expires_at, value)
        for n in self.hub.nodes:
            if n is not self and n.node_id not in self.hub.deaf:
                for handler in n.watchers.get(table, ()):
                    handler(key, version, expires_at, value)
        return defer.succeed(True)

    def records(self, table: str) -> defer.Deferred[dict[str, tuple[float, float | None, str]]]:
        try:
            self._call()
        except SharedStateUnavailable as e:
            return defer.fail(e)
        now = self.hub.clock.seconds()
        rows = self.hub.tables.get(table, {})
        for key in [k for k, r in rows.items() if r[1] is not None and r[1] <= now]:
            del rows[key]
        return defer.succeed(dict(rows))

    def watch(self, table: str, handler: Any) -> None:
        self.watchers.setdefault(table, []).append(handler)

    def on_ready(self, callback: Any) -> None:
        self.ready.append(callback)

    def stash(self, table: str, key: str, value: str, ttl: float) -> defer.Deferred[None]:
        try:
            self._call()
        except SharedStateUnavailable as e:
            return defer.fail(e)
        self.hub.stashes[f"{table}:{key}"] = (value, self.hub.clock.seconds() + ttl)
        return defer.succeed(None)

    def take(self, table: str, key: str) -> defer.Deferred[str | None]:
        try:
            self._call()
        except SharedStateUnavailable as e:
            return defer.fail(e)
        got = self.hub.stashes.pop(f"{table}:{key}", None)
        if got is None or got[1] <= self.hub.clock.seconds():
            return defer.succeed(None)
        return defer.succeed(got[0])
