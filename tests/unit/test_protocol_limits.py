"""Closed connections are freed by refcounting alone, and partial frames share one budget
(issue 12 item 8). GameProtocol + Router over StringTransport and Clock, no sockets."""

from __future__ import annotations

import gc
import struct
import weakref
from collections.abc import Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gamed.protocol import TRIM_DELAY_SECONDS, GameProtocol, PartialFrames, _malloc_trim
from tests.unit.fakes import Harness, frame
from tests.unit.fakes import parse_frames as parse


class TcpLikeTransport(StringTransport):
    """Drops its producer and its protocol on close, as twisted.internet.tcp.Connection does."""

    protocol: GameProtocol | None = None

    def lose(self) -> None:
        protocol, self.protocol = self.protocol, None
        self.producer = None
        assert protocol is not None
        protocol.connectionLost(Failure(ConnectionError("gone")))


def connect(h: Harness, port: int) -> tuple[GameProtocol, TcpLikeTransport]:
    transport = TcpLikeTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    proto: GameProtocol = h.factory.buildProtocol(transport.getPeer())
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("paused", [False, True])
def test_a_closed_connection_is_freed_by_refcount_alone(no_gc: None, paused: bool) -> None:
    h = Harness()
    proto, transport = connect(h, 40001)
    proto.dataReceived(frame({"Connect": {"room_id": 0, "user_id": 7}}))
    proto.dataReceived(frame({"RoomJoin": {"user_id": 7, "room_id": 3, "nickname": "seven"}}))
    proto.dataReceived(frame(b"x" * 60_000)[:50_000])  # most of a big frame, then gone
    if paused:
        proto.pauseProducing()  # send_frame is now a method bound to the protocol
    kept_ctx = proto.ctx  # a plugin may keep a context past the close
    alive = weakref.ref(proto)
    del proto
    transport.lose()
    del transport
    assert alive() is None, "a closed connection is kept alive by a reference cycle"
    kept_ctx.notify("too late")  # inert, no error
    kept_ctx.disconnect(400, "too late")
    assert h.factory.partials.total == 0


def test_a_context_kept_by_a_plugin_does_not_keep_the_connection(no_gc: None) -> None:
    h = Harness()
    proto, transport = connect(h, 40001)
    ctx = proto.ctx
    alive = weakref.ref(proto)
    del proto
    transport.lose()
    del transport
    assert alive() is None
    assert ctx.connection_id > 0  # what it knew stays readable


def partial(proto: GameProtocol, n: int) -> None:
    """Send the prefix and ``n`` bytes of a 60,000-byte frame."""
    proto.dataReceived(struct.pack(">I", 60_000) + b"y" * n)


def test_partial_frames_over_the_budget_close_the_oldest_first() -> None:
    h = Harness(max_partial_bytes=100_000)
    (a, ta), (b, tb), (c, tc) = (connect(h, 40001 + i) for i in range(3))
    partial(a, 40_000)
    partial(b, 40_000)
    assert h.factory.partials.total == 80_008
    assert not ta.disconnecting and not tb.disconnecting
    partial(c, 40_000)  # 120,012 > 100,000: the oldest (a) goes
    assert ta.disconnecting and not tb.disconnecting and not tc.disconnecting
    (err,) = parse(ta.value())
    assert err["Error"]["code"] == 503  # type: ignore[index]
    assert h.factory.partials.total == 80_008
    assert h.factory.partials.closed == 1
    assert h.metric("gamed_disconnects_total", reason="partial") == 0  # counted when lost
    ta.lose()
    assert h.metric("gamed_disconnects_total", reason="partial") == 1


def test_a_completed_frame_releases_its_bytes_and_a_new_partial_frame_is_youngest() -> None:
    h = Harness(max_partial_bytes=100_000)
    (a, ta), (b, tb) = connect(h, 40001), connect(h, 40002)
    partial(a, 40_000)
    partial(b, 40_000)
    # a finishes its frame (refused as JSON, it does not matter) and starts another
    a.dataReceived(b"y" * 20_000 + struct.pack(">I", 60_000) + b"z" * 10)
    assert h.factory.partials.total == 40_004 + 14
    b.dataReceived(b"w" * 5_000)  # b's frame grows: it stays the oldest
    assert h.factory.partials.total == 45_004 + 14
    a.dataReceived(b"z" * 59_000)  # 104,018 held: the oldest partial frame (b's) goes
    assert tb.disconnecting and not ta.disconnecting
    assert h.factory.partials.total == 59_014
    tb.lose()
    ta.lose()
    assert h.factory.partials.total == 0


def test_whole_frames_never_touch_the_budget() -> None:
    h = Harness(max_partial_bytes=65536)
    proto, _ = connect(h, 40001)
    proto.dataReceived(frame("HeartBeat") * 50)
    assert h.factory.partials.total == 0 and proto.partial_bytes == 0


def test_released_partial_frames_return_memory_to_the_os_once_after_a_churn() -> None:
    clock = Clock()
    trims: list[int] = []
    budget = PartialFrames(lambda: 1 << 30, clock, trim=lambda: trims.append(1))
    h = Harness()
    conns = [connect(h, 40001 + i)[0] for i in range(200)]
    for c in conns:
        budget.update(c, 60_000)
    for c in conns:
        budget.update(c, 0)  # 12 MB released: one trim, a second later
    assert trims == []
    clock.advance(TRIM_DELAY_SECONDS)
    assert trims == [1] and budget.trims == 1
    clock.advance(60)
    assert trims == [1]


def test_the_trim_is_found_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert _malloc_trim is not None
        _malloc_trim()


def test_one_line_per_episode_of_closing_partial_frames() -> None:
    from twisted.logger import capturedLogs

    h = Harness(max_partial_bytes=100_000)
    conns = [connect(h, 40001 + i) for i in range(6)]
    with capturedLogs() as events:
        for proto, _ in conns:
            partial(proto, 40_000)  # each past the second closes the oldest
        for _, transport in conns:
            transport.lose()
    texts = [e["log_format"] for e in events if "partial frames" in e["log_format"]]
    assert len(texts) == 2, texts  # the start of the episode, and its end
    assert "over --max-partial-bytes" in texts[0] and "back under" in texts[1]
    assert h.factory.partials.closed == 4
