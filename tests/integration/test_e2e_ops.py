"""Operating gamed as an operator would: twistd finds the plugin, the config file, the HTTP
side port, the uvloop reactor. Daemon mode, signals and start-up failures are in
test_daemon.py; usage errors in test_usage_errors.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import TWISTD, heartbeat_ok, two_in_room


def test_twistd_lists_gamed_outside_the_repo() -> None:
    out = subprocess.run(
        [TWISTD, "--help"], cwd="/", capture_output=True, text=True, timeout=60
    ).stdout
    assert "gamed" in out


def test_config_file_applies_and_cli_wins(gamed, tmp_path: Path) -> None:
    cfg = tmp_path / "gamed.toml"
    cfg.write_text("[server]\nmax_room_users = 1\nidle_timeout = 120\n")
    srv = gamed("--config", str(cfg), "--idle-timeout", "60")
    a, b = srv.client(1), srv.client(2)
    a.join(1)
    assert b.join(1)["Error"]["code"] == 409  # from the file


def test_http_side_port(gamed) -> None:
    server = gamed()  # its own: the counters below are absolute
    a, _b = two_in_room(server, 3)
    a.chat(3, "hello")
    assert a.recv()["ChatMessage"]["message"] == "hello"
    a.send_payload(b"garbage")
    a.recv_error(400)

    status, body = server.http("/healthz")
    assert (status, orjson.loads(body)) == (200, {"status": "serving"})

    stats = server.stats()
    assert stats["connections"] == 2
    assert stats["rooms"]["count"] == 1
    assert stats["rooms"]["largest"][0]["user_count"] == 2
    assert stats["uptime_seconds"] > 0
    assert stats["version"]

    status, body = server.http("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("gamed_connections", ())] == 2
    assert samples[("gamed_rooms", ())] == 1
    assert samples[("gamed_messages_received_total", (("type", "ChatMessage"),))] == 1
    assert samples[("gamed_errors_sent_total", (("code", "400"),))] == 1
    assert "gamed_message_processing_seconds" in families
    assert "process_resident_memory_bytes" in families  # standard collector, no clash

    status, _ = server.http("/nope")
    assert status == 404
    assert heartbeat_ok(a)


def test_uvloop_reactor_plugin_serves(gamed) -> None:
    """`twistd --reactor uvloop gamed` (gamed's reactor plugin) runs and serves."""
    srv = gamed("--metrics-port", "none", twistd_args=("--reactor", "uvloop"))
    assert "AsyncioSelectorReactor" in srv.log()
    assert heartbeat_ok(srv.client(1))
