"""Analytics: every event's effect on the aggregates, on an injected clock; flushes, caps, stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from gamed import events as ev
from gamed import messages as m
from gamed.config import PluginConfigError
from gamed.errors import Refusal
from gamed.middleware.analytics.aggregates import EVENT_TYPES, hour_of
from gamed.middleware.analytics.middleware import AnalyticsService, options_from
from gamed.middleware.analytics.store import InlineStore
from tests.unit.fakes import DAY, HOUR, Ctx, Rig, deferred_result


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path)
    yield r
    if r.service.running:
        r.stop()


# -- each event's effect ---------------------------------------------------------------------


def test_user_connected_counts_a_session_in_its_hour(rig: Rig) -> None:
    t = rig.at(3.5)
    rig.emit(ev.UserConnected(7, "10.0.0.1", t))
    u = rig.user(7)
    assert u["total_sessions"] == 1
    assert u["last_active"] == u["first_seen"] == t
    assert u["activity_by_hour"][3] == 1
    assert sum(u["activity_by_hour"]) == 1
    assert "peer_host" not in str(u), "no IP addresses in analytics"


def test_user_disconnected_adds_session_duration_to_playtime(rig: Rig) -> None:
    t0 = rig.at(1)
    rig.emit(ev.UserConnected(7, "h", t0))
    t1 = rig.at(1.5)
    rig.emit(ev.UserDisconnected(7, t1 - t0, "closed", t1))
    t2 = rig.at(23.25)
    rig.emit(ev.UserConnected(7, "h", t2))
    rig.emit(ev.UserDisconnected(7, 60.0, "idle", t2 + 60))
    u = rig.user(7)
    assert u["total_sessions"] == 2
    assert u["total_playtime_seconds"] == pytest.approx(1800 + 60)
    assert u["last_active"] == t2 + 60
    assert u["activity_by_hour"][1] == 2 and u["activity_by_hour"][23] == 2


def test_takeover_ends_the_replaced_session(rig: Rig) -> None:
    """The core emits no UserDisconnected for a connection replaced by a new Connect."""
    t0 = rig.at(2)
    rig.emit(ev.UserConnected(7, "h", t0))
    rig.emit(ev.UserConnected(7, "h", t0 + 100))  # takeover
    rig.emit(ev.UserDisconnected(7, 50.0, "closed", t0 + 150))
    u = rig.user(7)
    assert u["total_sessions"] == 2
    assert u["total_playtime_seconds"] == pytest.approx(150)


def test_message_sent_counts_chats_for_user_and_room(rig: Rig) -> None:
    t = rig.at(13)
    rig.message(7, m.ChatMessage(7, 5, "hi"))
    rig.message(7, m.ChatMessage(7, 5, "again"))
    rig.message(7, m.HeartBeat())
    rig.message(7, m.RoomJoin(7, 5, "n"))
    got: list[dict[str, Any]] = []
    rig.hub.subscribe(got.append, ["MessageSent"])
    rig.hub.process()
    u, r = rig.user(7), rig.room(5)
    assert u["messages_sent"] == 2, "only chats are messages sent; every message is activity"
    assert u["activity_by_hour"][13] == 4
    assert u["last_active"] == t
    assert r["total_messages"] == 2
    assert [e["message_type"] for e in got] == [
        "ChatMessage",
        "ChatMessage",
        "HeartBeat",
        "RoomJoin",
    ]
    assert got[0] == {
        "type": "MessageSent",
        "at": t,
        "user_id": 7,
        "room_id": 5,
        "message_type": "ChatMessage",
    }


def test_error_is_counted_with_its_code_and_text(rig: Rig) -> None:
    t = rig.at(4)
    got: list[dict[str, Any]] = []
    rig.hub.subscribe(got.append, ["Error"])
    rig.message(7, m.ChatMessage(7, 6, "x"), Refusal(404, "not in room 6"))
    rig.message(None, m.HeartBeat(), Refusal(401, "not connected"))  # before Connect: no user
    rig.hub.process()
    assert rig.user(7)["errors"] == 1
    assert rig.user(7)["messages_sent"] == 0, "a refused chat was not sent"
    assert rig.room(6) is None, "a refused chat does not create room analytics"
    assert got[0] == {
        "type": "Error",
        "at": t,
        "user_id": 7,
        "room_id": 6,
        "error_type": "ChatMessage",
        "code": 404,
        "message": "not in room 6",
    }
    assert got[1]["user_id"] is None and got[1]["code"] == 401
    assert rig.hub.realtime()["events_by_type"]["Error"] == 2


def test_room_created_records_creator(rig: Rig) -> None:
    t = rig.at(8)
    rig.emit(ev.RoomCreated(5, 7, t))
    rig.emit(ev.RoomCreated(5, 9, t + 10))  # deleted and created again by someone else
    r = rig.room(5)
    assert r["times_created"] == 2 and r["last_creator"] == 9
    assert rig.user(7)["rooms_created"] == 1


def test_room_joined_peak_favourites_and_popular_hours(rig: Rig) -> None:
    t = rig.at(20)
    rig.emit(ev.RoomJoined(5, 1, 1, t))
    rig.emit(ev.RoomJoined(5, 2, 2, t + 1))
    rig.emit(ev.RoomJoined(5, 3, 3, t + 2))
    rig.emit(ev.RoomLeft(5, 3, 2, t + 3))
    rig.emit(ev.RoomJoined(6, 1, 1, t + 4))
    t2 = rig.at(21)
    rig.emit(ev.RoomJoined(5, 1, 3, t2))
    r = rig.room(5)
    assert r["total_sessions"] == 4
    assert r["peak_users"] == 3
    assert r["joins_by_hour"][20] == 3 and r["joins_by_hour"][21] == 1
    assert r["popular_hours"] == [{"hour": 20, "joins": 3}, {"hour": 21, "joins": 1}]
    assert rig.user(1)["favourite_rooms"] == [
        {"room_id": 5, "visits": 2},
        {"room_id": 6, "visits": 1},
    ]


def test_room_left_gives_average_session_duration(rig: Rig) -> None:
    t = rig.at(9)
    rig.emit(ev.RoomJoined(5, 1, 1, t))
    rig.emit(ev.RoomJoined(5, 2, 2, t + 10))
    rig.emit(ev.RoomLeft(5, 1, 1, t + 30))  # 30 s
    rig.emit(ev.RoomLeft(5, 2, 0, t + 100))  # 90 s
    rig.emit(ev.RoomDeleted(5, t + 100))
    rig.emit(ev.RoomLeft(5, 99, 0, t + 100))  # never seen joining: no duration
    r = rig.room(5)
    assert r["completed_sessions"] == 2
    assert r["average_session_seconds"] == pytest.approx(60)
    assert r["last_active"] == t + 100
    assert rig.hub.realtime()["open_sessions"]["rooms"] == 0
    assert rig.hub.realtime()["events_by_type"]["RoomDeleted"] == 1


def test_game_started_and_ended(rig: Rig) -> None:
    t = rig.at(18)
    rig.emit(ev.GameStarted(5, (1, 2, 3), t))
    rig.emit(ev.GameEnded(5, 120.0, 2, ((1, 5), (2, 9), (3, 0)), t + 120))
    rig.emit(ev.GameStarted(5, (1, 2), t + 200))
    rig.emit(ev.GameEnded(5, 60.0, None, ((1, 0), (2, 0)), t + 260))  # a draw
    r = rig.room(5)
    assert r["games_played"] == 2 and r["games_finished"] == 2
    assert r["average_game_seconds"] == pytest.approx(90)
    assert r["peak_users"] == 3
    assert [rig.user(u)["games_played"] for u in (1, 2, 3)] == [2, 2, 1]
    assert [rig.user(u)["games_won"] for u in (1, 2, 3)] == [0, 1, 0]


def test_every_event_type_is_handled(rig: Rig) -> None:
    t = rig.at(0)
    for e in (
        ev.UserConnected(1, "h", t),
        ev.RoomCreated(5, 1, t),
        ev.RoomJoined(5, 1, 1, t),
        ev.GameStarted(5, (1, 2), t),
        ev.GameEnded(5, 1.0, 1, ((1, 1),), t),
        ev.RoomLeft(5, 1, 0, t),
        ev.RoomDeleted(5, t),
        ev.UserDisconnected(1, 1.0, "closed", t),
    ):
        rig.emit(e)
    rig.message(1, m.ChatMessage(1, 5, "x"))
    rig.message(1, m.ChatMessage(1, 5, "x"), Refusal(404, "no"))
    rig.emit("something else")  # not an analytics event
    assert len(rig.hub.queue) == 10
    rig.hub.process()
    counts = rig.hub.realtime()["events_by_type"]
    assert counts == dict.fromkeys(EVENT_TYPES, 1)
    rig.hub.push_metrics()
    for kind in EVENT_TYPES:
        assert rig.metric("gamed_analytics_events_total", type=kind) == 1


# -- hot path, realtime, drops -----------------------------------------------------------------


def test_hot_path_only_queues(rig: Rig) -> None:
    rig.message(7, m.ChatMessage(7, 5, "hi"))
    assert len(rig.hub.queue) == 1
    assert rig.hub.aggregates.users == {}
    rig.clock.advance(0.25)  # the batch LoopingCall
    assert len(rig.hub.queue) == 0
    assert 7 in rig.hub.aggregates.users


def test_realtime_counters_cover_the_last_minute(rig: Rig) -> None:
    rig.at(1)
    for i in range(30):
        rig.message(1, m.HeartBeat())
        if i % 10 == 9:
            rig.clock.advance(1)
    rig.clock.advance(1)
    snap = rig.hub.realtime()
    assert snap["events_last_minute"] == 30
    assert snap["total_processed"] == 30
    assert snap["avg_processing_us"] > 0
    assert snap["buffer_use_percent"] == 0
    rig.clock.advance(61)
    snap = rig.hub.realtime()
    assert snap["events_last_minute"] == 0
    assert snap["total_processed"] == 30


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"queue_size": 100})
    for _ in range(150):
        rig.message(1, m.HeartBeat())
    rig.emit(ev.UserConnected(1, "h", rig.clock.seconds()))
    assert len(rig.hub.queue) == 100
    snap = rig.hub.realtime()
    assert snap["buffer_use_percent"] == 100
    assert snap["dropped"]["queue"] == 51
    rig.clock.advance(0.25)
    assert rig.metric("gamed_analytics_events_dropped_total", reason="queue") == 51
    assert rig.hub.realtime()["buffer_peak_percent"] == 100
    rig.stop()


def test_subscribers_filter_and_errors_are_isolated(rig: Rig) -> None:
    seen: list[str] = []

    def broken(_: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    rig.hub.subscribe(broken)
    unsubscribe = rig.hub.subscribe(lambda e: seen.append(e["type"]), ["RoomJoined", "Error"])
    t = rig.clock.seconds()
    rig.emit(ev.RoomJoined(5, 1, 1, t))
    rig.emit(ev.UserConnected(1, "h", t))
    rig.hub.process()
    assert seen == ["RoomJoined"]
    assert rig.hub.subscriber_errors == 2
    unsubscribe()
    rig.emit(ev.RoomJoined(5, 2, 2, t))
    rig.hub.process()
    assert seen == ["RoomJoined"]
    with pytest.raises(ValueError, match="unknown event types"):
        rig.hub.subscribe(seen.append, ["Nope"])


def test_recent_buffer_is_bounded(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"recent_size": 5})
    for i in range(12):
        rig.emit(ev.RoomJoined(i + 1, 1, 1, rig.clock.seconds()))
    rig.clock.advance(0.25)
    recent = rig.hub.recent_events(50)
    assert [e["room_id"] for e in recent] == [8, 9, 10, 11, 12]
    assert rig.hub.realtime()["recent_buffer"] == {"size": 5, "capacity": 5}
    rig.stop()


# -- storage ---------------------------------------------------------------------------------


def test_reads_combine_stored_rows_and_unflushed_deltas(rig: Rig) -> None:
    t = rig.at(10)
    rig.emit(ev.UserConnected(7, "h", t))
    rig.message(7, m.ChatMessage(7, 5, "a"))
    rig.clock.advance(5)  # batch + flush
    assert rig.hub.aggregates.users == {}, "flushed deltas leave memory"
    assert rig.hub.last_flush_at is not None
    rig.message(7, m.ChatMessage(7, 5, "b"))
    rig.emit(ev.UserDisconnected(7, 10.0, "closed", t + 10))
    u = rig.user(7)
    assert (u["total_sessions"], u["messages_sent"], u["total_playtime_seconds"]) == (1, 2, 10.0)
    assert rig.room(5)["total_messages"] == 2
    assert rig.metric("gamed_analytics_store_bytes") > 0
    assert rig.metric("gamed_analytics_flush_seconds_count") >= 1


def test_aggregates_survive_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    t = rig.at(6)
    rig.emit(ev.UserConnected(7, "h", t))
    rig.emit(ev.RoomCreated(5, 7, t))
    rig.emit(ev.RoomJoined(5, 7, 1, t))
    rig.message(7, m.ChatMessage(7, 5, "a"))
    rig.emit(ev.GameStarted(5, (7, 8), t + 1))
    rig.emit(ev.GameEnded(5, 30.0, 7, ((7, 3), (8, 1)), t + 31))
    rig.emit(ev.RoomLeft(5, 7, 0, t + 40))
    rig.emit(ev.UserDisconnected(7, 40.0, "closed", t + 40))
    before = (rig.user(7), rig.room(5), rig.user(8))
    assert rig.hub.aggregates.users, "nothing flushed yet: the stop must do it"
    fired = rig.stop()
    assert fired == [None]
    assert rig.hub.store is None
    again = Rig(tmp_path)
    assert (again.user(7), again.room(5), again.user(8)) == before
    assert again.user(7)["games_won"] == 1
    again.stop()


def test_stop_waits_for_the_server_to_close_its_clients(rig: Rig) -> None:
    t = rig.clock.seconds()
    rig.emit(ev.UserConnected(7, "h", t))
    rig.control.sessions = [7]
    fired = rig.stop()
    assert fired == []
    rig.clock.advance(0.5)  # the server drains: the client's events arrive late
    rig.emit(ev.UserDisconnected(7, 0.5, "shutdown", t + 0.5))
    rig.control.sessions = []
    rig.clock.advance(0.05)
    assert fired == [None]
    stored = rig.hub  # closed: read straight from the database file
    assert stored.store is None
    again = Rig(rig.data_dir.parent)
    assert again.user(7)["total_playtime_seconds"] == 0.5
    again.stop()


def test_stop_gives_up_waiting_after_the_grace(rig: Rig) -> None:
    rig.control.sessions = [7]  # a client that never goes
    fired = rig.stop()
    rig.clock.pump([0.05] * 100)  # shutdown_grace 1 s + 2 s extra
    assert fired == [None]


def test_a_failed_flush_keeps_its_deltas(rig: Rig) -> None:
    rig.emit(ev.UserConnected(7, "h", rig.clock.seconds()))
    rig.hub.process()
    real = rig.hub.store
    rig.hub.store = type("Broken", (), {"run": lambda self, fn, *a: defer.fail(OSError("disk"))})()
    rig.hub.flush()
    assert rig.hub.flush_failures == 1
    assert 7 in rig.hub.aggregates.users
    rig.hub.store = real
    rig.hub.flush()
    assert rig.user(7)["total_sessions"] == 1


def test_top_by_messages_playtime_and_wins(rig: Rig) -> None:
    t = rig.clock.seconds()
    for uid, chats in ((1, 3), (2, 5), (3, 1)):
        for _ in range(chats):
            rig.message(uid, m.ChatMessage(uid, 5, "x"))
    rig.emit(ev.UserDisconnected(3, 99.0, "closed", t))
    rig.emit(ev.GameEnded(5, 1.0, 1, (), t))
    top = deferred_result(rig.hub.top("messages", 2))
    assert top == [{"user_id": 2, "messages": 5}, {"user_id": 1, "messages": 3}]
    assert deferred_result(rig.hub.top("playtime", 10)) == [{"user_id": 3, "playtime": 99.0}]
    assert deferred_result(rig.hub.top("wins", 10)) == [{"user_id": 1, "wins": 1}]


def test_retention_forgets_inactive_users_and_rooms(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"retention_days": 1})
    t = rig.clock.seconds()
    rig.emit(ev.UserConnected(1, "h", t))
    rig.emit(ev.RoomJoined(5, 1, 1, t))
    rig.clock.advance(5)
    rig.clock.advance(2 * 86400)  # the retention loop runs every 6 h
    rig.emit(ev.UserConnected(2, "h", rig.clock.seconds()))
    rig.clock.advance(6 * 3600)
    assert rig.user(1) is None and rig.room(5) is None
    assert rig.user(2) is not None
    rig.stop()


def test_favourite_rooms_are_bounded_per_user(rig: Rig) -> None:
    t = rig.clock.seconds()
    for room in range(1, 41):
        rig.emit(ev.RoomJoined(room, 1, 1, rig.clock.seconds()))
        rig.clock.advance(1)
    rig.emit(ev.RoomJoined(40, 1, 1, t + 50))
    rig.clock.advance(5)
    rows = rig.hub.store.run_sync(
        lambda c: c.execute("SELECT COUNT(*) FROM user_rooms WHERE user_id = 1").fetchone()[0]
    )
    assert rows <= 20
    assert rig.user(1)["favourite_rooms"][0] == {"room_id": 40, "visits": 2}
    assert len(rig.user(1)["favourite_rooms"]) == 10


# -- memory stays flat ---------------------------------------------------------------------------


@pytest.mark.slow
def test_100k_users_pass_through_within_the_caps(tmp_path: Path) -> None:
    cap = 5000
    rig = Rig(tmp_path, {"max_users": cap, "max_rooms": 1000, "flush_interval": 2.0})
    hub, agg = rig.hub, rig.hub.aggregates
    peak_users = peak_rooms = peak_queue = 0
    t = rig.clock.seconds()
    for uid in range(1, 100_001):
        room = uid % 3000 + 1
        rig.emit(ev.UserConnected(uid, "h", t))
        rig.emit(ev.RoomJoined(room, uid, 1, t))
        rig.message(uid, m.ChatMessage(uid, room, "hello"))
        rig.emit(ev.RoomLeft(room, uid, 0, t + 3))
        rig.emit(ev.UserDisconnected(uid, 3.0, "closed", t + 3))
        if uid % 500 == 0:
            peak_queue = max(peak_queue, len(hub.queue))
            rig.clock.advance(0.25)
            t = rig.clock.seconds()
            peak_users = max(peak_users, len(agg.users))
            peak_rooms = max(peak_rooms, len(agg.rooms))
    rig.clock.advance(0.25)
    assert peak_users <= cap and peak_rooms <= 1000
    assert len(agg.user_sessions) == 0 and len(agg.room_sessions) == 0
    assert len(hub.recent_items) <= hub.recent_items.maxlen
    assert hub.dropped_by_reason() == {"queue": 0, "storage": 0, "subscriber": 0}
    assert rig.stop() == [None]
    again = Rig(tmp_path)
    counts = again.hub.store.run_sync(
        lambda c: c.execute("SELECT COUNT(*), SUM(sessions), SUM(messages) FROM users").fetchone()
    )
    assert counts == (100_000, 100_000, 100_000)
    assert again.user(99_999)["total_playtime_seconds"] == 3.0
    again.stop()


# -- configuration -------------------------------------------------------------------------------


def test_config_is_checked() -> None:
    assert options_from({})["flush_interval"] == 5.0
    assert options_from({"flush_interval": 1})["flush_interval"] == 1
    with pytest.raises(PluginConfigError, match="flush_intervall: unknown key"):
        options_from({"flush_intervall": 1})
    with pytest.raises(PluginConfigError, match="flush_interval: must be"):
        options_from({"flush_interval": 0})
    with pytest.raises(ValueError, match="expected a number"):
        options_from({"queue_size": "big"})


def test_hour_of_is_utc() -> None:
    assert hour_of(DAY) == 0
    assert hour_of(DAY + 5 * HOUR + 59 * 60) == 5
    assert hour_of(DAY - 1) == 23


def test_inline_store_is_used_without_threads(rig: Rig) -> None:
    assert isinstance(rig.hub.store, InlineStore)
    assert (rig.data_dir / "analytics.sqlite3").exists()
    assert rig.hub.store.run_sync(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == 2


def test_stats_section_is_the_realtime_view(rig: Rig) -> None:
    assert rig.parts.stats is not None
    assert set(rig.parts.stats()) >= {
        "events_last_minute",
        "total_processed",
        "avg_processing_us",
        "buffer_use_percent",
    }
    assert isinstance(rig.service, AnalyticsService)


def test_bulk_chat_path_matches_the_in_order_path(tmp_path: Path) -> None:
    """With no listener, chats are counted in bulk; the result must not differ."""

    def feed(rig: Rig) -> dict[int, Any]:
        t = rig.at(4.99)
        for i in range(300):  # crosses 05:00 in the middle of one batch
            at = t + i * 0.2
            rig.mw.after_process(
                Ctx(user_id=i % 7 + 1), m.ChatMessage(i % 7 + 1, i % 3 + 1, "x"), None
            )
            rig.hub.queue[-1] = (*rig.hub.queue[-1][:4], at)
        rig.emit(ev.UserConnected(1, "h", t))
        rig.hub.process()
        t2 = rig.at(6)
        for i in range(50):
            rig.message(i % 4 + 1, m.ChatMessage(i % 4 + 1, 2, "y"))
        rig.hub.process()
        assert rig.hub.realtime()["events_by_type"]["MessageSent"] == 350
        return (
            {u: rig.user(u) for u in range(1, 8)} | {-r: rig.room(r) for r in (1, 2, 3)} | {0: t2}
        )

    fast = Rig(tmp_path / "fast")
    ordered = Rig(tmp_path / "ordered")
    ordered.hub.subscribe(lambda e: None)  # a listener forces the in-order path
    assert feed(fast) == feed(ordered)
    assert fast.user(1)["activity_by_hour"][4] > 0 and fast.user(1)["activity_by_hour"][5] > 0
    fast.stop()
    ordered.stop()
