"""GameProtocol (+ Router) over StringTransport and Clock: framing, limits, idle time-out,
back-pressure and closing, no sockets. The routing rules are tested on a fake connection
in test_router.py."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from gamed import messages as m
from gamed.interfaces import IConnection, IConnectionHandler, IMessageContext
from gamed.protocol import CLOSE_FLUSH_SECONDS
from gamed.router import DRAIN_FLUSH_SECONDS
from tests.unit.fakes import Harness, assert_error, frame


@pytest.fixture
def h() -> Harness:
    return Harness()


def error(code: int, contains: str = "") -> object:
    return ("Error", code, contains)


# -- connection lifecycle ---------------------------------------------------------------


def test_tcp_nodelay_is_requested_and_peer_is_real(h: Harness) -> None:
    calls = []
    t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5151))
    t.setTcpNoDelay = lambda on: calls.append(on)
    p = h.factory.buildProtocol(None)
    p.makeConnection(t)
    assert calls == [True]
    assert (p.ctx.peer_host, p.ctx.peer_port) == ("127.0.0.9", 5151)
    assert p.ctx.connected_at == h.clock.seconds()


def test_idle_timeout_closes_after_silence_only(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    h.clock.advance(20)
    c.send("HeartBeat")  # resets the idle clock
    h.clock.advance(20)
    assert not c.closed
    h.clock.advance(10.5)
    assert c.closed
    (notice,) = c.received()[1:]
    assert "no frame for 30 seconds" in notice["SystemMessage"]["message"]
    c.lose()
    assert h.metric("gamed_disconnects_total", reason="idle") == 1


def test_idle_timeout_zero_disables_it() -> None:
    h = Harness(idle_timeout=0)
    c = h.client()
    h.clock.advance(10_000)
    assert not c.closed
    assert not h.clock.getDelayedCalls()


def test_oversize_length_prefix_gets_413_and_close_and_stops_parsing(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.proto.dataReceived(struct.pack(">I", 65537) + b"x" * 10 + frame("HeartBeat"))
    assert_error(c.received(), 413, "65537 bytes exceeds the limit of 65536")
    assert c.closed


def test_frame_at_limit_is_accepted() -> None:
    h = Harness(max_frame_bytes=100)
    c = h.client()
    payload = b'"HeartBeat"' + b" " * 89
    assert len(payload) == 100
    c.send(payload)
    assert list(c.received()[0]) == ["HeartBeatResponse"]


def test_frames_split_byte_by_byte_and_batched(h: Harness) -> None:
    c = h.client()
    data = frame({"Connect": {"room_id": 0, "user_id": 3}}) + frame("HeartBeat")
    for i in range(len(data)):
        c.proto.dataReceived(data[i : i + 1])
    msgs = c.received()
    assert [next(iter(x)) for x in msgs] == ["ConnectionAck", "HeartBeatResponse"]


def test_pipelined_frames_wait_while_paused_and_run_on_resume(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    c.received()
    beat = frame("HeartBeat")
    c.proto.pauseProducing()
    c.proto.dataReceived(beat * 2 + beat[:3])
    assert c.received() == []
    c.proto.resumeProducing()
    assert [next(iter(x)) for x in c.received()] == ["HeartBeatResponse"] * 2
    c.proto.dataReceived(beat[3:] + beat)
    assert [next(iter(x)) for x in c.received()] == ["HeartBeatResponse"] * 2
    assert c.proto.partial_bytes == 0 and not c.closed


def test_client_that_does_not_read_is_dropped_not_buffered() -> None:
    h = Harness(max_outgoing_bytes=4096)
    reader, sink = h.client(), h.client()
    reader.connect(1)
    sink.connect(2)
    reader.join(1, 9)
    sink.join(2, 9)
    reader.received()
    # The transport reports its buffer is over the high-water mark:
    sink.proto.pauseProducing()
    chat = {"ChatMessage": {"user_id": 1, "room_id": 9, "message": "x" * 200}}
    for _ in range(30):  # ~7 KB for the sink
        reader.send(chat)
        reader.received()
    assert sink.proto.close_reason == "slow" and sink.closed
    sink.lose()
    reader.send(chat)
    left, echoed = reader.received()  # the room goes on without it
    assert left["UserLeftRoom"]["user_id"] == 2
    assert echoed["ChatMessage"]["user_id"] == 1
    assert h.metric("gamed_disconnects_total", reason="slow") == 1


class BufferedTransport(StringTransport):
    """A StringTransport with the buffer a Twisted FileDescriptor keeps (what the sweep reads)."""

    bufferSize = 1000

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0

    def hold(self, n: int) -> None:
        """Pretend ``n`` bytes are written and not yet sent."""
        self._tempDataLen = n


def test_the_sweep_pauses_counts_resumes_and_drops_a_client_that_does_not_read() -> None:
    """The sweep replaces the producer Twisted used to pause: over the transport's mark the
    connection is paused and what is still sent to it counts against --max-outgoing-bytes;
    under the mark it is resumed; past mark + limit it is dropped as slow."""
    h = Harness(max_outgoing_bytes=4096)
    a = h.client()
    a.connect(1)
    t = BufferedTransport()
    a.proto.transport = t  # the same protocol, now on a transport with a buffer
    sweep = h.factory.sweep
    t.hold(1500)  # over the 1000-byte mark
    sweep.check(a.proto, t)
    assert a.proto.paused and a.proto in sweep.paused
    a.proto.send_frame(b"x" * 3000)  # counted: 3000 of 4096
    assert not a.proto.closing
    t.hold(500)  # drained under the mark
    sweep.sweep()
    assert not a.proto.paused and a.proto not in sweep.paused
    a.proto.send_frame(b"x" * 3000)  # a fresh count after the resume
    assert not a.proto.closing
    t.hold(1000 + 4097)  # past the mark by more than the limit between two sweeps
    sweep.check(a.proto, t)
    assert a.proto.closing and a.proto.close_reason == "slow"
    assert h.metric("gamed_disconnects_total", reason="slow") == 0  # counted when lost
    a.lose()
    assert h.metric("gamed_disconnects_total", reason="slow") == 1


def test_the_idle_sweep_runs_only_while_connections_are_watched() -> None:
    h = Harness(idle_timeout=5)
    c = h.client()
    assert len(h.clock.getDelayedCalls()) == 1  # one timer for the listener
    d = h.client()
    assert len(h.clock.getDelayedCalls()) == 1  # still one
    c.lose()
    d.lose()
    h.clock.advance(1)
    assert h.clock.getDelayedCalls() == []


def test_backlog_resets_when_transport_drains() -> None:
    h = Harness(max_outgoing_bytes=4096)
    a = h.client()
    a.connect(1)
    a.join(1, 1)
    a.proto.pauseProducing()
    for _ in range(3):
        a.proto.send_frame(b"x" * 1000)
    a.proto.resumeProducing()
    a.proto.pauseProducing()
    for _ in range(3):
        a.proto.send_frame(b"x" * 1000)
    assert a.proto.close_reason == "closed" and not a.proto.closing


def test_drain_notifies_everyone_and_fires_when_all_gone(h: Harness) -> None:
    a, b = h.client(), h.client()
    a.connect(1)
    a.join(1, 2)
    b.connect(2)
    b.join(2, 2)
    a.received()
    d = h.router.drain("bye now")
    fired = []
    d.addCallback(fired.append)
    for c in (a, b):
        assert c.received() == [{"SystemMessage": {"message": "bye now"}}]
        assert not c.closed, "clients leave on their own during the grace"
    a.send("HeartBeat")  # still served while draining
    assert "HeartBeatResponse" in a.received()[0]
    late = h.client()
    assert_error(late.received(), 503, "shutting down")
    assert late.closed
    a.lose()
    assert not fired
    assert b.received() == []  # no leave notices while draining
    b.lose()
    assert fired == [None]


def test_drain_closes_the_rest_after_grace_then_aborts() -> None:
    h = Harness(shutdown_grace=2)
    a, gone = h.client(), h.client()
    gone.lose()  # one leaves at once, one stays
    aborted = []
    a.transport.abortConnection = lambda: aborted.append(True)
    fired: list[object] = []
    h.router.drain().addCallback(fired.append)
    h.clock.advance(1.9)
    assert not a.closed and not fired
    h.clock.advance(0.1)
    assert a.closed, "after the grace the rest are closed cleanly"
    assert not aborted and not fired
    h.clock.advance(DRAIN_FLUSH_SECONDS)
    assert aborted, "...and aborted if they do not go"
    assert fired == [None], "the drain is bounded even if the abort is slow"


def test_drain_fires_at_once_without_clients_and_after_it_ended(h: Harness) -> None:
    fired: list[object] = []
    h.router.drain().addCallback(fired.append)
    assert fired == [None]
    assert h.router.draining
    h.router.drain().addCallback(fired.append)
    assert fired == [None, None]


def test_a_second_drain_ends_with_the_first(h: Harness) -> None:
    a = h.client()
    first: list[object] = []
    second: list[object] = []
    h.router.drain().addCallback(first.append)
    h.router.drain().addCallback(second.append)
    assert a.received() == [{"SystemMessage": {"message": "server is shutting down"}}]
    a.lose()
    assert first == second == [None]


def test_drain_tells_rooms_with_a_game(h: Harness) -> None:
    class Games:
        def game_state(self, room_id: int) -> str | None:
            return "InProgress" if room_id == 5 else None

    a, b = h.client(), h.client()
    a.connect(1)
    a.join(1, 5)
    b.connect(2)
    b.join(2, 6)
    h.router.games = Games()  # type: ignore[assignment]
    h.router.drain()
    assert a.received() == [
        {"SystemMessage": {"message": "server is shutting down"}},
        {
            "SystemMessage": {
                "message": "server is shutting down: the game in room 5 (InProgress) cannot finish"
            }
        },
    ]
    assert b.received() == [{"SystemMessage": {"message": "server is shutting down"}}]


def test_close_aborts_a_peer_that_never_reads_the_final_error(h: Harness) -> None:
    c = h.client()
    aborted = []
    c.transport.abortConnection = lambda: aborted.append(True)
    c.proto.dataReceived(struct.pack(">I", 10**6))
    h.clock.advance(CLOSE_FLUSH_SECONDS + 0.1)
    assert aborted


def test_input_after_an_oversize_prefix_is_not_read(h: Harness) -> None:
    c = h.client()
    c.proto.dataReceived(struct.pack(">I", 10**6))
    c.proto.dataReceived(struct.pack(">I", 10**6) + frame("HeartBeat"))
    assert_error(c.received(), 413)
    assert h.router.frames_refused["oversize"] == 1


def test_game_protocol_provides_iconnection(h: Harness) -> None:
    c = h.client()
    verifyObject(IConnection, c.proto)
    verifyObject(IMessageContext, c.proto.ctx)
    verifyObject(IConnectionHandler, h.router)


def test_abort_drops_at_once_and_writes_nothing_more(h: Harness) -> None:
    c = h.client()
    c.connect(1)
    aborted = []
    c.transport.abortConnection = lambda: aborted.append(True)
    c.proto.abort()
    assert aborted == [True] and c.proto.closing
    c.proto.send_frame(frame("HeartBeat"))
    c.proto.send(m.SystemMessage("late"))
    assert c.transport.value() == b""
    c.lose()
    assert h.metric("gamed_connections") == 0
