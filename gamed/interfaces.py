"""The seams between gamed's parts. Plugins and services meet only here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IRoomClient(Interface):
    """What the room service may do with a member: know who it is and hand it bytes."""

    user_id = Attribute("int: the member's user id")
    nickname = Attribute("str: the nickname given at join")

    def send_frame(frame: bytes) -> None:
        """Queue one already length-prefixed frame for this member; never blocks."""


class IConnection(IRoomClient):
    """A client connection as the router sees it, whatever carries its frames.

    The router, the room service and the game service hold connections only
    through this interface, so a second transport (WebSocket) is routed by the
    same Router: it implements these methods and reports to an
    IConnectionHandler. Every method is safe to call on a connection that is
    already closing: output is then dropped and a second close is a no-op.
    """

    user_id = Attribute("int | None: None until Connect succeeds; the router sets it")
    nickname = Attribute("str: the nickname given at Connect or RoomJoin; the router sets it")
    ctx = Attribute("IMessageContext: what middleware may know of this connection")
    transport_name = Attribute(
        "str: what carries the frames, 'tcp' or 'ws' (metrics labels, /stats/rooms/{id})"
    )
    bytes_in = Attribute("int: bytes received from the peer so far")
    bytes_out = Attribute(
        "int: bytes of messages sent with send(); frames from send_frame are counted by "
        "whoever fans them out (the room service)"
    )

    def send(message: object) -> None:
        """Encode ``message`` as one frame and queue it; counts it in ``bytes_out``."""

    def send_error(code: int, text: str) -> None:
        """Send Error{code, text} and count it (the connection's handler ``error_sent``),
        so errors from every layer and every transport land in one metric."""

    def disconnect(code: int, text: str, reason: str) -> None:
        """Send Error{code, text}, then ``close(reason)``: the client learns why it was dropped."""

    def close(reason: str) -> None:
        """Stop reading, flush what is queued, then close; abort if the peer does not read
        in time. ``reason`` (a short word: closed, idle, refused, replaced, kicked, shutdown
        ...) is what ``IConnectionHandler.connection_lost`` is told."""

    def abort() -> None:
        """Drop the connection now, discarding queued output (a peer that does not read,
        the end of a shutdown grace). ``connection_lost`` still follows."""


class IConnectionHandler(Interface):
    """Where a transport's connections report (the Router), one call per event.

    A transport builds one IConnection per client and calls these; it never
    decodes messages or applies the protocol's rules itself.
    """

    settings = Attribute(
        "gamed.config.Settings: the limits a connection enforces "
        "(max_frame_bytes, max_outgoing_bytes, idle_timeout)"
    )

    def connection_made(conn: IConnection) -> None:
        """A client connected; the handler may refuse it (``conn.disconnect``) at once."""

    def connection_lost(conn: IConnection, reason: str) -> None:
        """The connection is gone; ``reason`` is the one given to ``close`` (or ``closed``)."""

    def frame_received(conn: IConnection, data: bytes) -> None:
        """One complete frame payload (without its length prefix) from ``conn``."""

    def frame_refused(conn: IConnection, reason: str, size: int) -> None:
        """A frame was refused before decoding: ``reason`` is ``oversize`` or ``invalid``."""

    def error_sent(code: int) -> None:
        """Count one Error{code} sent to a client (``IConnection.send_error`` calls this)."""


class IRoomService(Interface):
    """Room membership and fan-out. Never sees a transport, only IRoomClient."""

    def join(client: IRoomClient, room_id: int) -> object:
        """Add ``client`` to ``room_id`` (created on first join); raises RoomFull."""

    def leave(client: IRoomClient, room_id: int) -> object:
        """Remove ``client``; the room is deleted when it empties."""

    def members(room_id: int) -> list:
        """The room's members in join order (empty for an unknown room)."""

    def size(room_id: int) -> int:
        """Number of members (0 for an unknown room)."""

    def broadcast(room_id: int, frame: bytes, exclude: IRoomClient | None = None) -> int:
        """Write ``frame`` to every member (but ``exclude``); returns how many received it."""

    def room_of(user_id: int) -> object:
        """The room the user is in, or None."""

    def get(room_id: int) -> object:
        """The room (``gamed.rooms.Room``: ``members``, counts, activity times), or None.
        A read: monitoring (``/stats/rooms``) must not change anything through it."""

    def rooms() -> list:
        """Every room now (a new list: the caller may sort it); for monitoring."""


class IMessageContext(Interface):
    """What a middleware knows of the connection a message came from."""

    connection_id = Attribute("int: unique per connection for the process lifetime")
    user_id = Attribute("int | None: set once Connect succeeded")
    peer_host = Attribute("str: the real peer IP address")
    peer_port = Attribute("int: the peer's port")
    connected_at = Attribute("float: clock.seconds() when the TCP connection opened")
    frame_size = Attribute("int: size in bytes of the frame being processed")
    received_at = Attribute(
        "float: clock.seconds() when the frame being processed arrived: the one clock"
        " read per frame, for every plugin (a read of the clock per plugin per message"
        " cost ~500 instructions each)"
    )
    clock = Attribute("IReactorTime: the clock every time decision must use")

    def notify(text: str) -> None:
        """Send the client a SystemMessage (e.g. a warning)."""

    def disconnect(code: int, text: str) -> None:
        """Send Error{code, text} and close the connection."""


class IMiddleware(Interface):
    """A plugin that sees every decoded message before and after it is handled.

    ``before_process(ctx, message)`` returns None to let the message through,
    a ``gamed.pipeline.Veto`` to refuse it (the client gets Error{code, text}),
    or another message object to handle instead. ``after_process(ctx, message,
    result)`` sees the outcome: ``result`` is None on success or the
    ``Refusal`` that was sent. Both run on the reactor thread: keep them O(1)
    and defer anything slow.
    """

    name = Attribute("str: short unique name, used in config, logs and metric labels")

    def before_process(ctx: IMessageContext, message: object) -> object:
        """None, a Veto, or a replacement message."""

    def after_process(ctx: IMessageContext, message: object, result: object) -> None:
        """Observe the outcome."""


class IConnectionObserver(Interface):
    """Optional for a middleware: hear about connections opening and closing.

    ``connection_opened`` runs before the first byte is parsed and may return a
    Veto to refuse the connection (e.g. a blocked IP).
    """

    def connection_opened(ctx: IMessageContext) -> object:
        """None, or a Veto that refuses the connection."""

    def connection_closed(ctx: IMessageContext, reason: str) -> None:
        """The connection is gone (``reason`` is a short word: closed, idle, replaced ...)."""


class IFrameObserver(Interface):
    """Optional for a middleware: hear about frames refused before decoding completed."""

    def frame_refused(ctx: IMessageContext, reason: str, size: int) -> None:
        """``reason`` is ``oversize`` (length prefix over the limit) or ``invalid`` (400)."""


class IPipelineObserver(Interface):
    """Optional: told how long each middleware took (the metrics plugin's seam)."""

    def middleware_timed(name: str, phase: str, seconds: float) -> None:
        """One ``before``/``after`` call of plugin ``name`` took ``seconds``."""

    def middleware_vetoed(name: str) -> None:
        """Plugin ``name`` vetoed a message."""


class IEventSink(Interface):
    """Where domain events (gamed.events) go; emitting must be O(1) and never block."""

    def emit(event: object) -> None:
        """Deliver ``event`` to every subscriber."""


class IServerControl(Interface):
    """What plugins may ask of the server (admin actions, auth), without seeing it."""

    def connected_user_ids() -> list:
        """User ids with a live, connected session."""

    def kick_user(user_id: int, code: int, text: str) -> bool:
        """Send Error{code, text} to the user's connection and close it; False if not connected."""

    def kick_host(host: str, code: int, text: str) -> int:
        """Close every connection from ``host``; returns how many."""

    def remove_from_room(user_id: int) -> bool:
        """Take the user (a live member or a held seat) out of its room, with notices."""

    def set_authenticator(authenticate: Callable[[int, str | None], None] | None) -> None:
        """``authenticate(user_id, token)`` runs on every Connect; raise Refusal(401) to refuse."""

    def set_pipeline_timer(observer: object) -> None:
        """Install an IPipelineObserver that is told the cost of every plugin call."""

    def reload_config() -> object:
        """Re-read the config file and hand each plugin its new section (SIGHUP does this)."""

    def connection_count() -> int:
        """Open client connections (sessions or not), e.g. for a metrics snapshot."""

    def game_status(room_id: int) -> str | None:
        """The status of the room's game (Waiting, InProgress), or None: no game, or games
        are off. A read for monitoring: no side effects."""

    def kick_user_anywhere(user_id: int, code: int, text: str) -> Any:
        """Deferred[bool]: ``kick_user`` here, else on whichever node of the cluster holds
        the user's session; False if none does. Fails (``Refusal`` 503) when the cluster
        cannot be asked. In one process: ``kick_user``'s answer, already fired."""


class IGameService(Interface):
    """Game rules for rooms; the router calls these, the game service never sees a transport.

    ``client`` arguments are IRoomClient providers. Methods raise
    ``gamed.errors.Refusal`` to refuse a message.
    """

    def handle(client: IRoomClient, message: object) -> None:
        """StartGame, ToggleReady or PlayerAction from ``client``."""

    def member_left(client: IRoomClient, room_id: int) -> None:
        """``client`` left ``room_id`` for good (RoomLeave, joined elsewhere, grace expired)."""

    def member_joined(client: IRoomClient, room_id: int) -> None:
        """``client`` joined ``room_id`` (send it the running game's state as a spectator)."""

    def connection_lost(client: IRoomClient, room_id: int) -> bool:
        """The client's connection dropped while in ``room_id``. Return True to hold
        its seat (the router then keeps it in the room and waits for ``reclaim``);
        False to let it leave as usual. A held seat nobody reclaims in time is
        reported as a ``gamed.events.SeatExpired`` event, and the router removes
        the member (it owns the room notices and the session table)."""

    def game_state(room_id: int) -> str | None:
        """The status of the room's game (Waiting, InProgress), or None; no side effects."""

    def game_of_user(user_id: int) -> int | None:
        """The room id of the game ``user_id`` plays in, or None."""

    def game_detail(room_id: int) -> dict | None:
        """The room's game for an operator (``/stats/rooms/{id}``), or None: status, round,
        round_limit, current_turn (a user id or None), turn_time_left (seconds or None),
        turn_timeout, created_at, live_at, and players (user_id, nickname, score, ready,
        away). A read for monitoring: no cache access, no side effects."""

    def is_away(user_id: int) -> bool:
        """True while ``user_id``'s connection is gone and its seat is held; no side effects."""

    def reclaim(user_id: int) -> int | None:
        """A new connection for ``user_id`` arrived: the room id of a held seat, or None."""

    def reclaimed(client: IRoomClient, room_id: int) -> None:
        """The new connection ``client`` is back in ``room_id``: send it the game state."""


class ICluster(Interface):
    """Where the router meets the cluster (docs/cluster.md): sessions and seats that must hold
    across nodes. ``gamed.solo.NullCluster`` in one process: false in a boolean test, every
    call a no-op or an already-fired Deferred, so the router has one code path.

    Methods that need Redis and cannot get it raise (or fail with) ``Refusal(503,
    "cluster unavailable: ...")``; a full room is ``Refusal(409, ...)``.
    """

    state = Attribute("str: the link's state, 'up', 'degraded' or 'down' ('' in one process)")

    def require() -> None:
        """Raise Refusal(503) now if a Connect cannot be registered (the link is down)."""

    def session_opened(conn: IConnection) -> Deferred[None]:
        """``conn`` holds ``conn.user_id``'s session now: claim it cluster-wide (a session
        on another node is closed with 409, whichever transport). Fires once claimed (the
        router acks the Connect then); fails with Refusal(503) when it cannot be."""

    def session_closed(conn: IConnection) -> None:
        """``conn``'s session ended here: release it unless another node holds it now."""

    def join(conn: IConnection, room_id: int, nickname: str) -> Deferred[Any]:
        """Take a seat in ``room_id`` for ``conn``: a Deferred firing with a seat (given to
        ``seated``), or None when there is no cluster (the room service decides alone);
        fails with Refusal. The capacity check and the seat are one atomic step."""

    def seated(room: object, seat: object) -> None:
        """``conn`` is in ``room`` locally now (``rooms.join`` ran): note the other nodes
        of the room and tell them the new count, before the join notice goes out."""

    def unseat(user_id: int, room_id: int) -> None:
        """Give back a seat taken by ``join`` that was never used (the connection left
        while its join was in flight)."""

    def left(room: object, member: IRoomClient) -> None:
        """``member`` left ``room`` here (``rooms.leave`` ran): release its seat and tell
        the other nodes, before the leave notice goes out."""

    def health() -> dict:
        """For /healthz and /stats: the link state and what the node knows of the cluster."""

    def kick_remote(user_id: int, code: int, text: str) -> Any:
        """Deferred[bool]: close the user's session on the other node that holds it (an
        operator's kick); False when no other node does. Fails with Refusal(503) while the
        cluster cannot be asked."""


class ISharedState(Interface):
    """Cluster-wide tables of small records, and notices of their changes (docs/cluster.md).

    What a plugin may share with the other nodes of a ``--redis`` cluster without
    importing the cluster: ``PluginEnvironment.shared`` (None without ``--redis``).
    A table is a Redis hash ``gamed:shared:{table}``; a record is ``(version,
    expires_at, value)``: a put keeps the record with the newest version (last
    writer wins, by the writer's clock), expired records are dropped on read.
    Each stored put is announced on ``gamed:shared`` to every other node's ``watch``.
    Every call that needs Redis fails with ``gamed.errors.SharedStateUnavailable``
    while it is unreachable: a caller can refuse a change rather than make it on
    one node only. Nothing here is meant for the per-message path.
    """

    node_id = Attribute("str: this node's id (records and notices name their writer)")

    def available() -> bool:
        """True while Redis takes commands: a put can be made cluster-wide now."""

    def put(table: str, key: str, value: str, version: float, expires_at: float | None) -> Any:
        """Deferred[bool]: store the record unless a newer version is stored (False),
        then notify the other nodes. ``expires_at`` (Unix seconds) or None: kept until replaced."""

    def records(table: str) -> Any:
        """Deferred[dict[str, tuple[float, float | None, str]]]: every unexpired record
        (read in pages, never one big HGETALL); expired ones are deleted on the way."""

    def watch(table: str, handler: Callable[[str, float, float | None, str], None]) -> None:
        """``handler(key, version, expires_at, value)`` for each record another node stored."""

    def on_ready(callback: Callable[[], None]) -> None:
        """``callback()`` each time Redis becomes reachable (start, reconnect) and each time
        the notice subscription is back: notices may have been missed, so re-read what
        matters (``records``)."""

    def stash(table: str, key: str, value: str, ttl: float) -> Any:
        """Deferred[None]: keep ``value`` for ``ttl`` seconds under (table, key), e.g. a
        user's rate window for the node their next session lands on."""

    def take(table: str, key: str) -> Any:
        """Deferred[str | None]: the stashed value, removed (GETDEL); None if none."""
