"""Operating gamed as an operator would: twistd daemon mode, signals, HTTP side port, config."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import TWISTD, WireClient, heartbeat_ok, poll_until, two_in_room


def test_twistd_lists_gamed_outside_the_repo() -> None:
    out = subprocess.run(
        [TWISTD, "--help"], cwd="/", capture_output=True, text=True, timeout=60
    ).stdout
    assert "gamed" in out


def test_daemonized_server_stops_on_sigterm_and_removes_pidfile(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "gamed.pid", tmp_path / "gamed.log"
    r = subprocess.run(
        [
            TWISTD,
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(logfile),
            "gamed",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--metrics-port",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r
    poll_until(pidfile.exists, 10, "the pidfile")
    pid = int(pidfile.read_text())
    poll_until(lambda: "GameFactory starting on" in logfile.read_text(), 10, "the listener")
    os.kill(pid, signal.SIGTERM)
    started = time.monotonic()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    poll_until(gone, 5, "the daemon to exit")
    assert time.monotonic() - started < 5
    assert not pidfile.exists()
    assert "Traceback" not in logfile.read_text()


def test_port_in_use_fails_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [
                TWISTD,
                "-n",
                "--pidfile",
                "",
                "gamed",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--metrics-port",
                "none",
                "--data-dir",
                str(tmp_path / "d"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode != 0
    assert f"gamed: cannot listen on 127.0.0.1:{port}" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-frame-bytes", "lots"], "--max-frame-bytes"),
        (["--port", "carrier-pigeon:1"], "--port"),
        (["--middleware", "nosuchplugin"], "--middleware"),
        (["--idle-timeout", "-3"], "--idle-timeout"),
    ],
)
def test_bad_option_is_a_usage_error_naming_it(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    r = subprocess.run(
        [TWISTD, "-n", "--pidfile", "", "gamed", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert needle in r.stdout + r.stderr


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


def test_uvloop_reactor_plugin_serves(tmp_path: Path) -> None:
    """`twistd --reactor uvloop gamed` (gamed's reactor plugin) runs and serves."""
    import re

    log = tmp_path / "uv.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile",
                "",
                "--reactor",
                "uvloop",
                "gamed",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--metrics-port",
                "none",
                "--data-dir",
                str(tmp_path),
            ],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port = None

        def bound() -> bool:
            nonlocal port
            found = re.search(r"GameFactory starting on (\d+)", log.read_text())
            port = int(found.group(1)) if found else None
            return port is not None or proc.poll() is not None

        poll_until(bound, 20, "the uvloop server")
        assert port is not None, log.read_text()
        assert "AsyncioSelectorReactor" in log.read_text()
        c = WireClient(port)
        c.connect(1)
        assert heartbeat_ok(c)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
