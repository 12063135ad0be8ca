"""The real service tree on a MemoryReactorClock, for unit tests (no sockets)."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock

from gamed import tap


def build(tmp_path: Path, *extra: str) -> tuple[MultiService, MemoryReactorClock]:
    """``makeService`` with test ports 7001/9701 and a data dir under ``tmp_path``."""
    options = tap.Options()
    options.parseOptions(
        [
            "--port",
            "tcp:7001",
            "--metrics-port",
            "tcp:9701:interface=127.0.0.1",
            "--data-dir",
            str(tmp_path / "d"),
            *extra,
        ]
    )
    reactor = MemoryReactorClock()
    return tap.makeService(options, reactor=reactor), reactor
