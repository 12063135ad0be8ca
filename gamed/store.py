"""SQLite, kept off the reactor thread.

Each store owns one database file and one dedicated thread that holds the only
connection: writes are serialised without locks, and the reactor never waits
on disk. ``run`` returns a Deferred; ``run_sync`` blocks and is meant for
start-up (loading state before the first client is accepted) and tests.

The thread (and so the connection) starts on first use, not in the
constructor: twistd forks after ``makeService``, and a thread started before
the fork does not exist in the daemon. A store first used in one process and
then in a forked child refuses the call instead of hanging.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

_log = Logger()
T = TypeVar("T")

#: One schema step: SQL (may hold several statements) or a function of the connection.
Migration = str | Callable[[sqlite3.Connection], None]


class _DaemonThread(threading.Thread):
    """A Thread that is always a daemon: a class, because ThreadPool.threadFactory is typed as one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["daemon"] = True
        super().__init__(*args, **kwargs)


def split_sql(script: str) -> list[str]:
    """Split a script into complete statements (semicolons inside strings or
    trigger bodies do not end a statement)."""
    statements, buf = [], ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                statements.append(buf.strip())
            buf = ""
    if buf.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement: {buf.strip()[:80]!r}")
    return statements


class SqliteStore:
    def __init__(self, path: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.path = path
        self._reactor = reactor
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"sqlite:{os.path.basename(path)}")
        # A daemon thread: a store someone forgot to close must not keep the
        # process alive at exit. Durability comes from close()/flush on stop.
        self._pool.threadFactory = _DaemonThread
        self._pid: int | None = None  # the process whose thread we started
        self._closed = False

    @property
    def started(self) -> bool:
        """True once the store's thread runs (first ``run``/``run_sync``/``migrate``)."""
        return self._pid is not None

    def _ready_pool(self) -> ThreadPool:
        """The started thread pool; starts it on first use, in this process."""
        if self._pid is None:
            self._pool.start()
            self._pid = os.getpid()
        elif self._pid != os.getpid():
            raise RuntimeError(
                f"sqlite store {self.path} was started in process {self._pid} and used in "
                f"{os.getpid()} (after a fork): open stores in startService"
            )
        return self._pool

    # -- in the store's thread ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
        return self._conn

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- from the reactor -------------------------------------------------------------

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``fn(connection, *args)`` in one transaction in the store's thread."""
        if self._closed:
            return defer.fail(RuntimeError(f"store {self.path} is closed"))
        try:
            pool = self._ready_pool()
        except RuntimeError:
            return defer.fail()
        return threads.deferToThreadPool(self._reactor, pool, self._transaction, fn, *args)

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Like ``run`` but blocks the caller; for start-up and tests only."""
        if self._closed:
            raise RuntimeError(f"store {self.path} is closed")
        done = threading.Event()
        box: list[Any] = []

        def finished(ok: bool, result: Any) -> None:
            box.append((ok, result))
            done.set()

        self._ready_pool().callInThreadWithCallback(finished, self._transaction, fn, *args)
        if not done.wait(timeout):
            raise TimeoutError(f"sqlite store {self.path} did not answer in {timeout}s")
        ok, result = box[0]
        if not ok:
            assert isinstance(result, Failure)
            result.raiseException()
        return result

    def migrate(self, steps: Sequence[Migration]) -> int:
        """Bring the schema to ``len(steps)`` (PRAGMA user_version); returns the version."""

        def apply(conn: sqlite3.Connection) -> int:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(steps):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this gamed "
                    f"({len(steps)}): refusing to touch it"
                )
            for number, step in enumerate(steps[version:], start=version + 1):
                if callable(step):
                    step(conn)
                else:
                    for statement in split_sql(step):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                _log.info("{path}: schema migrated to version {n}", path=self.path, n=number)
            return len(steps)

        try:
            return self.run_sync(apply)
        except BaseException:
            self.close()  # do not leave the thread behind a failed start-up
            raise

    def close(self) -> None:
        """Finish queued work, close the connection and stop the thread."""
        if self._closed:
            return
        if self._pid != os.getpid():
            # Never used (no thread, no connection), or a forked copy whose
            # thread lives only in the parent: nothing of ours to stop.
            self._closed = True
            return

        def shut(_: Any) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            self.run_sync(lambda conn: None)
        except Exception:
            pass
        self._closed = True
        done = threading.Event()
        self._pool.callInThreadWithCallback(lambda ok, r: done.set(), shut, None)
        done.wait(10)
        self._pool.stop()
