"""Reload against a real `twistd -n gamed`: SIGHUP and POST /admin/reload, all or nothing."""

from __future__ import annotations

import http.client
import signal
from pathlib import Path
from typing import Any

import orjson

from tests.integration.helpers import GamedProcess, poll_until

ADMIN = "admin-token-for-reload-tests-0123"

GOOD = """
[middleware.security]
rate_limit_per_minute = 100

[middleware.metrics]
collection_interval = 5
"""

# A good security change and a bad metrics key: the reload must apply neither.
HALF_BAD = """
[middleware.security]
rate_limit_per_minute = 5

[middleware.metrics]
collection_interval = "x"
"""

REFUSED = (
    "config reload refused, old config kept: "
    "[middleware.metrics] collection_interval: expected a number, got 'x'"
)


def poll_log(srv: GamedProcess, text: str, count: int = 1, timeout: float = 10.0) -> str:
    """The log once ``text`` appears in it ``count`` times (bounded wait)."""

    def seen() -> str | None:
        log = srv.log()
        return log if log.count(text) >= count else None

    return poll_until(seen, timeout, f"{text!r} {count}x in the log", detail=srv.log_tail)


def admin_reload(srv: GamedProcess) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    try:
        conn.request("POST", "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        r = conn.getresponse()
        return r.status, orjson.loads(r.read())
    finally:
        conn.close()


def test_sighup_with_a_bad_table_keeps_the_old_config(gamed: Any, tmp_path: Path) -> None:
    path = tmp_path / "gamed.toml"
    path.write_text(GOOD)
    token = tmp_path / "admin.token"
    token.write_text(ADMIN + "\n")
    srv = gamed("--config", str(path), "--admin-token-file", str(token))
    poll_log(srv, "SIGHUP reloads the config")  # the handler is installed in startService

    path.write_text(HALF_BAD)
    srv.proc.send_signal(signal.SIGHUP)
    log = poll_log(srv, REFUSED)
    lines = [line for line in log.splitlines() if "config reload" in line]
    assert len(lines) == 1 and lines[0].endswith(REFUSED), lines
    assert "Traceback" not in log
    stats = srv.stats()
    assert stats["security"]["rate_limit_per_minute"] == 100  # the good half was not applied
    assert stats["metrics"]["collection_interval"] == 5.0

    # The admin API runs the same reload and returns the same refusal.
    status, body = admin_reload(srv)
    assert (status, body) == (409, {"error": REFUSED})
    poll_log(srv, REFUSED, count=2)
    assert srv.stats()["security"]["rate_limit_per_minute"] == 100

    # Fixed: everything is applied, and the reply says what changed.
    path.write_text(HALF_BAD.replace('"x"', "2") + "\n[server]\nround_limit = 4\n")
    status, body = admin_reload(srv)
    assert status == 200, body
    assert body["changed"] == [
        "server.round_limit",
        "middleware.metrics.collection_interval",
        "middleware.security.rate_limit_per_minute",
    ]
    assert body["applied"] == body["changed"]
    assert body["restart_required"] == []
    assert body["reloaded"] == ["security", "metrics", "analytics"]
    poll_log(srv, "config reloaded: changed: server.round_limit")
    stats = srv.stats()
    assert stats["security"]["rate_limit_per_minute"] == 5
    assert stats["metrics"]["collection_interval"] == 2.0
    assert stats["games"]["round_limit"] == 4
    assert srv.proc.poll() is None
