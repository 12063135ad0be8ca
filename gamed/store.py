"""SQLite, kept off the reactor thread.

Each store owns one database file and one dedicated thread that holds the only
connection: writes are serialised without locks, and the reactor never waits
on disk. ``run`` returns a Deferred; ``run_sync`` blocks and is meant for
start-up (loading state before the first client is accepted) and tests.

The thread (and so the connection) starts on first use, not in the
constructor: twistd forks after ``makeService``, and a thread started before
the fork does not exist in the daemon. A store first used in one process and
then in a forked child refuses the call instead of hanging.

A database that cannot be used (garbage over the file, a directory in its
place, no permission, a failed integrity check) raises ``StoreError`` from
``migrate``: one line naming the file and the cause, which gamed.service turns
into a refused start (fail closed) rather than a server with its state missing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.request import pathname2url

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

_log = Logger()
T = TypeVar("T")

#: One schema step: SQL (may hold several statements) or a function of the connection.
Migration = str | Callable[[sqlite3.Connection], None]


class StoreError(RuntimeError):
    """A database gamed cannot use; ``str()`` is one line naming the file and the cause."""

    def __init__(self, path: str, cause: str) -> None:
        cause = " ".join(cause.split())  # one line, whatever SQLite said
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause


def describe_error(error: BaseException | None) -> str:
    """The cause of a storage error in a few words ("database or disk is full")."""
    if error is None:
        return "unknown error"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def precheck(path: str) -> None:
    """Raise StoreError for what SQLite reports only as "unable to open database file"."""
    if path == ":memory:" or not os.path.lexists(path):
        return
    if os.path.isdir(path):
        raise StoreError(path, "is a directory, not a database file")
    if not os.path.isfile(path):
        raise StoreError(path, "is not a regular file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(
            path, f"permission denied (not readable and writable by uid {os.getuid()})"
        )


def preflight(path: str, check: bool = False) -> None:
    """A read-only look at an existing database: StoreError if it cannot be used.

    For makeService, before twistd forks (daemon mode): the line then reaches
    the operator's terminal whole. It creates nothing (``immutable=1``: no
    journal, no -shm file owned by root before --uid applies) and reads only the
    main file, so a missing file passes; ``migrate`` checks again in the server.
    """
    precheck(path)
    if path == ":memory:" or not os.path.exists(path):
        return
    try:
        conn = sqlite3.connect(f"file:{pathname2url(path)}?immutable=1", uri=True)
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # reads the header
            if check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise StoreError(path, "integrity check failed: " + "; ".join(problems))
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise StoreError(path, describe_error(e)) from e


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


def transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` in one transaction; its own error is the one raised.

    SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR): a
    ROLLBACK then fails with "cannot rollback - no transaction is active", and
    that must not replace the cause ("database or disk is full"). A failed
    COMMIT is rolled back too, so the next transaction starts clean.
    """
    conn.execute("BEGIN")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised is the one that explains it
        raise
    return result


class SqliteStore:
    def __init__(self, path: str, reactor: Any = None, synchronous: str = "NORMAL") -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.path = path
        #: PRAGMA synchronous: NORMAL survives a process crash; FULL also a power loss.
        self.synchronous = synchronous
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
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.execute("PRAGMA busy_timeout=5000")
            except BaseException:
                conn.close()  # a retry opens a fresh one; never leak a half-set-up connection
                raise
            self._conn = conn
        return self._conn

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return transaction(self._connection(), fn, *args)
        except sqlite3.Error:
            # Reconnect next time: a connection SQLite opened read-only (the
            # directory or file was not writable then) stays read-only after the
            # permissions return, and a retry must see the file as it is now.
            if self._conn is not None and self.path != ":memory:":
                self._conn.close()
                self._conn = None
            raise

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

    def migrate(self, steps: Sequence[Migration], check: bool = False) -> int:
        """Bring the schema to ``len(steps)`` (PRAGMA user_version); returns the version.

        Any failure is a StoreError naming the file and the cause, and closes
        the store. ``check`` runs ``PRAGMA quick_check`` first (O(size): for
        small databases whose loss matters, like the bans).
        """
        precheck(self.path)

        def apply(conn: sqlite3.Connection) -> int:
            if check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise StoreError(self.path, "integrity check failed: " + "; ".join(problems))
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(steps):
                raise StoreError(
                    self.path,
                    f"schema version {version}, newer than this gamed "
                    f"({len(steps)}): refusing to touch it",
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
        except StoreError:
            self.close()  # do not leave the thread behind a failed start-up
            raise
        except (sqlite3.Error, OSError) as e:
            self.close()
            raise StoreError(self.path, describe_error(e)) from e
        except BaseException:
            self.close()
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
