"""Fault injection against a real `twistd gamed` (issue 12): storage that breaks.

- every SQLite file corrupted before start: exit 1 with one line naming it (foreground
  and daemon mode), never a server running with its bans missing;
- the data dir made read-only while running: a ban is answered 202 (pending, and why),
  enforced at once, written once the permissions return, and survives a restart;
- kill -9 during traffic: every ban answered 200 (durable) is there after the restart.

Making writes fail: the tests run as root, and root ignores file permissions
(CAP_DAC_OVERRIDE), so a chmod alone changes nothing. The server is started with
``--uid/--gid`` of ``nobody`` (as tests/integration/test_daemon.py does) and the test,
as root, takes the data dir and its files away from ``nobody`` (chown root, 0755/0644)
and gives them back. ``chattr +i`` would also stop root, but not through descriptors
opened before it, and mounting a tiny full filesystem needs privileges this machine's
test runs do not have; disk full is covered by the unit tests with
``PRAGMA max_page_count`` (tests/unit/test_fail_closed.py).

- SIGHUP (and the admin reload) with one good and one bad plugin table: nothing applied,
  one log line, the old config kept; once fixed, everything applied (the reload's result
  names the keys).
"""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from gamed.bench.server import GamedServer
from tests.integration.helpers import (
    TWISTD,
    GamedProcess,
    WireClient,
    gamed_subcommand,
    heartbeat_ok,
    poll_until,
)

