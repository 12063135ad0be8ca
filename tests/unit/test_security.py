"""The security plugin's rules, thresholds and expiries, on an injected Clock (no sleeping)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from gamed import messages as m
from gamed.config import ConfigError, Settings
from gamed.middleware.security.middleware import SecurityMiddleware
from gamed.middleware.security.policy import DEFAULT_PATTERNS, build_policy
from gamed.pipeline import Veto
from tests.unit.fakes import Ctx, FakeServerControl

STEP = 0.2  # seconds between "normal" messages: 5 a second, under the flood bucket's 10/s


class World:
    """A security middleware on a Clock, with helpers to play clients."""

    def __init__(self, settings: Settings | None = None, **table: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.registry = CollectorRegistry()
        self.control = FakeServerControl()
        self.policy = build_policy(table, settings)
        self.mw = SecurityMiddleware(self.policy, self.clock, self.control, self.registry)

    def open(self, host: str = "10.0.0.1") -> tuple[Ctx, Veto | None]:
        ctx = Ctx(self.clock, host)
        self.control.hosts.append(host)  # the server's side of the connection
        return ctx, self.mw.connection_opened(ctx)

    def connect(self, uid: int, host: str = "10.0.0.1") -> Ctx:
        ctx, veto = self.open(host)
        assert veto is None, veto
        msg = m.Connect(0, uid)
        assert self.mw.before_process(ctx, msg) is None
        ctx.user_id = uid
        self.mw.after_process(ctx, msg, None)
        return ctx

    def send(self, ctx: Ctx, msg: object, step: float = STEP) -> object:
        self.clock.advance(step)
        out = self.mw.before_process(ctx, msg)
        result = None
        if isinstance(out, Veto):
            from gamed.errors import Refusal

            result = Refusal(out.code, out.message)
        self.mw.after_process(ctx, msg, result)
        return out

    def chat(self, ctx: Ctx, text: str = "hello", step: float = STEP) -> object:
        return self.send(ctx, m.ChatMessage(ctx.user_id or 0, 1, text), step)

    def decisions(self, rule: str, action: str) -> float:
        v = self.registry.get_sample_value(
            "gamed_security_decisions_total", {"rule": rule, "action": action}
        )
        return v or 0.0


def code(out: object) -> int | None:
    return out.code if isinstance(out, Veto) else None


# -- per user: rate limit and the sanction ladder ----------------------------------------


def test_rate_limit_60_then_429_then_block_for_5_minutes() -> None:
    w = World()
    c = w.connect(1)  # the Connect is the first message of the minute
    for _ in range(59):
        assert w.chat(c) is None
    assert code(w.chat(c)) == 429
    assert len(c.notices) == 1 and "60 messages per minute" in c.notices[0]  # warn: first rung
    assert code(w.chat(c)) == 429
    assert code(w.chat(c)) == 429
    out = w.chat(c)  # the 4th violation (> 3): blocked
    assert code(out) == 403 and "rate_user" in out.message and "300" in out.message
    assert w.decisions("rate_user", "warn") == 1
    assert w.decisions("rate_user", "throttle") == 3
    assert w.decisions("rate_user", "block") == 1
    w.clock.advance(299)
    assert code(w.chat(c, step=0)) == 403
    assert w.decisions("user_blocked", "deny") == 1
    w.clock.advance(1.5)
    assert w.chat(c) is None  # the block expired; the window too


def test_rate_window_restarts_each_minute() -> None:
    w = World()
    c = w.connect(1)
    for _ in range(59):
        assert w.chat(c) is None
    w.clock.advance(60)
    for _ in range(60):
        assert w.chat(c) is None
    assert code(w.chat(c)) == 429


def test_heartbeat_is_exempt_from_every_limit() -> None:
    w = World(rate_limit_per_minute=5)
    c = w.connect(1)
    for _ in range(1000):
        assert w.send(c, m.HeartBeat(), step=0) is None  # no rate, no flood
    assert w.mw.users[1].count == 1 and w.mw.users[1].suspicion == 0
    for _ in range(4):
        assert w.chat(c) is None


def test_connect_of_a_blocked_user_is_refused_and_closed() -> None:
    w = World(rate_limit_per_minute=2, violations_before_block=0)
    c = w.connect(7)
    w.chat(c)
    assert code(w.chat(c)) == 403  # first violation blocks (threshold 0)
    ctx, _ = w.open()
    out = w.send(ctx, m.Connect(0, 7))
    assert isinstance(out, Veto) and out.code == 403 and out.close
    assert "rate_user" in out.message
    assert w.decisions("user_blocked", "deny") == 1


def test_a_failed_connect_charges_nobody() -> None:
    w = World(rate_limit_per_minute=2)
    ctx, _ = w.open()
    msg = m.Connect(0, 9)
    for _ in range(10):
        w.clock.advance(1)
        w.mw.before_process(ctx, msg)
        w.mw.after_process(ctx, msg, Exception("bad token"))
    assert 9 not in w.mw.users


# -- per user: flood detection, suspicion, decay -----------------------------------------


def test_a_burst_of_30_passes_each_message_over_it_adds_10_and_over_100_blocks() -> None:
    w = World()
    c = w.connect(1)  # the Connect takes the first of the 30 tokens
    for _ in range(29):
        assert w.chat(c, step=0) is None  # one TCP segment: arrival times all equal
    assert w.mw.decisions == {}
    for _ in range(10):
        assert w.chat(c, step=0) is None  # over the burst: +10 each; 100 is not over 100
    assert w.mw.users[1].suspicion == pytest.approx(100, abs=0.01)
    assert any("automated" in n for n in c.notices)  # the warning at 50
    out = w.chat(c, step=0)
    assert code(out) == 403 and "suspicion" in out.message and "600" in out.message
    assert w.decisions("flood", "suspect") == 11
    assert w.decisions("suspicion", "block") == 1
    w.clock.advance(599)
    assert code(w.chat(c)) == 403
    w.clock.advance(2)
    assert w.chat(c) is None


def test_the_bucket_refills_10_tokens_a_second_up_to_the_burst() -> None:
    w = World(rate_limit_per_minute=0)
    c = w.connect(1)
    for _ in range(29):
        assert w.chat(c, step=0) is None
    w.clock.advance(1.0)  # 10 tokens back
    for _ in range(10):
        assert w.chat(c, step=0) is None
    assert w.mw.decisions == {}
    assert w.chat(c, step=0) is None
    assert w.decisions("flood", "suspect") == 1
    w.clock.advance(3600)  # a full bucket holds 30, not 36,000
    for _ in range(30):
        w.chat(c, step=0)
    assert w.decisions("flood", "suspect") == 1
    w.chat(c, step=0)
    assert w.decisions("flood", "suspect") == 2


def test_a_sustained_rate_under_10_a_second_is_never_a_flood() -> None:
    w = World(rate_limit_per_minute=0)
    c = w.connect(1)
    for i in range(5000):  # 9.9 a second for over 8 minutes, in pairs
        assert w.chat(c, step=0 if i % 2 else 0.202) is None
    assert w.mw.users[1].suspicion == 0 and w.mw.decisions == {}


def test_each_user_has_a_bucket_of_its_own_whatever_the_address() -> None:
    w = World()
    cs = [w.connect(uid, "10.9.9.9") for uid in range(1, 61)]
    for _round in range(15):  # 60 users behind one NAT, 2 ms apart, 3 messages each a round
        for c in cs:
            for _ in range(3):
                assert w.chat(c, step=0) is None
            w.clock.advance(0.002)
        w.clock.advance(3)
    assert w.mw.decisions == {}


def test_the_old_flood_gap_key_is_a_usage_error_that_names_the_new_keys() -> None:
    with pytest.raises(ConfigError) as e:
        build_policy({"flood_interval_ms": 1.0})
    text = str(e.value)
    assert text.startswith("[middleware.security] flood_interval_ms: removed")
    assert "flood_burst" in text and "flood_rate_per_second" in text
    p = build_policy({"flood_burst": 5, "flood_rate_per_second": 0.5})
    assert (p.flood_burst, p.flood_rate_per_second) == (5, 0.5)
    for bad in ({"flood_burst": 0}, {"flood_rate_per_second": 0}, {"flood_burst": 1.5}):
        with pytest.raises(ConfigError):
            build_policy(bad)


def test_suspicion_decays_10_points_a_minute() -> None:
    w = World()
    c = w.connect(1)
    for _ in range(29 + 9):  # the burst, then nine over it
        w.chat(c, step=0)
    assert w.mw.user_view(1)["suspicion"] == pytest.approx(90, abs=0.1)
    w.clock.advance(300)
    assert w.mw.user_view(1)["suspicion"] == pytest.approx(40, abs=0.1)
    w.clock.advance(600)
    assert w.mw.user_view(1)["suspicion"] == 0
    for _ in range(30 + 9):  # the same flood again is not "over 100" after the decay
        assert w.chat(c, step=0) is None


def test_violations_decay_one_a_minute() -> None:
    w = World(rate_limit_per_minute=10)
    c = w.connect(1)
    for _ in range(9):
        w.chat(c)
    for _ in range(3):  # three violations: one short of a block
        assert code(w.chat(c)) == 429
    w.clock.advance(180)  # three minutes: the violations are forgiven (and a new window)
    for _ in range(10):
        assert w.chat(c) is None
    for _ in range(3):
        assert code(w.chat(c)) == 429  # still throttled, not blocked
    assert w.decisions("rate_user", "block") == 0


def test_a_long_lived_bot_is_never_blocked_for_old_sins() -> None:
    """48 hours of a bot that bursts over the limit by 2 every hour and pipelines a few frames."""
    w = World()
    c = w.connect(1)
    for _hour in range(48):
        for i in range(62):
            out = w.chat(c, step=0.0005 if i % 20 == 0 else 0.5)
            assert code(out) in (None, 429), out
        w.clock.advance(3600)
    assert w.decisions("rate_user", "block") == 0
    assert w.decisions("suspicion", "block") == 0


def test_oversize_frames_add_suspicion() -> None:
    w = World(oversize_suspicion=60)
    c = w.connect(1)
    w.mw.frame_refused(c, "oversize", 70_000)
    assert w.mw.user_view(1)["suspicion"] == 60
    w.mw.frame_refused(c, "oversize", 70_000)  # 120 > 100: blocked
    assert w.mw.users[1].blocked_until > w.clock.seconds()
    assert w.decisions("oversize", "suspect") == 2


def test_frames_over_max_message_size_are_refused_413() -> None:
    w = World(max_message_size=1000)
    c = w.connect(1)
    c.frame_size = 1001
    out = w.chat(c)
    assert code(out) == 413 and "oversize" in out.message
    assert w.mw.user_view(1)["suspicion"] == 1
    c.frame_size = 1000
    assert w.chat(c) is None


# -- content rules and their modes --------------------------------------------------------


@pytest.mark.parametrize("pattern", DEFAULT_PATTERNS)
def test_every_reference_pattern_is_refused_case_insensitively(pattern: str) -> None:
    w = World()
    c = w.connect(1)
    for text in (pattern, f"hi {pattern.upper()} there", pattern.swapcase()):
        out = w.chat(c, text)
        assert code(out) == 403 and "content_pattern" in out.message


def test_harmless_chat_passes() -> None:
    w = World()
    c = w.connect(1)
    for text in ("hello", "it's; dropping", "scripted", "evaluate", "on load", "ü" * 250):
        assert w.chat(c, text) is None, text


def test_content_shadow_mode_refuses_nothing_and_counts() -> None:
    w = World(rules={"content_pattern": "shadow", "chat_length": "shadow", "room_id": "shadow"})
    c = w.connect(1)
    assert w.chat(c, "<script>alert(1)</script>") is None
    assert w.chat(c, "x" * 1001) is None
    assert w.send(c, m.RoomJoin(1, 0, "n")) is None
    assert w.decisions("content_pattern", "shadow_refuse") == 1
    assert w.decisions("chat_length", "shadow_refuse") == 1
    assert w.decisions("room_id", "shadow_refuse") == 1
    assert w.mw.stats()["decisions"]["content_pattern"] == {"shadow_refuse": 1}


def test_content_rules_off_neither_refuse_nor_count() -> None:
    w = World(rules={"content_pattern": "off", "chat_length": "off", "room_id": False})
    c = w.connect(1)
    assert w.chat(c, "eval(x)") is None
    assert w.chat(c, "x" * 5000) is None
    assert w.send(c, m.RoomJoin(1, 0, "n")) is None
    assert w.mw.decisions == {}


def test_chat_length_is_in_utf8_bytes_and_configurable() -> None:
    w = World(chat_max_bytes=10)
    c = w.connect(1)
    assert w.chat(c, "ü" * 5) is None  # 10 bytes
    out = w.chat(c, "ü" * 6)
    assert code(out) == 413 and "chat_length" in out.message
    assert w.chat(c, "x" * 10) is None


@pytest.mark.parametrize(
    "room_id, ok", [(0, False), (1, True), (1_000_000, True), (1_000_001, False)]
)
def test_room_id_range(room_id: int, ok: bool) -> None:
    w = World()
    c = w.connect(1)
    out = w.send(c, m.RoomJoin(1, room_id, "n"))
    assert (out is None) if ok else (code(out) == 422)


def test_custom_patterns() -> None:
    w = World(patterns=["BadWord"])
    c = w.connect(1)
    assert code(w.chat(c, "a BADWORD b")) == 403
    assert w.chat(c, "<script") is None


# -- per IP -----------------------------------------------------------------------------------


def test_connections_per_ip_are_capped_and_freed_on_close() -> None:
    w = World(ip_max_connections=3)
    ctxs = [w.open("10.0.0.5")[0] for _ in range(3)]
    _ctx, veto = w.open("10.0.0.5")
    assert veto is not None and veto.code == 429 and veto.close and "ip_connections" in veto.message
    assert w.open("10.0.0.6")[1] is None  # another address is not affected
    w.mw.connection_closed(ctxs[0], "closed")
    assert w.open("10.0.0.5")[1] is None
    assert w.mw.ips["10.0.0.5"].conns == 3


def test_connection_cap_shadow_mode() -> None:
    w = World(ip_max_connections=1, rules={"ip_connections": "shadow"})
    w.open("10.0.0.5")
    assert w.open("10.0.0.5")[1] is None
    assert w.decisions("ip_connections", "shadow_refuse") == 1


def test_message_rate_per_ip_then_temporary_ip_block() -> None:
    w = World(ip_rate_limit_per_minute=100, ip_violations_before_block=2, ip_block_seconds=120)
    users = [w.connect(100 + i, "10.9.9.9") for i in range(10)]  # 10 Connects
    sent = 0
    for u in itertools.cycle(users):
        out = w.chat(u)
        if out is not None:
            break
        sent += 1
    assert sent == 90 and code(out) == 429 and "rate_ip" in out.message
    assert code(w.chat(users[0])) == 429
    out = w.chat(users[1])  # third violation > 2: the address is blocked
    assert code(out) == 403 and "rate_ip" in out.message
    assert code(w.chat(users[2])) == 403  # every connection from it
    _ctx, veto = w.open("10.9.9.9")
    assert veto is not None and veto.code == 403 and veto.close  # refused at accept
    assert w.open("10.9.9.8")[1] is None
    w.clock.advance(121)
    assert w.open("10.9.9.9")[1] is None


def test_blocklist_refuses_at_accept_by_address_or_cidr() -> None:
    w = World(blocked_ips=["203.0.113.0/24", "2001:db8::1"])
    for host in ("203.0.113.7", "2001:db8::1", "::ffff:203.0.113.9"):
        _, veto = w.open(host)
        assert veto is not None and veto.code == 403 and veto.close, host
    assert w.open("203.0.114.1")[1] is None
    assert w.decisions("ip_blocklist", "refuse") == 3
    assert w.mw.stats()["connections"] == 1  # refused ones are not tracked


def test_blocklist_beats_the_allowlist() -> None:
    w = World(blocked_ips=["127.0.0.1"], allowlist=["127.0.0.0/8"])
    _, veto = w.open("127.0.0.1")
    assert veto is not None and veto.code == 403


def test_blocklist_shadow() -> None:
    w = World(blocked_ips=["10.0.0.0/8"], rules={"ip_blocklist": "shadow"})
    assert w.open("10.1.2.3")[1] is None
    assert w.decisions("ip_blocklist", "shadow_refuse") == 1


def test_nothing_is_allowlisted_by_default_loopback_included() -> None:
    """Issue 12 item 13: behind a proxy on the same host every client is 127.0.0.1."""
    w = World(rate_limit_per_minute=2, ip_max_connections=1)
    c = w.connect(1, "127.0.0.1")
    assert w.open("127.0.0.1")[1].code == 429  # ip_connections counts loopback
    w.chat(c)
    assert code(w.chat(c)) == 429  # and so does rate_user
    assert w.mw.ip_view("127.0.0.1")["allowlisted"] is False
    w2 = World(rate_limit_per_minute=2, ip_max_connections=1, allowlist=["127.0.0.0/8", "::1"])
    cs = [w2.connect(i, "127.0.0.1") for i in range(1, 5)]
    for _ in range(100):
        assert w2.chat(cs[0], step=0) is None  # allowlisted: no rate, no flood


def test_allowlist_cidrs_bypass_limits_but_not_content_or_bans() -> None:
    w = World(rate_limit_per_minute=1, allowlist=["10.0.0.0/8"])
    c = w.connect(1, "10.2.3.4")
    for _ in range(10):
        assert w.chat(c) is None
    assert code(w.chat(c, "javascript:alert(1)")) == 403
    w.mw.ban_user(1)
    assert code(w.chat(c)) == 403


# -- CLI knobs, config and reload -----------------------------------------------------------


def test_cli_knobs_beat_the_config_table() -> None:
    p = build_policy(
        {"rate_limit_per_minute": 100, "rules": {"flood": "off"}}, Settings(rate_limit=5)
    )
    assert p.rate_limit_per_minute == 5 and p.modes["flood"] == "off"
    p = build_policy({"rules": {"flood": "off"}}, Settings(flood_detection="shadow"))
    assert p.modes["flood"] == "shadow"
    p = build_policy({"rate_limit_per_minute": 100}, Settings())
    assert p.rate_limit_per_minute == 100 and p.modes["flood"] == "on"
    assert build_policy({}, Settings()).rate_limit_per_minute == 60


def test_rate_limit_0_turns_message_rates_off() -> None:
    w = World(Settings(rate_limit=0), ip_rate_limit_per_minute=10)
    c = w.connect(1)
    for _ in range(1000):
        assert w.chat(c) is None


def test_flood_detection_off_and_shadow() -> None:
    w = World(Settings(flood_detection="off"))
    c = w.connect(1)
    for _ in range(50):
        assert w.chat(c, step=0) is None
    assert w.mw.decisions == {}
    w = World(Settings(flood_detection="shadow", rate_limit=0))
    c = w.connect(1)
    for _ in range(50):
        assert w.chat(c, step=0) is None
    assert w.decisions("flood", "shadow_suspect") == 50 - 29  # the Connect and 29 fit
    assert w.decisions("suspicion", "shadow_block") == 1
    assert w.mw.users[1].blocked_until == 0


def test_rate_user_shadow_counts_throttles_and_blocks() -> None:
    w = World(rate_limit_per_minute=5, rules={"rate_user": "shadow"})
    c = w.connect(1)
    for _ in range(20):
        assert w.chat(c) is None
    assert w.decisions("rate_user", "shadow_throttle") == 3
    assert w.decisions("rate_user", "shadow_block") == 1


@pytest.mark.parametrize(
    "table, fragment",
    [
        ({"rate_limit": 5}, "unknown key"),
        ({"rate_limit_per_minute": "5"}, "expected an integer"),
        ({"rate_limit_per_minute": -1}, "between"),
        ({"rules": {"flood": "maybe"}}, "on, off or shadow"),
        ({"rules": {"nope": "on"}}, "unknown rule"),
        ({"blocked_ips": ["10.0.0.300"]}, "not an IP address or CIDR"),
        ({"allowlist": "127.0.0.1"}, "expected a list"),
        ({"patterns": [""]}, "non-empty strings"),
        ({"room_id_min": 10, "room_id_max": 5}, "room_id_max"),
    ],
)
def test_config_errors_name_the_key(table: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as e:
        build_policy(table)
    assert "[middleware.security]" in str(e.value)


def test_reload_changes_limits_and_keeps_state() -> None:
    w = World()
    c = w.connect(1)
    for _ in range(9):
        w.chat(c)
    w.mw.set_policy(build_policy({"rate_limit_per_minute": 10}))
    assert code(w.chat(c)) == 429  # the 11th message this minute: the count survived
    w.mw.set_policy(build_policy({"allowlist": ["10.0.0.0/8"], "rate_limit_per_minute": 10}))
    assert w.chat(c) is None  # now trusted: the live connection sees the new allowlist


# -- admin sanctions -------------------------------------------------------------------------


def test_ban_kicks_and_refuses_connect_until_unblocked() -> None:
    w = World()
    c = w.connect(5)
    w.control.sessions.append(5)
    assert w.mw.ban_user(5) is True
    assert ("user", 5, 403) in w.control.kicked
    assert code(w.chat(c)) == 403
    ctx, _ = w.open()
    out = w.send(ctx, m.Connect(0, 5))
    assert code(out) == 403 and out.close and "banned" in out.message
    w.clock.advance(10 * 365 * 86400)
    w.mw.sweep()
    assert 5 in w.mw.user_blocks  # a ban never expires
    assert w.mw.stats()["banned_users"] == 1
    assert w.mw.unblock_user(5) is True
    assert w.chat(c) is None
    assert w.mw.unblock_user(5) is False


def test_unblock_clears_suspicion_like_the_reference() -> None:
    w = World()
    c = w.connect(1)
    for _ in range(29 + 11):
        w.chat(c, step=0)
    assert w.mw.users[1].blocked_until > w.clock.seconds()
    w.mw.unblock_user(1)
    assert w.mw.user_view(1)["suspicion"] == 0 and w.mw.user_view(1)["block"] is None
    assert w.chat(c) is None


def test_ip_block_kicks_that_address_and_unblock_lifts_it() -> None:
    w = World()
    w.connect(1, "10.0.0.8")
    w.connect(2, "10.0.0.9")
    assert w.mw.block_ip("10.0.0.8", math.inf, "admin_block") == 1
    assert w.control.kicked == [("host", "10.0.0.8", 403)]
    assert w.open("10.0.0.8")[1].code == 403
    assert w.mw.stats()["blocked_ips"] == 1
    assert w.mw.unblock_ip("10.0.0.8") is True
    assert w.open("10.0.0.8")[1] is None


# -- bookkeeping: expiry and caps -------------------------------------------------------------


def test_idle_users_and_addresses_expire_but_connected_ones_stay() -> None:
    w = World(idle_expiry_seconds=600)
    live = w.connect(1, "10.0.0.1")
    gone = w.connect(2, "10.0.0.2")
    w.mw.connection_closed(gone, "closed")
    w.clock.advance(599)
    w.mw.sweep()
    assert set(w.mw.users) == {1, 2}
    w.clock.advance(2)
    w.mw.sweep()
    assert set(w.mw.users) == {1} and set(w.mw.ips) == {"10.0.0.1"}
    assert live.user_id == 1


def test_expired_blocks_are_swept() -> None:
    w = World()
    w.mw.block_user(3, 60, "rate_user")
    w.mw.block_ip("10.0.0.3", 60, "rate_ip", kick=False)
    w.clock.advance(61)
    w.mw.sweep()
    assert w.mw.user_blocks == {} and w.mw.ip_blocks == {}


def test_tables_have_a_hard_cap() -> None:
    w = World(max_tracked_users=100, max_tracked_ips=100, max_blocks=100)
    for uid in range(1000):
        c = w.connect(uid, f"10.0.{uid // 250}.{uid % 250}")
        w.chat(c)
        w.mw.connection_closed(c, "closed")
    assert len(w.mw.users) <= 100 and len(w.mw.ips) <= 100
    for uid in range(300):
        w.mw.block_user(uid, 60 + uid, "rate_user")
    assert len(w.mw.user_blocks) <= 100
    w.mw.ban_user(99_999)
    assert 99_999 in w.mw.user_blocks  # bans are never evicted to make room


def test_stats_have_the_reference_fields() -> None:
    w = World()
    c = w.connect(1)
    for _ in range(30):  # the 31st message at once is one over the burst
        w.chat(c, step=0)
    s = w.mw.stats()
    for key in ("total_users", "blocked_users", "suspicious_users", "blocked_ips", "decisions"):
        assert key in s
    assert s["total_users"] == 1 and s["suspicious_users"] == 1
    assert s["decisions"]["flood"]["suspect"] == 1
