"""gamed.web: /healthz, /stats, /metrics (and /) rendered from a real service tree, no sockets."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from gamed import __version__
from gamed.rooms import Room
from gamed.telemetry import ServerMetrics
from gamed.web import STATS_ROOM_LIMIT, QuietSite, make_site
from tests.unit.fakes import MemoryServer, send


def header(request: DummyRequest, name: bytes) -> bytes:
    (value,) = request.responseHeaders.getRawHeaders(name)
    return value


@pytest.fixture
def server(tmp_path: Path) -> MemoryServer:
    return MemoryServer(tmp_path, "--middleware", "none")


# -- /healthz --------------------------------------------------------------------------------


def test_healthz_serving(server: MemoryServer) -> None:
    code, request, body = server.get(b"/healthz")
    assert code == 200
    assert orjson.loads(body) == {"status": "serving"}
    assert header(request, b"content-type") == b"application/json"
    assert header(request, b"cache-control") == b"no-store"


def test_healthz_draining(server: MemoryServer) -> None:
    server.router.draining = True
    code, _, body = server.get(b"/healthz")
    assert code == 503
    assert orjson.loads(body) == {"status": "draining"}


def test_healthz_after_stop_is_draining(server: MemoryServer) -> None:
    server.service.privilegedStartService()
    server.service.startService()
    assert server.get(b"/healthz")[0] == 200
    server.service.stopService()
    code, _, body = server.get(b"/healthz")
    assert code == 503
    assert orjson.loads(body) == {"status": "draining"}


# -- /stats ----------------------------------------------------------------------------------


def test_stats_fresh(server: MemoryServer) -> None:
    code, request, body = server.get(b"/stats")
    assert code == 200
    assert header(request, b"content-type") == b"application/json"
    stats = orjson.loads(body)
    assert stats["version"] == __version__
    assert stats["uptime_seconds"] == 0
    assert stats["draining"] is False
    assert stats["connections"] == 0
    assert stats["sessions"] == 0
    assert stats["middleware"] == []
    assert stats["rooms"] == {"count": 0, "listed": 0, "largest": []}


def test_stats_trailing_slash(server: MemoryServer) -> None:
    code, _, body = server.get(b"/stats/")
    assert code == 200
    assert orjson.loads(body)["version"] == __version__


def test_stats_uptime_follows_the_clock(server: MemoryServer) -> None:
    server.reactor.advance(12.3456)
    stats = orjson.loads(server.get(b"/stats")[2])
    assert stats["uptime_seconds"] == 12.346


def test_stats_counts_connections_sessions_and_rooms(server: MemoryServer) -> None:
    alice, bob, carol = server.client(), server.client(), server.client()
    send(
        alice,
        {"Connect": {"room_id": 0, "user_id": 1}},
        {"RoomJoin": {"user_id": 1, "room_id": 5, "nickname": "a"}},
    )
    send(
        bob,
        {"Connect": {"room_id": 0, "user_id": 2}},
        {"RoomJoin": {"user_id": 2, "room_id": 5, "nickname": "b"}},
    )
    send(
        carol,
        {"Connect": {"room_id": 0, "user_id": 3}},
        {"RoomJoin": {"user_id": 3, "room_id": 9, "nickname": "c"}},
    )
    send(alice, {"ChatMessage": {"user_id": 1, "room_id": 5, "message": "hi"}})
    server.get(b"/stats")  # a render does not change anything
    extra = server.client()  # connected, no Connect yet
    stats = orjson.loads(server.get(b"/stats")[2])
    assert stats["connections"] == 4
    assert stats["sessions"] == 3
    assert stats["rooms"]["count"] == 2
    assert stats["rooms"]["listed"] == 2
    largest = stats["rooms"]["largest"]
    assert [(r["room_id"], r["user_count"]) for r in largest] == [(5, 2), (9, 1)]
    assert largest[0]["messages"] == 1
    assert largest[1]["messages"] == 0
    assert extra.user_id is None


def test_stats_lists_at_most_the_room_limit(server: MemoryServer) -> None:
    rooms = server.router.rooms
    for room_id in range(1, STATS_ROOM_LIMIT + 6):
        rooms._rooms[room_id] = Room(room_id, 0.0)
    stats = orjson.loads(server.get(b"/stats")[2])
    assert stats["rooms"]["count"] == STATS_ROOM_LIMIT + 5
    assert stats["rooms"]["listed"] == STATS_ROOM_LIMIT
    assert len(stats["rooms"]["largest"]) == STATS_ROOM_LIMIT


def test_stats_sections_and_extra_resources(server: MemoryServer) -> None:
    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"hello"

    site = make_site(
        server.router,
        CollectorRegistry(),
        stats_sections={"ratelimit": lambda: {"limited": 3}},
        extra={b"hello": Hello()},
    )
    request = DummyRequest([b"stats"])
    stats = orjson.loads(site.getResourceFor(request).render(request))
    assert stats["ratelimit"] == {"limited": 3}
    request = DummyRequest([b"hello"])
    assert site.getResourceFor(request).render(request) == b"hello"
    request = DummyRequest([b""])
    root = orjson.loads(site.getResourceFor(request).render(request))
    assert root == {
        "gamed": __version__,
        "endpoints": ["console", "healthz", "hello", "metrics", "stats"],
    }


# -- / and unknown paths -----------------------------------------------------------------------


def test_root_lists_endpoints(server: MemoryServer) -> None:
    code, _, body = server.get(b"/")
    assert code == 200
    assert orjson.loads(body) == {
        "gamed": __version__,
        "endpoints": ["console", "healthz", "metrics", "stats"],
    }


# Twisted's own Resource.getChild builds its deprecated _UnsafeNoResource for a 404.
@pytest.mark.filterwarnings("ignore:twisted.web.resource._UnsafeNoResource:DeprecationWarning")
def test_unknown_path_is_404(server: MemoryServer) -> None:
    code, _, _ = server.get(b"/nope")
    assert code == 404


def test_site_is_quiet(server: MemoryServer) -> None:
    assert isinstance(server.site, QuietSite)
    assert server.site.displayTracebacks is False


# -- /metrics --------------------------------------------------------------------------------


def metrics(server: MemoryServer) -> dict:
    code, request, body = server.get(b"/metrics")
    assert code == 200
    assert header(request, b"content-type").startswith(b"text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample(family, name: str, **labels: str) -> float:
    for s in family.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name} {labels} in {family.samples}")


def test_metrics_families(server: MemoryServer) -> None:
    families = metrics(server)
    for name in (
        "gamed_connections",
        "gamed_rooms",
        "gamed_sessions",
        "gamed_messages_received",
        "gamed_errors_sent",
        "gamed_message_processing_seconds",
        "gamed_build_info",
    ):
        assert name in families, name
    assert families["gamed_connections"].type == "gauge"
    assert families["gamed_messages_received"].type == "counter"
    assert families["gamed_errors_sent"].type == "counter"
    assert families["gamed_message_processing_seconds"].type == "histogram"
    assert sample(families["gamed_build_info"], "gamed_build_info", version=__version__) == 1
    # label sets are pre-resolved: every client type and error code is exported at 0
    for tag in ("Connect", "HeartBeat", "PlayerAction", "invalid"):
        assert (
            sample(families["gamed_messages_received"], "gamed_messages_received_total", type=tag)
            == 0
        )
    for code in ("400", "401", "503"):
        assert sample(families["gamed_errors_sent"], "gamed_errors_sent_total", code=code) == 0
    # the standard process collectors are on the private registry too
    assert "process_cpu_seconds" in families


def test_metrics_follow_traffic(server: MemoryServer) -> None:
    alice = server.client()
    send(alice, b'"HeartBeat"', {"Connect": {"room_id": 0, "user_id": 1}})
    send(alice, {"RoomJoin": {"user_id": 1, "room_id": 5, "nickname": "a"}}, b"not json")
    families = metrics(server)
    assert sample(families["gamed_connections"], "gamed_connections") == 1
    assert sample(families["gamed_rooms"], "gamed_rooms") == 1
    assert sample(families["gamed_sessions"], "gamed_sessions") == 1
    received = families["gamed_messages_received"]
    assert sample(received, "gamed_messages_received_total", type="HeartBeat") == 1
    assert sample(received, "gamed_messages_received_total", type="Connect") == 1
    assert sample(received, "gamed_messages_received_total", type="RoomJoin") == 1
    assert sample(received, "gamed_messages_received_total", type="invalid") == 1
    assert sample(families["gamed_errors_sent"], "gamed_errors_sent_total", code="400") == 1
    hist = families["gamed_message_processing_seconds"]
    assert sample(hist, "gamed_message_processing_seconds_count", type="Connect") == 1
    assert sample(hist, "gamed_message_processing_seconds_bucket", type="Connect", le="+Inf") == 1


def test_two_server_metrics_do_not_clash() -> None:
    a = ServerMetrics()
    b = ServerMetrics()
    assert a.registry is not b.registry
    a.connections.inc()
    a.received["HeartBeat"] += 1
    a.error_sent(400)
    assert a.registry.get_sample_value("gamed_connections") == 1
    assert b.registry.get_sample_value("gamed_connections") == 0
    assert a.registry.get_sample_value("gamed_messages_received_total", {"type": "HeartBeat"}) == 1
    assert b.registry.get_sample_value("gamed_messages_received_total", {"type": "HeartBeat"}) == 0


def test_two_service_trees_in_one_process(tmp_path: Path) -> None:
    one = MemoryServer(tmp_path / "one", "--middleware", "none")
    two = MemoryServer(tmp_path / "two", "--middleware", "none")
    send(one.client(), {"Connect": {"room_id": 0, "user_id": 1}})
    assert sample(metrics(one)["gamed_connections"], "gamed_connections") == 1
    assert sample(metrics(two)["gamed_connections"], "gamed_connections") == 0


def test_error_codes_outside_the_protocol_are_bucketed() -> None:
    metrics_ = ServerMetrics()
    metrics_.error_sent(418)
    metrics_.error_sent(599)
    metrics_.error_sent(409)
    value = metrics_.registry.get_sample_value
    assert value("gamed_errors_sent_total", {"code": "400"}) == 1
    assert value("gamed_errors_sent_total", {"code": "500"}) == 1
    assert value("gamed_errors_sent_total", {"code": "409"}) == 1
    assert value("gamed_errors_sent_total", {"code": "418"}) is None


def test_unknown_disconnect_reason_counts_as_closed() -> None:
    metrics_ = ServerMetrics()
    metrics_.disconnected("weird")
    metrics_.disconnected("idle")
    value = metrics_.registry.get_sample_value
    assert value("gamed_disconnects_total", {"reason": "closed"}) == 1
    assert value("gamed_disconnects_total", {"reason": "idle"}) == 1
    assert value("gamed_disconnects_total", {"reason": "weird"}) is None


def test_fast_histogram_matches_prometheus_bucket_semantics() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from gamed.telemetry import LATENCY_BUCKETS, FastHistogram

    values = [0.0, 0.00001, 0.000011, 0.0005, 0.0049, 0.005, 0.3, 2.0, 1.0]
    fast = FastHistogram(LATENCY_BUCKETS)
    reg = CollectorRegistry()
    ref = Histogram("ref_seconds", "reference", buckets=LATENCY_BUCKETS, registry=reg)
    for v in values:
        fast.observe(v)
        ref.observe(v)
    for le, count in fast.cumulative():
        assert reg.get_sample_value("ref_seconds_bucket", {"le": le}) == count, le
    assert fast.count == len(values)
    assert abs(fast.sum - reg.get_sample_value("ref_seconds_sum")) < 1e-12