AS_ROOT = os.geteuid() == 0
ADMIN = "admin-token-for-fault-tests-0123"
START_TIMEOUT = 30.0


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's tmp_path parents are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="gamed-faults-"))
    path.chmod(0o755)
    (path / "admin.token").write_text(ADMIN + "\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nobody_ids() -> list[str]:
    nobody = pwd.getpwnam("nobody")
    return ["--uid", str(nobody.pw_uid), "--gid", str(nobody.pw_gid)]


def hand_to(path: Path, uid: int, gid: int) -> None:
    """chown ``path`` and everything in it (the data dir and its SQLite files)."""
    os.chown(path, uid, gid)
    for child in path.iterdir():
        os.chown(child, uid, gid)


class Server(GamedServer):
    """`twistd -n gamed` with the admin API on, optionally as `nobody`."""

    def __init__(self, workdir: Path, as_nobody: bool = False, *args: str) -> None:
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        twistd_args: list[str] = []
        if as_nobody:
            nobody = pwd.getpwnam("nobody")
            hand_to(data, nobody.pw_uid, nobody.pw_gid)
            twistd_args = nobody_ids()
        token = workdir.parent / "admin.token"
        super().__init__(
            workdir,
            ("--admin-token-file", str(token), *args),
            twistd_args=twistd_args,
            log_name=f"gamed-{time.monotonic_ns()}.log",
        )
        self.data = data

    def client(self, user_id: int) -> WireClient:
        c = WireClient(self.port)
        c.connect(user_id)
        return c

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=15)
        try:
            conn.request(
                method,
                "/admin/" + path,
                body=orjson.dumps(body) if body is not None else None,
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            r = conn.getresponse()
            return r.status, orjson.loads(r.read())
        finally:
            conn.close()


def refused_as_banned(port: int, user_id: int) -> bool:
    c = WireClient(port)
    try:
        c.send({"Connect": {"room_id": 0, "user_id": user_id}})
        answer = c.recv()
    finally:
        c.close()
    return "Error" in answer and answer["Error"]["code"] == 403


def run_twistd(
    base: Path, *args: str, daemon: bool = False, twistd: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """twistd (``twistd`` options first) then gamed, in ``base``/run with data in ``base``/data."""
    run = base / "run"
    run.mkdir(exist_ok=True)
    mode = ["--logfile", str(run / "gamed.log")] if daemon else ["-n"]
    pidfile = ["--pidfile", str(run / "gamed.pid")]
    return subprocess.run(
        [TWISTD, *mode, *pidfile, *twistd, *gamed_subcommand(base / "data", *args)],
        cwd=run,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


# -- corrupt before start --------------------------------------------------------------


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize(
    ("name", "spoil", "cause"),
    [
        ("security.sqlite3", "garbage", "file is not a database"),
        ("security.sqlite3", "directory", "is a directory, not a database file"),
        ("analytics.sqlite3", "garbage", "file is not a database"),
    ],
)
def test_a_corrupt_database_refuses_the_start_in_one_line(
    base: Path, name: str, spoil: str, cause: str, daemon: bool
) -> None:
    # A server that ran once and banned someone: the file exists and matters.
    first = Server(base / "first")
    try:
        assert first.admin("POST", "users/5/ban")[0] == 200
    finally:
        first.stop()
    shutil.copytree(base / "first" / "data", base / "data")
    path = base / "data" / name
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    if spoil == "garbage":
        path.write_bytes(os.urandom(16) + b"this is not a database " * 300)
    else:
        path.unlink()
        path.mkdir()

    r = run_twistd(base, daemon=daemon)
    assert r.returncode == 1, r
    line = f"gamed: cannot use {path}: {cause}"
    # Found before twistd forks (gamed.tap, read-only): the whole line, on the terminal.
    assert r.stderr.splitlines() == [line], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "GameFactory starting" not in r.stdout, "nothing listened"
    assert not (base / "run" / "gamed.pid").exists()


# -- read-only while running -----------------------------------------------------------


@pytest.mark.skipif(not AS_ROOT, reason="needs root to run the server as nobody and chown")
def test_a_ban_on_a_read_only_data_dir_is_pending_then_durable(base: Path) -> None:
    srv = Server(base / "srv", as_nobody=True)
    nobody = pwd.getpwnam("nobody")
    try:
        victim = srv.client(42)
        hand_to(srv.data, 0, 0)  # no longer writable by the server (nobody)
        status, body = srv.admin("POST", "users/42/ban", {"reason": "cheating"})
        assert status == 202, body
        assert body["banned"] is True and body["pending"] is True and body["durable"] is False
        assert "security.sqlite3" in body["why"]
        assert "cheating" in victim.recv_error(403)  # enforced at once: kicked...
        assert refused_as_banned(srv.port, 42)  # ...and refused
        store = srv.stats()["security"]["store"]
        assert store["state"] == "failing" and store["pending"] == 1, store
        assert store["last_error"]
        metrics = srv.http_get("/metrics").decode()
        assert "gamed_security_store_failing 1.0" in metrics
        assert "gamed_security_store_pending_changes 1.0" in metrics

        hand_to(srv.data, nobody.pw_uid, nobody.pw_gid)  # the operator fixes it
        poll_until(
            lambda: srv.stats()["security"]["store"]["pending"] == 0, 20, "the retried write"
        )
        assert srv.stats()["security"]["store"]["state"] == "ok"
        rows = sqlite3.connect(srv.data / "security.sqlite3").execute(
            "SELECT user_id, until, reason FROM user_blocks"
        )
        assert rows.fetchall() == [(42, None, "cheating")]
        assert srv.terminate() in (0, -signal.SIGTERM)
        log = srv.log()
        assert log.count("security: cannot write") == 1, "logged once per state change"
        assert "works again" in log and "Traceback" not in log
    finally:
        hand_to(srv.data, nobody.pw_uid, nobody.pw_gid)
        srv.stop()

    again = Server(base / "srv", as_nobody=True)  # same data dir
    try:
        assert refused_as_banned(again.port, 42)
        assert heartbeat_ok(again.client(43))
    finally:
        again.stop()


# -- kill -9 during traffic ------------------------------------------------------------


def test_kill_9_during_traffic_keeps_every_acknowledged_ban(base: Path) -> None:
    srv = Server(base / "srv", False, "--config", str(base / "gamed.toml"))
    stop = threading.Event()
    sent = [0]

    def chatter(user_id: int) -> None:
        try:
            c = srv.client(user_id)
            c.join(1)
            while not stop.is_set() and sent[0] < 200_000:
                c.chat(1, "hello")
                sent[0] += 1
                c.sock.setblocking(False)
                try:
                    c.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    pass
                finally:
                    c.sock.setblocking(True)
        except (OSError, EOFError, TimeoutError):
            pass  # the server was killed under us

    talkers = [threading.Thread(target=chatter, args=(1000 + i,)) for i in range(4)]
    for t in talkers:
        t.start()
    acknowledged: list[int] = []
    try:
        poll_until(lambda: sent[0] > 200, 10, "traffic")
        for uid in range(1, 41):
            status, body = srv.admin("POST", f"users/{uid}/ban")
            assert status in (200, 202), body
            if status == 200:
                assert body["durable"] is True
                acknowledged.append(uid)
        srv.proc.kill()  # SIGKILL: no flush on stop, no drain
        srv.proc.wait(10)
    finally:
        stop.set()
        for t in talkers:
            t.join(10)
        srv.stop()
    # On a healthy disk a ban is durable in milliseconds; under load one may take over
    # ACK_WAIT and be answered 202 (pending): only the 200s are promised.
    assert len(acknowledged) >= 20, acknowledged

    again = Server(base / "srv")
    try:
        rows = sqlite3.connect(again.data / "security.sqlite3").execute(
            "SELECT user_id FROM user_blocks WHERE until IS NULL"
        )
        on_disk = {uid for (uid,) in rows}
        assert set(acknowledged) <= on_disk, set(acknowledged) - on_disk
        assert again.stats()["security"]["banned_users"] >= len(acknowledged)
        for uid in acknowledged:
            assert refused_as_banned(again.port, uid), uid
        assert heartbeat_ok(again.client(2000))
    finally:
        again.stop()


@pytest.fixture(autouse=True)
def _config(base: Path) -> None:
    """Loopback is allowlisted by default; the kill -9 test's chatter is not rate limited."""
    (base / "gamed.toml").write_text("[middleware.security]\nrate_limit_per_minute = 0\n")


@pytest.mark.skipif(not AS_ROOT, reason="needs root to run the server as nobody")
def test_a_ban_file_the_server_user_cannot_read_refuses_the_start(base: Path) -> None:
    """Found after twistd drops privileges (root passed the preflight): ServerRoot's line."""
    data = base / "data"
    data.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    path = data / "security.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE x (a)").connection.close()
    path.chmod(0o600)  # root's: nobody may neither read nor write it
    run = base / "run"
    run.mkdir()
    os.chown(run, nobody.pw_uid, nobody.pw_gid)  # the pidfile's dir, as the README asks
    r = run_twistd(base, twistd=nobody_ids())
    assert r.returncode == 1, r
    line = f"gamed: cannot use {path}: permission denied (not readable and writable by uid "
    # After logging started, twistd -n logs what reaches stderr: one line in its log (stdout).
    said = [x for x in (r.stdout + r.stderr).splitlines() if "gamed: cannot use" in x]
    assert len(said) == 1 and said[0].endswith(f"{line}{nobody.pw_uid})"), r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (run / "gamed.pid").exists()


# -- reload faults: all or nothing -------------------------------------------------------

RELOAD_ADMIN = "admin-token-for-reload-tests-0123"

GOOD = """
[middleware.security]
rate_limit_per_minute = 100

[middleware.metrics]
collection_interval = 5
"""

# A good security change and a bad metrics key: the reload must apply neither.
HALF_BAD = """
[middleware.security]
rate_limit_per_minute = 5

[middleware.metrics]
collection_interval = "x"
"""

REFUSED = (
    "config reload refused, old config kept: "
    "[middleware.metrics] collection_interval: expected a number, got 'x'"
)


def poll_log(srv: GamedProcess, text: str, count: int = 1, timeout: float = 10.0) -> str:
    """The log once ``text`` appears in it ``count`` times (bounded wait)."""

    def seen() -> str | None:
        log = srv.log()
        return log if log.count(text) >= count else None

    return poll_until(seen, timeout, f"{text!r} {count}x in the log", detail=srv.log_tail)


def admin_reload(srv: GamedProcess) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    try:
        conn.request("POST", "/admin/reload", headers={"Authorization": f"Bearer {RELOAD_ADMIN}"})
        r = conn.getresponse()
        return r.status, orjson.loads(r.read())
    finally:
        conn.close()


def test_sighup_with_a_bad_table_keeps_the_old_config(gamed: Any, tmp_path: Path) -> None:
    path = tmp_path / "gamed.toml"
    path.write_text(GOOD)
    token = tmp_path / "admin.token"
    token.write_text(RELOAD_ADMIN + "\n")
    srv = gamed("--config", str(path), "--admin-token-file", str(token))
    poll_log(srv, "SIGHUP reloads the config")  # the handler is installed in startService

    path.write_text(HALF_BAD)
    srv.proc.send_signal(signal.SIGHUP)
    log = poll_log(srv, REFUSED)
    lines = [line for line in log.splitlines() if "config reload" in line]
    assert len(lines) == 1 and lines[0].endswith(REFUSED), lines
    assert "Traceback" not in log
    stats = srv.stats()
    assert stats["security"]["rate_limit_per_minute"] == 100  # the good half was not applied
    assert stats["metrics"]["collection_interval"] == 5.0

    # The admin API runs the same reload and returns the same refusal.
    status, body = admin_reload(srv)
    assert (status, body) == (409, {"error": REFUSED})
    poll_log(srv, REFUSED, count=2)
    assert srv.stats()["security"]["rate_limit_per_minute"] == 100

    # Fixed: everything is applied, and the reply says what changed.
    path.write_text(HALF_BAD.replace('"x"', "2") + "\n[server]\nround_limit = 4\n")
    status, body = admin_reload(srv)
    assert status == 200, body
    assert body["changed"] == [
        "server.round_limit",
        "middleware.metrics.collection_interval",
        "middleware.security.rate_limit_per_minute",
    ]
    assert body["applied"] == body["changed"]
    assert body["restart_required"] == []
    assert body["reloaded"] == ["security", "metrics", "analytics"]
    poll_log(srv, "config reloaded: changed: server.round_limit")
    stats = srv.stats()
    assert stats["security"]["rate_limit_per_minute"] == 5
    assert stats["metrics"]["collection_interval"] == 2.0
    assert stats["games"]["round_limit"] == 4
    assert srv.proc.poll() is None
