"""Analytics in SQLite: the schema, its migrations, and the SQL run in the store's thread.

Every function taking a ``sqlite3.Connection`` first runs in the store's own
thread (``SqliteStore.run``), never on the reactor. A flush *adds* deltas to
the rows (``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``), so the
reactor never needs to read a row before counting an event.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer

from gamed.middleware.analytics.aggregates import (
    HOURS,
    ROOM_COUNTERS,
    USER_COUNTERS,
    RoomDelta,
    UserDelta,
)
from gamed.store import StoreError, describe_error, precheck, transaction

T = TypeVar("T")

DB_NAME = "analytics.sqlite3"

#: Favourite rooms kept per user in the database (the least visited are pruned).
ROOMS_KEPT_PER_USER = 20

_H = [f"h{i}" for i in range(HOURS)]
_H_COLS = ", ".join(f"{h} INTEGER NOT NULL DEFAULT 0" for h in _H)

USER_COLUMNS = USER_COUNTERS
ROOM_COLUMNS = ROOM_COUNTERS

#: Schema versions, applied in order by SqliteStore.migrate (PRAGMA user_version).
MIGRATIONS: list[str] = [
    # 1: the aggregates.
    f"""
    CREATE TABLE users (
        user_id INTEGER PRIMARY KEY,
        sessions INTEGER NOT NULL DEFAULT 0,
        playtime REAL NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        games_played INTEGER NOT NULL DEFAULT 0,
        games_won INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        rooms_created INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL,
        last_active REAL NOT NULL,
        {_H_COLS}
    );
    CREATE TABLE user_rooms (
        user_id INTEGER NOT NULL,
        room_id INTEGER NOT NULL,
        visits INTEGER NOT NULL,
        last_visit REAL NOT NULL,
        PRIMARY KEY (user_id, room_id)
    ) WITHOUT ROWID;
    CREATE TABLE rooms (
        room_id INTEGER PRIMARY KEY,
        sessions INTEGER NOT NULL DEFAULT 0,
        completed_sessions INTEGER NOT NULL DEFAULT 0,
        session_seconds REAL NOT NULL DEFAULT 0,
        peak_users INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        games_played INTEGER NOT NULL DEFAULT 0,
        games_finished INTEGER NOT NULL DEFAULT 0,
        game_seconds REAL NOT NULL DEFAULT 0,
        times_created INTEGER NOT NULL DEFAULT 0,
        last_creator INTEGER,
        first_seen REAL NOT NULL,
        last_active REAL NOT NULL,
        {_H_COLS}
    )
    """,
    # 2: indexes for /analytics/top and for retention.
    """
    CREATE INDEX users_by_messages ON users (messages);
    CREATE INDEX users_by_playtime ON users (playtime);
    CREATE INDEX users_by_wins ON users (games_won);
    CREATE INDEX users_by_last_active ON users (last_active);
    CREATE INDEX rooms_by_last_active ON rooms (last_active)
    """,
]


def _upsert(table: str, key: str, adds: tuple[str, ...], extra: dict[str, str]) -> str:
    cols = [key, *adds, *extra, "first_seen", "last_active", *_H]
    sets = [f"{c} = {c} + excluded.{c}" for c in (*adds, *_H)]
    sets += [f"{c} = {expr}" for c, expr in extra.items()]
    sets += [
        "first_seen = MIN(first_seen, excluded.first_seen)",
        "last_active = MAX(last_active, excluded.last_active)",
    ]
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT({key}) DO UPDATE SET {', '.join(sets)}"
    )


UPSERT_USER = _upsert("users", "user_id", USER_COLUMNS, {})
UPSERT_ROOM = _upsert(
    "rooms",
    "room_id",
    ROOM_COLUMNS,
    {
        "peak_users": "MAX(peak_users, excluded.peak_users)",
        "last_creator": "COALESCE(excluded.last_creator, last_creator)",
    },
)
UPSERT_USER_ROOM = (
    "INSERT INTO user_rooms (user_id, room_id, visits, last_visit) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(user_id, room_id) DO UPDATE SET visits = visits + excluded.visits, "
    "last_visit = MAX(last_visit, excluded.last_visit)"
)
PRUNE_USER_ROOMS = (
    "DELETE FROM user_rooms WHERE user_id = ?1 AND room_id NOT IN ("
    "SELECT room_id FROM user_rooms WHERE user_id = ?1 "
    f"ORDER BY visits DESC, last_visit DESC LIMIT {ROOMS_KEPT_PER_USER})"
)


def write_deltas(
    conn: sqlite3.Connection, users: dict[int, UserDelta], rooms: dict[int, RoomDelta]
) -> int:
    """Add the deltas to the rows (one transaction); returns the database size in bytes.

    Runs in the store's thread. The delta objects were swapped out of the
    reactor's tables, so nothing else touches them while this reads them.
    """
    conn.executemany(
        UPSERT_USER,
        [
            (uid, *(getattr(d, c) for c in USER_COLUMNS), d.first_seen, d.last_active, *d.hours)
            for uid, d in users.items()
        ],
    )
    visits = [
        (uid, room, n, d.last_active) for uid, d in users.items() for room, n in d.rooms.items()
    ]
    if visits:
        conn.executemany(UPSERT_USER_ROOM, visits)
        conn.executemany(PRUNE_USER_ROOMS, [(uid,) for uid, d in users.items() if d.rooms])
    conn.executemany(
        UPSERT_ROOM,
        [
            (
                rid,
                *(getattr(d, c) for c in ROOM_COLUMNS),
                d.peak_users,
                d.last_creator,
                d.first_seen,
                d.last_active,
                *d.hours,
            )
            for rid, d in rooms.items()
        ],
    )
    return database_bytes(conn)


def database_bytes(conn: sqlite3.Connection) -> int:
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    return int(pages * size)


def _row(cursor: sqlite3.Cursor, row: tuple | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def read_user(conn: sqlite3.Connection, user_id: int) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM users WHERE user_id = ?", (user_id,))
    row = _row(cur, cur.fetchone())
    if row is None:
        return None
    row["hours"] = [row.pop(h) for h in _H]
    row["rooms"] = dict(
        conn.execute(
            "SELECT room_id, visits FROM user_rooms WHERE user_id = ? "
            "ORDER BY visits DESC, last_visit DESC",
            (user_id,),
        ).fetchall()
    )
    return row


def read_room(conn: sqlite3.Connection, room_id: int) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM rooms WHERE room_id = ?", (room_id,))
    row = _row(cur, cur.fetchone())
    if row is not None:
        row["hours"] = [row.pop(h) for h in _H]
    return row


TOP_COLUMNS = {"messages": "messages", "playtime": "playtime", "wins": "games_won"}


def read_top(conn: sqlite3.Connection, by: str, limit: int) -> list[dict[str, Any]]:
    column = TOP_COLUMNS[by]  # a fixed whitelist: never user input in SQL
    rows = conn.execute(
        f"SELECT user_id, {column} FROM users WHERE {column} > 0 "
        f"ORDER BY {column} DESC, user_id LIMIT ?",
        (limit,),
    ).fetchall()
    return [{"user_id": uid, by: value} for uid, value in rows]


def prune(conn: sqlite3.Connection, older_than: float) -> tuple[int, int]:
    """Retention: forget users and rooms inactive since ``older_than``."""
    conn.execute(
        "DELETE FROM user_rooms WHERE user_id IN (SELECT user_id FROM users WHERE last_active < ?)",
        (older_than,),
    )
    users = conn.execute("DELETE FROM users WHERE last_active < ?", (older_than,)).rowcount
    rooms = conn.execute("DELETE FROM rooms WHERE last_active < ?", (older_than,)).rowcount
    return users, rooms


# -- merging a stored row with the delta still in memory -------------------------------------


def _merge_base(
    row: dict[str, Any] | None, delta: dict[str, Any] | None, fresh: dict[str, Any]
) -> dict[str, Any] | None:
    """What a merge starts from: the stored row, or (none stored yet) ``fresh`` plus the
    delta's first/last seen and empty hours; None when there is neither row nor delta."""
    if row is None and delta is None:
        return None
    if row:
        base = row
    else:
        assert delta is not None  # both None returned above
        base = {
            **fresh,
            "first_seen": delta["first_seen"],
            "last_active": delta["last_active"],
            "hours": [0] * HOURS,
        }
    return base


