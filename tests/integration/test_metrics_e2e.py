"""The metrics plugin in a real `twistd -n gamed`: /stats, /stats/rooms/{id}, /metrics, the log.

Without the plugin, and a room's game state: unit tests on the real service tree
(tests/unit/test_metrics_plugin.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import heartbeat_ok, poll_until, two_in_room

WAIT = 15.0


def fast_config(tmp_path: Path, top_rooms: int = 20) -> str:
    path = tmp_path / "metrics.toml"
    path.write_text(f"[middleware.metrics]\ncollection_interval = 0.25\ntop_rooms = {top_rooms}\n")
    return str(path)


def scrape(server: Any) -> dict[str, Any]:
    status, body = server.http("/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(body.decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "duplicate metric families"
    return {f.name: f for f in families}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    name = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    family = families.get(name) or families[sample]
    total = 0.0
    for s in family.samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def wait_stats(server: Any, ok: Any) -> dict[str, Any]:
    def snapshot() -> dict[str, Any] | None:
        stats = server.stats().get("metrics", {})
        return stats if stats.get("collected") and ok(stats) else None

    return poll_until(snapshot, WAIT, "a metrics snapshot that matches")


def collect_windows(server: Any, messages: int) -> list[dict[str, Any]]:
    """Distinct snapshots until their windows add up to ``messages`` (the traffic
    may straddle a collection)."""
    seen: dict[float, dict[str, Any]] = {}

    def added_up() -> bool:
        stats = server.stats().get("metrics", {})
        if stats.get("collected"):
            seen[stats["timestamp"]] = stats
        return sum(s["messages"] for s in seen.values()) >= messages

    poll_until(added_up, WAIT, f"windows adding up to {messages} messages")
    return [s for s in seen.values() if s["messages"]]


def test_stats_snapshot_and_room_stats(gamed: Any, tmp_path: Path) -> None:
    config = tmp_path / "metrics.toml"
    config.write_text("[middleware.metrics]\ncollection_interval = 1.0\n")
    server = gamed("--middleware", "metrics", "--config", str(config))
    a, b = two_in_room(server, 42)
    for i in range(20):
        a.chat(42, f"hello {i}")
    for _ in range(20):
        a.recv()
        b.recv()
    a.chat(43, "wrong room")
    a.recv_error(404)
    windows = collect_windows(server, 25)
    assert sum(w["messages"] for w in windows) == 25
    assert sum(w["errors"] for w in windows) == 1
    assert sum(w["response_time_ms"]["count"] for w in windows) == 25
    if len(windows) == 1:  # the usual case: one window saw everything
        assert windows[0]["error_rate_percent"] == pytest.approx(4.0)
    for w in windows:
        assert w["connections"] == 2 and w["sessions"] == 2
        assert w["messages_per_second"] > 0
        rt = w["response_time_ms"]
        assert 0 < rt["p50"] <= rt["p95"] <= rt["p99"] <= rt["max"] < 1000
        assert 5 < w["memory_mb"] < 4096
        assert w["cpu_percent"] >= 0
    (room,) = windows[-1]["rooms"]["top"]
    assert room["room_id"] == 42 and room["user_count"] == 2
    assert room["messages_per_minute"] > 0
    assert "game_state" not in room
    status, body = server.http("/stats/rooms/42")
    assert status == 200
    per_room = orjson.loads(body)["metrics"]
    assert per_room["user_count"] == 2 and per_room["messages_per_minute"] > 0
    assert server.http("/stats/rooms/43")[0] == 404
    # A later window sees no traffic and no errors.
    quiet = wait_stats(server, lambda s: s["messages"] == 0)
    assert quiet["error_rate_percent"] == 0.0
    assert "metrics: 2 conn, " in server.log()


def test_metrics_parse_and_move_with_traffic(gamed: Any, tmp_path: Path) -> None:
    server = gamed("--config", fast_config(tmp_path, top_rooms=2))  # every plugin, default order
    before = scrape(server)
    clients = [server.client(uid) for uid in range(1, 7)]
    for i, c in enumerate(clients):
        c.join(100 + i % 3)  # rooms 100, 101, 102: two members each
    clients[0].recv()  # UserJoinedRoom (user 4)
    clients[0].chat(100, "x")
    assert "ChatMessage" in clients[0].recv()
    clients[0].send({"NoSuchMessage": {}})
    clients[0].recv_error(400)
    for _ in range(32):  # plugin calls are timed for one message in 16
        assert heartbeat_ok(clients[2])
    wait_stats(server, lambda s: s["rooms"]["count"] == 3 and len(s["rooms"]["top"]) == 2)
    after = scrape(server)
    assert value(after, "gamed_connections") == 6
    assert value(after, "gamed_messages_received_total", type="RoomJoin") == 6 + value(
        before, "gamed_messages_received_total", type="RoomJoin"
    )
    timed = value(after, "gamed_middleware_duration_seconds_count", plugin="metrics")
    assert timed > value(before, "gamed_middleware_duration_seconds_count", plugin="metrics")
    assert value(after, "gamed_memory_rss_bytes") > 1e6
    assert value(after, "gamed_max_connections") == 10000
    rooms = {s.labels["room"] for s in after["gamed_room_members"].samples}
    assert len(rooms) == 3 and "other" in rooms and "100" in rooms  # top-2 + other
    assert value(after, "gamed_room_members") == 6
    # Every answer above left in a send of the TCP listener's TurnWriter; nobody fell behind.
    assert value(after, "gamed_transport_sends_total", transport="tcp") >= 6 + 32
    assert value(after, "gamed_transport_buffered_writes_total", transport="tcp") == 0
    assert value(after, "gamed_transport_sends_total", transport="ws") == 0
    assert "Duplicated timeseries" not in server.log()
