"""The seams between gamed's parts. Plugins and services meet only here."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IRoomClient(Interface):
    """What the room service may do with a member: know who it is and hand it bytes."""

    user_id = Attribute("int: the member's user id")
    nickname = Attribute("str: the nickname given at join")

    def send_frame(frame: bytes) -> None:
        """Queue one already length-prefixed frame for this member; never blocks."""


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

    def broadcast(room_id: int, frame: bytes) -> int:
        """Write ``frame`` to every member; returns how many received it."""

    def room_of(user_id: int) -> object:
        """The room the user is in, or None."""


class IMessageContext(Interface):
    """What a middleware knows of the connection a message came from."""

    connection_id = Attribute("int: unique per connection for the process lifetime")
    user_id = Attribute("int | None: set once Connect succeeded")
    peer_host = Attribute("str: the real peer IP address")
    peer_port = Attribute("int: the peer's port")
    connected_at = Attribute("float: clock.seconds() when the TCP connection opened")
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


class IEventSink(Interface):
    """Where domain events (gamed.events) go; emitting must be O(1) and never block."""

    def emit(event: object) -> None:
        """Deliver ``event`` to every subscriber."""
