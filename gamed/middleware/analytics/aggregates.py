"""Analytics aggregation: events in, per-user and per-room *deltas* out.

Nothing here touches I/O or the hot path. The analytics service drains its
event queue in batches on the reactor and hands each batch to ``Aggregates``;
``Aggregates`` keeps, per user and per room, only what changed since the last
flush (a delta). The flush swaps the delta tables for empty ones and adds the
old ones to SQLite (``analytics_storage``), so memory holds the users and
rooms active within one flush interval, never the whole population: the
tables have hard caps, and an event that would grow a full table while
storage is behind is counted as dropped instead.

Every counter is additive (or a max), which is what makes the swap-and-add
flush exact and lets a read combine "row in SQLite + delta in memory".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

from gamed import events as ev
from gamed.errors import Refusal

HOURS = 24


#: The public event types, in the reference's order (RoomDeleted is ours).
EVENT_TYPES: tuple[str, ...] = (
    "UserConnected",
    "UserDisconnected",
    "MessageSent",
    "GameStarted",
    "GameEnded",
    "RoomCreated",
    "RoomDeleted",
    "RoomJoined",
    "RoomLeft",
    "Error",
)

#: The core's event classes analytics consumes (everything else on the bus is ignored).
BUS_EVENTS = (
    ev.UserConnected,
    ev.UserDisconnected,
    ev.RoomCreated,
    ev.RoomDeleted,
    ev.RoomJoined,
    ev.RoomLeft,
    ev.GameStarted,
    ev.GameEnded,
)


def hour_of(at: float) -> int:
    """Hour of day, UTC, of a Unix time (no datetime on the aggregation path)."""
    return int(at // 3600) % HOURS


#: A user delta's additive counters, also the user table's counter columns.
USER_COUNTERS = (
    "sessions",
    "playtime",
    "messages",
    "games_played",
    "games_won",
    "errors",
    "rooms_created",
)


class _Span:
    """What both delta kinds keep alike: first and last seen, and activity by hour.

    The hour-of-day counts are held as one bucket (``_hour``, ``_hour_n``) until a
    second hour is counted, and only then as a 24-int list (``_hours``): a delta lives
    for one flush interval (5 s by default), so nearly every one stays within an hour,
    and a list per delta was 248 of the ~900 bytes analytics held per joined user.
    """

    __slots__ = ("_hour", "_hour_n", "_hours", "first_seen", "last_active")

    def __init__(self, at: float) -> None:
        self.first_seen = at
        self.last_active = at
        self._hour = -1  # the one hour counted so far (-1: none, or ``_hours`` holds them)
        self._hour_n = 0
        self._hours: list[int] | None = None

    def add_hour(self, hour: int, n: int = 1) -> None:
        """Count ``n`` in the hour-of-day bucket ``hour`` (0..23)."""
        if hour == self._hour:
            self._hour_n += n
        elif self._hours is not None:
            self._hours[hour] += n
        elif self._hour < 0:
            self._hour = hour
            self._hour_n = n
        else:
            hours = [0] * HOURS
            hours[self._hour] = self._hour_n
            hours[hour] += n
            self._hours = hours
            self._hour = -1

    @property
    def hours(self) -> list[int]:
        """The 24 hour-of-day counts (a new list: the caller may keep it)."""
        if self._hours is not None:
            return list(self._hours)
        hours = [0] * HOURS
        if self._hour >= 0:
            hours[self._hour] = self._hour_n
        return hours

    def _absorb_span(self, other: _Span) -> None:
        """Add ``other``'s span and hours into this one (a failed flush merged back)."""
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_active = max(self.last_active, other.last_active)
        for hour, n in enumerate(other.hours):
            if n:
                self.add_hour(hour, n)


