"""gamed.cluster.link's state machine, probe, timeouts and Sentinel path, on a
MemoryReactorClock: every connection is a StringTransport fed by hand with RESP replies."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gamed.cluster.link import (
    BACKOFF_MAX,
    DEGRADED,
    DOWN,
    UP,
    ClusterUnavailable,
    RedisLink,
    encode_command,
)
from gamed.cluster.url import parse_redis_url


class Harness:
    """A RedisLink on a MemoryReactorClock; ``accept(i)`` completes the i-th connect."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", **kw: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = CollectorRegistry()
        self.link = RedisLink(
            parse_redis_url(url), self.reactor, self.reactor, "n1", self.registry, **kw
        )
        self.states: list[tuple[str, str]] = []
        self.link.on_state(lambda old, new: self.states.append((old, new)))
        self.accepted = 0

    def accept(self) -> tuple[Any, StringTransport, tuple[str, int]]:
        """Complete the next pending connect: (the protocol, its transport, (host, port))."""
        host, port, factory, *_ = self.reactor.tcpClients[self.accepted]
        self.accepted += 1
        wrapper = factory.buildProtocol(None)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        return wrapper._wrappedProtocol, transport, (host, port)

    def up(self) -> tuple[Any, StringTransport, Any, StringTransport]:
        """Both links connected, the probe channel subscribed and the first probe back."""
        self.link.start()
        cmd, ct, _ = self.accept()
        sub, st, _ = self.accept()
        assert self.link.state == DEGRADED  # commands only, so far
        confirm_subscriptions(sub, st)
        probe_back(self.link, cmd, ct, sub)
        assert self.link.state == UP
        return cmd, ct, sub, st


def resp(*items: bytes) -> bytes:
    return encode_command(items)


def confirm_subscriptions(sub: Any, st: StringTransport) -> None:
    """Answer every SUBSCRIBE written on the subscriber transport so far."""
    sent = st.value()
    st.clear()
    chunks = sent.split(b"*2\r\n$9\r\nSUBSCRIBE\r\n")[1:]
    for n, chunk in enumerate(chunks, 1):
        channel = chunk.split(b"\r\n")[1]
        sub.dataReceived(
            b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n" % (len(channel), channel, n)
        )


def probe_back(link: RedisLink, cmd: Any, ct: StringTransport, sub: Any) -> None:
    """The probe PUBLISHes written so far: answered, and delivered to the subscriber."""
    sent = ct.value()
    ct.clear()
    for chunk in sent.split(b"*3\r\n$7\r\nPUBLISH\r\n")[1:]:
        lines = chunk.split(b"\r\n")
        channel, payload = lines[1], lines[3]
        cmd.dataReceived(b":1\r\n")
        sub.dataReceived(resp(b"message", channel, payload))


def test_up_degraded_down_and_backoff() -> None:
    h = Harness()
    cmd, _ct, sub, _st = h.up()
    assert h.states == [(DOWN, DEGRADED), (DEGRADED, UP)]
    assert h.registry.get_sample_value("gamed_cluster_link_state") == 2
    sub.connectionLost(None)
    assert h.link.state == DEGRADED
    assert h.registry.get_sample_value("gamed_cluster_link_up", {"link": "subscriber"}) == 0
    cmd.connectionLost(None)
    assert h.link.state == DOWN
    assert h.link.publish("gamed:all", b"x") is False
    assert h.registry.get_sample_value("gamed_cluster_publish_dropped_total") == 1
    failed = h.link.execute("PING")
    assert isinstance(failed.result.value, ClusterUnavailable)
    failed.addErrback(lambda _: None)
    # Reconnects are timed calls with a growing, capped delay: nothing spins.
    before = len(h.reactor.tcpClients)
    h.reactor.advance(0.1)
    assert len(h.reactor.tcpClients) == before + 2  # both links retried after 0.1 s
    delays = [c.getTime() - h.reactor.seconds() for c in h.reactor.getDelayedCalls()]
    assert all(d <= BACKOFF_MAX for d in delays)


def test_reply_timeout_then_late_reply() -> None:
    h = Harness(reply_timeout=1.0)
    cmd, _ct, _, _ = h.up()
    first = h.link.execute("GET", "a")
    second = h.link.execute("GET", "b", timeout=5.0)
    h.reactor.advance(1.0)
    assert isinstance(first.result.value, ClusterUnavailable)
    first.addErrback(lambda _: None)
    assert not second.called
    cmd.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n")  # the late reply goes to the timed-out one
    assert second.result == "B"
    assert h.registry.get_sample_value("gamed_cluster_command_timeouts_total") == 1


def test_pending_commands_fail_when_the_connection_drops() -> None:
    h = Harness()
    cmd, _, _, _ = h.up()
    d = h.link.execute("GET", "a")
    cmd.connectionLost(None)
    assert isinstance(d.result.value, ClusterUnavailable)
    d.addErrback(lambda _: None)


