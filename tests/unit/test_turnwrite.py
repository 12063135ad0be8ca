"""TurnWriter: a connection's frames of one reactor turn go out in one ``send`` on its real
socket, after the turn (a Clock stands for the reactor's timed calls); what the socket
does not take, and everything while Twisted holds unsent bytes, goes through Twisted's
buffer, in order. GameProtocols on a Twisted ``tcp.Server`` over a real socketpair."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gamed.protocol import GameProtocol
from gamed.turnwrite import TurnWriter, socket_transport
from tests.unit.fakes import Harness


class Peer:
    """A GameProtocol on a Twisted TCP transport whose socket's other end we read."""

    def __init__(self, h: Harness, port: int) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.settimeout(2)
        self.fds = MemoryReactorClock()  # the reader/writer registry Twisted's transport uses
        self.proto: GameProtocol = h.factory.buildProtocol(None)
        port_stub: Any = SimpleNamespace(_realPortNumber=7000)
        self.transport = tcp.Server(
            self.ours, self.proto, ("127.0.0.1", port), port_stub, 1, self.fds
        )
        self.proto.makeConnection(self.transport)

    def read(self, n: int = 65536) -> bytes:
        self.theirs.setblocking(False)
        try:
            return self.theirs.recv(n)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def peer(h: Harness) -> Iterator[Peer]:
    p = Peer(h, 40001)
    yield p
    p.close()


def test_frames_of_a_turn_leave_after_the_turn_in_one_send_in_order(h: Harness, peer: Peer) -> None:
    assert peer.proto._turn is h.factory.turn
    peer.proto.send_frame(b"one")
    peer.proto.send_frame(b"two")
    peer.proto.send_frame(b"three")
    assert peer.read() == b""  # nothing before the turn is over
    h.clock.advance(0)
    assert peer.read() == b"onetwothree"
    assert h.factory.turn.sends == 1
    assert peer.fds.getWriters() == []  # Twisted was never asked to wait for writability
    assert h.clock.getDelayedCalls() == [] or all(
        c.getTime() > h.clock.seconds() for c in h.clock.getDelayedCalls()
    )


def test_one_flush_per_turn_for_every_connection(h: Harness) -> None:
    peers = [Peer(h, 40010 + i) for i in range(3)]
    try:
        for p in peers:
            p.proto.send_frame(b"hello")
        turn = h.factory.turn
        assert len(turn.dirty) == 3 and turn.call is not None
        h.clock.advance(0)
        assert [p.read() for p in peers] == [b"hello"] * 3
        assert turn.dirty == [] and turn.call is None
    finally:
        for p in peers:
            p.close()


def test_bytes_twisted_still_holds_go_first(h: Harness, peer: Peer) -> None:
    peer.transport.write(b"held-")  # as after a send the socket did not take whole
    peer.proto.send_frame(b"queued")
    h.clock.advance(0)
    assert peer.read() == b""  # not sent past Twisted's buffer
    assert peer.transport._tempDataLen == len(b"held-queued")
    peer.transport.doWrite()
    assert peer.read() == b"held-queued"


def test_what_the_socket_does_not_take_goes_to_twisteds_buffer(h: Harness, peer: Peer) -> None:
    peer.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB, far more than the socket holds
    peer.proto.send_frame(big)
    h.clock.advance(0)
    held = peer.transport._tempDataLen
    assert 0 < held < len(big)  # part sent, the rest buffered by Twisted
    assert peer.transport in peer.fds.getWriters()  # Twisted sends the rest when it can
    got = b""
    for _ in range(10_000):  # bounded: read what arrives, let Twisted write the rest
        chunk = peer.read()
        got += chunk
        if peer.transport.dataBuffer or peer.transport._tempDataLen:
            peer.transport.doWrite()
        if len(got) == len(big):
            break
    assert got == big