class UserDelta(_Span):
    """What changed for one user since the last flush.

    The rooms visited are held like the hours: one (``_room``, ``_room_n``) until a
    second room is visited, then a dict (``_rooms``): an empty dict and its first
    entry were 224 bytes per user.
    """

    __slots__ = (
        "_room",
        "_room_n",
        "_rooms",
        "errors",
        "games_played",
        "games_won",
        "messages",
        "playtime",
        "rooms_created",
        "sessions",
    )

    def __init__(self, at: float) -> None:
        super().__init__(at)
        self.sessions = 0
        self.playtime = 0.0
        self.messages = 0
        self.games_played = 0
        self.games_won = 0
        self.errors = 0
        self.rooms_created = 0
        self._room: int | None = None  # the one room visited so far (None: none, or ``_rooms``)
        self._room_n = 0
        self._rooms: dict[int, int] | None = None

    def touch(self, at: float) -> None:
        """Mark activity at ``at``: last active and the hour-of-day bucket."""
        if at > self.last_active:
            self.last_active = at
        if at < self.first_seen:
            self.first_seen = at
        self.add_hour(int(at // 3600) % HOURS)

    def visited(self, room_id: int) -> bool:
        """Whether this delta already counts a visit to ``room_id``."""
        if self._rooms is not None:
            return room_id in self._rooms
        return room_id == self._room

    def add_visits(self, room_id: int, n: int = 1) -> None:
        """Count ``n`` visits to ``room_id``."""
        if room_id == self._room:
            self._room_n += n
        elif self._rooms is not None:
            self._rooms[room_id] = self._rooms.get(room_id, 0) + n
        elif self._room is None:
            self._room = room_id
            self._room_n = n
        else:
            self._rooms = {self._room: self._room_n, room_id: n}
            self._room = None

    @property
    def rooms(self) -> dict[int, int]:
        """Visits by room id (a new dict: the caller may keep it)."""
        if self._rooms is not None:
            return dict(self._rooms)
        return {} if self._room is None else {self._room: self._room_n}

    def absorb(self, other: UserDelta) -> None:
        """Add ``other`` into this delta (a failed flush is merged back)."""
        for name in USER_COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self._absorb_span(other)
        for room, visits in other.rooms.items():
            self.add_visits(room, visits)

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self, _USER_FIELDS)


#: A room delta's additive counters, also the room table's counter columns.
ROOM_COUNTERS = (
    "sessions",
    "completed_sessions",
    "session_seconds",
    "messages",
    "games_played",
    "games_finished",
    "game_seconds",
    "times_created",
)


class RoomDelta(_Span):
    """What changed for one room since the last flush."""

    __slots__ = (
        "completed_sessions",
        "game_seconds",
        "games_finished",
        "games_played",
        "last_creator",
        "messages",
        "peak_users",
        "session_seconds",
        "sessions",
        "times_created",
    )

    def __init__(self, at: float) -> None:
        super().__init__(at)
        self.sessions = 0
        self.completed_sessions = 0
        self.session_seconds = 0.0
        self.peak_users = 0
        self.messages = 0
        self.games_played = 0
        self.games_finished = 0
        self.game_seconds = 0.0
        self.times_created = 0
        self.last_creator: int | None = None

    def touch(self, at: float) -> None:
        if at > self.last_active:
            self.last_active = at
        if at < self.first_seen:
            self.first_seen = at

    def absorb(self, other: RoomDelta) -> None:
        for name in ROOM_COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.peak_users = max(self.peak_users, other.peak_users)
        if other.last_creator is not None:
            self.last_creator = other.last_creator
        self._absorb_span(other)

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self, _ROOM_FIELDS)


#: Either delta kind: a flush hands back tables of one kind at a time.
_Delta = TypeVar("_Delta", UserDelta, RoomDelta)

#: What ``as_dict`` gives for each kind.
_USER_FIELDS = (*USER_COUNTERS, "first_seen", "last_active", "hours", "rooms")
_ROOM_FIELDS = (*ROOM_COUNTERS, "peak_users", "last_creator", "first_seen", "last_active", "hours")


