"""etc/haproxy-cluster.cfg in front of a two-node cluster, all real processes.

A real ``haproxy`` runs the shipped config with its addresses moved to free
127.0.0.1 ports: the game frontend (TCP, PROXY v2 to gamed's ``haproxy:`` port)
and the WebSocket frontend (HTTP mode) over two ``twistd -n gamed --redis ...``
nodes on one real redis-server, each checked on its own /healthz. Clients land on
both nodes (leastconn); players of one room on different nodes chat both ways; a
node that drains (SIGTERM: /healthz 503) is taken out of rotation, and the new
players go to the other node while the draining one still holds its own.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.sync.client import connect as ws_connect

from tests.integration.helpers import (
    HAProxy,
    RedisServer,
    WireClient,
    cluster_node,
    free_port,
    poll_until,
)

ETC = Path(__file__).resolve().parents[2] / "etc"
ROOM = 7


class Node:
    """One cluster node on fixed free ports (HAProxy's config must name them)."""

    def __init__(self, workdir: Path, redis: RedisServer, name: str) -> None:
        self.name = name
        self.game, self.ws, self.http = free_port(), free_port(), free_port()
        on = ":interface=127.0.0.1"
        self.proc = cluster_node(
            workdir,
            redis,
            name,
            "--port",
            f"haproxy:tcp:{self.game}{on}",
            "--ws-port",
            f"tcp:{self.ws}{on}",
            "--ws-trusted-proxies",
            "127.0.0.1",
            "--metrics-port",
            f"tcp:{self.http}{on}",
            # long enough that the node still drains (and still answers /healthz 503)
            # while the test checks where new players go; its clients end it sooner
            "--shutdown-grace",
            "30",
        )

    def connections(self) -> int:
        return int(self.proc.stats()["connections"])


def start_node(workdir: Path, redis: RedisServer, name: str) -> Node:
    """A node, started again on other ports if one of its free ports was taken meanwhile
    (the ports are chosen before gamed binds them: other suites run on this host too)."""
    for attempt in range(3):
        try:
            return Node(workdir / f"try{attempt}", redis, name)
        except RuntimeError as e:
            if "in use" not in str(e).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


def cluster_config(nodes: list[Node], game_front: int, ws_front: int) -> str:
    """etc/haproxy-cluster.cfg on 127.0.0.1: the two binds, and each server line aimed at
    a node's port with its own health-check port (the nodes share one host here)."""
    cfg = (ETC / "haproxy-cluster.cfg").read_text()
    binds = iter([game_front, ws_front])
    cfg, n_bind = re.subn(r"(?m)^(\s*bind )\S+", lambda m: f"{m[1]}127.0.0.1:{next(binds)}", cfg)
    by_name = {n.name: n for n in nodes}
    seen: list[str] = []

    def server(m: re.Match[str]) -> str:
        node = by_name[m[2]]
        seen.append(m[2])
        # the game backend comes first in the file, then the WebSocket one
        port = node.game if seen.count(m[2]) == 1 else node.ws
        return f"{m[1]}{m[2]} 127.0.0.1:{port} port {node.http}"

    cfg, n_server = re.subn(r"(?m)^(\s*server )(\S+) \S+", server, cfg)
    assert (n_bind, n_server) == (2, 4), "etc/haproxy-cluster.cfg: 2 binds, 2 x 2 servers"
    return re.sub(r"maxconn \d+", "maxconn 100", cfg)  # fewer fds than a production box


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    d = tmp_path / "redis"
    d.mkdir()
    r = RedisServer(d)
    yield r
    r.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[list[Node], HAProxy, int, int]]:
    nodes: list[Node] = []
    proxy: HAProxy | None = None
    try:
        for name in ("node1", "node2"):
            nodes.append(start_node(tmp_path, redis, name))
        for attempt in range(3):  # the same for HAProxy's two ports
            game_front, ws_front = free_port(), free_port()
            workdir = tmp_path / f"haproxy{attempt}"
            workdir.mkdir()
            try:
                proxy = HAProxy(workdir, cluster_config(nodes, game_front, ws_front), game_front)
                break
            except AssertionError as e:
                if "cannot bind" not in str(e).lower() or attempt == 2:
                    raise
        assert proxy is not None
        p = proxy
        for backend in ("gamed_game", "gamed_ws"):
            for n in nodes:
                poll_until(
                    lambda b=backend, s=n.name: p.server_status(b, s) == "UP",
                    10.0,
                    f"{backend}/{n.name} UP in haproxy",
                    detail=p.log_tail,
                )
        yield nodes, proxy, game_front, ws_front
    finally:
        if proxy is not None:
            proxy.stop()
        for n in nodes:
            n.proc.close_clients()
            n.proc.stop()