def test_a_full_socket_is_not_an_error(h: Harness, peer: Peer) -> None:
    turn = h.factory.turn
    writes: list[bytes] = []

    class Full:
        def send(self, data: bytes) -> int:
            raise BlockingIOError(11, "try again")

    peer.transport.socket = Full()
    peer.transport.write = writes.append  # type: ignore[method-assign]
    peer.proto.send_frame(b"a")
    peer.proto.send_frame(b"b")
    h.clock.advance(0)
    assert writes == [b"ab"] and turn.fallbacks == 1 and turn.sends == 0
    peer.transport.socket = peer.ours


def test_a_failing_connection_does_not_stop_the_others(h: Harness) -> None:
    bad, good = Peer(h, 40020), Peer(h, 40021)
    try:
        bad.proto.send_frame(b"x")
        good.proto.send_frame(b"y")
        bad.proto._raw = None  # anything that raises
        h.clock.advance(0)
        assert good.read() == b"y"
    finally:
        bad.close()
        good.close()


def test_queued_frames_stay_ahead_when_the_connection_is_paused(h: Harness, peer: Peer) -> None:
    peer.proto.send_frame(b"first-")
    peer.proto.pauseProducing()  # the sweep found its buffer over the mark
    peer.proto.send_frame(b"second")  # counted against --max-outgoing-bytes, via Twisted
    h.clock.advance(0)
    peer.transport.doWrite()
    assert peer.read() == b"first-second"


def test_close_writes_what_was_queued_then_closes(h: Harness, peer: Peer) -> None:
    peer.proto.send_frame(b"last words")
    peer.proto.close("kicked")
    peer.proto.send_frame(b"never")
    h.clock.advance(0)
    peer.transport.doWrite()
    assert peer.read() == b"last words"


def test_a_lost_connection_drops_its_queue(h: Harness, peer: Peer) -> None:
    peer.proto.send_frame(b"gone")
    peer.proto.connectionLost(None)
    h.clock.advance(0)
    assert peer.proto._out is None and peer.read() == b""


def test_stopping_the_listener_writes_what_is_queued(h: Harness, peer: Peer) -> None:
    peer.proto.send_frame(b"bye")
    h.factory.stopFactory()
    assert peer.read() == b"bye"


def test_only_twisteds_own_tcp_transport_is_written_directly(h: Harness, peer: Peer) -> None:
    assert socket_transport(peer.transport) is peer.transport
    assert socket_transport(StringTransport()) is None
    c = h.client()  # a StringTransport: written through its write, as before
    assert c.proto._turn is None
    c.proto.send_frame(b"at once")
    assert c.transport.value() == b"at once"


def test_turnwriter_skips_a_connection_flushed_early() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    turn = TurnWriter(clock)
    conn = SimpleNamespace(_out=None, _raw=None)
    turn.dirty.append(conn)
    turn.schedule()
    clock.advance(0)
    assert turn.sends == 0 and turn.fallbacks == 0 and turn.call is None


def test_behind_the_proxy_protocol_the_tcp_connection_under_it_is_written(h: Harness) -> None:
    from gamed import proxy
    from tests.unit.test_proxy import v2_header

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        factory = proxy.ProxiedFactory(h.factory, h.clock)
        wrapper = factory.buildProtocol(None)
        port_stub: Any = SimpleNamespace(_realPortNumber=7000)
        tcp_conn = tcp.Server(
            ours, wrapper, ("127.0.0.2", 40001), port_stub, 1, MemoryReactorClock()
        )
        wrapper.makeConnection(tcp_conn)
        wrapper.dataReceived(v2_header("203.0.113.7", 5555))
        game = wrapper.wrappedProtocol
        assert isinstance(game, GameProtocol) and game.ctx.peer_host == "203.0.113.7"
        assert game._raw is tcp_conn and game._turn is h.factory.turn
        game.send_frame(b"through the proxy")
        h.clock.advance(0)
        theirs.settimeout(2)
        assert theirs.recv(100) == b"through the proxy"
    finally:
        ours.close()
        theirs.close()


def test_a_tls_transport_is_written_through_its_write(peer: Peer) -> None:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    tls = TLSMemoryBIOProtocol(None, peer.proto)  # what an ssl: listener hands the protocol
    tls.transport = peer.transport  # over a real TCP connection, which encrypts nothing itself
    assert socket_transport(tls) is None