def test_silent_subscriber_is_dropped_and_resubscribed() -> None:
    h = Harness(probe_interval=1.0, probe_timeout=3.0)
    got: list[bytes] = []
    h.link.subscribe("gamed:n:n1", got.append)
    cmd, ct, sub, st = h.up()
    for _ in range(3):  # probes go out, their PUBLISH is answered, nothing comes back
        h.reactor.advance(1.0)
        for _chunk in ct.value().split(b"PUBLISH")[1:]:
            cmd.dataReceived(b":0\r\n")
        ct.clear()
    assert h.link.state == UP
    h.reactor.advance(1.0)  # 4 s since the last probe came back
    assert h.link.state == DEGRADED
    assert st.disconnecting
    sub.connectionLost(None)
    h.reactor.advance(0.1)
    sub2, st2, _ = h.accept()
    sent = st2.value()
    # one channel per SUBSCRIBE, the handlers' first and the probe's last
    assert sent.count(b"SUBSCRIBE") == 2
    assert sent.index(b"gamed:n:n1") < sent.index(b"gamed:probe:n1")
    confirm_subscriptions(sub2, st2)
    probe_back(h.link, cmd, ct, sub2)
    assert h.link.state == UP
    assert h.link.silent == 1 and h.link.subscriber.reconnects == 1
    sub2.dataReceived(resp(b"message", b"gamed:n:n1", b"hello"))
    assert got == [b"hello"]


def test_stuck_command_link_is_dropped() -> None:
    h = Harness(probe_interval=1.0, probe_timeout=3.0)
    _cmd, ct, _sub, _st = h.up()
    for _ in range(3):
        h.reactor.advance(1.0)
    assert not ct.disconnecting
    h.reactor.advance(1.0)  # the first probe unanswered for more than 3 s
    assert ct.disconnecting or ct.disconnected


def test_publish_writes_resp_in_order_and_counts() -> None:
    h = Harness()
    cmd, ct, _, _ = h.up()
    assert h.link.publish("gamed:n:b", b"1")
    assert h.link.publish("gamed:n:b", b"22")
    assert ct.value() == resp(b"PUBLISH", b"gamed:n:b", b"1") + resp(
        b"PUBLISH", b"gamed:n:b", b"22"
    )
    d = h.link.execute("ECHO", "x")
    cmd.dataReceived(b":1\r\n-OOM no memory\r\n$1\r\nx\r\n")  # PUBLISH replies: counted
    assert d.result == "x"
    assert h.registry.get_sample_value("gamed_cluster_published_total") == 2
    assert h.registry.get_sample_value("gamed_cluster_publish_errors_total") == 1


def test_auth_and_select_before_anything() -> None:
    h = Harness("redis://user:pw@127.0.0.1:6379/2")
    h.link.start()
    cmd, ct, _ = h.accept()
    assert ct.value() == resp(b"AUTH", b"user", b"pw") + resp(b"SELECT", b"2")
    assert h.link.state == DOWN  # not before the replies
    cmd.dataReceived(b"+OK\r\n+OK\r\n")
    assert h.link.state == DEGRADED
    sub, st, _ = h.accept()
    assert st.value().startswith(resp(b"AUTH", b"user", b"pw") + resp(b"SELECT", b"2"))
    assert b"SUBSCRIBE" not in st.value()  # subscribes wait for AUTH's reply
    sub.dataReceived(b"+OK\r\n+OK\r\n")
    assert b"SUBSCRIBE" in st.value()


def test_wrong_password_keeps_it_down_and_retries() -> None:
    h = Harness("redis://:bad@127.0.0.1:6379/0")
    h.link.start()
    cmd, ct, _ = h.accept()
    cmd.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
    assert ct.disconnecting
    assert h.link.state == DOWN
    assert "WRONGPASS" in h.link.command.last_error
    cmd.connectionLost(None)
    h.reactor.advance(0.1)
    assert len(h.reactor.tcpClients) == 3  # the command link tries again


