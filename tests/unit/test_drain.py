"""The drain a load balancer can use: the whole service tree on a MemoryReactorClock.

On stop, ServerRoot drains before it stops anything: both listeners stay up,
/healthz answers 503, a new game connection gets Error 503, connected clients
get a SystemMessage and may leave; after ``--shutdown-grace`` the rest are
closed; then every service stops as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from twisted.internet.error import ConnectionDone
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from gamed.router import DRAIN_FLUSH_SECONDS
from tests.unit.fakes import MemoryServer, parse_frames, send


def started(tmp_path: Path, *extra: str) -> MemoryServer:
    """The service tree (no middleware), started, with extra options."""
    return MemoryServer(tmp_path, "--middleware", "none", *extra, start=True)


def frames(proto: Any) -> list[Any]:
    """What ``proto`` was sent since the last call."""
    out = parse_frames(proto.transport.value())
    proto.transport.clear()
    return out


def listeners_running(server: MemoryServer) -> tuple[bool, bool]:
    game = server.service.getServiceNamed("game").getServiceNamed("game-listener")
    http = server.service.getServiceNamed("http-listener")
    return game.running, http.running


def test_listeners_stay_up_until_the_clients_have_left(tmp_path: Path) -> None:
    server = started(tmp_path, "--shutdown-grace", "5")
    stays, leaves = server.client(), server.client()
    send(stays, {"Connect": {"room_id": 0, "user_id": 1}})
    send(leaves, {"Connect": {"room_id": 0, "user_id": 2}})
    frames(stays), frames(leaves)

    d = server.service.stopService()
    fired: list[Any] = []
    d.addBoth(fired.append)
    for proto in (stays, leaves):
        assert frames(proto) == [{"SystemMessage": {"message": "server is shutting down"}}]
    leaves.connectionLost(Failure(ConnectionDone()))  # one leaves at once
    assert not fired
    assert listeners_running(server) == (True, True)
    code, _, body = server.get(b"/healthz")
    assert (code, orjson.loads(body)) == (503, {"status": "draining"})
    late = server.client()  # the game listener still accepts: the client is told why
    (error,) = frames(late)
    assert error["Error"]["code"] == 503
    assert late.transport.disconnecting

    server.reactor.advance(4.9)
    assert not fired and not stays.transport.disconnecting
    assert server.get(b"/healthz")[0] == 503
    server.reactor.advance(0.1)  # the grace is over: the rest are closed
    assert stays.transport.disconnecting
    assert not fired
    stays.connectionLost(Failure(ConnectionDone()))
    assert len(fired) == 1
    assert listeners_running(server) == (False, False)
    assert not server.service.running


def test_clients_leaving_end_the_drain_before_the_grace(tmp_path: Path) -> None:
    server = started(tmp_path, "--shutdown-grace", "30")
    a = server.client()
    d = server.service.stopService()
    fired: list[Any] = []
    d.addBoth(fired.append)
    assert listeners_running(server) == (True, True)
    a.connectionLost(Failure(ConnectionDone()))
    assert len(fired) == 1, "no waiting for the grace once everyone has gone"
    assert listeners_running(server) == (False, False)


def test_a_client_that_never_goes_is_aborted_and_the_stop_is_bounded(tmp_path: Path) -> None:
    server = started(tmp_path, "--shutdown-grace", "2")
    stuck = server.client()
    aborted: list[bool] = []
    stuck.transport.abortConnection = lambda: aborted.append(True)
    fired: list[Any] = []
    server.service.stopService().addBoth(fired.append)
    server.reactor.advance(2)
    assert stuck.transport.disconnecting and not aborted and not fired
    server.reactor.advance(DRAIN_FLUSH_SECONDS)
    assert aborted
    assert len(fired) == 1
    assert listeners_running(server) == (False, False)


def test_without_clients_the_stop_is_immediate(tmp_path: Path) -> None:
    server = started(tmp_path)
    fired: list[Any] = []
    server.service.stopService().addBoth(fired.append)
    assert len(fired) == 1
    assert listeners_running(server) == (False, False)


def test_drain_is_logged_with_its_duration(tmp_path: Path) -> None:
    server = started(tmp_path, "--shutdown-grace", "5")
    a = server.client()
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        server.service.stopService()
        server.reactor.advance(1.5)
        a.connectionLost(Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    formats = [e.get("log_format", "") for e in seen]
    assert any(f.startswith("draining: {n} clients") for f in formats), formats
    (done,) = [e for e in seen if e.get("log_format") == "drained in {s:.2f}s"]
    assert done["s"] == 1.5
