"""Daemon mode start-up failures: one line, exit 1, no stale pidfile, never a hang.

twistd's UnixApplicationRunner forks, writes the pidfile, and only then calls
privilegedStartService; its first process waits for the child's word on a
status pipe. gamed probes its ports in makeService (before the fork) and, if a
bind still fails after it, reports through that pipe.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from gamed import tap
from gamed.service import ServerRoot, daemon_launcher, probe_listen


@pytest.fixture
def taken() -> Iterator[int]:
    """A port on 127.0.0.1 that someone else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


class Launcher(dict[str, Any]):
    """The bits of twistd's ServerOptions gamed reads."""


def options_under_twistd(parent: dict[str, Any], *args: str) -> tap.Options:
    options = tap.Options()
    options.parent = parent  # type: ignore[assignment]  # as usage.Options does for a subcommand
    options.parseOptions(list(args))
    return options


def daemon_options(tmp_path: Path, *args: str, nodaemon: bool = False) -> tap.Options:
    """gamed's options as twistd passes them (daemon mode unless ``nodaemon``), data under tmp."""
    launcher = Launcher(nodaemon=nodaemon, debug=False)
    return options_under_twistd(launcher, *args, "--data-dir", str(tmp_path / "d"))


def test_launcher_only_when_twistd_will_fork() -> None:
    assert daemon_launcher(tap.Options()) is None  # not under twistd (tests, tools)
    for nodaemon, debug, expected in (
        (False, False, True),
        (True, False, False),
        (False, True, False),
    ):
        options = tap.Options()
        options.parent = Launcher(nodaemon=nodaemon, debug=debug)  # type: ignore[assignment]
        assert (daemon_launcher(options) is not None) is expected


def test_probe_names_a_taken_port(taken: int) -> None:
    line = probe_listen([f"tcp:{taken}:interface=127.0.0.1:backlog=1024"], MemoryReactorClock())
    assert line is not None
    assert line.startswith(f"gamed: cannot listen on 127.0.0.1:{taken}: ")
    assert "Address already in use" in line


def test_probe_passes_free_ephemeral_and_non_tcp_endpoints(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    reactor = MemoryReactorClock()
    assert probe_listen([f"tcp:{free}:interface=127.0.0.1"], reactor) is None
    assert probe_listen(["tcp:0:interface=127.0.0.1", f"unix:{tmp_path / 's'}"], reactor) is None
    assert not (tmp_path / "s").exists(), "a probe never creates what it does not bind"


def test_make_service_in_daemon_mode_exits_before_the_fork(tmp_path: Path, taken: int) -> None:
    busy = f"tcp:{taken}:interface=127.0.0.1"
    options = daemon_options(
        tmp_path, "--port", busy, "--metrics-port", "none", "--ws-port", "none"
    )
    with pytest.raises(SystemExit, match=rf"^gamed: cannot listen on 127\.0\.0\.1:{taken}: "):
        tap.makeService(options, reactor=MemoryReactorClock())


def test_the_http_port_is_probed_too(tmp_path: Path, taken: int) -> None:
    busy = f"tcp:{taken}:interface=127.0.0.1"
    options = daemon_options(
        tmp_path, "--port", "tcp:0:interface=127.0.0.1", "--metrics-port", busy
    )
    with pytest.raises(SystemExit, match=rf"127\.0\.0\.1:{taken}"):
        tap.makeService(options, reactor=MemoryReactorClock())


def test_foreground_make_service_does_not_probe(tmp_path: Path, taken: int) -> None:
    """-n: the bind in privilegedStartService reports it, on the same terminal."""
    busy = f"tcp:{taken}:interface=127.0.0.1"
    options = daemon_options(tmp_path, "--port", busy, nodaemon=True)
    service = tap.makeService(options, reactor=MemoryReactorClock())  # no SystemExit
    assert service.launcher is not None and service.launcher.get("statusPipe") is None


class FailingBind(Service):
    def privilegedStartService(self) -> None:
        raise CannotListenError("127.0.0.1", 7000, OSError(errno.EADDRINUSE, "in use"))


def test_a_bind_failing_after_the_fork_goes_through_the_status_pipe(tmp_path: Path) -> None:
    pidfile = tmp_path / "gamed.pid"
    pidfile.write_text(str(os.getpid()))
    r, w = os.pipe()
    root = ServerRoot()
    root.launcher = Launcher(nodaemon=False, statusPipe=w, pidfile=str(pidfile))
    FailingBind().setServiceParent(root)
    try:
        with pytest.raises(SystemExit, match=r"cannot listen on 127\.0\.0\.1:7000"):
            root.privilegedStartService()
        said = os.read(r, 200)
        assert os.read(r, 1) == b"", "the pipe is closed: twistd's parent stops waiting"
    finally:
        os.close(r)
    assert said.startswith(b"1 gamed: cannot listen on 127.0.0.1:7000: ")
    assert len(said) <= 100  # twistd's parent reads 100 bytes
    assert not pidfile.exists()
    assert root.launcher["statusPipe"] is None


def test_foreground_bind_failure_touches_no_pipe() -> None:
    root = ServerRoot()
    FailingBind().setServiceParent(root)
    with pytest.raises(SystemExit):
        root.privilegedStartService()


def test_a_foreground_bind_failure_removes_twistds_pidfile(tmp_path: Path) -> None:
    """twistd writes the pidfile before binding and removes it only for an Exception."""
    pidfile = tmp_path / "gamed.pid"
    pidfile.write_text(str(os.getpid()))
    root = ServerRoot()
    root.launcher = Launcher(nodaemon=True, pidfile=str(pidfile))
    FailingBind().setServiceParent(root)
    with pytest.raises(SystemExit):
        root.privilegedStartService()
    assert not pidfile.exists()


def test_a_data_dir_the_dropped_user_cannot_write_is_one_line(tmp_path: Path) -> None:
    r, w = os.pipe()
    root = ServerRoot()
    root.launcher = Launcher(nodaemon=False, statusPipe=w, pidfile="")
    root.data_dir = str(tmp_path / "missing")  # as root, os.access passes any existing dir
    try:
        with pytest.raises(SystemExit, match=r"^gamed: --data-dir .*missing is not writable"):
            root.startService()
        said = os.read(r, 200)
    finally:
        os.close(r)
    assert said.startswith(b"1 gamed: --data-dir ")
    assert not root.running
