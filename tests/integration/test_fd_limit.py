"""Too few file descriptors (issue 12 item 11), on a real `twistd -n gamed` started with a low
`ulimit -n`: one warning at start; a connection flood past the limit leaves /healthz and
/metrics answering, logs one line per episode, no EMFILE storm and no traceback."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

from gamed.bench.server import GamedServer
from gamed.fdlimit import FD_HEADROOM

LIMIT = 256


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def flood(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_flood_past_the_open_file_limit(tmp_path: Path) -> None:
    srv = GamedServer(tmp_path, ["--idle-timeout", "0"], preexec_fn=low_nofile)
    socks: list[socket.socket] = []
    try:
        log = srv.log()
        assert log.count("open-file limit 256 (hard 256) is below the 10100") == 1, log
        for episode in (1, 2):
            socks = flood(srv.port, LIMIT * 2)  # twice the limit: accept would hit EMFILE
            assert wait_for(lambda n=episode: srv.log().count("out of file descriptors") == n)
            # The HTTP port keeps answering meanwhile.
            for path in ("/healthz", "/metrics", "/stats"):
                assert srv.http_get(path)
            assert srv.stats()["connections"] == LIMIT - FD_HEADROOM
            for s in socks:
                s.close()
            socks = []
            assert wait_for(lambda: srv.stats()["connections"] == 0)
            assert wait_for(
                lambda n=episode: srv.log().count("accepting game connections again") == n
            )
        log = srv.log()
        assert log.count("out of file descriptors") == 2
        assert "EMFILE" not in log and "Too many open files" not in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        for s in socks:
            s.close()
        srv.stop()