def test_sentinel_gives_the_master_and_is_asked_again_after_failover() -> None:
    h = Harness("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/1")
    h.link.start()
    where = [(c[0], c[1]) for c in h.reactor.tcpClients]
    assert where == [("10.0.0.1", 26379), ("10.0.0.1", 26379)]  # command and subscriber
    # the first sentinel refuses: each link asks the second one
    h.reactor.tcpClients[0][2].clientConnectionFailed(None, _refused())
    h.reactor.tcpClients[1][2].clientConnectionFailed(None, _refused())
    h.accepted = 2
    sentinel, sentinel_t, where_to = h.accept()
    assert where_to == ("10.0.0.2", 26379)
    assert sentinel_t.value() == resp(b"SENTINEL", b"get-master-addr-by-name", b"mymaster")
    sentinel.dataReceived(b"*2\r\n$8\r\n10.0.0.9\r\n$4\r\n6380\r\n")
    assert sentinel_t.disconnecting
    assert (h.reactor.tcpClients[4][0], h.reactor.tcpClients[4][1]) == ("10.0.0.9", 6380)
    h.accept()  # the subscriber's sentinel: left unanswered
    cmd, ct, _ = h.accept()
    assert ct.value() == resp(b"SELECT", b"1") + resp(b"ROLE")
    cmd.dataReceived(b"+OK\r\n" + MASTER_ROLE)
    assert h.link.state == DEGRADED
    # failover: the master's connection drops; the reconnect asks the sentinels again
    cmd.connectionLost(None)
    assert h.link.state == DOWN
    h.reactor.advance(0.1)
    assert (h.reactor.tcpClients[5][0], h.reactor.tcpClients[5][1]) == ("10.0.0.1", 26379)
    sentinel, _, _ = h.accept()
    sentinel.dataReceived(b"*2\r\n$8\r\n10.0.0.7\r\n$4\r\n6381\r\n")
    assert (h.reactor.tcpClients[6][0], h.reactor.tcpClients[6][1]) == ("10.0.0.7", 6381)
    cmd, ct, _ = h.accept()
    cmd.dataReceived(b"+OK\r\n" + MASTER_ROLE)
    assert h.link.state == DEGRADED
    assert h.link.command.reconnects == 1
    # a write refused as READONLY (demoted under us) drops the connection to ask again
    d = h.link.execute("SET", "k", "v")
    cmd.dataReceived(b"-READONLY You can't write against a read only replica.\r\n")
    d.addErrback(lambda _: None)
    assert ct.disconnecting


def test_sentinel_answer_that_is_a_replica_is_refused() -> None:
    h = Harness("redis+sentinel://10.0.0.1:26379/mymaster")
    h.link.start()
    sentinel, _, _ = h.accept()
    sentinel.dataReceived(b"*2\r\n$8\r\n10.0.0.9\r\n$4\r\n6380\r\n")
    sub_sentinel, _, _ = h.accept()
    cmd, ct, _ = h.accept()
    cmd.dataReceived(resp(b"slave", b"10.0.0.8", b"6379"))
    assert ct.disconnecting
    sub_sentinel.dataReceived(b"*2\r\n$8\r\n10.0.0.9\r\n$4\r\n6380\r\n")
    sub, st, _ = h.accept()  # the subscriber (bytes replies) takes the master's ROLE
    sub.dataReceived(MASTER_ROLE)
    assert not st.disconnecting and b"SUBSCRIBE" in st.value()
    assert h.link.state == DOWN
    assert "not the master" in h.link.command.last_error


MASTER_ROLE = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"


def test_sentinel_that_does_not_know_the_master() -> None:
    h = Harness("redis+sentinel://10.0.0.1:26379/mymaster")
    h.link.start()
    sentinel, _, _ = h.accept()
    sentinel.dataReceived(b"*-1\r\n")
    assert h.link.state == DOWN
    assert "does not know master 'mymaster'" in h.link.command.last_error


def test_rediss_without_pyopenssl_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "OpenSSL", None)
    h = Harness("rediss://127.0.0.1:6380/0")
    with pytest.raises(RuntimeError, match="pyOpenSSL") as e:
        h.link.start()
    assert "\n" not in str(e.value)


def test_stop_fails_pending_and_stops_retrying() -> None:
    h = Harness()
    cmd, _ct, sub, _st = h.up()
    d = h.link.execute("GET", "a")
    done = h.link.stop()
    cmd.connectionLost(None)
    sub.connectionLost(None)
    assert done.called
    assert isinstance(d.result.value, ClusterUnavailable)
    d.addErrback(lambda _: None)
    before = len(h.reactor.tcpClients)
    h.reactor.advance(10)
    assert len(h.reactor.tcpClients) == before
    assert h.link.state == DOWN


def _refused() -> Any:
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    return Failure(ConnectionRefusedError())


def test_unsubscribe_and_publish_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import gamed.cluster.link as link_module

    h = Harness()
    got: list[bytes] = []
    h.link.subscribe("c", got.append)
    _, _, sub, st = h.up()
    h.link.unsubscribe("c")
    assert st.value() == resp(b"UNSUBSCRIBE", b"c")
    sub.dataReceived(resp(b"message", b"c", b"late"))  # in flight before the UNSUBSCRIBE
    assert got == []
    monkeypatch.setattr(link_module, "MAX_PENDING", 2)
    assert h.link.publish("c", b"1") and h.link.publish("c", b"2")
    assert h.link.publish("c", b"3") is False  # Redis is not answering: bounded
    assert h.link.dropped == 1
