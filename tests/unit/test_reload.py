"""Reload on the real service tree (MemoryReactorClock): all or nothing, and explicit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from gamed import tap
from gamed.config import ConfigError, PluginConfigError
from tests.unit.fakes import memory_service

GOOD = """
[server]
round_limit = 10

[middleware.security]
rate_limit_per_minute = 60

[middleware.metrics]
collection_interval = 5

[middleware.analytics]
queue_size = 1000
"""


class Tree:
    """A built (not started) gamed service tree reading ``gamed.toml`` under tmp_path."""

    def __init__(self, tmp_path: Path, text: str = GOOD, *extra: str) -> None:
        self.path = tmp_path / "gamed.toml"
        self.path.write_text(text)
        self.service, self.reactor = memory_service(tmp_path, "--config", str(self.path), *extra)
        self.router: Any = self.service.router

    def write(self, text: str) -> None:
        self.path.write_text(text)

    def plugin(self, name: str) -> Any:
        return self.service.getServiceNamed(f"middleware-{name}")

    @property
    def security(self) -> Any:
        return self.plugin("security").mw.policy

    @property
    def metrics(self) -> Any:
        return self.plugin("metrics").collector.config

    @property
    def analytics(self) -> Any:
        return self.plugin("analytics").hub


def test_one_good_and_one_bad_table_applies_nothing(tmp_path: Path, logged: list[str]) -> None:
    tree = Tree(tmp_path)
    tree.write(
        GOOD.replace("rate_limit_per_minute = 60", "rate_limit_per_minute = 5")
        .replace("queue_size = 1000", "queue_size = 2000")
        .replace("collection_interval = 5", 'collection_interval = "x"')
    )
    with pytest.raises(PluginConfigError) as info:
        tree.service.reload()
    assert str(info.value) == "[middleware.metrics] collection_interval: expected a number, got 'x'"
    # Nothing applied: neither the good security table nor the good analytics one.
    assert tree.security.rate_limit_per_minute == 60
    assert tree.analytics.queue_size == 1000
    assert tree.metrics.collection_interval == 5.0
    refused = [line for line in logged if "config reload" in line]
    assert refused == [
        "config reload refused, old config kept: "
        "[middleware.metrics] collection_interval: expected a number, got 'x'"
    ]


def test_the_admin_reload_is_the_same_reload(tmp_path: Path, logged: list[str]) -> None:
    tree = Tree(tmp_path)
    tree.write(GOOD + "\n[middleware.securty]\nallowlist = []\n")
    with pytest.raises(ConfigError, match=r"^\[middleware\.securty\]: unknown table"):
        tree.router.reload_config()  # IServerControl.reload_config, behind POST /admin/reload
    assert any(line.startswith("config reload refused") for line in logged)


def test_sighup_with_a_bad_table_keeps_the_old_config(tmp_path: Path, logged: list[str]) -> None:
    tree = Tree(tmp_path)
    tree.write(GOOD.replace("queue_size = 1000", "queue_size = 1000\nqueue_sise = 5"))
    tree.service._sighup()  # what the SIGHUP handler calls: logs, never raises
    assert tree.analytics.queue_size == 1000
    assert [line for line in logged if "reload" in line] == [
        "config reload refused, old config kept: [middleware.analytics] queue_sise: unknown key; "
        "known: queue_size, tick_interval, flush_interval, max_users, max_rooms, recent_size, "
        "sse_max_backlog, sse_heartbeat, max_stream_clients, retention_days, favourite_rooms"
    ]


def test_every_plugin_gets_its_section(tmp_path: Path, logged: list[str]) -> None:
    tree = Tree(tmp_path)
    tree.write(
        GOOD.replace("rate_limit_per_minute = 60", "rate_limit_per_minute = 5")
        .replace("queue_size = 1000", "queue_size = 2000\nrecent_size = 10")
        .replace("collection_interval = 5", "collection_interval = 2")
    )
    result = tree.service.reload()
    assert result["changed"] == [
        "middleware.analytics.queue_size",
        "middleware.analytics.recent_size",
        "middleware.metrics.collection_interval",
        "middleware.security.rate_limit_per_minute",
    ]
    assert result["applied"] == result["changed"]
    assert result["restart_required"] == []
    assert result["reloaded"] == ["security", "metrics", "analytics"]
    assert tree.security.rate_limit_per_minute == 5
    assert tree.metrics.collection_interval == 2.0
    hub = tree.analytics
    assert hub.queue_size == 2000 and hub.recent_items.maxlen == 10
    assert tree.router.pipeline.middleware[2]._cap == 2000  # the hot path's cached cap too
    line = next(line for line in logged if line.startswith("config reloaded"))
    assert "applied: middleware.analytics.queue_size" in line
    assert "needs a restart: none" in line


def test_restart_only_keys_are_reported_not_applied(tmp_path: Path) -> None:
    path = tmp_path / "gamed.toml"
    # The port from the file, not the command line:
    path.write_text(GOOD.replace("round_limit = 10", 'round_limit = 10\nport = "tcp:7001"'))
    options = tap.Options()
    options.parseOptions(["--config", str(path), "--metrics-port", "none", "-d", str(tmp_path)])
    service: Any = tap.makeService(options, reactor=MemoryReactorClock())
    games = service.router.games
    path.write_text(
        GOOD.replace("round_limit = 10", "round_limit = 3\nport = 7777\nmax_frame_bytes = 1024")
        + "\n[middleware.cache]\nl1_size = 50\n"
    )
    result = service.reload()
    assert result["changed"] == [
        "server.port",
        "server.max_frame_bytes",
        "server.round_limit",
        "middleware.cache.l1_size",
    ]
    assert result["restart_required"] == ["server.port", "middleware.cache.l1_size"]
    assert result["applied"] == ["server.max_frame_bytes", "server.round_limit"]
    # Live keys reach the core: new games and new connections use them.
    assert games.round_limit == 3
    factory = service.getServiceNamed("game").getServiceNamed("game-listener").factory
    conn = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    assert conn.MAX_LENGTH == 1024
    # Restart-only keys keep their running value, so the next reload says so again.
    assert service.router.settings.port == "tcp:7001"
    again = service.reload()
    assert again["changed"] == ["server.port", "middleware.cache.l1_size"]
    assert again["restart_required"] == again["changed"]
    assert again["applied"] == []


def test_a_key_the_command_line_overrides_is_reported(tmp_path: Path, logged: list[str]) -> None:
    tree = Tree(tmp_path)  # --port tcp:7001 on the command line
    tree.write(GOOD.replace("round_limit = 10", "round_limit = 10\nport = 7777"))
    result = tree.service.reload()
    assert result["changed"] == []
    assert result["overridden_by_command_line"] == ["server.port"]
    assert any("overridden by the command line: server.port" in line for line in logged)


def test_an_unchanged_config_reloads_nothing_but_says_so(tmp_path: Path, logged: list[str]) -> None:
    tree = Tree(tmp_path)
    result = tree.service.reload()
    assert result == {
        "config_file": str(tree.path),
        "changed": [],
        "applied": [],
        "restart_required": [],
        "overridden_by_command_line": [],
        "reloaded": ["security", "metrics", "analytics"],
    }
    assert (
        "config reloaded: changed: none; applied: none; needs a restart: none; "
        "plugins reloaded: security, metrics, analytics"
    ) in logged


def test_a_table_for_a_disabled_plugin_is_validated_and_needs_a_restart(tmp_path: Path) -> None:
    tree = Tree(tmp_path, GOOD, "--middleware", "security")
    tree.write(GOOD.replace("queue_size = 1000", "queue_size = 0"))
    with pytest.raises(PluginConfigError, match=r"\[middleware\.analytics\] queue_size: must be"):
        tree.service.reload()
    tree.write(GOOD.replace("queue_size = 1000", "queue_size = 500"))
    result = tree.service.reload()
    assert result["restart_required"] == ["middleware.analytics.queue_size"]
    assert result["reloaded"] == ["security"]


def test_analytics_loops_follow_a_new_interval(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    service = tree.plugin("analytics")
    tree.service.privilegedStartService()
    tree.service.startService()
    try:
        assert [loop.interval for loop in service._loops][:2] == [0.25, 5.0]
        tree.write(GOOD.replace("queue_size = 1000", "flush_interval = 1.5"))
        tree.service.reload()
        assert [loop.interval for loop in service._loops][:2] == [0.25, 1.5]
        assert all(loop.running for loop in service._loops)
    finally:
        tree.service.stopService()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "rate_limit_per_minute = 60",
            "rate_limit_per_minute = -1",
            "[middleware.security] rate_limit_per_minute: must be between 0 and 10000000, got -1",
        ),
        (
            "collection_interval = 5",
            "collection_interval = 5\ntop_room = 3",
            "[middleware.metrics] top_room: unknown key; known: collection_interval, top_rooms, "
            "latency_samples, room_window, log",
        ),
        (
            "queue_size = 1000",
            'queue_size = "big"',
            "[middleware.analytics] queue_size: expected a number, got 'big'",
        ),
        (
            "round_limit = 10",
            "round_limit = 0",
            "--round-limit: must be between 1 and 10000, got 0",
        ),
    ],
)
def test_each_plugin_refuses_a_bad_key_at_reload(
    tmp_path: Path, logged: list[str], old: str, new: str, expected: str
) -> None:
    tree = Tree(tmp_path)
    before = (tree.security, tree.metrics, dict(tree.analytics.opts), tree.router.games.round_limit)
    tree.write(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        tree.service.reload()
    assert str(info.value) == expected
    after = (tree.security, tree.metrics, dict(tree.analytics.opts), tree.router.games.round_limit)
    assert after == before
    assert f"config reload refused, old config kept: {expected}" in logged
