"""gamed.rooms.RoomService: membership, events, fan-out; time from a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gamed import events as ev
from gamed.events import EventBus
from gamed.interfaces import IRoomClient, IRoomService
from gamed.rooms import Room, RoomFull, RoomService
from tests.unit.fakes import Member


class Harness:
    def __init__(self, max_room_users: int = 3) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.bus = EventBus()
        self.events: list[object] = []
        self.bus.subscribe(self.events.append)
        self.rooms = RoomService(self.clock, max_room_users, self.bus)

    def take_events(self) -> list[object]:
        out = list(self.events)
        self.events.clear()
        return out


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_provides_the_interfaces(h: Harness) -> None:
    assert verifyObject(IRoomService, h.rooms)
    assert verifyObject(IRoomClient, Member(1))


def test_first_join_creates_the_room(h: Harness) -> None:
    alice = Member(1)
    assert h.rooms.get(5) is None
    room = h.rooms.join(alice, 5)
    assert isinstance(room, Room)
    assert h.rooms.get(5) is room
    assert room.room_id == 5
    assert room.created_at == 1000.0
    assert room.last_activity == 1000.0
    assert room.message_count == 0
    assert len(h.rooms) == 1
    assert h.rooms.size(5) == 1
    assert h.rooms.members(5) == [alice]
    assert h.take_events() == [
        ev.RoomCreated(room_id=5, creator=1, at=1000.0),
        ev.RoomJoined(room_id=5, user_id=1, user_count=1, at=1000.0),
    ]


def test_second_join_does_not_create_again(h: Harness) -> None:
    room = h.rooms.join(Member(1), 5)
    h.take_events()
    h.clock.advance(2.5)
    assert h.rooms.join(Member(2), 5) is room
    assert h.take_events() == [ev.RoomJoined(5, 2, 2, 1002.5)]
    assert room.created_at == 1000.0
    assert room.last_activity == 1002.5


def test_last_leave_deletes_the_room(h: Harness) -> None:
    alice, bob = Member(1), Member(2)
    room = h.rooms.join(alice, 5)
    h.rooms.join(bob, 5)
    h.take_events()

    h.clock.advance(10)
    assert h.rooms.leave(alice, 5) is room
    assert h.take_events() == [ev.RoomLeft(5, 1, 1, 1010.0)]
    assert h.rooms.get(5) is room
    assert room.last_activity == 1010.0

    h.clock.advance(5)
    assert h.rooms.leave(bob, 5) is room
    assert h.take_events() == [ev.RoomLeft(5, 2, 0, 1015.0), ev.RoomDeleted(5, 1015.0)]
    assert h.rooms.get(5) is None
    assert len(h.rooms) == 0
    assert h.rooms.size(5) == 0
    assert h.rooms.members(5) == []
    assert h.rooms.rooms() == []


def test_a_deleted_room_is_created_afresh(h: Harness) -> None:
    alice = Member(1)
    old = h.rooms.join(alice, 5)
    old.message_count = 3
    h.rooms.leave(alice, 5)
    h.clock.advance(60)
    new = h.rooms.join(alice, 5)
    assert new is not old
    assert new.created_at == 1060.0
    assert new.message_count == 0


def test_members_keep_join_order(h: Harness) -> None:
    h.rooms.max_room_users = 10
    members = [Member(uid) for uid in (9, 3, 7, 1, 5)]
    for member in members:
        h.rooms.join(member, 2)
    assert h.rooms.members(2) == members
    h.rooms.leave(members[1], 2)
    h.rooms.join(members[1], 2)  # rejoining goes to the back
    assert [c.user_id for c in h.rooms.members(2)] == [9, 7, 1, 5, 3]


def test_full_room_raises_room_full(h: Harness) -> None:
    for uid in (1, 2, 3):
        h.rooms.join(Member(uid), 5)
    h.take_events()
    late = Member(4)
    with pytest.raises(RoomFull) as info:
        h.rooms.join(late, 5)
    assert info.value.args == (5,)
    assert h.rooms.size(5) == 3
    assert late not in h.rooms.members(5)
    assert h.rooms.room_of(4) is None
    assert h.take_events() == []
    # other rooms are not affected
    h.rooms.join(late, 6)
    assert h.rooms.room_of(4) is h.rooms.get(6)


def test_room_full_at_exactly_max_room_users() -> None:
    h = Harness(max_room_users=1)
    h.rooms.join(Member(1), 5)
    with pytest.raises(RoomFull):
        h.rooms.join(Member(2), 5)


def test_rejoin_of_a_member_of_a_full_room_is_not_refused(h: Harness) -> None:
    members = [Member(uid) for uid in (1, 2, 3)]
    for member in members:
        room = h.rooms.join(member, 5)
    h.take_events()
    assert h.rooms.join(members[0], 5) is room
    assert h.rooms.size(5) == 3
    assert h.take_events() == []  # nothing changed, nothing announced


def test_join_with_a_new_connection_for_the_same_user_replaces_it(h: Harness) -> None:
    old, new = Member(1), Member(1)
    room = h.rooms.join(old, 5)
    h.rooms.join(Member(2), 5)
    assert h.rooms.join(new, 5) is room
    assert h.rooms.members(5)[0] is new
    assert h.rooms.size(5) == 2
    # the old connection is no longer a member: its leave is ignored
    assert h.rooms.leave(old, 5) is None
    assert h.rooms.size(5) == 2


def test_room_of(h: Harness) -> None:
    alice, bob = Member(1), Member(2)
    assert h.rooms.room_of(1) is None
    r5 = h.rooms.join(alice, 5)
    r6 = h.rooms.join(bob, 6)
    assert h.rooms.room_of(1) is r5
    assert h.rooms.room_of(2) is r6
    h.rooms.leave(alice, 5)
    assert h.rooms.room_of(1) is None
    assert h.rooms.room_of(2) is r6


def test_leave_of_a_non_member_returns_none(h: Harness) -> None:
    alice, bob = Member(1), Member(2)
    assert h.rooms.leave(alice, 5) is None  # no such room
    h.rooms.join(alice, 5)
    h.take_events()
    assert h.rooms.leave(bob, 5) is None  # not a member
    assert h.rooms.leave(alice, 6) is None  # wrong room
    assert h.take_events() == []
    assert h.rooms.size(5) == 1
    assert h.rooms.room_of(1) is h.rooms.get(5)


def test_broadcast_writes_the_same_bytes_object_to_everyone(h: Harness) -> None:
    members = [Member(uid) for uid in (1, 2, 3)]
    for member in members:
        h.rooms.join(member, 5)
    outsider = Member(4)
    h.rooms.join(outsider, 6)
    frame = b"\x00\x00\x00\x0b" + b'"HeartBeat"'
    assert h.rooms.broadcast(5, frame) == 3
    for member in members:
        assert len(member.frames) == 1
        assert member.frames[0] is frame
    assert outsider.frames == []
    assert h.rooms.total_broadcast_frames == 3


def test_broadcast_to_an_unknown_room(h: Harness) -> None:
    assert h.rooms.broadcast(99, b"x") == 0
    assert h.rooms.total_broadcast_frames == 0


def test_broadcast_counts_accumulate(h: Harness) -> None:
    h.rooms.join(Member(1), 5)
    h.rooms.join(Member(2), 5)
    h.rooms.join(Member(3), 6)
    h.rooms.broadcast(5, b"a")
    h.rooms.broadcast(6, b"b")
    assert h.rooms.total_broadcast_frames == 3


def test_record_message(h: Harness) -> None:
    room = h.rooms.join(Member(1), 5)
    h.clock.advance(7)
    h.rooms.record_message(room)
    assert room.message_count == 1
    assert room.last_activity == 1007.0
    h.clock.advance(3)
    h.rooms.record_message(room)
    assert room.message_count == 2
    assert room.last_activity == 1010.0
    assert room.created_at == 1000.0


def test_peak_users(h: Harness) -> None:
    h.rooms.max_room_users = 10
    members = [Member(uid) for uid in range(1, 5)]
    room = h.rooms.join(members[0], 5)
    assert room.peak_users == 1
    for member in members[1:]:
        h.rooms.join(member, 5)
    assert room.peak_users == 4
    h.rooms.leave(members[0], 5)
    h.rooms.leave(members[1], 5)
    assert len(room) == 2
    assert room.peak_users == 4
    h.rooms.join(members[0], 5)
    assert room.peak_users == 4


def test_rooms_lists_every_room(h: Harness) -> None:
    r5 = h.rooms.join(Member(1), 5)
    r7 = h.rooms.join(Member(2), 7)
    assert h.rooms.rooms() == [r5, r7]
    assert len(r5) == 1


def test_members_returns_a_copy(h: Harness) -> None:
    h.rooms.join(Member(1), 5)
    members = h.rooms.members(5)
    members.clear()
    assert h.rooms.size(5) == 1


def test_without_subscribers_nothing_breaks() -> None:
    clock = Clock()
    rooms = RoomService(clock, 2, EventBus())
    alice = Member(1)
    rooms.join(alice, 1)
    assert rooms.leave(alice, 1) is not None
    assert len(rooms) == 0


def test_broadcast_chat_counts_the_chat_and_writes_to_every_member(h: Harness) -> None:
    a, b = Member(1), Member(2)
    room = h.rooms.join(a, 5)
    h.rooms.join(b, 5)
    h.clock.advance(7)
    frame = b"\x00\x00\x00\x02{}"
    # The chat's arrival time (ctx.received_at), not a clock read of the service's own.
    assert h.rooms.broadcast_chat(room, frame, 5.5) == 2
    assert a.frames == [frame] and b.frames == [frame]
    assert (room.message_count, room.last_activity) == (1, 5.5)
    assert (h.rooms.total_broadcast_frames, h.rooms.bytes_out) == (2, 12)