def _as_dict(delta: UserDelta | RoomDelta, names: tuple[str, ...]) -> dict[str, Any]:
    """A delta's fields by name; its lists and dicts copied, so the caller owns the result."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(delta, name)
        out[name] = value.copy() if isinstance(value, list | dict) else value
    return out


@dataclass(slots=True)
class Caps:
    """Hard limits on every in-memory table (see docs/analytics.md)."""

    users: int = 10_000
    rooms: int = 10_000
    #: Open sessions tracked for durations (users connected / in a room).
    open_sessions: int = 200_000
    #: (user, room) visit counts held in the user deltas (the favourite rooms): a full
    #: table flushes like the others. One user may visit any number of rooms in a delta.
    visits: int = 100_000


class Aggregates:
    """Apply analytics items to delta tables.

    An item is either one of the core's event objects (``BUS_EVENTS``) or the
    middleware's ``(user_id, tag, room_id, result, at)`` tuple (``tag`` is the
    message's variant name, ``result`` None or the Refusal). ``needs_room`` is
    called when a table is full: it may flush (swapping in empty tables) and
    return True, or return False when storage is behind, and the event's
    effect on that table is dropped and counted.
    """

    def __init__(self, caps: Caps | None = None) -> None:
        self.caps = caps or Caps()
        self.users: dict[int, UserDelta] = {}
        self.rooms: dict[int, RoomDelta] = {}
        #: user id -> connected_at (closes a session replaced by a takeover).
        self.user_sessions: dict[int, float] = {}
        #: user id -> (room id, joined_at): a room session runs from join to leave.
        self.room_sessions: dict[int, tuple[int, float]] = {}
        self.dropped = 0
        #: Entries in the user deltas' ``rooms`` maps (bounded by ``caps.visits``).
        self.visits = 0
        self.needs_room: Callable[[], bool] = lambda: False
        self._handlers: dict[type, Callable[[Any], str]] = {
            tuple: self._message,
            ev.UserConnected: self._connected,
            ev.UserDisconnected: self._disconnected,
            ev.RoomCreated: self._room_created,
            ev.RoomDeleted: self._room_deleted,
            ev.RoomJoined: self._room_joined,
            ev.RoomLeft: self._room_left,
            ev.GameStarted: self._game_started,
            ev.GameEnded: self._game_ended,
        }

    # -- tables ------------------------------------------------------------------------

    def swap(self) -> tuple[dict[int, UserDelta], dict[int, RoomDelta]]:
        """Hand over the delta tables (to be flushed) and start empty ones."""
        users, rooms = self.users, self.rooms
        self.users, self.rooms = {}, {}
        self.visits = 0
        return users, rooms

    def merge_back(self, users: dict[int, UserDelta], rooms: dict[int, RoomDelta]) -> None:
        """A flush failed: put its deltas back (as far as the caps allow)."""
        self._merge_back(self.users, users, self.caps.users)
        self._merge_back(self.rooms, rooms, self.caps.rooms)
        self.visits = sum(len(u.rooms) for u in self.users.values())

    def _merge_back(self, table: dict[int, _Delta], returned: dict[int, _Delta], cap: int) -> None:
        # Generic over the delta type so that mypy sees absorb() get its own kind.
        for key, delta in returned.items():
            mine = table.get(key)
            if mine is not None:
                mine.absorb(delta)
            elif len(table) < cap:
                table[key] = delta
            else:
                self.dropped += 1

    def user(self, user_id: int, at: float) -> UserDelta | None:
        d = self.users.get(user_id)
        if d is None:
            if len(self.users) >= self.caps.users and not self.needs_room():
                self.dropped += 1
                return None
            d = self.users[user_id] = UserDelta(at)
        d.touch(at)
        return d

    def apply_chats(self, chats: list[tuple]) -> None:
        """Many successful chats at once (the bulk of the traffic): counted with C-level
        Counters per user and per room instead of one Python call per chat.

        Same effect as ``apply`` on each (counters are additive), provided the batch
        lies within one hour of the day; otherwise it falls back to ``apply``.
        """
        if hour_of(chats[0][4]) != hour_of(chats[-1][4]):
            for item in chats:
                self._message(item)
            return
        hour = hour_of(chats[0][4])
        uids = list(map(itemgetter(0), chats))
        ats = list(map(itemgetter(4), chats))
        last_at = dict(zip(uids, ats, strict=True))
        first_at = dict(zip(reversed(uids), reversed(ats), strict=True))
        for uid, n in Counter(uids).items():
            if uid is None:
                continue
            u = self.users.get(uid)
            if u is None:
                if len(self.users) >= self.caps.users and not self.needs_room():
                    self.dropped += n
                    continue
                u = self.users[uid] = UserDelta(first_at[uid])
            at = last_at[uid]
            if at > u.last_active:
                u.last_active = at
            u.add_hour(hour, n)
            u.messages += n
        rids = list(map(itemgetter(2), chats))
        last_room_at = dict(zip(rids, ats, strict=True))
        first_room_at = dict(zip(reversed(rids), reversed(ats), strict=True))
        for rid, n in Counter(rids).items():
            r = self.rooms.get(rid)
            if r is None:
                if len(self.rooms) >= self.caps.rooms and not self.needs_room():
                    self.dropped += n
                    continue
                r = self.rooms[rid] = RoomDelta(first_room_at[rid])
            at = last_room_at[rid]
            if at > r.last_active:
                r.last_active = at
            r.messages += n

    def room(self, room_id: int, at: float) -> RoomDelta | None:
        d = self.rooms.get(room_id)
        if d is None:
            if len(self.rooms) >= self.caps.rooms and not self.needs_room():
                self.dropped += 1
                return None
            d = self.rooms[room_id] = RoomDelta(at)
        d.touch(at)
        return d

    # -- events ------------------------------------------------------------------------

    def apply(self, item: Any) -> str | None:
        """Apply one item; returns its public event type (None: not an analytics item)."""
        handler = self._handlers.get(type(item))
        return None if handler is None else handler(item)

    def apply_all(self, items: Iterable[Any]) -> dict[str, int]:
        counts: dict[str, int] = {}
        handlers = self._handlers
        for item in items:
            handler = handlers.get(type(item))
            if handler is not None:
                kind = handler(item)
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    def _message(self, item: tuple) -> str:
        user_id, tag, room_id, result, at = item
        if result is not None:
            if user_id is not None:
                u = self.user(user_id, at)
                if u is not None:
                    u.errors += 1
            return "Error"
        if tag == "ChatMessage":
            # The hottest item by far: lookups and touch() inlined.
            u = self.users.get(user_id)
            if u is None:
                u = self.user(user_id, at) if user_id is not None else None
            else:
                if at > u.last_active:
                    u.last_active = at
                hour = int(at // 3600) % HOURS
                if hour == u._hour:
                    u._hour_n += 1
                else:
                    u.add_hour(hour)
            if u is not None:
                u.messages += 1
            r = self.rooms.get(room_id)
            if r is None:
                r = self.room(room_id, at)
            elif at > r.last_active:
                r.last_active = at
            if r is not None:
                r.messages += 1
        elif user_id is not None:
            self.user(user_id, at)  # activity (last active, hour) for any message
        return "MessageSent"

    def _connected(self, e: ev.UserConnected) -> str:
        previous = self.user_sessions.get(e.user_id)
        u = self.user(e.user_id, e.at)
        if u is not None:
            u.sessions += 1
            if previous is not None:
                # A takeover: the core emits no UserDisconnected for the replaced
                # connection, so its time ends here.
                u.playtime += max(0.0, e.at - previous)
        if previous is not None or len(self.user_sessions) < self.caps.open_sessions:
            self.user_sessions[e.user_id] = e.at
        return "UserConnected"

    def _disconnected(self, e: ev.UserDisconnected) -> str:
        started = self.user_sessions.pop(e.user_id, None)
        u = self.user(e.user_id, e.at)
        if u is not None:
            # After a takeover the event's duration covers only the newest connection.
            seconds = (
                e.session_seconds if started is None else min(e.session_seconds, e.at - started)
            )
            u.playtime += max(0.0, seconds)
        return "UserDisconnected"

    def _room_created(self, e: ev.RoomCreated) -> str:
        r = self.room(e.room_id, e.at)
        if r is not None:
            r.times_created += 1
            r.last_creator = e.creator
        u = self.user(e.creator, e.at)
        if u is not None:
            u.rooms_created += 1
        return "RoomCreated"

    def _room_deleted(self, e: ev.RoomDeleted) -> str:
        self.room(e.room_id, e.at)
        return "RoomDeleted"

    def _room_joined(self, e: ev.RoomJoined) -> str:
        r = self.room(e.room_id, e.at)
        if r is not None:
            r.sessions += 1
            r.add_hour(int(e.at // 3600) % HOURS)
            if e.user_count > r.peak_users:
                r.peak_users = e.user_count
        u = self.user(e.user_id, e.at)
        if u is not None:
            if u.visited(e.room_id):
                u.add_visits(e.room_id)
            else:
                if self.visits >= self.caps.visits:
                    # Full: flush (the tables are swapped, so the visit goes into a
                    # fresh delta), or, storage being behind, drop the visit.
                    u = self.user(e.user_id, e.at) if self.needs_room() else None
                if u is None:
                    self.dropped += 1
                else:
                    u.add_visits(e.room_id)
                    self.visits += 1
        if e.user_id in self.room_sessions or len(self.room_sessions) < self.caps.open_sessions:
            self.room_sessions[e.user_id] = (e.room_id, e.at)
        return "RoomJoined"

    def _room_left(self, e: ev.RoomLeft) -> str:
        r = self.room(e.room_id, e.at)
        joined = self.room_sessions.get(e.user_id)
        if joined is not None and joined[0] == e.room_id:
            del self.room_sessions[e.user_id]
            if r is not None:
                r.completed_sessions += 1
                r.session_seconds += max(0.0, e.at - joined[1])
        self.user(e.user_id, e.at)
        return "RoomLeft"

    def _game_started(self, e: ev.GameStarted) -> str:
        r = self.room(e.room_id, e.at)
        if r is not None:
            r.games_played += 1
            if len(e.players) > r.peak_users:
                r.peak_users = len(e.players)
        for player in e.players:
            u = self.user(player, e.at)
            if u is not None:
                u.games_played += 1
        return "GameStarted"

    def _game_ended(self, e: ev.GameEnded) -> str:
        r = self.room(e.room_id, e.at)
        if r is not None:
            r.games_finished += 1
            r.game_seconds += max(0.0, e.duration_seconds)
        if e.winner is not None:
            u = self.user(e.winner, e.at)
            if u is not None:
                u.games_won += 1
        return "GameEnded"


# -- the public form of an item (subscribers, SSE, the recent buffer) ------------------------


def public(item: Any) -> dict[str, Any] | None:
    """A JSON-able dict for one item, with a ``type`` key; None if not an analytics item."""
    if type(item) is tuple:
        user_id, tag, room_id, result, at = item
        if tag == "Connect":
            room_id = None  # Connect's room_id is ignored by the server
        if result is None:
            return {
                "type": "MessageSent",
                "at": at,
                "user_id": user_id,
                "room_id": room_id,
                "message_type": tag,
            }
        code = result.code if isinstance(result, Refusal) else 500
        text = result.message if isinstance(result, Refusal) else str(result)
        return {
            "type": "Error",
            "at": at,
            "user_id": user_id,
            "room_id": room_id,
            "error_type": tag,
            "code": code,
            "message": text,
        }
    if isinstance(item, BUS_EVENTS):
        body: dict[str, Any] = {"type": type(item).__name__}
        for name in item.__slots__:
            value = getattr(item, name)
            body[name] = list(value) if isinstance(value, tuple) else value
        body.pop("peer_host", None)  # no IP addresses in analytics
        return body
    return None


def kind_of(item: Any) -> str | None:
    """The public type of an item without building its dict."""
    if type(item) is tuple:
        return "MessageSent" if item[3] is None else "Error"
    if isinstance(item, BUS_EVENTS):
        return type(item).__name__
    return None


class Realtime:
    """Per-second counters over the last minute: events, aggregation cost, queue fill."""

    WINDOW = 60

    def __init__(self) -> None:
        self._second = [-1] * self.WINDOW
        self._count = [0] * self.WINDOW
        self._cost = [0.0] * self.WINDOW
        self._fill = [0.0] * self.WINDOW
        self.total = 0

    def _bucket(self, now: float) -> int:
        sec = int(now)
        i = sec % self.WINDOW
        if self._second[i] != sec:
            self._second[i] = sec
            self._count[i] = 0
            self._cost[i] = 0.0
            self._fill[i] = 0.0
        return i

    def record(self, now: float, events: int, seconds: float, fill: float) -> None:
        """A batch of ``events`` took ``seconds``; the queue was ``fill`` (0..1) full."""
        i = self._bucket(now)
        self._count[i] += events
        self._cost[i] += seconds
        if fill > self._fill[i]:
            self._fill[i] = fill
        self.total += events

    def snapshot(self, now: float) -> dict[str, Any]:
        cutoff = int(now) - self.WINDOW
        live = [i for i in range(self.WINDOW) if self._second[i] > cutoff]
        events = sum(self._count[i] for i in live)
        cost = sum(self._cost[i] for i in live)
        return {
            "events_last_minute": events,
            "total_processed": self.total,
            "avg_processing_us": round(cost / events * 1e6, 3) if events else 0.0,
            "buffer_peak_percent": round(max((self._fill[i] for i in live), default=0.0) * 100, 2),
        }
