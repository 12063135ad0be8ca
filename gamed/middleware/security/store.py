"""Bans and temporary blocks on disk, so a restart does not free an abuser.

One SQLite file (``<data_dir>/security.sqlite3``) behind ``gamed.store.SqliteStore``:
changes are queued on the reactor thread and written in one small
transaction per flush (every second, at once for an admin call, and on stop)
by the store's own thread. ``load`` runs once at start-up, before any client
is accepted; a file that cannot be read stops the start (StoreError): gamed
never serves with bans silently missing. A write that fails is kept and
retried (see BlockStore); enforcement in memory does not wait for the disk.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gamed.store import SqliteStore, StoreError, describe_error

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

#: More queued changes than this and the oldest *unacknowledged* ones (automatic
#: blocks, expiries) are dropped, with a warning: memory stays bounded if the
#: disk stalls during an attack. A change the admin API acknowledged is never
#: dropped while the process lives (there are only as many as admins make).
MAX_PENDING = 100_000

#: Retry delays after a failed write: doubling from the first to the last, in seconds.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0

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


Key = tuple[str, str]


class BlockStore:
    """Block changes waiting to be durable, their writer, and its retries.

    Changes are coalesced by (kind, key): the last one wins, as it would on
    disk, so a retry rewrites at most one row per user or address. Each
    change gets a sequence number; ``durable_seq`` is the highest number such
    that it and every earlier change is on disk (or was replaced by a later
    change that is). A failed write puts its batch back (behind nothing newer
    for the same key) and is retried with backoff on the injected clock; the
    cause is logged once per state change, not per attempt. ``wait(seq)``
    tells the admin API when its change is durable, or why it is not yet.

    A no-op when both ``store`` and ``path`` are None (no data dir: tests).
    """

    def __init__(
        self,
        store: SqliteStore | None,
        path: str | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as _reactor

            clock = _reactor
        assert clock is not None
        self.clock = clock
        self.store = store
        #: Where to reopen the database when a change comes after ``release``.
        self.path = path
        self.pending: dict[Key, Change] = {}
        self._keep: set[Key] = set()  # keys whose pending change was acknowledged
        self._batch: dict[Key, Change] = {}  # being written now
        self._batch_keep: set[Key] = set()
        self.seq = 0  # changes queued so far
        self.durable_seq = 0
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self._delay = 0.0
        self._inflight: defer.Deferred[Any] | None = None
        self._waiters: list[tuple[int, defer.Deferred[str | None]]] = []

    @classmethod
    def open(cls, path: str, clock: IReactorTime | None = None) -> BlockStore:
        """Open, check (PRAGMA quick_check) and migrate; StoreError names the file and cause."""
        store = SqliteStore(path, synchronous="FULL")  # a few writes a second at most
        try:
            store.migrate(MIGRATIONS, check=True)
        except BaseException:
            store.close()
            raise
        return cls(store, path, clock)

    @property
    def persistent(self) -> bool:
        return self.store is not None or self.path is not None

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def load(self, now: float) -> dict[str, list[tuple[Any, float, str, float]]]:
        """Every unexpired block, by kind ("user", "ip"); blocking, for start-up."""
        if self.store is None:
            return {"user": [], "ip": []}
        try:
            return self.store.run_sync(_load, now)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(self.store.path, describe_error(e)) from e

    def release(self) -> None:
        """Close the database until the next change: a server that never blocks
        anyone keeps no writer thread (and leaves none behind)."""
        if self.store is not None and not self.pending and self._inflight is None:
            self.store.close()
            self.store = None

    def put(
        self, kind: str, key: object, until: float, reason: str, since: float, keep: bool = False
    ) -> int:
        """Queue a block; returns its sequence number. ``keep``: acknowledged, never dropped."""
        return self._queue((kind, str(key), until, reason, since), keep)

    def delete(self, kind: str, key: object, keep: bool = False) -> int:
        return self._queue((kind, str(key), "delete", "", 0.0), keep)

    def _queue(self, change: Change, keep: bool) -> int:
        if not self.persistent:
            return self.seq
        k = (change[0], change[1])
        pending = self.pending
        pending.pop(k, None)  # re-inserted last: the dict stays oldest-first
        if len(pending) >= MAX_PENDING:
            self._drop_oldest()
        pending[k] = change
        if keep:
            self._keep.add(k)
        else:
            self._keep.discard(k)
        self.seq += 1
        return self.seq

    def _drop_oldest(self) -> None:
        for k in self.pending:
            if k not in self._keep:
                del self.pending[k]
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    _log.warn(
                        "security store is behind: dropped {n} unacknowledged changes "
                        "(automatic blocks, expiries); acknowledged ones are kept",
                        n=self.dropped,
                    )
                return

    # -- writing ---------------------------------------------------------------------

    def flush(self, force: bool = False) -> defer.Deferred[Any] | None:
        """Write what is queued, off the reactor thread (one transaction).

        While failing, waits for the backoff unless ``force`` (an admin call
        asks for a fresh attempt).
        """
        if not self.pending or self._inflight is not None:
            return None
        if not force and self.clock.seconds() < self.retry_at:
            return None
        if self.store is None:
            if self.path is None:
                return None
            self.store = SqliteStore(self.path, synchronous="FULL")  # migrated at start-up
        batch, self.pending = self.pending, {}
        keep, self._keep = self._keep, set()
        self._batch, self._batch_keep = batch, keep
        top = self.seq
        d = self.store.run(_write, list(batch.values()))
        self._inflight = d  # before the callbacks: a store may answer synchronously

        def done(n: int) -> None:
            self._inflight = None
            self._batch, self._batch_keep = {}, set()
            self.written += n
            self.durable_seq = max(self.durable_seq, top)
            if self.failing_since is not None:
                _log.info(
                    "security: writing {path} works again after {s:.0f}s; "
                    "every queued change is on disk",
                    path=self.path,
                    s=self.clock.seconds() - self.failing_since,
                )
            self.failing_since = None
            self.last_error = None
            self.retry_at = 0.0
            self._delay = 0.0
            self._notify()

        def failed(f: Failure) -> None:
            self._inflight = None
            self._requeue(batch, keep)
            self._failed(describe_error(f.value), len(batch))

        d.addCallbacks(done, failed)
        return d

    def _requeue(self, batch: dict[Key, Change], keep: set[Key]) -> None:
        """Put a failed batch back, older than anything queued since (which wins)."""
        self._batch, self._batch_keep = {}, set()
        merged = {k: c for k, c in batch.items() if k not in self.pending}
        merged.update(self.pending)
        self.pending = merged
        self._keep |= {k for k in keep if k in batch and batch[k] is merged.get(k)}

    def _failed(self, cause: str, n: int) -> None:
        now = self.clock.seconds()
        self.write_failures += 1
        self._delay = RETRY_FIRST if not self._delay else min(RETRY_MAX, self._delay * 2)
        self.retry_at = now + self._delay
        if self.failing_since is None or cause != self.last_error:
            # Once per state change: the first failure, or a new cause.
            _log.error(
                "security: cannot write {path}: {cause}; {n} block changes kept in memory "
                "(enforced now), retrying with backoff up to {max:g}s",
                path=self.path,
                cause=cause,
                n=n,
                max=RETRY_MAX,
            )
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = cause
        self._notify(True, f"not yet on disk: writing {self.path} failed: {cause}; retrying")

    def _notify(self, failed: bool = False, why: str = "") -> None:
        """Fire the waiters whose change is durable (None), or all of them when a write
        just failed (why): a change queued behind the failed batch waits for the same
        disk, and its caller should hear why now rather than after the backoff."""
        keep = []
        for seq, d in self._waiters:
            if seq <= self.durable_seq:
                d.callback(None)
            elif failed:
                d.callback(why)
            else:
                keep.append((seq, d))
        self._waiters = keep

    def wait(self, seq: int) -> defer.Deferred[str | None]:
        """Fires None once change ``seq`` is durable, or the reason a write of it failed."""
        if seq <= self.durable_seq or not self.persistent:
            return defer.succeed(None)
        entry: list[tuple[int, defer.Deferred[str | None]]] = []

        def cancel(d: defer.Deferred[str | None]) -> None:
            if entry and entry[0] in self._waiters:
                self._waiters.remove(entry[0])

        d: defer.Deferred[str | None] = defer.Deferred(cancel)
        entry.append((seq, d))
        self._waiters.append(entry[0])
        return d

    def flush_sync(self) -> None:
        """Write what is queued (and a batch still in flight) and wait: on stop, in tests."""
        if self.store is None and self.path is not None and (self.pending or self._batch):
            self.store = SqliteStore(self.path, synchronous="FULL")
        if self.store is None or not (self.pending or self._batch):
            return
        changes = {**self._batch, **self.pending}  # rewriting the in-flight batch is harmless
        self.written += self.store.run_sync(_write, list(changes.values()))
        self.pending, self._keep = {}, set()
        self.durable_seq = self.seq
        self._notify()

    def stats(self) -> dict[str, Any]:
        """The store's part of /stats: what is not on disk yet, and why."""
        now = self.clock.seconds()
        return {
            "persistent": self.persistent,
            "pending": len(self.pending) + len(self._batch),
            "in_flight": len(self._batch),
            "written": self.written,
            "write_failures": self.write_failures,
            "dropped": self.dropped,
            "state": "failing" if self.failing else "ok",
            "last_error": self.last_error,
            "failing_for_seconds": None
            if self.failing_since is None
            else round(now - self.failing_since, 3),
            "retry_in_seconds": round(max(0.0, self.retry_at - now), 3) if self.failing else None,
        }

    def close(self) -> None:
        if self.store is None and self.path is not None and (self.pending or self._batch):
            self.store = SqliteStore(self.path, synchronous="FULL")
        self.path = None  # no reopening after this
        if self.store is None:
            return
        try:
            self.flush_sync()
        except Exception as e:
            n = len(self.pending) + len(self._batch)
            _log.critical(
                "security: {n} block changes are lost at exit: cannot write {path}: {cause}",
                n=n,
                path=self.store.path,
                cause=describe_error(e),
            )
        self.store.close()
        self.store = None
