"""gamed.proxy: the PROXY protocol in front of the game port, on StringTransport and Clock."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection

from gamed import proxy
from gamed.config import ConfigError, build_settings, with_backlog

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 7000) -> bytes:
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIG + b"\x21\x11" + struct.pack("!H", len(addrs)) + addrs


class Recorder(Protocol):
    """What the game protocol sees: the peer at connectionMade, then the bytes."""

    def __init__(self) -> None:
        self.peer: Any = None
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Made(Factory):
    def __init__(self) -> None:
        self.made: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder()
        p.factory = self
        self.made.append(p)
        return p


def open_conn() -> tuple[Any, StringTransportWithDisconnection, Made, Clock]:
    clock = Clock()
    inner = Made()
    factory = proxy.ProxiedFactory(inner, clock)
    haproxy_side = IPv4Address("TCP", "127.0.0.2", 40001)
    wrapper = factory.buildProtocol(haproxy_side)
    transport = StringTransportWithDisconnection(peerAddress=haproxy_side)
    transport.protocol = wrapper
    wrapper.makeConnection(transport)
    return wrapper, transport, inner, clock


@pytest.mark.parametrize(
    "header",
    [v2_header("198.51.100.7", 5555), b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 7000\r\n"],
    ids=["v2", "v1"],
)
@pytest.mark.parametrize("split", [None, 1, 3, 13])
def test_the_game_protocol_starts_after_the_header_and_sees_the_client(
    header: bytes, split: int | None
) -> None:
    wrapper, transport, inner, _ = open_conn()
    assert inner.made[0].peer is None  # not started: the client is not known yet
    frames = b'\x00\x00\x00\x0b"HeartBeat"'
    stream = header + frames
    chunks = (
        [stream] if split is None else [stream[i : i + split] for i in range(0, len(stream), split)]
    )
    for chunk in chunks:
        wrapper.dataReceived(chunk)
    rec = inner.made[0]
    assert (rec.peer.host, rec.peer.port) == ("198.51.100.7", 5555)
    assert rec.data == frames
    assert transport.connected


def test_twisteds_own_wrapper_would_show_the_proxy_at_connection_made() -> None:
    """Why gamed has its own wrapper: Twisted's starts the protocol before the header."""
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

    inner = Made()
    haproxy_side = IPv4Address("TCP", "127.0.0.2", 40001)
    wrapper = HAProxyWrappingFactory(inner).buildProtocol(haproxy_side)
    wrapper.makeConnection(StringTransportWithDisconnection(peerAddress=haproxy_side))
    assert inner.made[0].peer.host == "127.0.0.2"


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n\r\n", b'\x00\x00\x00\x0b"HeartBeat"'])
def test_no_header_is_closed_without_reaching_the_game_protocol(junk: bytes) -> None:
    wrapper, transport, inner, _ = open_conn()
    wrapper.dataReceived(junk)
    assert not transport.connected
    assert inner.made[0].peer is None and not inner.made[0].lost


def test_a_connection_that_never_sends_a_header_is_aborted_after_the_timeout() -> None:
    wrapper, transport, _inner, clock = open_conn()
    wrapper.dataReceived(V2_SIG[:6])  # a prefix: wait for more
    clock.advance(proxy.HEADER_TIMEOUT - 0.1)
    assert transport.connected
    clock.advance(0.2)
    assert not transport.connected
    assert clock.getDelayedCalls() == []


def test_the_timeout_is_cancelled_once_the_header_arrived() -> None:
    wrapper, transport, _inner, clock = open_conn()
    wrapper.dataReceived(v2_header("198.51.100.7", 5555))
    assert clock.getDelayedCalls() == []
    clock.advance(proxy.HEADER_TIMEOUT * 2)
    assert transport.connected


def test_port_accepts_haproxy_and_the_backlog_goes_to_the_tcp_endpoint() -> None:
    s = build_settings({"port": "haproxy:tcp:7000:interface=127.0.0.1"})
    assert s.port == "haproxy:tcp:7000:interface=127.0.0.1"
    assert with_backlog(s.port) == "haproxy:tcp:7000:interface=127.0.0.1:backlog=1024"
    assert with_backlog("haproxy:tcp:7000:backlog=5") == "haproxy:tcp:7000:backlog=5"
    assert proxy.listen_args("tcp:7000", "F", Clock()) == ("tcp:7000", "F")
    endpoint, factory = proxy.listen_args("haproxy:tcp:7000", Made(), Clock())
    assert endpoint == "tcp:7000" and isinstance(factory, proxy.ProxiedFactory)
    with pytest.raises(ConfigError, match="out of range"):
        build_settings({"port": "haproxy:tcp:70000"})
    with pytest.raises(ConfigError, match="not a valid endpoint"):
        build_settings({"port": "haproxy:nope:1"})


def test_a_connection_the_game_factory_refuses_is_refused_by_the_wrapper_too() -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    factory = proxy.ProxiedFactory(Refusing(), Clock())
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)) is None
