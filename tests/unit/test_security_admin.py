"""/admin/ of the security plugin, through make_plugin, on DummyRequest (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from gamed import messages as m
from gamed import token as tokens
from gamed.config import ConfigError, PluginConfigError, Settings
from gamed.errors import Refusal
from gamed.events import EventBus
from gamed.middleware.registry import PluginEnvironment
from gamed.middleware.security.middleware import make_plugin, validate
from tests.unit.fakes import ADMIN_TOKEN as TOKEN
from tests.unit.fakes import Ctx, FakeServerControl, SecurityPlugin

SECRET = b"auth-secret-0123456789"


@pytest.fixture
def plugin(tmp_path: Path) -> SecurityPlugin:
    return SecurityPlugin(tmp_path)


def test_no_token_file_means_403_for_everything(tmp_path: Path) -> None:
    p = SecurityPlugin(tmp_path, admin=False)
    assert p.call("GET", "security")[0] == 403
    assert p.call("POST", "users/1/ban", token=None)[0] == 403


@pytest.mark.parametrize("token", [None, b"", b"wrong-token-0123456789", TOKEN + b"x"])
def test_missing_or_wrong_token_is_401(plugin: SecurityPlugin, token: bytes | None) -> None:
    status, body = plugin.call("GET", "security", token=token)
    assert status == 401, body
    assert plugin.last.responseHeaders.getRawHeaders(b"www-authenticate")


def test_get_security_has_the_stats(plugin: SecurityPlugin) -> None:
    status, body = plugin.call("GET", "security")
    assert status == 200
    for key in ("total_users", "blocked_users", "suspicious_users", "blocked_ips", "decisions"):
        assert key in body
    assert body["policy"]["rate_limit_per_minute"] == 60
    assert body["policy"]["allowlist"] == []  # nothing is trusted by default


def test_ban_kicks_persists_and_unblock_lifts(plugin: SecurityPlugin) -> None:
    plugin.control.sessions.append(9)
    status, body = plugin.call("POST", "users/9/ban", {"reason": "cheating"})
    assert (status, body) == (200, {"user_id": 9, "banned": True, "kicked": True})
    assert ("user", 9, 403) in plugin.control.kicked
    assert plugin.mw.user_blocks[9].reason == "cheating"
    assert not plugin.mw.store.pending  # no store opened in this test: nothing queued
    assert plugin.call("GET", "users/9")[1]["block"]["permanent"] is True
    assert plugin.call("GET", "security")[1]["banned_users"] == 1
    assert plugin.call("POST", "users/9/unblock") == (200, {"user_id": 9, "unblocked": True})
    assert plugin.call("POST", "users/9/unblock") == (200, {"user_id": 9, "unblocked": False})


def test_kick(plugin: SecurityPlugin) -> None:
    assert plugin.call("POST", "users/3/kick")[0] == 404
    plugin.control.sessions.append(3)
    assert plugin.call("POST", "users/3/kick") == (200, {"user_id": 3, "kicked": True})


def test_ip_block_with_duration_and_unblock(plugin: SecurityPlugin) -> None:
    status, body = plugin.call("POST", "ips/10.1.2.3/block", {"duration": 60})
    assert status == 200 and body["duration"] == 60
    ctx = Ctx(plugin.clock, "10.1.2.3")
    assert plugin.mw.connection_opened(ctx).code == 403
    assert plugin.call("GET", "ips/10.1.2.3")[1]["block"]["remaining_seconds"] == 60
    plugin.clock.advance(61)
    assert plugin.mw.connection_opened(Ctx(plugin.clock, "10.1.2.3")) is None
    assert plugin.call("POST", "ips/::1/block")[1]["duration"] is None  # permanent
    assert plugin.call("POST", "ips/0:0::1/unblock")[1] == {
        "ip": "::1",
        "unblocked": True,
        "still_blocklisted": False,
    }


def test_ip_block_kicks_connected_clients(plugin: SecurityPlugin) -> None:
    ctx = Ctx(plugin.clock, "10.7.7.7")
    plugin.mw.connection_opened(ctx)
    plugin.control.hosts.append("10.7.7.7")  # the server's side of that connection
    body = plugin.call("POST", "ips/10.7.7.7/block")[1]
    assert body["kicked"] == 1 and ("host", "10.7.7.7", 403) in plugin.control.kicked


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "users/abc/ban", None, 400),
        ("POST", "users/-1/ban", None, 400),
        ("POST", "users/4294967296/ban", None, 400),
        ("POST", "users/1/frobnicate", None, 404),
        ("POST", "ips/10.0.0.300/block", None, 400),
        ("POST", "ips/not-an-ip/unblock", None, 400),
        ("POST", "ips/10.0.0.1/block", {"duration": -5}, 400),
        ("POST", "ips/10.0.0.1/block", {"duration": "5"}, 400),
        ("POST", "ips/10.0.0.1/block", b"{not json", 400),
        ("POST", "ips/10.0.0.1/block", [1, 2], 400),
        ("POST", "users/1/ban", {"reason": ""}, 400),
        ("POST", "ips/10.0.0.1/block", b"x" * 5000, 413),
        ("GET", "users/1/ban", None, 405),
        ("POST", "security", None, 405),
        ("GET", "reload", None, 405),
        ("DELETE", "users/1", None, 405),
        ("GET", "nothing/here", None, 404),
    ],
)
def test_clear_4xx_errors(
    plugin: SecurityPlugin, method: str, path: str, body: Any, status: int
) -> None:
    got, out = plugin.call(method, path, body)
    assert got == status, out
    assert "error" in out
    if status == 405:
        assert plugin.last.responseHeaders.getRawHeaders(b"allow")


def test_reload_goes_through_the_server(plugin: SecurityPlugin) -> None:
    assert plugin.call("POST", "reload") == (200, {"reloaded": ["security"]})
    assert plugin.control.reloads == 1


def test_a_refused_reload_is_a_409_naming_the_key(plugin: SecurityPlugin) -> None:
    def refuse() -> None:
        raise PluginConfigError("metrics", "top_rooms", "expected a number, got 'x'")

    plugin.control.reload_config = refuse
    status, body = plugin.call("POST", "reload")
    assert status == 409
    assert body["error"] == (
        "config reload refused, old config kept: [middleware.metrics] top_rooms: expected a number, got 'x'"
    )


def test_plugin_reload_swaps_policy_and_keeps_state(plugin: SecurityPlugin, tmp_path: Path) -> None:
    ctx = Ctx(plugin.clock, "10.0.0.1")
    plugin.mw.connection_opened(ctx)
    plugin.mw.before_process(ctx, m.Connect(0, 1))
    ctx.user_id = 1
    plugin.mw.after_process(ctx, m.Connect(0, 1), None)
    new = Settings(
        admin_token_file=plugin.settings.admin_token_file,
        plugin_config={"security": {"rate_limit_per_minute": 2}},
    )
    plugin.parts.reload(new, validate(new.for_plugin("security"), new))
    assert plugin.mw.policy.rate_limit_per_minute == 2
    assert 1 in plugin.mw.users
    plugin.clock.advance(1)
    assert plugin.mw.before_process(ctx, m.ChatMessage(1, 1, "a")) is None
    plugin.clock.advance(1)
    assert plugin.mw.before_process(ctx, m.ChatMessage(1, 1, "a")).code == 429


def test_a_bad_table_fails_validation_naming_the_key() -> None:
    with pytest.raises(PluginConfigError) as e:
        validate({"rules": {"flood": "sideways"}}, Settings())
    assert str(e.value).startswith("[middleware.security] rules.flood: expected on, off or shadow")
    assert (e.value.table, e.value.key) == ("security", "rules.flood")


def test_auth_is_installed_when_a_secret_is_configured(tmp_path: Path) -> None:
    secret = tmp_path / "auth.secret"
    secret.write_bytes(SECRET)
    control = FakeServerControl()
    clock = Clock()
    clock.advance(5000)
    settings = Settings(auth_secret_file=str(secret))
    env = PluginEnvironment(
        settings=settings,
        config=validate({}, settings),
        clock=clock,
        events=EventBus(),
        registry=CollectorRegistry(),
        rooms=None,
        control=control,
    )
    parts = make_plugin(env)
    auth = control.authenticator
    auth(3, tokens.mint(SECRET, 3, 6000))
    with pytest.raises(Refusal) as e:
        auth(3, tokens.mint(SECRET, 3, 4000))
    assert e.value.code == 401 and e.value.close and "expired" in e.value.message
    assert parts.middleware.decisions[("auth", "refuse")] == 1
    parts.reload(Settings(), validate({}, Settings()))  # the secret is gone: auth off
    assert control.authenticator is None


def test_unreadable_or_short_secrets_are_config_errors_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--auth-secret-file: cannot read .*missing"):
        validate({}, Settings(auth_secret_file=str(tmp_path / "missing")))
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(ConfigError, match=r"^--admin-token-file: .* 3 bytes; use at least 16"):
        validate({}, Settings(admin_token_file=str(short)))
