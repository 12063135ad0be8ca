"""Analytics under room churn (issue 12 item 12): one user joining and leaving many rooms
within one flush interval loses no event; when storage is really behind, drops are counted."""

from __future__ import annotations

from pathlib import Path

from gamed import events as ev
from gamed import messages as m
from gamed.middleware.analytics.aggregates import Aggregates, Caps
from tests.unit.fakes import Rig


def test_one_user_churning_through_rooms_drops_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    t = rig.clock.seconds()
    rooms = range(1, 2001)
    for room in rooms:  # all within one flush interval (5 s)
        rig.emit(ev.RoomCreated(room, 7, t))
        rig.emit(ev.RoomJoined(room, 7, 1, t))
        rig.message(7, m.RoomJoin(7, room, "seven"))
        rig.message(7, m.RoomLeave(7, room))
        rig.emit(ev.RoomLeft(room, 7, 0, t + 0.001))
        rig.emit(ev.RoomDeleted(room, t + 0.001))
    rig.clock.advance(0.25)  # aggregated
    assert rig.hub.dropped_by_reason() == {"queue": 0, "storage": 0, "subscriber": 0}
    assert rig.stop() == [None]
    again = Rig(tmp_path)
    rows = again.hub.store.run_sync(
        lambda c: c.execute("SELECT COUNT(*), SUM(sessions) FROM rooms").fetchone()
    )
    assert rows == (2000, 2000)
    assert again.user(7)["favourite_rooms"][0]["visits"] == 1  # type: ignore[index]
    again.stop()


def test_a_full_visit_table_flushes_instead_of_dropping() -> None:
    agg = Aggregates(Caps(visits=10))
    flushed: list[int] = []

    def flush() -> bool:
        users, _ = agg.swap()
        flushed.append(sum(len(u.rooms) for u in users.values()))
        return True

    agg.needs_room = flush
    for room in range(1, 26):
        agg.apply(ev.RoomJoined(room, 7, 1, 100.0))
    assert agg.dropped == 0
    assert flushed == [10, 10] and agg.visits == 5


def test_visits_are_dropped_and_counted_only_when_storage_is_behind() -> None:
    agg = Aggregates(Caps(visits=10))
    agg.needs_room = lambda: False  # two flushes in flight already
    for room in range(1, 26):
        agg.apply(ev.RoomJoined(room, 7, 1, 100.0))
    assert agg.dropped == 15 and agg.visits == 10
    agg.apply(ev.RoomJoined(3, 7, 2, 101.0))  # a room already held still counts
    assert agg.users[7].rooms[3] == 2 and agg.dropped == 15


def test_a_delta_counts_hours_and_visits_the_same_compact_or_spilled() -> None:
    # One hour and one room are held without a list or dict; a second one spills them.
    agg = Aggregates()
    hour = 3600.0
    agg.apply(ev.RoomJoined(5, 7, 1, 20 * hour))
    agg.apply(ev.RoomJoined(5, 7, 1, 20 * hour + 1))
    u = agg.users[7]
    assert u.rooms == {5: 2} and u.hours[20] == 2 and sum(u.hours) == 2
    agg.apply(ev.RoomJoined(6, 7, 1, 21 * hour))
    agg.apply(ev.RoomJoined(5, 7, 1, 21 * hour + 1))
    assert u.rooms == {5: 3, 6: 1} and agg.visits == 2
    assert (u.hours[20], u.hours[21], sum(u.hours)) == (2, 2, 4)
    # A failed flush merged back adds up either form.
    users, rooms = agg.swap()
    agg.apply(ev.RoomJoined(6, 7, 1, 22 * hour))
    agg.merge_back(users, rooms)
    merged = agg.users[7].as_dict()
    assert merged["rooms"] == {5: 3, 6: 2} and agg.visits == 2
    assert (merged["hours"][20], merged["hours"][21], merged["hours"][22]) == (2, 2, 1)
    assert agg.rooms[5].hours[20] == 2 and agg.rooms[5].hours[21] == 1