def test_haproxy_spreads_a_room_over_the_nodes_and_drops_a_draining_one(
    cluster: tuple[list[Node], HAProxy, int, int], redis: RedisServer
) -> None:
    (node1, node2), proxy, game_front, ws_front = cluster
    clients: list[WireClient] = []
    try:
        first, second = WireClient(game_front), WireClient(game_front)
        clients += [first, second]
        first.connect(1)
        second.connect(2)
        # leastconn: the second player goes to the node without one
        poll_until(
            lambda: (node1.connections(), node2.connections()) == (1, 1),
            5.0,
            "one player on each node",
        )
        assert first.join(ROOM) == {"RoomJoinSuccess": {"room_id": ROOM, "user_count": 1}}
        assert second.join(ROOM) == {"RoomJoinSuccess": {"room_id": ROOM, "user_count": 2}}
        assert first.recv()["UserJoinedRoom"]["user_count"] == 2
        assert set(redis.cli("HKEYS", f"gamed:{{room:{ROOM}}}:nodes")) == {"node1", "node2"}

        first.chat(ROOM, "from one")
        body, _ = second.until("ChatMessage")
        assert (body["user_id"], body["message"]) == (1, "from one")
        body, _ = first.until("ChatMessage")  # its own copy
        assert (body["user_id"], body["message"]) == (1, "from one")
        second.chat(ROOM, "from two")
        body, _ = first.until("ChatMessage")
        assert (body["user_id"], body["message"]) == (2, "from two")

        # The WebSocket frontend (HTTP mode) reaches the same room.
        with ws_connect(
            f"ws://127.0.0.1:{ws_front}/ws", ping_interval=None, open_timeout=5, close_timeout=5
        ) as ws:
            ws.send(orjson.dumps({"Connect": {"room_id": 0, "user_id": 3}}).decode())
            assert orjson.loads(ws.recv(5)) == {"ConnectionAck": {"user_id": 3}}
            join = {"RoomJoin": {"user_id": 3, "room_id": ROOM, "nickname": "u3"}}
            ws.send(orjson.dumps(join).decode())
            assert orjson.loads(ws.recv(5))["RoomJoinSuccess"]["user_count"] == 3
            second.chat(ROOM, "to the browser")
            assert orjson.loads(ws.recv(5)) == {
                "ChatMessage": {"user_id": 2, "room_id": ROOM, "message": "to the browser"}
            }
        poll_until(
            lambda: (node1.connections(), node2.connections()) == (1, 1),
            5.0,
            "the WebSocket player gone",
        )

        # node2 drains: its /healthz answers 503, HAProxy takes it out of rotation...
        node2.proc.proc.send_signal(signal.SIGTERM)
        poll_until(lambda: node2.proc.http("/healthz")[0] == 503, 5.0, "node2 draining")
        poll_until(
            lambda: proxy.server_status("gamed_game", "node2").startswith("DOWN"),
            10.0,
            "haproxy to mark node2 DOWN",
            detail=proxy.log_tail,
        )
        assert proxy.server_status("gamed_game", "node1") == "UP"
        # ...so new players all land on node1 (node2 would answer them 503), though by
        # connection counts leastconn would send the second and the third to node2.
        late = [WireClient(game_front) for _ in range(3)]
        clients += late
        for i, c in enumerate(late):
            c.connect(10 + i)
        assert node1.connections() == 1 + 3
        assert node2.proc.proc.poll() is None, "node2 still drains (its player is connected)"
    finally:
        for c in clients:
            c.close()
