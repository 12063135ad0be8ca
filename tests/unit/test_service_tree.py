"""gamed.tap.makeService on a MemoryReactorClock: the service tree, its listeners, its stop."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from twisted.application.service import IService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gamed import tap
from gamed.protocol import GameFactory
from gamed.router import Router
from gamed.service import GameService, ServerRoot
from gamed.web import QuietSite
from gamed.ws_site import WebSocketSite
from tests.unit.fakes import memory_service


def start(service: IService) -> None:
    service.privilegedStartService()
    service.startService()


def servers(reactor: MemoryReactorClock) -> dict[int, tuple]:
    return {
        port: (factory, backlog, interface)
        for port, factory, backlog, interface in reactor.tcpServers
    }


def test_tree_listens_on_the_three_ports(tmp_path: Path) -> None:
    service, reactor = memory_service(tmp_path)
    assert isinstance(service, ServerRoot)
    assert reactor.tcpServers == []  # nothing binds before the service starts
    start(service)
    try:
        bound = servers(reactor)
        assert set(bound) == {7001, 7081, 9701}
        assert bound[9701][2] == "127.0.0.1"
        assert bound[7001][2] == ""  # all interfaces
        assert bound[7081][2] == ""  # a player port too
        assert isinstance(bound[7001][0], GameFactory)
        assert isinstance(bound[9701][0], QuietSite)
        assert isinstance(bound[7081][0], WebSocketSite)
        assert service.running
    finally:
        service.stopService()


def test_data_dir_is_created(tmp_path: Path) -> None:
    target = tmp_path / "d"
    assert not target.exists()
    memory_service(tmp_path)
    assert target.is_dir()


def test_named_children(tmp_path: Path) -> None:
    service, _ = memory_service(tmp_path)
    game = service.getServiceNamed("game")
    assert isinstance(game, GameService)
    assert game.getServiceNamed("game-listener") is not None
    assert game.getServiceNamed("ws-listener") is not None  # drained with the game port
    assert service.getServiceNamed("http-listener") is not None
    assert isinstance(service.router, Router)
    assert game.router is service.router


def test_router_gets_the_settings(tmp_path: Path) -> None:
    service, reactor = memory_service(tmp_path, "--max-room-users", "3", "--middleware", "none")
    router = service.router
    assert router.settings.max_room_users == 3
    assert router.rooms.max_room_users == 3
    assert router.clock is reactor
    assert router.pipeline.names == ()


def listening_ports(service: IService, reactor: MemoryReactorClock) -> list[int]:
    """The ports bound once ``service`` has started (it is stopped again)."""
    start(service)
    try:
        return [port for port, *_ in reactor.tcpServers]
    finally:
        service.stopService()


def test_metrics_port_none_gives_only_the_game_listener(tmp_path: Path) -> None:
    service, reactor = memory_service(tmp_path, "--metrics-port", "none", "--ws-port", "none")
    with pytest.raises(KeyError):
        service.getServiceNamed("http-listener")
    with pytest.raises(KeyError):
        service.getServiceNamed("game").getServiceNamed("ws-listener")
    assert listening_ports(service, reactor) == [7001]


def test_make_service_accepts_a_settings_dict(tmp_path: Path) -> None:
    options = tap.Options()
    options.parseOptions(
        ["--port", "tcp:7005", "--metrics-port", "none", "--ws-port", "none", "-d", str(tmp_path)]
    )
    reactor = MemoryReactorClock()
    service = tap.makeService({"settings": options.settings}, reactor=reactor)
    assert listening_ports(service, reactor) == [7005]


def test_stop_drains_and_fires(tmp_path: Path) -> None:
    service, _reactor = memory_service(tmp_path)
    start(service)
    router = service.router
    assert not router.draining
    assert router.connections == set()
    d = service.stopService()
    results: list = []
    d.addBoth(results.append)
    assert len(results) == 1, "with no connections the stop completes at once"
    assert not isinstance(results[0], Failure)
    assert router.draining
    assert not service.running


def test_game_service_stop_fires_only_after_drain(tmp_path: Path) -> None:
    """The game child's Deferred waits for the router's drain."""
    service, _reactor = memory_service(tmp_path)
    start(service)
    game = service.getServiceNamed("game")
    router = service.router
    pending: defer.Deferred[None] = defer.Deferred()
    router.drain = lambda *a: pending  # a client that has not closed yet
    d = game.stopService()
    fired: list = []
    d.addBoth(fired.append)
    assert router.draining
    assert fired == []
    pending.callback(None)
    assert len(fired) == 1


# -- ServerRoot: a failed bind becomes one clear line ------------------------------------------


class FailingBind(Service):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def privilegedStartService(self) -> None:
        raise self.error


def test_cannot_listen_becomes_system_exit() -> None:
    root = ServerRoot()
    err = OSError(errno.EADDRINUSE, "Address already in use")
    FailingBind(CannotListenError("127.0.0.1", 9701, err)).setServiceParent(root)
    with pytest.raises(SystemExit) as info:
        root.privilegedStartService()
    text = str(info.value.code)
    assert text.startswith("gamed: cannot listen on 127.0.0.1:9701")
    assert "Address already in use" in text
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_cannot_listen_on_all_interfaces_names_them() -> None:
    root = ServerRoot()
    err = OSError(errno.EACCES, "Permission denied")
    FailingBind(CannotListenError("", 80, err)).setServiceParent(root)
    with pytest.raises(SystemExit, match=r"cannot listen on 0\.0\.0\.0:80: .*Permission denied"):
        root.privilegedStartService()


def test_other_errors_are_not_swallowed() -> None:
    root = ServerRoot()
    FailingBind(RuntimeError("unrelated")).setServiceParent(root)
    with pytest.raises(RuntimeError, match="unrelated"):
        root.privilegedStartService()


def test_real_tree_with_a_taken_port_exits_cleanly(tmp_path: Path) -> None:
    service, reactor = memory_service(tmp_path)

    def refuse(port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))

    reactor.listenTCP = refuse
    with pytest.raises(SystemExit, match=r"cannot listen on 0\.0\.0\.0:7001"):
        service.privilegedStartService()
