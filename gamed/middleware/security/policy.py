"""The security plugin's settings: one frozen ``Policy`` from the config table and the CLI knobs.

Precedence for the two knobs that also exist on the command line
(``--rate-limit``, ``--flood-detection``): command line (or ``[server]``) >
``[middleware.security]`` > the reference's default. Everything else comes
from ``[middleware.security]`` (see docs/security.md). A reload builds a new
Policy and swaps it in; the per-user and per-IP state is kept.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gamed.config import PluginConfigError, Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ON, OFF, SHADOW = "on", "off", "shadow"
MODES = (ON, OFF, SHADOW)

#: Every rule that can be switched on, off or to shadow in ``[middleware.security.rules]``.
RULES = (
    "rate_user",  # messages per user per minute
    "flood",  # over flood_burst at once or flood_rate_per_second sustained -> suspicion
    "oversize",  # frames over max_message_size -> suspicion
    "content_pattern",  # dangerous patterns in chat
    "chat_length",  # chat over chat_max_bytes
    "room_id",  # RoomJoin room id outside room_id_min..room_id_max
    "rate_ip",  # messages per IP per minute
    "ip_connections",  # open connections per IP
    "ip_blocklist",  # blocked_ips from the config
)

#: The reference's list (security_middleware.rs), matched case-insensitively.
DEFAULT_PATTERNS = (
    "'; DROP",
    "'; DELETE",
    "'; UPDATE",
    "'; INSERT",
    "<script",
    "</script>",
    "javascript:",
    "onload=",
    "onerror=",
    "onclick=",
    "eval(",
    "document.cookie",
)

#: Nothing is trusted by default: behind a proxy on the same host every client
#: would come from loopback, and every limit would be silently off. Local tools,
#: tests and load generators that need more pass their own allowlist or limits.
DEFAULT_ALLOWLIST: tuple[str, ...] = ()


def _err(key: str, message: str) -> PluginConfigError:
    return PluginConfigError("security", key, message)


@dataclass(frozen=True, slots=True)
class Policy:
    # -- per user (the reference's SecurityConfig, with its defaults)
    rate_limit_per_minute: int = 60
    violations_before_block: int = 3
    rate_block_seconds: float = 300.0
    max_message_size: int = 65536
    oversize_suspicion: float = 1.0
    #: The flood rule is a token bucket per user: ``flood_burst`` messages at once, refilled
    #: at ``flood_rate_per_second``; each message over it adds ``flood_suspicion``.
    flood_burst: int = 30
    flood_rate_per_second: float = 10.0
    flood_suspicion: float = 10.0
    suspicious_activity_threshold: float = 100.0
    suspicion_block_seconds: float = 600.0
    warn_suspicion: float = 50.0
    # -- decay: a well-behaved client sheds old sins
    suspicion_decay_per_minute: float = 10.0
    violation_decay_per_minute: float = 1.0
    # -- per IP
    ip_max_connections: int = 256
    ip_rate_limit_per_minute: int = 6000
    ip_violations_before_block: int = 100
    ip_block_seconds: float = 300.0
    blocked_ips: tuple[IPNetwork, ...] = ()
    allowlist: tuple[IPNetwork, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_ALLOWLIST)
    )
    # -- content
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    chat_max_bytes: int = 1000
    room_id_min: int = 1
    room_id_max: int = 1_000_000
    # -- bookkeeping
    idle_expiry_seconds: float = 600.0
    sweep_interval_seconds: float = 30.0
    max_tracked_users: int = 100_000
    max_tracked_ips: int = 100_000
    max_blocks: int = 100_000
    log_interval_seconds: float = 1.0
    #: rule -> on | off | shadow
    modes: Mapping[str, str] = field(default_factory=lambda: dict.fromkeys(RULES, ON))
    #: All patterns, lowercased, as one regex (search the lowercased text).
    pattern_re: re.Pattern[str] | None = None

    def mode(self, rule: str) -> str:
        return self.modes[rule]

    def summary(self) -> dict[str, Any]:
        """JSON-able view for /stats and /admin/security."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("pattern_re",):
                continue
            value = getattr(self, f.name)
            if f.name in ("blocked_ips", "allowlist"):
                value = [str(n) for n in value]
            elif f.name == "modes":
                value = dict(value)
            elif f.name == "patterns":
                value = list(value)
            elif isinstance(value, float) and math.isinf(value):
                value = None
            out[f.name] = value
        return out


