"""The command line of a private redis-server, for the benchmarks and the tests' RedisServer.

One place, so that every redis-server gamed's tools start is the same kind: on 127.0.0.1
only, in the foreground (its parent stops it), and with no persistence (nothing outlives
a run, nothing is written but its own directory).
"""

from __future__ import annotations

from pathlib import Path


def redis_server_argv(exe: str, port: int, workdir: str | Path) -> list[str]:
    """``redis-server`` (``exe``) on 127.0.0.1:``port``, its files in ``workdir``; add options after."""
    return [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(workdir),
    ]
