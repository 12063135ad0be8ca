"""The metrics plugin in a real `twistd -n gamed`: /stats, /stats/rooms/{id}, /metrics, the log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import heartbeat_ok

pytestmark = pytest.mark.slow

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
    deadline = time.monotonic() + WAIT
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = server.stats().get("metrics", {})
        if stats.get("collected") and ok(stats):
            return stats
        time.sleep(0.1)
    raise AssertionError(f"metrics snapshot never matched: {stats}")


def collect_windows(server: Any, messages: int) -> list[dict[str, Any]]:
    """Distinct snapshots until their windows add up to ``messages`` (the traffic
    may straddle a collection)."""
    seen: dict[float, dict[str, Any]] = {}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        stats = server.stats().get("metrics", {})
        if stats.get("collected"):
            seen[stats["timestamp"]] = stats
            if sum(s["messages"] for s in seen.values()) >= messages:
                return [s for s in seen.values() if s["messages"]]
        time.sleep(0.05)
    raise AssertionError(f"windows never added up to {messages} messages: {seen}")


def test_stats_snapshot_and_room_stats(gamed: Any, tmp_path: Path) -> None:
    config = tmp_path / "metrics.toml"
    config.write_text("[middleware.metrics]\ncollection_interval = 1.0\n")
    server = gamed("--middleware", "metrics", "--config", str(config))
    a, b = server.client(1), server.client(2)
    a.join(42)
    b.join(42)
    a.recv()  # UserJoinedRoom
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
    assert "Duplicated timeseries" not in server.log()


def test_without_metrics_there_is_no_plugin_section(gamed: Any) -> None:
    server = gamed("--middleware", "none")
    assert "metrics" not in server.stats()
    families = scrape(server)
    assert "gamed_middleware_duration_seconds" not in families
    assert "gamed_connections" in families


def test_room_stats_show_the_running_games_state(gamed: Any) -> None:
    server = gamed("--middleware", "metrics")
    a, b = server.client(1), server.client(2)
    a.join(7)
    b.join(7)

    def game_state() -> Any:
        status, body = server.http("/stats/rooms/7")
        assert status == 200
        return orjson.loads(body)["metrics"].get("game_state")

    assert game_state() is None  # no game in the room: the field is omitted
    a.send({"StartGame": {"room_id": 7}})
    deadline = time.monotonic() + WAIT
    while game_state() != "Waiting" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert game_state() == "Waiting"
    b.send({"ToggleReady": {"room_id": 7}})
    while game_state() != "InProgress" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert game_state() == "InProgress"