_INT_KEYS = {
    "rate_limit_per_minute": (0, 10_000_000),
    "violations_before_block": (0, 1_000_000),
    "max_message_size": (1, 1 << 30),
    "ip_max_connections": (0, 10_000_000),
    "ip_rate_limit_per_minute": (0, 100_000_000),
    "ip_violations_before_block": (0, 100_000_000),
    "chat_max_bytes": (1, 1 << 24),
    "room_id_min": (0, 2**32 - 1),
    "room_id_max": (0, 2**32 - 1),
    "max_tracked_users": (100, 100_000_000),
    "max_tracked_ips": (100, 100_000_000),
    "max_blocks": (100, 100_000_000),
    "flood_burst": (1, 100_000),
}
_FLOAT_KEYS = {
    "rate_block_seconds": (0.0, 365 * 86400.0),
    "oversize_suspicion": (0.0, 1e9),
    "flood_rate_per_second": (0.001, 10_000.0),
    "flood_suspicion": (0.0, 1e9),
    "suspicious_activity_threshold": (0.0, 1e12),
    "suspicion_block_seconds": (0.0, 365 * 86400.0),
    "warn_suspicion": (0.0, 1e12),
    "suspicion_decay_per_minute": (0.0, 1e12),
    "violation_decay_per_minute": (0.0, 1e12),
    "ip_block_seconds": (0.0, 365 * 86400.0),
    "idle_expiry_seconds": (1.0, 365 * 86400.0),
    "sweep_interval_seconds": (0.1, 86400.0),
    "log_interval_seconds": (0.0, 86400.0),
}
_OTHER_KEYS = {"blocked_ips", "allowlist", "patterns", "rules"}
#: Keys that no longer exist, and what replaced them: a usage error that says so.
_REMOVED = {
    "flood_interval_ms": "removed: the flood rule measured gaps between messages, which blocked "
    "honest clients whose frames arrive together; it is a token bucket per user now: set "
    "flood_burst (messages at once) and flood_rate_per_second (sustained) instead "
    "(docs/security.md)",
}


def _int(key: str, value: Any) -> int:
    lo, hi = _INT_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(key, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise _err(key, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(key: str, value: Any) -> float:
    lo, hi = _FLOAT_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(key, f"expected a number, got {value!r}")
    x = float(value)
    if not lo <= x <= hi:
        raise _err(key, f"must be between {lo:g} and {hi:g}, got {x:g}")
    return x


def parse_networks(key: str, value: Any) -> tuple[IPNetwork, ...]:
    """A list of IPs or CIDRs (``"10.0.0.0/8"``, ``"::1"``) -> networks."""
    if not isinstance(value, list | tuple):
        raise _err(key, f"expected a list of IP addresses or CIDRs, got {value!r}")
    nets = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError as e:
            raise _err(key, f"{item!r} is not an IP address or CIDR: {e}") from None
    return tuple(nets)


def compile_patterns(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation of the lowercased literals: searched in ``text.lower()``,
    it costs a fraction of an IGNORECASE regex (no per-char case folding)."""
    if not patterns:
        return None
    ordered = sorted({p.lower() for p in patterns}, key=len, reverse=True)
    return re.compile("|".join(re.escape(p) for p in ordered))


def build_policy(table: Mapping[str, Any], settings: Settings | None = None) -> Policy:
    """The Policy for a ``[middleware.security]`` table and the CLI knobs in ``settings``.

    Raises ConfigError naming the key for anything unknown or out of range.
    """
    for key in sorted(set(table) & set(_REMOVED)):
        raise _err(key, _REMOVED[key])
    unknown = set(table) - set(_INT_KEYS) - set(_FLOAT_KEYS) - _OTHER_KEYS
    if unknown:
        raise _err(", ".join(sorted(unknown)), "unknown key (see docs/security.md)")
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key in _INT_KEYS:
            values[key] = _int(key, raw)
        elif key in _FLOAT_KEYS:
            values[key] = _float(key, raw)
    for key in ("blocked_ips", "allowlist"):
        if key in table:
            values[key] = parse_networks(key, table[key])
    if "patterns" in table:
        pats = table["patterns"]
        if not isinstance(pats, list | tuple) or not all(isinstance(p, str) and p for p in pats):
            raise _err("patterns", "expected a list of non-empty strings")
        values["patterns"] = tuple(pats)
    modes = dict.fromkeys(RULES, ON)
    rules = table.get("rules", {})
    if not isinstance(rules, Mapping):
        raise _err("rules", "expected a table of rule = on | off | shadow")
    for rule, mode in rules.items():
        if rule not in RULES:
            raise _err(f"rules.{rule}", f"unknown rule; known: {', '.join(RULES)}")
        text = str(mode).strip().lower()
        if isinstance(mode, bool):
            text = ON if mode else OFF
        if text not in MODES:
            raise _err(f"rules.{rule}", f"expected on, off or shadow, got {mode!r}")
        modes[rule] = text
    if settings is not None:
        if settings.rate_limit is not None:
            values["rate_limit_per_minute"] = settings.rate_limit
            if settings.rate_limit == 0:
                # "--rate-limit 0": no message-rate limiting at all (per IP too),
                # so load tests can keep the plugin on without being refused.
                values["ip_rate_limit_per_minute"] = 0
        if settings.flood_detection is not None:
            modes["flood"] = settings.flood_detection
    values["modes"] = modes
    policy = Policy(**values)
    if policy.room_id_min > policy.room_id_max:
        raise _err("room_id_min", "must not exceed room_id_max")
    return _with_regex(policy)


def _with_regex(policy: Policy) -> Policy:
    object.__setattr__(policy, "pattern_re", compile_patterns(policy.patterns))
    return policy


def default_policy() -> Policy:
    return build_policy({})


def normalize_ip(host: str) -> tuple[str, Any]:
    """(canonical text, ip_address or None); IPv4-mapped IPv6 becomes IPv4."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host, None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    text = str(addr)
    # The caller's string when it is already canonical: a connection's state then
    # shares its peer's address text instead of holding a second copy of it.
    return (host if text == host else text), addr
