"""gamed the way operators run it: `twistd` *without* -n (README, Operations).

Each test starts a real daemon: `twistd --pidfile --logfile --umask 027 [--uid --gid] gamed`,
on 127.0.0.1 with ports picked by the kernel and read back from the log. Run as root, the
daemon drops to the `nobody` user (its run and data directories are made writable for it).
Every wait is a poll with a deadline; every daemon is stopped (and killed if it must be)
at teardown, and its log checked for tracebacks.
"""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import (
    TWISTD,
    RedisServer,
    WireClient,
    gamed_subcommand,
    heartbeat_ok,
    poll_until,
)

AS_ROOT = os.geteuid() == 0
START_TIMEOUT = 20.0


def alive(pid: int) -> bool:
    """Running (a zombie the init process has not reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Daemon:
    """One `twistd gamed` daemon in its own directory tree under /tmp."""

    def __init__(self, base: Path, *args: str, config: str = "", drop: bool = True) -> None:
        self.run_dir, self.data_dir = base / "run", base / "data"
        self.pidfile, self.logfile = self.run_dir / "gamed.pid", self.run_dir / "gamed.log"
        self.run_dir.mkdir()
        self.data_dir.mkdir()
        ids: list[str] = []
        if AS_ROOT and drop:
            nobody = pwd.getpwnam("nobody")
            for d in (self.run_dir, self.data_dir):  # the daemon writes here after dropping root
                os.chown(d, nobody.pw_uid, nobody.pw_gid)
            ids = ["--uid", str(nobody.pw_uid), "--gid", str(nobody.pw_gid)]
        extra: list[str] = []
        if config:
            (base / "gamed.toml").write_text(config)
            extra = ["--config", str(base / "gamed.toml")]
        self.command = [
            TWISTD,
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
            "--umask",
            "027",
            *ids,
            *gamed_subcommand(self.data_dir, *extra, *args),
        ]
        self.pid: int | None = None
        self.port = self.http_port = 0
        #: twistd's own process: forks the daemon, waits for its word, exits.
        self.launch = subprocess.run(
            self.command, cwd=self.run_dir, capture_output=True, text=True, timeout=START_TIMEOUT
        )

    # -- start and stop ------------------------------------------------------------------

    def started(self) -> Daemon:
        """twistd has returned: the daemon must already be listening, its pidfile written."""
        assert self.launch.returncode == 0, self.launch
        assert self.launch.stdout + self.launch.stderr == "", "a daemon starts silently"
        pid = self._pid()
        assert pid is not None, "the pidfile exists when twistd returns"
        self.pid = int(pid)
        log = self.log()
        game = re.search(r"GameFactory starting on (\d+)", log)
        http = re.search(r"QuietSite starting on (\d+)", log)
        assert game and http, f"both ports are bound when twistd returns:\n{log}"
        self.port, self.http_port = int(game.group(1)), int(http.group(1))
        return self

    def _pid(self) -> str | None:
        try:
            text = self.pidfile.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.pid is not None
        os.kill(self.pid, sig)

    def wait_gone(self, timeout: float) -> float:
        """Seconds until the daemon has exited."""
        assert self.pid is not None
        pid, started = self.pid, time.monotonic()
        poll_until(lambda: not alive(pid), timeout, "the daemon to exit")
        return time.monotonic() - started

    def kill(self) -> None:
        if self.pid is not None and alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            poll_until(lambda: not alive(self.pid), 10, "the killed daemon")

    # -- talking to it -----------------------------------------------------------------

    def client(self, user_id: int | None = None) -> WireClient:
        c = WireClient(self.port)
        if user_id is not None:
            c.connect(user_id)
        return c

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        status, body = self.http("/stats")
        assert status == 200
        return orjson.loads(body)


@pytest.fixture
def daemon() -> Iterator[Callable[..., Daemon]]:
    """A factory: ``daemon("--shutdown-grace", "3")`` launches one; all are gone at teardown."""
    made: list[tuple[Path, Daemon]] = []

    def launch(*args: str, config: str = "", drop: bool = True) -> Daemon:
        # Not under pytest's tmp_path: its parents are 0700 root, out of reach for `nobody`.
        base = Path(tempfile.mkdtemp(prefix="gamed-daemon-"))
        base.chmod(0o755)
        d = Daemon(base, *args, config=config, drop=drop)
        made.append((base, d))
        return d

    yield launch
    for base, d in made:
        try:
            d.kill()
            assert "Traceback" not in d.log(), d.log()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def stop(d: Daemon, timeout: float = 15.0) -> float:
    """SIGTERM; the seconds it took to exit. The pidfile is gone, the log clean."""
    d.signal(signal.SIGTERM)
    took = d.wait_gone(timeout)
    poll_until(lambda: not d.pidfile.exists(), 5, "the pidfile to be removed")
    log = d.log()
    assert "Server Shut Down." in log
    assert "Traceback" not in log, log
    return took


def metric_samples(body: bytes) -> dict[str, float]:
    return {
        s.name: s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if not s.labels
    }


# -- the tests ------------------------------------------------------------------------------


def test_daemon_serves_as_configured(daemon: Callable[..., Daemon]) -> None:
    d = daemon().started()
    assert d.pid != os.getpid() and alive(d.pid)
    if AS_ROOT:
        uids = psutil.Process(d.pid).uids()
        assert (uids.real, uids.effective) == (pwd.getpwnam("nobody").pw_uid,) * 2
    c = d.client()
    c.send({"Connect": {"room_id": 0, "user_id": 7}})
    assert c.recv() == {"ConnectionAck": {"user_id": 7}}
    assert heartbeat_ok(c)
    c.close()
    stores = poll_until(lambda: list(d.data_dir.glob("*.sqlite3")), 10, "the SQLite files")
    for path in stores:
        assert path.stat().st_mode & 0o027 == 0, f"--umask 027: {path} is {path.stat().st_mode:o}"
    assert d.http("/healthz") == (200, b'{\n  "status": "serving"\n}\n')
    stop(d)


def test_metrics_collect_the_daemons_own_rss_and_cpu(daemon: Callable[..., Daemon]) -> None:
    d = daemon(config="[middleware.metrics]\ncollection_interval = 0.2\n").started()
    section = poll_until(
        lambda: (s := d.stats()["metrics"])["collected"] and s, 10, "a metrics collection"
    )
    assert section["memory_mb"] > 0
    assert section["cpu_percent"] >= 0
    status, body = d.http("/metrics")
    assert status == 200
    samples = metric_samples(body)
    rss = samples["gamed_memory_rss_bytes"]
    assert rss > 0
    assert "gamed_cpu_usage_ratio" in samples
    real = psutil.Process(d.pid).memory_info().rss
    assert 0.5 * real < rss < 2 * real, "the RSS of the daemon itself, not of twistd's parent"
    log = d.log()
    assert "metrics collection failed" not in log and "NoSuchProcess" not in log
    stop(d)


def test_sighup_is_logged_and_the_daemon_lives_on(daemon: Callable[..., Daemon]) -> None:
    d = daemon().started()
    before = d.log().count("reload")
    d.signal(signal.SIGHUP)
    poll_until(lambda: d.log().count("reload") > before, 10, "a reload line in the log")
    assert alive(d.pid)
    c = d.client(1)
    assert heartbeat_ok(c)
    c.close()
    stop(d)


def test_sigterm_drains_for_the_grace_then_exits(daemon: Callable[..., Daemon]) -> None:
    grace = 3.0
    d = daemon("--shutdown-grace", f"{grace:g}").started()
    stays, leaves = d.client(1), d.client(2)
    stays.join(4)
    leaves.join(4)
    stays.recv()  # UserJoinedRoom

    d.signal(signal.SIGTERM)
    sent = time.monotonic()
    notice = {"SystemMessage": {"message": "server is shutting down"}}
    assert leaves.recv() == notice
    leaves.close()  # one client leaves at once...
    assert stays.recv() == notice  # ...one stays connected

    # /healthz answers 503 (not a refused connection) while the drain lasts.
    assert poll_until(lambda: d.http("/healthz")[0] == 503, 5, "/healthz 503")
    d.signal(signal.SIGTERM)  # an impatient operator: logged, no second stop (no traceback)
    poll_until(lambda: "SIGTERM while draining" in d.log(), 5, "the second SIGTERM logged")
    late = WireClient(d.port)  # the game port still accepts: a new client is told why
    got = late.expect_closed(timeout=5)
    assert got and got[0]["Error"]["code"] == 503, got

    answers: list[int] = []

    def healthz_until_gone() -> bool:
        try:
            answers.append(d.http("/healthz", timeout=1)[0])
        except OSError:
            return True  # the HTTP port closed: the drain is over
        return False

    poll_until(healthz_until_gone, grace + 10, "the HTTP port to close")
    assert set(answers) == {503}, answers

    # When exactly the grace ends is tests/unit/test_drain.py's business (on a Clock);
    # here: the server closed the client that stayed, and said so, in bounded time.
    assert stays.expect_closed(timeout=10) == []
    closed_after = time.monotonic() - sent
    assert closed_after <= grace + 3, closed_after
    took = d.wait_gone(10) + closed_after
    poll_until(lambda: not d.pidfile.exists(), 5, "the pidfile to be removed")
    log = d.log()
    assert "draining: 2 clients told to leave" in log
    assert f"1 clients still connected after {grace}s; closing them" in log
    assert re.search(r"drained in \d+\.\d\ds", log)
    assert "Server Shut Down." in log and "Traceback" not in log
    assert took < grace + 5


def test_sigterm_ends_early_when_every_client_leaves(daemon: Callable[..., Daemon]) -> None:
    d = daemon("--shutdown-grace", "30").started()
    c = d.client(1)
    d.signal(signal.SIGTERM)
    sent = time.monotonic()
    assert c.recv() == {"SystemMessage": {"message": "server is shutting down"}}
    c.close()
    d.wait_gone(10)
    assert time.monotonic() - sent < 5, "no waiting for the grace once every client has gone"
    poll_until(lambda: not d.pidfile.exists(), 5, "the pidfile to be removed")
    assert "Traceback" not in d.log()


def test_workers_daemonized_pidfile_names_the_supervisor(
    daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    # Not dropped to nobody: a worker is a new exec of the interpreter, and this one
    # lives under /root (0700); test_workers_under_uid_need_an_interpreter_they_may_run.
    d = daemon("--workers", "2", "--redis", redis_server.url(), drop=False).started()
    # twistd returned only once both workers were ready: they serve at once.
    workers = d.stats()["workers"]
    assert [w["ready"] for w in workers] == [True, True]
    children = psutil.Process(d.pid).children()
    assert {c.pid for c in children} == {w["pid"] for w in workers}
    c = d.client(1)
    assert heartbeat_ok(c)
    c.close()
    stop(d)
    assert not any(alive(c.pid) for c in children), "no worker outlives the supervisor"


@pytest.mark.skipif(not AS_ROOT, reason="--uid needs root")
def test_workers_under_uid_need_an_interpreter_they_may_run(
    daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    """Workers are started after the drop to --uid: they run as that user, or, when it may
    not run the interpreter (a Python under /root), the start fails in one line."""
    d = daemon("--workers", "2", "--redis", redis_server.url())
    nobody = pwd.getpwnam("nobody").pw_uid
    if d.launch.returncode == 0:
        d.started()
        children = psutil.Process(d.pid).children()
        assert len(children) == 2
        assert {c.uids().effective for c in children} == {nobody}
        stop(d)
        return
    assert d.launch.returncode == 1, d.launch
    lines = (d.launch.stdout + d.launch.stderr).splitlines()
    assert len(lines) == 2 and "Please look at log file" in lines[1], lines  # twistd's words
    assert "gamed: worker 1 cannot be started: [Errno 13] Permission denied" in lines[0], lines
    assert not d.pidfile.exists()

    def running() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(d.data_dir) in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        return found

    poll_until(lambda: not running(), 10, "the supervisor to exit")
    assert "[gamed.workers.supervisor#critical] gamed: worker 1 cannot be started" in d.log()
    assert "Traceback" not in d.log()


@pytest.mark.parametrize("which", ["--port", "--metrics-port", "--ws-port"])
def test_a_taken_port_exits_1_with_one_line_and_no_pidfile(
    daemon: Callable[..., Daemon], which: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon(which, f"tcp:{port}:interface=127.0.0.1")
    assert d.launch.returncode == 1, d.launch
    lines = (d.launch.stdout + d.launch.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gamed: cannot listen on 127.0.0.1:{port}: "), lines
    assert "Address already in use" in lines[0]
    assert not d.pidfile.exists()
    assert "Traceback" not in d.log()


def test_workers_a_taken_port_exits_1_with_one_line(daemon: Callable[..., Daemon]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = ("--workers", "2", "--redis", "redis://127.0.0.1:6379")
        d = daemon(*cluster, "--ws-port", f"tcp:{port}:interface=127.0.0.1")
    assert d.launch.returncode == 1, d.launch
    lines = (d.launch.stdout + d.launch.stderr).splitlines()
    assert lines == [f"gamed: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use"]
    assert not d.pidfile.exists()


def test_in_the_foreground_a_taken_port_leaves_no_pidfile_either(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pidfile = tmp_path / "gamed.pid"
        r = subprocess.run(
            [
                TWISTD,
                "-n",
                "--pidfile",
                str(pidfile),
                "gamed",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--metrics-port",
                "none",
                "--ws-port",
                "none",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
    assert r.returncode == 1
    assert f"gamed: cannot listen on 127.0.0.1:{port}: " in r.stdout + r.stderr  # -n logs to stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert not pidfile.exists()


@pytest.mark.skipif(not AS_ROOT, reason="--uid needs root")
def test_a_data_dir_the_user_cannot_write_fails_in_one_line() -> None:
    base = Path(tempfile.mkdtemp(prefix="gamed-daemon-"))
    try:
        base.chmod(0o755)
        (base / "run").mkdir()
        (base / "data").mkdir()  # root's, 0755: not writable by nobody
        nobody = pwd.getpwnam("nobody")
        os.chown(base / "run", nobody.pw_uid, nobody.pw_gid)
        r = subprocess.run(
            [
                TWISTD,
                "--pidfile",
                str(base / "run" / "gamed.pid"),
                "--logfile",
                str(base / "run" / "gamed.log"),
                "--uid",
                str(nobody.pw_uid),
                "--gid",
                str(nobody.pw_gid),
                "gamed",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--metrics-port",
                "none",
                "--ws-port",
                "none",
                "--data-dir",
                str(base / "data"),
            ],
            cwd=base / "run",
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        assert r.returncode == 1, r
        assert f"gamed: --data-dir {base / 'data'} is not writable by uid {nobody.pw_uid}" in (
            r.stderr
        )
        assert not (base / "run" / "gamed.pid").exists()
        assert "Traceback" not in (base / "run" / "gamed.log").read_text()
    finally:
        shutil.rmtree(base, ignore_errors=True)
