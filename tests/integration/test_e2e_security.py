"""The security plugin over real sockets against `twistd -n gamed`.

Every client here comes from 127.0.0.1, which nothing allowlists by default; the
servers that must limit it still say ``allowlist = []``, so the tests do not depend
on the default.

The admin API's answers to a missing or wrong token, bad ids and methods are
unit tests (tests/unit/test_security_admin.py); here it is used as an operator would.
POST /admin/reload end to end: tests/integration/test_faults.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.integration.helpers import (
    GamedProcess,
    WireClient,
    admin_call,
    heartbeat_ok,
    two_in_room,
)

ADMIN = "admin-token-for-tests-0123456789"


def config(tmp_path: Path, body: str, name: str = "gamed.toml") -> str:
    path = tmp_path / name
    path.write_text("[middleware.security]\n" + body)
    return str(path)


def admin_file(tmp_path: Path) -> str:
    path = tmp_path / "admin.token"
    path.write_text(ADMIN + "\n")
    return str(path)


def call(
    srv: GamedProcess, method: str, path: str, token: str | None = ADMIN, body: Any = None
) -> tuple[int, Any]:
    return admin_call(srv, method, path, token, body)


def errors(msgs: list[Any]) -> list[int]:
    return [x["Error"]["code"] for x in msgs if isinstance(x, dict) and "Error" in x]


def burst(c: WireClient, room: int, n: int, text: str = "spam") -> None:
    """``n`` chats in one write: they arrive together, microseconds apart."""
    frames = []
    for i in range(n):
        p = orjson.dumps(
            {"ChatMessage": {"user_id": c.user_id, "room_id": room, "message": f"{text}{i}"}}
        )
        frames.append(len(p).to_bytes(4, "big") + p)
    c.send_raw(b"".join(frames))


def test_flooder_gets_429_then_403_while_a_normal_client_keeps_chatting(
    gamed, tmp_path: Path
) -> None:
    cfg = config(
        tmp_path,
        'allowlist = []\nrate_limit_per_minute = 20\n[middleware.security.rules]\nflood = "off"\n',
    )
    srv = gamed("--config", cfg)
    flooder, normal = two_in_room(srv, 5)
    burst(flooder, 5, 30)  # Connect + RoomJoin + 18 chats fit in the 20 per minute
    got = flooder.replies(30)  # each chat is echoed or refused
    codes = errors(got)
    assert codes[:3] == [429, 429, 429], got
    assert codes[3:] == [403] * 9, got
    assert sum(1 for x in got if "ChatMessage" in x) == 18
    assert any("SystemMessage" in x and "warning" in x["SystemMessage"]["message"] for x in got)
    seen = [normal.recv()["ChatMessage"]["message"] for _ in range(18)]
    assert seen == [f"spam{i}" for i in range(18)]
    # Refused messages never reached the room: what comes next is the next chat.
    for i in range(3):
        normal.chat(5, f"still fine {i}")
        assert normal.recv()["ChatMessage"]["message"] == f"still fine {i}"
        assert flooder.recv()["ChatMessage"]["message"] == f"still fine {i}"
    flooder.chat(5, "let me back")
    assert "(rate_user)" in flooder.recv_error(403)
    assert heartbeat_ok(flooder)  # blocked, not disconnected
    stats = srv.stats()["security"]
    assert stats["blocked_users"] == 1
    assert stats["decisions"]["rate_user"] == {"block": 1, "throttle": 3, "warn": 1}
    _, metrics = srv.http("/metrics")
    assert b'gamed_security_decisions_total{action="throttle",rule="rate_user"} 3.0' in metrics
    assert "security block (rate_user)" in srv.log()


def test_join_and_greeting_in_one_write_repeatedly_is_never_taken_for_a_flood(
    gamed, tmp_path: Path
) -> None:
    """Issue 12: RoomJoin + a chat in one write, again and again (25 messages in all)."""
    srv = gamed("--config", config(tmp_path, "allowlist = []\n"))
    c = srv.client(1)
    for room in range(1, 13):
        frames = b""
        for obj in (
            {"RoomJoin": {"user_id": 1, "room_id": room, "nickname": "neo"}},
            {"ChatMessage": {"user_id": 1, "room_id": room, "message": "hello all"}},
        ):
            p = orjson.dumps(obj)
            frames += len(p).to_bytes(4, "big") + p
        c.send_raw(frames)
        got = [c.recv(), c.recv()]  # the replies pace the next write: no sleeping
        if room > 1:
            assert "RoomLeaveSuccess" in got[0]
            got = [got[1], c.recv()]
        assert got == [
            {"RoomJoinSuccess": {"room_id": room, "user_count": 1}},
            {"ChatMessage": {"user_id": 1, "room_id": room, "message": "hello all"}},
        ]
    assert srv.stats()["security"]["decisions"] == {}


def test_a_flood_in_one_write_is_blocked_as_suspicious(gamed, tmp_path: Path) -> None:
    srv = gamed("--config", config(tmp_path, "allowlist = []\n"))
    c = srv.client(1)
    c.join(5)
    burst(c, 5, 45)  # ~28 fit the rest of the burst of 30; the 11th over it blocks
    codes = errors(c.replies(45))  # each chat is echoed or refused
    assert 5 <= len(codes) <= 7 and set(codes) == {403}  # (refills while the join travels)
    c.chat(5, "hello?")
    assert "(suspicion)" in c.recv_error(403)
    # Reconnecting does not help: the block belongs to the user.
    again = WireClient(srv.port)
    again.send({"Connect": {"room_id": 0, "user_id": 1}})
    assert again.recv_error(403)
    again.expect_closed()


def test_blocklisted_ip_is_refused_at_connect(gamed, tmp_path: Path) -> None:
    srv = gamed("--config", config(tmp_path, 'blocked_ips = ["127.0.0.0/8"]\n'))
    c = WireClient(srv.port)
    msgs = c.expect_closed()  # before sending a single byte
    assert errors(msgs) == [403] and "ip_blocklist" in msgs[0]["Error"]["message"]
    stats = srv.stats()
    assert stats["connections"] == 0
    assert stats["security"]["decisions"]["ip_blocklist"] == {"refuse": 1}


def test_shadow_mode_refuses_nothing_and_counts(gamed, tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "allowlist = []\nrate_limit_per_minute = 5\n"
        "[middleware.security.rules]\n"
        'rate_user = "shadow"\ncontent_pattern = "shadow"\nchat_length = "shadow"\nroom_id = "shadow"\n',
    )
    srv = gamed("--config", cfg, "--flood-detection", "shadow")
    c = srv.client(1)
    c.join(5)
    texts = ["<script>alert(1)</script>", "'; DROP TABLE users", *[f"m{i}" for i in range(8)]]
    for text in texts:
        c.chat(5, text)
        assert c.recv()["ChatMessage"]["message"] == text  # nothing refused
    decisions = srv.stats()["security"]["decisions"]
    assert decisions["content_pattern"] == {"shadow_refuse": 2}
    assert decisions["rate_user"]["shadow_throttle"] >= 3
    assert all(a.startswith("shadow_") for rule in decisions.values() for a in rule), decisions
    _, metrics = srv.http("/metrics")
    assert b'action="shadow_refuse",rule="content_pattern"} 2.0' in metrics
    assert c.join(0)["Error"]["code"] == 422  # the core's own rule still applies


def test_sighup_changes_a_limit_live_without_dropping_anyone(gamed, tmp_path: Path) -> None:
    path = tmp_path / "gamed.toml"
    path.write_text(
        '[middleware.security]\nallowlist = []\nrate_limit_per_minute = 1000\n[middleware.security.rules]\nflood = "off"\n'
    )
    srv = gamed("--config", str(path))
    c = srv.client(1)
    c.join(5)
    for i in range(8):
        c.chat(5, f"m{i}")
        assert "ChatMessage" in c.recv()
    path.write_text(
        '[middleware.security]\nallowlist = []\nrate_limit_per_minute = 5\n[middleware.security.rules]\nflood = "off"\n'
    )
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log("security: reloaded (rate 5/min")
    c.chat(5, "over the new limit")
    msgs = c.replies(1)
    assert 429 in errors(msgs), msgs  # the same connection, the new limit
    assert heartbeat_ok(c)
    assert srv.stats()["security"]["rate_limit_per_minute"] == 5


def test_admin_ban_kick_and_ip_block(gamed, tmp_path: Path) -> None:
    srv = gamed("--admin-token-file", admin_file(tmp_path))
    victim, bystander = srv.client(7), srv.client(8)
    status, body = call(srv, "POST", "/admin/users/7/ban", body={"reason": "cheating"})
    assert (status, body["kicked"]) == (200, True)
    assert "cheating" in victim.recv_error(403)
    victim.expect_closed()
    again = WireClient(srv.port)
    again.send({"Connect": {"room_id": 0, "user_id": 7}})
    assert "banned" in again.recv_error(403)
    assert call(srv, "POST", "/admin/users/7/unblock")[1]["unblocked"] is True
    back = srv.client(7)  # welcome back
    assert call(srv, "POST", "/admin/users/8/kick")[0] == 200
    bystander.recv_error(403)
    status, body = call(srv, "POST", "/admin/ips/127.0.0.1/block", body={"duration": 60})
    assert status == 200 and body["kicked"] >= 1
    assert "blocked" in back.recv_error(403)
    refused = WireClient(srv.port)
    assert errors(refused.expect_closed()) == [403]
    call(srv, "POST", "/admin/ips/127.0.0.1/unblock")
    assert heartbeat_ok(srv.client(9))


def test_a_ban_survives_a_restart(gamed, tmp_path: Path) -> None:
    data = tmp_path / "shared-data"
    token = admin_file(tmp_path)
    first = gamed("--data-dir", str(data), "--admin-token-file", token)
    assert call(first, "POST", "/admin/users/42/ban")[0] == 200
    assert call(first, "POST", "/admin/ips/10.20.30.40/block")[0] == 200
    assert first.terminate() in (0, -signal.SIGTERM)
    second = gamed("--data-dir", str(data), "--admin-token-file", token)
    c = WireClient(second.port)
    c.send({"Connect": {"room_id": 0, "user_id": 42}})
    assert "banned" in c.recv_error(403)
    c.expect_closed()
    assert second.client(43).user_id == 43
    view = call(second, "GET", "/admin/ips/10.20.30.40")[1]
    assert view["block"]["permanent"] is True
    assert (data / "security.sqlite3").exists()


def test_auth_tokens_from_gamed_token(gamed, tmp_path: Path) -> None:
    secret = tmp_path / "auth.secret"
    secret.write_text("a-long-enough-secret-for-tests\n")
    srv = gamed("--auth-secret-file", str(secret))
    c = WireClient(srv.port)
    c.send({"Connect": {"room_id": 0, "user_id": 5}})
    assert "token" in c.recv_error(401)
    c.expect_closed()
    minted = subprocess.run(
        [
            str(Path(sys.executable).with_name("gamed-token")),
            "--secret-file",
            str(secret),
            "--user-id",
            "5",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert srv.client(5, token=minted).user_id == 5
    wrong = WireClient(srv.port)
    wrong.send({"Connect": {"room_id": 0, "user_id": 6, "token": minted}})  # someone else's token
    assert "bad token" in wrong.recv_error(401)
    wrong.expect_closed()
