"""gamed.cluster.link against a real redis-server (127.0.0.1, a free port, no persistence).

Every wait is bounded (``until``: the reactor polled every 20 ms up to a deadline).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import defer, reactor, task

from gamed.cluster.link import DEGRADED, DOWN, UP, ClusterUnavailable, RedisError, RedisLink
from gamed.cluster.url import parse_redis_url
from tests.integration.helpers import FakeSentinel, RedisServer, SilencingProxy


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Let the reactor run until ``predicate()`` is truthy; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        yield sleep(0.02)


@pytest.fixture
def links() -> Iterator[Callable[..., RedisLink]]:
    """``links(url, node_id, **kw)``: a started RedisLink, stopped at teardown."""
    made: list[RedisLink] = []

    def make(url: str, node_id: str = "n1", **kw: Any) -> RedisLink:
        link = RedisLink(parse_redis_url(url), reactor, reactor, node_id, **kw)
        made.append(link)
        link.start()
        return link

    yield make
    for link in made:
        pytest_twisted.blockon(link.stop())


@pytest_twisted.inlineCallbacks
def test_execute_publish_subscribe(redis_server: RedisServer, links: Any) -> Iterator[Any]:
    registry = CollectorRegistry()
    link = links(redis_server.url(), registry=registry)
    states: list[tuple[str, str]] = []
    link.on_state(lambda old, new: states.append((old, new)))
    got: list[bytes] = []
    link.subscribe("gamed:n:n1", got.append)
    yield until(lambda: link.state == UP, 10, "the link up")
    assert states[-1][1] == UP
    assert (yield link.execute("SET", "k", "0012")) == "OK"
    assert (yield link.execute("GET", "k")) == "0012"  # never converted to 12
    assert (yield link.execute("INCR", "n")) == 1
    assert (yield link.execute("GET", "missing")) is None
    with pytest.raises(RedisError):
        yield link.execute("INCR", "k", "extra")
    assert link.publish("gamed:n:n1", b'{"a": 1}')
    yield until(lambda: got, 5, "the message")
    assert got == [b'{"a": 1}']
    assert link.health()["state"] == UP
    assert registry.get_sample_value("gamed_cluster_link_state") == 2
    assert registry.get_sample_value("gamed_cluster_published_total") == 1
    assert registry.get_sample_value("gamed_cluster_received_total") == 1
    yield until(lambda: link.lag is not None and link.rtt is not None, 5, "a probe back")
    assert registry.get_sample_value("gamed_cluster_redis_rtt_seconds_count")


@pytest_twisted.inlineCallbacks
def test_publish_order_2000(redis_server: RedisServer, links: Any) -> Iterator[Any]:
    a = links(redis_server.url(), "a")
    b = links(redis_server.url(), "b")
    got: list[bytes] = []
    b.subscribe("gamed:n:b", got.append)
    yield until(lambda: a.state == UP and b.state == UP, 10, "both links up")
    sent = [b'{"i": %d}' % i for i in range(2000)]
    for payload in sent:
        assert a.publish("gamed:n:b", payload)
    yield until(lambda: len(got) >= 2000, 20, "2000 messages")
    assert got == sent
    assert a.published == 2000 and b.received == 2000


@pytest_twisted.inlineCallbacks
def test_reply_timeout(redis_server: RedisServer, links: Any) -> Iterator[Any]:
    link = links(redis_server.url())
    yield until(lambda: link.state == UP, 10, "the link up")
    # BLPOP on an empty list holds this connection's reply past the timeout
    with pytest.raises(ClusterUnavailable, match=r"no reply to BLPOP within 0\.2s"):
        yield link.execute("BLPOP", "empty", "0.5", timeout=0.2)
    assert link.command_timeouts == 1
    # the late reply is matched to the timed-out command, not to the next one
    assert (yield link.execute("ECHO", "next")) == "next"


@pytest_twisted.inlineCallbacks
def test_script_reloaded_after_restart(redis_server: RedisServer, links: Any) -> Iterator[Any]:
    link = links(redis_server.url())
    script = link.script("add", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    yield until(lambda: link.state == UP, 10, "the link up")
    assert (yield script.run(["s"], [5])) == 5
    assert link.script_reloads == 1  # first run: NOSCRIPT, then EVAL
    assert (yield script.run(["s"], [5])) == 10
    assert link.script_reloads == 1
    redis_server.restart()
    yield until(lambda: link.state == UP and link.command.reconnects == 1, 15, "back up")
    assert (yield script.run(["s"], [1])) == 1  # Redis forgot both the script and the key
    assert link.script_reloads == 2


@pytest_twisted.inlineCallbacks
def test_down_while_stopped_and_back(redis_server: RedisServer, links: Any) -> Iterator[Any]:
    link = links(redis_server.url(), registry=CollectorRegistry())
    got: list[bytes] = []
    link.subscribe("gamed:all", got.append)
    states: list[str] = []
    link.on_state(lambda old, new: states.append(new))
    yield until(lambda: link.state == UP, 10, "the link up")
    redis_server.stop()
    yield until(lambda: link.state == DOWN, 10, "the link down")
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="redis is down"):
        yield link.execute("PING")
    assert time.monotonic() - started < 0.5  # at once, not after a timeout
    assert link.publish("gamed:all", b"lost") is False
    assert link.dropped == 1
    yield sleep(0.5)  # several reconnect attempts fail meanwhile: nothing breaks
    redis_server.start()
    yield until(lambda: link.state == UP, 15, "the link up again")
    assert states[-1] == UP and DOWN in states
    assert link.publish("gamed:all", b"after")
    yield until(lambda: got, 5, "the message after the restart")
    assert got == [b"after"]  # resubscribed; the dropped one never came
    assert link.subscriber.reconnects == 1 and link.command.reconnects == 1


@pytest_twisted.inlineCallbacks
def test_silent_subscriber_detected(redis_server: RedisServer, links: Any) -> Iterator[Any]:
    proxy = SilencingProxy(redis_server.port)
    try:
        registry = CollectorRegistry()
        link = links(
            proxy.url(),
            probe_interval=0.2,
            probe_timeout=0.6,
            registry=registry,
        )
        got: list[bytes] = []
        link.subscribe("gamed:n:n1", got.append)
        yield until(lambda: link.state == UP, 10, "the link up")
        states: list[str] = []
        link.on_state(lambda old, new: states.append(new))
        # The subscriber's TCP connection stays open but Redis's words no longer reach it.
        assert proxy.silence_subscribers() == 1
        assert link.publish("gamed:n:n1", b"lost")  # the command link still works
        yield until(lambda: link.state == DEGRADED, 5, "degraded")
        assert (yield link.execute("PING")) == "PONG"
        yield until(lambda: link.state == UP, 10, "up again on a new subscriber connection")
        assert states == [DEGRADED, UP]
        assert link.silent == 1 and link.subscriber.reconnects == 1
        assert (
            registry.get_sample_value("gamed_cluster_reconnects_total", {"link": "subscriber"}) == 1
        )
        assert link.publish("gamed:n:n1", b"again")
        yield until(lambda: got, 5, "delivery after the reconnect")
        assert got == [b"again"]
    finally:
        proxy.close()


@pytest_twisted.inlineCallbacks
def test_password_and_db(tmp_path: Path, links: Any) -> Iterator[Any]:
    server = RedisServer(tmp_path, password="s3cret")
    try:
        link = links(server.url(db=3))
        got: list[bytes] = []
        link.subscribe("c", got.append)
        yield until(lambda: link.state == UP, 10, "the link up")
        yield link.execute("SET", "k", "v")
        assert server.cli("SELECT", "3") == "OK"
        assert (yield link.execute("DBSIZE")) == 1
        assert link.publish("c", b"x")
        yield until(lambda: got, 5, "the message")
        bad = links(f"redis://:wrong@127.0.0.1:{server.port}/0", "n2")
        yield sleep(0.5)
        assert bad.state == DOWN
        assert "WRONGPASS" in bad.command.last_error or "invalid" in bad.command.last_error
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_rediss_with_a_private_ca(tmp_path: Path, links: Any) -> Iterator[Any]:
    server = RedisServer(tmp_path, password="pw", tls=True)
    try:
        # the CA as an operator gives it: in the --redis URL
        link = links(f"{server.url(tls=True)}?ca={server.ca}")
        got: list[bytes] = []
        link.subscribe("c", got.append)
        yield until(lambda: link.state == UP, 10, "the TLS link up")
        assert (yield link.execute("SET", "k", "v")) == "OK"
        assert link.publish("c", b"over tls")
        yield until(lambda: got, 5, "the message")
        assert got == [b"over tls"]
        # without the CA the certificate is refused: the link stays down
        untrusted = links(server.url(tls=True), "n2")
        yield sleep(0.5)
        assert untrusted.state == DOWN
        assert "certificate verify failed" in untrusted.command.last_error
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_sentinel_failover_to_a_new_master(
    redis_server: RedisServer, tmp_path: Path, links: Any
) -> Iterator[Any]:
    (tmp_path / "second").mkdir()
    second = RedisServer(tmp_path / "second")
    sentinel = FakeSentinel(("127.0.0.1", redis_server.port))
    try:
        link = links(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0")
        got: list[bytes] = []
        link.subscribe("gamed:all", got.append)
        yield until(lambda: link.state == UP, 10, "the link up on the first master")
        yield link.execute("SET", "where", "first")
        assert redis_server.cli("GET", "where") == "first"
        # failover: the sentinels name the second server, the first one goes away
        sentinel.master = ("127.0.0.1", second.port)
        redis_server.stop()
        yield until(lambda: link.state == DOWN, 10, "down while the master is gone")
        yield until(lambda: link.state == UP, 15, "up on the new master")
        yield link.execute("SET", "where", "second")
        assert second.cli("GET", "where") == "second"
        assert link.publish("gamed:all", b"after failover")
        yield until(lambda: got, 5, "delivery on the new master")
        assert got == [b"after failover"]
        assert sentinel.asked >= 4  # each link asked before each connect
    finally:
        sentinel.close()
        second.stop()
