"""gamed behind a real HAProxy with the PROXY protocol (v2): the server sees the clients.

A real `haproxy` (Debian package, installed by .ci/install-deps.sh; never skipped) runs
etc/haproxy.cfg with its ports moved to free ones on 127.0.0.1 and its connections to
gamed made from 127.0.0.2. Clients connect to it from other loopback addresses
(127.0.0.5 .. 127.0.0.7). gamed's per-address rules must see those, not 127.0.0.2:
a blocklisted client address is refused, and a per-address connection cap of 1 counts
each client address separately.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import (
    GamedProcess,
    HAProxy,
    WireClient,
    free_port,
)

ETC = Path(__file__).resolve().parents[2] / "etc"
PROXY_SOURCE = "127.0.0.2"  # haproxy's side of its connections to gamed


class ClientFrom(WireClient):
    """A WireClient whose socket is bound to a given loopback source address."""

    def __init__(self, port: int, source: str, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._buf = b""
        self.user_id: int | None = None


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``haproxy(gamed_port)`` starts etc/haproxy.cfg aimed at it; returns its port."""
    procs: list[HAProxy] = []

    def start(gamed_port: int) -> int:
        front = free_port()
        cfg = (ETC / "haproxy.cfg").read_text()
        cfg, n_bind = re.subn(r"(?m)^(\s*bind )\S+", rf"\g<1>127.0.0.1:{front}", cfg)
        cfg, n_server = re.subn(
            r"(?m)^(\s*server \S+ )\S+(.*)$",
            rf"\g<1>127.0.0.1:{gamed_port}\g<2> source {PROXY_SOURCE}",
            cfg,
        )
        assert (n_bind, n_server) == (1, 1), "etc/haproxy.cfg: one bind, one server line"
        cfg = re.sub(r"maxconn \d+", "maxconn 100", cfg)  # fewer fds than a production box
        proxy = HAProxy(tmp_path, cfg, front)
        procs.append(proxy)
        return front

    yield start
    for p in procs:
        p.stop()


def test_behind_haproxy_gamed_limits_the_clients_addresses_not_the_proxys(
    gamed: Any, haproxy: Any, tmp_path: Path
) -> None:
    cfg = tmp_path / "gamed.toml"
    cfg.write_text('[middleware.security]\nblocked_ips = ["127.0.0.5"]\nip_max_connections = 1\n')
    srv: GamedProcess = gamed("--port", "haproxy:tcp:0:interface=127.0.0.1", "--config", str(cfg))
    front = haproxy(srv.port)

    blocked = ClientFrom(front, "127.0.0.5")
    blocked.send({"Connect": {"room_id": 0, "user_id": 5}})
    assert "(ip_blocklist)" in blocked.recv_error(403)
    blocked.expect_closed()

    first = ClientFrom(front, "127.0.0.6")
    first.connect(6)
    second = ClientFrom(front, "127.0.0.6")  # the same client address: over its cap of 1
    second.send({"Connect": {"room_id": 0, "user_id": 66}})
    assert "(ip_connections)" in second.recv_error(429)
    other = ClientFrom(front, "127.0.0.7")  # through the same proxy, another client: fine
    other.connect(7)
    assert other.join(3) == {"RoomJoinSuccess": {"room_id": 3, "user_count": 1}}

    security = srv.stats()["security"]
    assert security["decisions"]["ip_blocklist"]["refuse"] == 1
    assert security["decisions"]["ip_connections"]["refuse"] == 1
    for c in (first, second, other):
        c.close()


def test_a_direct_connection_without_a_proxy_header_is_closed_unanswered(
    gamed: Any, tmp_path: Path
) -> None:
    cfg = tmp_path / "gamed.toml"
    cfg.write_text('[middleware.security]\nblocked_ips = ["192.0.2.0/24"]\n')
    srv: GamedProcess = gamed("--port", "haproxy:tcp:0:interface=127.0.0.1", "--config", str(cfg))
    c = WireClient(srv.port)
    c.send({"Connect": {"room_id": 0, "user_id": 1}})
    assert c.expect_closed() == []
    # v1 headers by hand (what `send-proxy` sends), then the protocol as usual
    refused = WireClient(srv.port)
    refused.send_raw(b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 7000\r\n")
    refused.send({"Connect": {"room_id": 0, "user_id": 2}})
    assert "(ip_blocklist)" in refused.recv_error(403)
    fine = WireClient(srv.port)
    fine.send_raw(b"PROXY TCP4 198.51.100.1 127.0.0.1 4000 7000\r\n")
    fine.connect(3)
    for x in (c, refused, fine):
        x.close()
