"""Bans and temporary blocks on disk, so a restart does not free an abuser.

One SQLite file (``<data_dir>/security.sqlite3``) behind ``gamed.store.SqliteStore``:
changes are queued on the reactor thread and written in one small
transaction per flush (every second, and on stop) by the store's own thread.
``load`` runs once at start-up, before any client is accepted.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gamed.store import SqliteStore

_log = Logger()

FILENAME = "security.sqlite3"

#: A queued change: (table, key, until | None for permanent | "delete", reason, since).
Change = tuple[str, str, Any, str, float]

MIGRATIONS = [
    """
    CREATE TABLE user_blocks (
        user_id INTEGER PRIMARY KEY,
        until REAL,            -- Unix seconds, NULL for permanent (an admin ban)
        reason TEXT NOT NULL,
        since REAL NOT NULL
    );
    CREATE TABLE ip_blocks (
        ip TEXT PRIMARY KEY,
        until REAL,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    )
    """,
]

#: More queued changes than this and the oldest are dropped (with a warning):
#: memory stays bounded even if the disk stalls during an attack.
MAX_PENDING = 100_000

_TABLES = {"user": ("user_blocks", "user_id"), "ip": ("ip_blocks", "ip")}


def _write(conn: sqlite3.Connection, changes: list[Change]) -> int:
    for kind, key, until, reason, since in changes:
        table, column = _TABLES[kind]
        k: Any = int(key) if kind == "user" else key
        if until == "delete":
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (k,))
        else:
            stored = None if until is None or math.isinf(until) else until
            conn.execute(
                f"INSERT OR REPLACE INTO {table} ({column}, until, reason, since) "
                "VALUES (?, ?, ?, ?)",
                (k, stored, reason, since),
            )
    return len(changes)


def _load(conn: sqlite3.Connection, now: float) -> dict[str, list[tuple[Any, float, str, float]]]:
    conn.execute("DELETE FROM user_blocks WHERE until IS NOT NULL AND until <= ?", (now,))
    conn.execute("DELETE FROM ip_blocks WHERE until IS NOT NULL AND until <= ?", (now,))
    out: dict[str, list[tuple[Any, float, str, float]]] = {}
    for kind, (table, column) in _TABLES.items():
        rows = conn.execute(f"SELECT {column}, until, reason, since FROM {table}").fetchall()
        out[kind] = [(k, math.inf if u is None else u, r, s) for k, u, r, s in rows]
    return out


class BlockStore:
    """Queue of block changes and their writer; a no-op when ``store`` is None."""

    def __init__(self, store: SqliteStore | None, path: str | None = None) -> None:
        self.store = store
        #: Where to reopen the database when a change comes after ``release``.
        self.path = path
        self.pending: list[Change] = []
        self.written = 0
        self.dropped = 0
        self._inflight: defer.Deferred[Any] | None = None

    @classmethod
    def open(cls, path: str) -> BlockStore:
        store = SqliteStore(path)
        try:
            store.migrate(MIGRATIONS)
        except BaseException:
            store.close()
            raise
        return cls(store, path)

    def load(self, now: float) -> dict[str, list[tuple[Any, float, str, float]]]:
        """Every unexpired block, by kind ("user", "ip"); blocking, for start-up."""
        if self.store is None:
            return {"user": [], "ip": []}
        return self.store.run_sync(_load, now)

    def release(self) -> None:
        """Close the database until the next change: a server that never blocks
        anyone keeps no writer thread (and leaves none behind)."""
        if self.store is not None and not self.pending:
            self.store.close()
            self.store = None

    def put(self, kind: str, key: object, until: float, reason: str, since: float) -> None:
        self._queue((kind, str(key), until, reason, since))

    def delete(self, kind: str, key: object) -> None:
        self._queue((kind, str(key), "delete", "", 0.0))

    def _queue(self, change: Change) -> None:
        if self.store is None:
            if self.path is None:
                return
            self.store = SqliteStore(self.path)  # migrated at start-up
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            del self.pending[0]
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                _log.warn("security store is behind: dropped {n} queued changes", n=self.dropped)
        self.pending.append(change)

    def flush(self) -> defer.Deferred[Any] | None:
        """Write what is queued, off the reactor thread (one transaction)."""
        if self.store is None or not self.pending or self._inflight is not None:
            return None
        batch, self.pending = self.pending, []
        d = self.store.run(_write, batch)

        def done(n: int) -> None:
            self.written += n

        def failed(f: Any) -> None:
            _log.failure("writing {n} security changes failed", f, n=len(batch))

        def cleared(result: Any) -> Any:
            self._inflight = None
            return result

        d.addCallbacks(done, failed)
        d.addBoth(cleared)
        self._inflight = d
        return d

    def flush_sync(self) -> None:
        """Write what is queued and wait (on stop, and in tests)."""
        if self.store is None or not self.pending:
            return
        batch, self.pending = self.pending, []
        self.written += self.store.run_sync(_write, batch)

    def close(self) -> None:
        self.path = None  # no reopening after this
        if self.store is None:
            return
        try:
            self.flush_sync()
        except Exception:
            _log.failure("final flush of security changes failed")
        self.store.close()
        self.store = None
