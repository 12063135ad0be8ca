"""gamed.bench.relay_micro keeps measuring the relay path it names: the sender's PUBLISHes
are written and answered, the receiver's pushes reach the members (no sockets)."""

from __future__ import annotations

from gamed.bench import relay_micro


def test_the_relay_bench_relays_and_delivers() -> None:
    bench = relay_micro.Bench(members=3, batch=4)
    written = []
    write = bench.cmd_a.write
    bench.cmd_a.write = lambda data: (written.append(data), write(data))  # type: ignore[method-assign]
    assert bench.sender(8) >= 0
    assert len(written) == 8 and all(b"PUBLISH" in w and b"gamed:n:b" in w for w in written)
    assert bench.a.link is not None and bench.a.link.published == 8
    assert not bench.cmd_a.protocol.queue  # every PUBLISH answered
    assert bench.receiver(8) >= 0
    assert (bench.b.messages_in, bench.b.deliveries_in, bench.b.bad_envelopes) == (8, 24, 0)
