"""Every class that declares a zope interface really provides it (``verifyObject``).

Each object is checked against *every* interface it provides (those of its base
classes too), so a method renamed, dropped or given a new signature fails here.
The unit fakes are checked as well: a fake that drifts from its seam would let
tests pass against something the server never does.

A new ``@implementer`` class under gamed/ fails the completeness test until it
gets a case in ``CASES``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementedBy, providedBy
from zope.interface.verify import verifyObject

import gamed
from gamed.bench import fanout_micro, hot_path_micro, snapshot_micro, wsframe
from gamed.cluster.games import ClusterGames, RemotePlayer
from gamed.cluster.node import ClusterNode
from gamed.cluster.shared import SharedState
from gamed.config import Settings
from gamed.events import EventBus
from gamed.games import Games, NullGames
from gamed.middleware.analytics.middleware import AnalyticsMiddleware
from gamed.middleware.analytics.web import SseClient
from gamed.middleware.metrics.middleware import MetricsMiddleware
from gamed.middleware.metrics.prom import PipelineTimer
from gamed.middleware.security.middleware import SecurityMiddleware
from gamed.protocol import ConnectionContext, GameProtocol
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.solo import NullCluster
from gamed.websocket import GameWebSocketFactory, WebSocketConnection
from gamed.workers.listen import InheritedEndpoint
from gamed.workers.worker import ReportingEndpoint
from tests.unit.fakes import (
    Ctx,
    FakeCluster,
    FakeConnection,
    FakeLink,
    FakeServerControl,
    FakeSharedState,
    Member,
    MemoryServer,
    SharedHub,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryServer]:
    """The real service tree with every plugin, not started (no threads, no files written)."""
    server = MemoryServer(
        tmp_path_factory.mktemp("interfaces"), "--middleware", "security,metrics,analytics"
    )
    yield server
    server.stop()


def websocket(tree: MemoryServer) -> WebSocketConnection:
    """An open WebSocket connection: autobahn's handshake on a StringTransport."""
    factory = GameWebSocketFactory(tree.router, tree.router.clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    request, _accept = wsframe.handshake_request("127.0.0.1", 7080)
    proto.dataReceived(request)
    assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
    return proto


def cluster_games(tree: MemoryServer) -> ClusterGames:
    """A node's game service on its own Games (the tree's is a single process's)."""
    rooms = tree.router.rooms
    return ClusterGames(Games(Clock(), rooms, EventBus(), Settings()), rooms, Clock())


def plugin(tree: MemoryServer, cls: type) -> Any:
    (found,) = [mw for mw in tree.router.pipeline.middleware if isinstance(mw, cls)]
    return found


#: class -> how to get a real instance cheaply from the service tree.
CASES: dict[type, Callable[[MemoryServer], Any]] = {
    Router: lambda tree: tree.router,
    RoomService: lambda tree: tree.router.rooms,
    Games: lambda tree: tree.router.games,
    NullGames: lambda tree: NullGames(),
    NullCluster: lambda tree: NullCluster(),
    ClusterNode: lambda tree: ClusterNode(
        Settings(redis="redis://127.0.0.1:6379/0"), Clock(), tree.router.rooms
    ),
    ClusterGames: lambda tree: cluster_games(tree),
    RemotePlayer: lambda tree: RemotePlayer(cluster_games(tree), 5, 2, "b", "n2"),
    EventBus: lambda tree: tree.router.events,
    GameProtocol: lambda tree: tree.client(),
    WebSocketConnection: websocket,
    ConnectionContext: lambda tree: tree.client().ctx,
    SecurityMiddleware: lambda tree: plugin(tree, SecurityMiddleware),
    MetricsMiddleware: lambda tree: plugin(tree, MetricsMiddleware),
    AnalyticsMiddleware: lambda tree: plugin(tree, AnalyticsMiddleware),
    PipelineTimer: lambda tree: PipelineTimer(),
    SseClient: lambda tree: SseClient(DummyRequest([b""]), None, 1024),
    hot_path_micro._Ctx: lambda tree: hot_path_micro._Ctx(Clock()),
    fanout_micro._Reactor: lambda tree: fanout_micro._Reactor(),
    snapshot_micro._Player: lambda tree: snapshot_micro._Player(1),
    InheritedEndpoint: lambda tree: InheritedEndpoint(Clock(), 3, 2),
    ReportingEndpoint: lambda tree: ReportingEndpoint(InheritedEndpoint(Clock(), 3, 2)),
    # The unit fakes stand in for these seams; they must keep to them.
    Ctx: lambda tree: Ctx(),
    FakeConnection: lambda tree: FakeConnection(tree.router),
    FakeCluster: lambda tree: FakeCluster(),
    FakeServerControl: lambda tree: FakeServerControl(),
    Member: lambda tree: Member(1),
    SharedState: lambda tree: SharedState(FakeLink(), "node-a", Clock()),  # type: ignore[arg-type]
    FakeSharedState: lambda tree: SharedHub(Clock()).node("a"),
}


@pytest.mark.parametrize("cls", list(CASES), ids=lambda cls: cls.__name__)
def test_provides_every_interface_it_declares(tree: MemoryServer, cls: type) -> None:
    obj = CASES[cls](tree)
    # A WebSocketConnection is an instance of its factory's own direct subclass
    # (what its connections share: gamed.websocket, _compact).
    assert type(obj) is cls or type(obj).__bases__ == (cls,)
    interfaces = list(providedBy(obj))
    assert interfaces, f"{cls.__name__} declares no interface"
    for iface in interfaces:
        assert verifyObject(iface, obj)


def declaring_classes() -> set[type]:
    """Classes defined under gamed/ with an ``@implementer`` of their own."""
    found: set[type] = set()
    root = Path(gamed.__file__).parent
    for info in pkgutil.walk_packages([str(root)], prefix="gamed."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and implementedBy(cls).declared:
                found.add(cls)
    return found


def test_every_implementer_under_gamed_has_a_case() -> None:
    missing = {cls.__qualname__ for cls in declaring_classes() - set(CASES)}
    assert not missing, f"add these to CASES: {sorted(missing)}"
