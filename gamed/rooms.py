"""Rooms: membership, counts, activity and fan-out. No transports here.

Members are ``IRoomClient`` providers; the service hands them finished frames.
A room exists while it has members: created by the first join, deleted when
the last member leaves. A user is in at most one room at a time.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gamed import events as ev
from gamed.interfaces import IEventSink, IRoomClient, IRoomService


class RoomFull(Exception):
    """The room already holds ``max_room_users`` members."""


class Room:
    """One room's state. ``members`` keeps join order (dicts are ordered)."""

    __slots__ = (
        "created_at",
        "last_activity",
        "members",
        "message_count",
        "peak_users",
        "remote",
        "room_id",
        "total",
    )

    def __init__(self, room_id: int, now: float) -> None:
        self.room_id = room_id
        self.members: dict[int, IRoomClient] = {}
        self.created_at = now
        self.last_activity = now
        self.message_count = 0
        self.peak_users = 0
        #: Cluster only: other nodes with members here (node id -> their count). Empty in
        #: one process, and whenever every member is local: then nothing is relayed.
        self.remote: dict[str, int] = {}
        #: Cluster only: the cluster-wide member count, meaningful while ``remote`` is set.
        self.total = 0

    def __len__(self) -> int:
        """Members on this node (the cluster count is ``user_count``)."""
        return len(self.members)

    @property
    def user_count(self) -> int:
        """Members in the whole cluster: what RoomJoinSuccess and the notices show."""
        return self.total if self.remote else len(self.members)


@implementer(IRoomService)
class RoomService:
    def __init__(self, clock: IReactorTime, max_room_users: int, events: IEventSink) -> None:
        self._clock = clock
        self.max_room_users = max_room_users
        self._events = events
        self._rooms: dict[int, Room] = {}
        self._room_of: dict[int, Room] = {}
        #: ``room_of(user_id)``: the user's room or None. The dict's own ``get``, bound
        #: once: the router asks it per chat, and a C call costs less than a Python one.
        self.room_of: Callable[[int], Room | None] = self._room_of.get
        self.total_broadcast_frames = 0
        self.bytes_out = 0  # counted per broadcast: members' writers do not count
        #: Cluster only (set by gamed.cluster): ``relay(room, frame)`` hands a frame to the
        #: other nodes with members in ``room``; called only while ``room.remote`` is set.
        self.relay: Callable[[Room, bytes], None] | None = None

    # -- queries --------------------------------------------------------------

    def get(self, room_id: int) -> Room | None:
        return self._rooms.get(room_id)

    def members(self, room_id: int) -> list[IRoomClient]:
        room = self._rooms.get(room_id)
        return list(room.members.values()) if room else []

    def size(self, room_id: int) -> int:
        room = self._rooms.get(room_id)
        return len(room.members) if room else 0

    def __len__(self) -> int:
        return len(self._rooms)

    def rooms(self) -> list[Room]:
        return list(self._rooms.values())

    # -- changes --------------------------------------------------------------

    def join(self, client: IRoomClient, room_id: int) -> Room:
        """Add a member. The caller leaves the user's previous room first."""
        now = self._clock.seconds()
        room = self._rooms.get(room_id)
        created = room is None
        if room is None:
            room = Room(room_id, now)
        elif client.user_id in room.members:
            room.members[client.user_id] = client  # same user, maybe a new connection
            self._room_of[client.user_id] = room
            return room
        elif len(room.members) >= self.max_room_users:
            raise RoomFull(room_id)
        if created:
            self._rooms[room_id] = room
            self._events.emit(ev.RoomCreated(room_id, client.user_id, now))
        room.members[client.user_id] = client
        room.last_activity = now
        if len(room.members) > room.peak_users:
            room.peak_users = len(room.members)
        self._room_of[client.user_id] = room
        self._events.emit(ev.RoomJoined(room_id, client.user_id, len(room.members), now))
        return room

    def leave(self, client: IRoomClient, room_id: int) -> Room | None:
        """Remove a member; returns the room (possibly now deleted) or None if not a member."""
        room = self._rooms.get(room_id)
        if room is None or room.members.get(client.user_id) is not client:
            return None
        now = self._clock.seconds()
        del room.members[client.user_id]
        if self._room_of.get(client.user_id) is room:
            del self._room_of[client.user_id]
        room.last_activity = now
        self._events.emit(ev.RoomLeft(room_id, client.user_id, len(room.members), now))
        if not room.members:
            del self._rooms[room_id]
            self._events.emit(ev.RoomDeleted(room_id, now))
        return room

    def broadcast(self, room_id: int, frame: bytes, exclude: IRoomClient | None = None) -> int:
        room = self._rooms.get(room_id)
        if room is None:
            return 0
        return self.broadcast_room(room, frame, exclude)

    def broadcast_room(self, room: Room, frame: bytes, exclude: IRoomClient | None = None) -> int:
        """``broadcast`` to a room the caller holds, even one just emptied here: its
        members on other nodes still get the frame (a leave notice)."""
        if room.remote and self.relay is not None:
            self.relay(room, frame)
        if exclude is None:
            for member in room.members.values():
                member.send_frame(frame)
            n = len(room.members)
        else:
            n = 0
            for member in room.members.values():
                if member is not exclude:
                    member.send_frame(frame)
                    n += 1
        self.total_broadcast_frames += n
        self.bytes_out += n * len(frame)
        return n

    def broadcast_chat(self, room: Room, frame: bytes, now: float) -> int:
        """A chat to every member of ``room`` (the caller has the room), counted as a chat.

        ``record_message`` and ``broadcast`` in one call, without a second lookup.
        ``now`` is the chat's arrival (the transport's ``ctx.received_at``): no clock
        read of our own on the hot path.
        """
        room.message_count += 1
        room.last_activity = now
        if room.remote and self.relay is not None:
            self.relay(room, frame)
        for member in room.members.values():
            member.send_frame(frame)
        n = len(room.members)
        self.total_broadcast_frames += n
        self.bytes_out += n * len(frame)
        return n

    def deliver(self, room: Room, frame: bytes) -> int:
        """A frame relayed from another node, to this node's members of ``room`` only:
        never relayed again (the sender reached every node itself)."""
        for member in room.members.values():
            member.send_frame(frame)
        n = len(room.members)
        self.total_broadcast_frames += n
        self.bytes_out += n * len(frame)
        return n

    def record_message(self, room: Room) -> None:
        """Count a chat in ``room`` and mark it active."""
        room.message_count += 1
        room.last_activity = self._clock.seconds()
