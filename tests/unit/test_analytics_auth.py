"""Analytics pages that name users need the admin token when one is set (docs/security.md).

A real service tree (security + analytics) on a MemoryReactorClock; HTTP/1.0
requests over StringTransports, so headers and streamed responses are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gamed import tap
from gamed.httputil import AdminGate
from tests.unit.fakes import admin_token_args

TOKEN = b"analytics-admin-token-0123456789"
PRIVATE = [
    b"/analytics/users/1",
    b"/analytics/rooms/1",
    b"/analytics/recent",
    b"/analytics/top",
    b"/analytics/stream",
]
OPEN = [b"/analytics/", b"/analytics/realtime", b"/stats", b"/healthz"]


class Tree:
    def __init__(self, tmp_path: Path, token: bool) -> None:
        args = ["--port", "tcp:7001", "--metrics-port", "tcp:9701", "-d", str(tmp_path / "d")]
        args += ["--middleware", "security,analytics"]
        if token:
            args += admin_token_args(tmp_path, TOKEN)
        options = tap.Options()
        options.parseOptions(args)
        self.reactor = MemoryReactorClock()
        self.service = tap.makeService(options, reactor=self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.site = self.service.getServiceNamed("http-listener").factory
        self.site.timeOut = None

    def request(self, path: bytes, token: bytes | None = None) -> tuple[int, bytes, bytes]:
        """(status, head, body) of a GET; a stream's head and first bytes."""
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport()
        proto.makeConnection(transport)
        auth = b"Authorization: Bearer " + token + b"\r\n" if token is not None else b""
        proto.dataReceived(b"GET " + path + b" HTTP/1.0\r\nHost: t\r\n" + auth + b"\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
        return int(head.split(b" ", 2)[1]), head.lower(), body


@pytest.fixture
def with_token(tmp_path: Path) -> Any:
    t = Tree(tmp_path, token=True)
    yield t
    t.service.stopService()


@pytest.mark.parametrize("path", PRIVATE)
def test_pages_naming_users_need_the_token(with_token: Tree, path: bytes) -> None:
    status, head, body = with_token.request(path)
    assert status == 401
    assert b'www-authenticate: bearer realm="gamed-admin"' in head
    assert "Bearer" in orjson.loads(body)["error"]
    status, _, body = with_token.request(path, b"not-the-token-at-all")
    assert (status, orjson.loads(body)) == (401, {"error": "wrong admin token"})
    status, head, _ = with_token.request(path, TOKEN)
    assert status in (200, 404), "with the token: the page itself answers"


def test_the_stream_opens_with_the_token(with_token: Tree) -> None:
    status, head, body = with_token.request(b"/analytics/stream", TOKEN)
    assert status == 200
    assert b"text/event-stream" in head
    assert body.startswith(b": gamed analytics stream")


@pytest.mark.parametrize("path", OPEN)
def test_aggregate_figures_stay_open(with_token: Tree, path: bytes) -> None:
    assert with_token.request(path)[0] == 200


def test_without_an_admin_token_analytics_is_as_open_as_the_port(tmp_path: Path) -> None:
    tree = Tree(tmp_path, token=False)
    try:
        for path in PRIVATE:
            assert tree.request(path)[0] in (200, 404), path
    finally:
        tree.service.stopService()


def test_the_gate_follows_its_source() -> None:
    """The security plugin re-reads the token on reload; the gate asks it every time."""
    token: list[bytes | None] = [None]
    gate = AdminGate()
    gate.set_source(lambda: token[0])

    class Req:
        def __init__(self, header: bytes | None) -> None:
            self.header = header

        def getHeader(self, name: bytes) -> bytes | None:
            return self.header

    assert gate.refusal(Req(None)) is None  # type: ignore[arg-type]
    token[0] = TOKEN
    assert gate.refusal(Req(None)) is not None  # type: ignore[arg-type]
    assert gate.refusal(Req(b"Bearer " + TOKEN)) is None  # type: ignore[arg-type]
    assert gate.refusal(Req(b"bearer " + TOKEN)) is None  # type: ignore[arg-type]
    assert gate.refusal(Req(b"Basic " + TOKEN)) is not None  # type: ignore[arg-type]