def _merge_common(base: dict[str, Any], delta: dict[str, Any], columns: tuple[str, ...]) -> None:
    """Add what user and room deltas share into ``base``: counters, first/last seen, hours."""
    for c in columns:
        base[c] += delta[c]
    base["first_seen"] = min(base["first_seen"], delta["first_seen"])
    base["last_active"] = max(base["last_active"], delta["last_active"])
    base["hours"] = [a + b for a, b in zip(base["hours"], delta["hours"], strict=True)]


def merge_user(row: dict[str, Any] | None, delta: dict[str, Any] | None) -> dict[str, Any] | None:
    base = _merge_base(row, delta, {**dict.fromkeys(USER_COLUMNS, 0), "rooms": {}})
    if base is not None and delta is not None:
        _merge_common(base, delta, USER_COLUMNS)
        rooms = dict(base["rooms"])
        for room, n in delta["rooms"].items():
            rooms[room] = rooms.get(room, 0) + n
        base["rooms"] = rooms
    return base


def merge_room(row: dict[str, Any] | None, delta: dict[str, Any] | None) -> dict[str, Any] | None:
    fresh = {**dict.fromkeys(ROOM_COLUMNS, 0), "peak_users": 0, "last_creator": None}
    base = _merge_base(row, delta, fresh)
    if base is not None and delta is not None:
        _merge_common(base, delta, ROOM_COLUMNS)
        base["peak_users"] = max(base["peak_users"], delta["peak_users"])
        if delta["last_creator"] is not None:
            base["last_creator"] = delta["last_creator"]
    return base


# -- a store without a thread, for reactors without threads (unit tests) ---------------------


class InlineStore:
    """SqliteStore's interface, run synchronously on the caller's thread.

    Used when the reactor has no threads (MemoryReactorClock, task.Clock in
    unit tests): results are already-fired Deferreds, so tests stay
    deterministic. Never used by a real server.
    """

    def __init__(self, path: str = ":memory:") -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        precheck(path)
        self.path = path
        self._conn: sqlite3.Connection | None = sqlite3.connect(path, isolation_level=None)
        self.closed = False

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise RuntimeError(f"store {self.path} is closed")
        return transaction(self._conn, fn, *args)

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        try:
            return defer.succeed(self._transaction(fn, *args))
        except Exception:
            return defer.fail()

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        return self._transaction(fn, *args)

    def migrate(self, steps: list[str], check: bool = False) -> int:
        def apply(conn: sqlite3.Connection) -> int:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for number, step in enumerate(steps[version:], start=version + 1):
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
            return len(steps)

        try:
            return self.run_sync(apply)
        except sqlite3.Error as e:
            raise StoreError(self.path, describe_error(e)) from e

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.closed = True
