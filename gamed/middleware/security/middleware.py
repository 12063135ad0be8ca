"""The security plugin: rate limits, flood detection, content rules, IP rules, sanctions, auth.

Section 3 of the reference design, made real: the peer address is the real
one, per-IP limits exist, suspicion decays, every table is bounded, every rule
can be on, off or in shadow, every decision carries a reason code (logs,
``gamed_security_decisions_total{rule,action}``, ``/stats``), and bans and
blocks survive a restart. docs/security.md is the user's guide.

Hot path (``before_process``): HeartBeat returns at once; other messages cost
one dict lookup (the connection's state, which holds its user and IP state),
a few float compares and counter bumps, and, for chat, one regex search.
The flood rule is a token bucket per user kept as one float (GCRA: the
bucket's "theoretical arrival time"), so it costs a compare and two adds.
Everything that allocates (decisions, sanctions, logging) is off that path.
"""

from __future__ import annotations

import heapq
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from gamed import token as tokens
from gamed.config import ConfigError, Settings
from gamed.errors import Refusal
from gamed.interfaces import IConnectionObserver, IFrameObserver, IMessageContext, IMiddleware
from gamed.messages import ChatMessage, Connect, HeartBeat, RoomJoin
from gamed.middleware.registry import PluginEnvironment, PluginFactory, PluginParts
from gamed.middleware.security.handover import RateHandover
from gamed.middleware.security.policy import OFF, ON, SHADOW, Policy, build_policy, normalize_ip
from gamed.middleware.security.store import FILENAME, BlockStore
from gamed.middleware.security.sync import BlockSync
from gamed.middleware.security.web import AdminResource
from gamed.pipeline import Veto
from gamed.store import preflight

_log = Logger()

WINDOW = 60.0  # seconds: the rate limits are per minute
FLUSH_INTERVAL = 1.0  # seconds between writes of block changes to SQLite
BAN = math.inf  # a block's ``until`` for a permanent (admin) ban
_NEVER = sys.maxsize  # a limit that is off
#: Decisions kept for GET /admin/blocks (the console's security page).
RECENT_DECISIONS = 200


class Ledger:
    """Scores that lead to sanctions; users and IPs have one (and a shadow one)."""

    __slots__ = ("blocked_until", "decayed_at", "suspicion", "violations", "warned")

    def __init__(self, now: float) -> None:
        self.violations = 0.0
        self.suspicion = 0.0
        self.decayed_at = now
        self.blocked_until = 0.0
        self.warned = False


class UserState(Ledger):
    __slots__ = ("conns", "count", "flood_at", "last_seen", "shadow", "window_start")

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.window_start = now
        self.count = 0
        #: The flood bucket (GCRA): when it would be full again. It holds
        #: ``(flood_at - now) * rate`` spent tokens; a message is over the burst
        #: when spending one more would pass ``burst`` tokens.
        self.flood_at = now
        self.last_seen = now
        self.conns = 0
        self.shadow: Ledger | None = None


class IPState(Ledger):
    __slots__ = ("address", "conns", "count", "last_seen", "shadow", "trusted", "window_start")

    def __init__(self, now: float, address: Any, trusted: bool) -> None:
        super().__init__(now)
        self.address = address  # ipaddress object, or None for a non-IP peer
        self.trusted = trusted
        self.window_start = now
        self.count = 0
        self.last_seen = now
        self.conns = 0
        self.shadow: Ledger | None = None


class ConnState:
    """One connection's view: found with one lookup per message."""

    __slots__ = ("ctx", "ip", "key", "trusted", "user")

    def __init__(self, ctx: IMessageContext, key: str, ip: IPState) -> None:
        self.ctx = ctx
        self.key = key
        self.ip = ip
        self.trusted = ip.trusted
        self.user: UserState | None = None


class Block:
    __slots__ = ("reason", "since", "until")

    def __init__(self, until: float, reason: str, since: float) -> None:
        self.until = until
        self.reason = reason
        self.since = since

    def as_json(self, now: float) -> dict[str, Any]:
        permanent = math.isinf(self.until)
        return {
            "reason": self.reason,
            "since": self.since,
            "until": None if permanent else self.until,
            "permanent": permanent,
            "remaining_seconds": None if permanent else max(0.0, round(self.until - now, 3)),
        }


class _StoreCollector(Collector):
    """The ban store's queue and failures, read at scrape time (the store is swapped at start)."""

    def __init__(self, mw: SecurityMiddleware) -> None:
        self.mw = mw

    def collect(self) -> Iterable[Metric]:
        store = self.mw.store
        st = store.stats()
        yield GaugeMetricFamily(
            "gamed_security_store_pending_changes",
            "Block/ban changes not yet durable on disk (enforced in memory already)",
            value=st["pending"],
        )
        yield GaugeMetricFamily(
            "gamed_security_store_failing",
            "1 while writing the ban database fails (see the log and /stats for the cause)",
            value=1 if store.failing else 0,
        )
        yield CounterMetricFamily(
            "gamed_security_store_write_failures",
            "Failed writes of the ban database (each is retried with backoff)",
            value=store.write_failures,
        )
        yield CounterMetricFamily(
            "gamed_security_store_dropped_changes",
            "Unacknowledged block changes dropped because the queue was full",
            value=store.dropped,
        )


@implementer(IMiddleware, IConnectionObserver, IFrameObserver)
class SecurityMiddleware:
    name = "security"

    def __init__(
        self,
        policy: Policy,
        clock: IReactorTime,
        control: Any = None,
        registry: CollectorRegistry | None = None,
        store: BlockStore | None = None,
    ) -> None:
        self._clock = clock
        self.clock = clock  # the admin API's time-outs
        self._seconds = clock.seconds
        self.control = control
        self.store = store or BlockStore(None, clock=clock)
        #: With --redis (PluginEnvironment.shared): bans and blocks shared with every
        #: node, and users' rate windows handed over between nodes; None: one process.
        self.sync: BlockSync | None = None
        self.handover: RateHandover | None = None
        self._conns: dict[int, ConnState] = {}
        self.users: dict[int, UserState] = {}
        self.ips: dict[str, IPState] = {}
        self.user_blocks: dict[int, Block] = {}
        self.ip_blocks: dict[str, Block] = {}
        self.decisions: dict[tuple[str, str], int] = {}
        #: The last RECENT_DECISIONS decisions (when, rule, action, user, address, detail),
        #: newest last: GET /admin/blocks shows them (the console's security page).
        self.recent: deque[tuple[float, str, str, int | None, str | None, str]] = deque(
            maxlen=RECENT_DECISIONS
        )
        self._last_log: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._counter = Counter(
            "gamed_security_decisions",
            "Security decisions by rule (reason code) and action",
            ["rule", "action"],
            registry=registry,
        )
        self._children: dict[tuple[str, str], Any] = {}
        if registry is not None:
            for name, doc, fn in (
                (
                    "gamed_security_tracked_users",
                    "Users with security state",
                    lambda: len(self.users),
                ),
                (
                    "gamed_security_tracked_ips",
                    "IP addresses with security state",
                    lambda: len(self.ips),
                ),
                (
                    "gamed_security_blocked_users",
                    "Users blocked or banned now",
                    self.blocked_user_count,
                ),
                ("gamed_security_blocked_ips", "IP addresses blocked now", self.blocked_ip_count),
            ):
                Gauge(name, doc, registry=registry).set_function(fn)
            registry.register(_StoreCollector(self))
        self.set_policy(policy)

    # -- policy -----------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (reload); state is kept, cached flags are recomputed."""
        self.policy = p = policy
        m = p.modes
        self._user_limit = (
            p.rate_limit_per_minute if m["rate_user"] != OFF and p.rate_limit_per_minute else _NEVER
        )
        self._ip_limit = (
            p.ip_rate_limit_per_minute
            if m["rate_ip"] != OFF and p.ip_rate_limit_per_minute
            else _NEVER
        )
        # The flood bucket: each message moves flood_at on by one step (1/rate);
        # over the burst when flood_at would run more than burst steps ahead of now.
        self._flood_step = 1.0 / p.flood_rate_per_second
        # Half a step of slack: clock floats at epoch scale are not exact, and a burst
        # of exactly flood_burst must fit however the sums round.
        self._flood_room = (
            (p.flood_burst + 0.5) * self._flood_step if m["flood"] != OFF else math.inf
        )
        self._max_size = p.max_message_size if m["oversize"] != OFF else _NEVER
        self._chat_max = p.chat_max_bytes if m["chat_length"] != OFF else _NEVER
        self._pattern_re = p.pattern_re if m["content_pattern"] != OFF else None
        self._room_check = m["room_id"] != OFF
        self._room_lo, self._room_hi = p.room_id_min, p.room_id_max
        for ip in self.ips.values():
            ip.trusted = self._trusted(ip.address)
        for cs in self._conns.values():
            cs.trusted = cs.ip.trusted

    def _trusted(self, addr: Any) -> bool:
        return addr is not None and any(addr in net for net in self.policy.allowlist)

    def _blocklisted(self, addr: Any) -> bool:
        return addr is not None and any(addr in net for net in self.policy.blocked_ips)

    # -- the hot path -------------------------------------------------------------------

    def before_process(self, ctx: IMessageContext, message: object) -> object:
        cls = message.__class__
        if cls is HeartBeat:
            return None  # exempt from every limit; it only proves the client is alive
        cs = self._conns.get(ctx.connection_id)
        if cs is None:
            cs = self._attach(ctx)
        now = ctx.received_at  # the frame's arrival: no clock read of our own
        ip = cs.ip
        if ip.blocked_until > now:
            return self._deny_ip(cs, now)
        user = cs.user
        if user is not None:
            if user.blocked_until > now:
                return self._deny_user(cs, now)
            if not cs.trusted:
                if now - user.window_start >= WINDOW:
                    user.window_start = now
                    user.count = 1
                else:
                    user.count += 1
                    if user.count > self._user_limit:
                        veto = self._rate_exceeded(cs, user, now)
                        if veto is not None:
                            return veto
                t = user.flood_at
                if t < now:
                    t = now
                t += self._flood_step
                if t - now > self._flood_room:  # over the burst: not charged, suspected
                    veto = self._flooded(cs, user, now)
                    if veto is not None:
                        return veto
                else:
                    user.flood_at = t
        elif cls is Connect:
            assert isinstance(message, Connect)  # for mypy, which cannot narrow through `cls`
            veto = self._check_connect(cs, message, now)
            if veto is not None:
                return veto
        if not cs.trusted:
            if now - ip.window_start >= WINDOW:
                ip.window_start = now
                ip.count = 1
            else:
                ip.count += 1
                if ip.count > self._ip_limit:
                    veto = self._ip_rate_exceeded(cs, ip, now)
                    if veto is not None:
                        return veto
        if ctx.frame_size > self._max_size:
            veto = self._oversize(cs, ctx.frame_size, now)
            if veto is not None:
                return veto
        if cls is ChatMessage:
            assert isinstance(message, ChatMessage)  # for mypy, which cannot narrow through `cls`
            text = message.message
            if len(text) * 4 > self._chat_max and len(text.encode()) > self._chat_max:
                veto = self._content(cs, "chat_length", 413, f"chat over {self._chat_max} bytes")
                if veto is not None:
                    return veto
            rx = self._pattern_re
            if rx is not None and rx.search(text.lower()) is not None:
                return self._content(cs, "content_pattern", 403, "content refused")
        elif cls is RoomJoin and self._room_check:
            assert isinstance(message, RoomJoin)  # for mypy, which cannot narrow through `cls`
            if not self._room_lo <= message.room_id <= self._room_hi:
                return self._content(
                    cs,
                    "room_id",
                    422,
                    f"room_id must be {self._room_lo}..{self._room_hi}, got {message.room_id}",
                )
        return None

    def after_process(self, ctx: IMessageContext, message: object, result: object) -> None:
        # A user's state is charged only once Connect succeeded: a failed
        # Connect (bad token) cannot spend someone else's budget.
        if message.__class__ is Connect and result is None and ctx.user_id is not None:
            cs = self._conns.get(ctx.connection_id)
            if cs is not None and cs.user is None:
                self._bind(cs, ctx.user_id)

    # -- connections -------------------------------------------------------------------

    def _attach(self, ctx: IMessageContext) -> ConnState:
        now = self._seconds()
        key, addr = normalize_ip(ctx.peer_host)
        ip = self.ips.get(key)
        if ip is None:
            if len(self.ips) >= self.policy.max_tracked_ips:
                self._evict(self.ips)
            ip = IPState(now, addr, self._trusted(addr))
            b = self.ip_blocks.get(key)
            if b is not None:
                ip.blocked_until = b.until
            self.ips[key] = ip
        ip.conns += 1
        cs = ConnState(ctx, key, ip)
        self._conns[ctx.connection_id] = cs
        return cs

    def _detach(self, cs: ConnState, now: float) -> None:
        if self._conns.pop(cs.ctx.connection_id, None) is None:
            return
        cs.ip.conns -= 1
        cs.ip.last_seen = now
        if cs.user is not None:
            cs.user.conns -= 1
            cs.user.last_seen = now

    def _bind(self, cs: ConnState, user_id: int) -> None:
        now = self._seconds()
        users = self.users
        user = users.pop(user_id, None)  # re-insert: the dict's order is least recently seen first
        fresh = user is None
        if user is None:
            if len(users) >= self.policy.max_tracked_users:
                self._evict(users)
            user = UserState(now)
            b = self.user_blocks.get(user_id)
            if b is not None:
                user.blocked_until = b.until
        users[user_id] = user
        user.conns += 1
        user.last_seen = now
        if now - user.window_start >= WINDOW:
            user.window_start = now
            user.count = 0
        user.count += 1  # the Connect itself
        if user.flood_at < now:  # ... and takes a token from the flood bucket
            user.flood_at = now
        user.flood_at += self._flood_step
        cs.user = user
        if self.handover is not None:  # once per session, never per message
            self.handover.arrived(user_id, user, fresh)

    def connection_opened(self, ctx: IMessageContext) -> Veto | None:
        cs = self._attach(ctx)
        now = self._seconds()
        ip = cs.ip
        if ip.blocked_until > now:
            self._detach(cs, now)
            b = self.ip_blocks.get(cs.key)
            return self._refuse_accept(cs, "ip_blocked", "deny", self._block_text(b, now))
        mode = self.policy.modes["ip_blocklist"]
        if mode != OFF and self._blocklisted(ip.address):
            if mode == ON:
                self._detach(cs, now)
                return self._refuse_accept(
                    cs, "ip_blocklist", "refuse", "your address is blocked (ip_blocklist)"
                )
            self._decide("ip_blocklist", "shadow_refuse", cs, "would refuse the connection")
        cap = self.policy.ip_max_connections
        mode = self.policy.modes["ip_connections"]
        if cap and mode != OFF and not cs.trusted and ip.conns > cap:
            if mode == ON:
                self._detach(cs, now)
                return self._refuse_accept(
                    cs,
                    "ip_connections",
                    "refuse",
                    f"too many connections from your address (limit {cap}) (ip_connections)",
                    code=429,
                )
            self._decide("ip_connections", "shadow_refuse", cs, f"{ip.conns} connections")
        return None

    def _refuse_accept(
        self, cs: ConnState, rule: str, action: str, text: str, code: int = 403
    ) -> Veto:
        self._decide(rule, action, cs, "connection refused")
        return Veto(code, text, close=True)

    def connection_closed(self, ctx: IMessageContext, reason: str) -> None:
        cs = self._conns.get(ctx.connection_id)
        if cs is not None:
            self._detach(cs, self._seconds())
            user = cs.user
            if self.handover is not None and user is not None and user.conns <= 0:
                uid = cs.ctx.user_id
                if uid is not None:
                    self.handover.left(uid, user)

    def frame_refused(self, ctx: IMessageContext, reason: str, size: int) -> None:
        cs = self._conns.get(ctx.connection_id)
        if cs is None:
            cs = self._attach(ctx)
        now = self._seconds()
        if reason == "oversize":
            self._oversize(cs, size, now)
        elif not cs.trusted:  # an undecodable frame still counts against the IP's rate
            ip = cs.ip
            if now - ip.window_start >= WINDOW:
                ip.window_start = now
                ip.count = 1
            else:
                ip.count += 1
                if ip.count > self._ip_limit:
                    self._ip_rate_exceeded(cs, ip, now)

    # -- rules (off the hot path: they run only when something is wrong) -----------------

    def _check_connect(self, cs: ConnState, message: Connect, now: float) -> Veto | None:
        b = self.user_blocks.get(message.user_id)
        if b is None or b.until <= now:
            return None
        rule = "user_banned" if math.isinf(b.until) else "user_blocked"
        self._decide(rule, "deny", cs, f"Connect as {message.user_id}")
        return Veto(403, self._block_text(b, now), close=True)

    def _deny_user(self, cs: ConnState, now: float) -> Veto:
        b = self.user_blocks.get(cs.ctx.user_id)
        banned = b is not None and math.isinf(b.until)
        self._decide("user_banned" if banned else "user_blocked", "deny", cs, "message refused")
        return Veto(403, self._block_text(b, now))

    def _deny_ip(self, cs: ConnState, now: float) -> Veto:
        self._decide("ip_blocked", "deny", cs, "message refused")
        return Veto(403, self._block_text(self.ip_blocks.get(cs.key), now))

    @staticmethod
    def _block_text(b: Block | None, now: float) -> str:
        if b is None:
            return "blocked"
        if math.isinf(b.until):
            return f"banned ({b.reason})"
        return f"blocked for {max(1, math.ceil(b.until - now))} more seconds ({b.reason})"

    def _ledger(self, state: UserState | IPState, shadow: bool) -> Ledger:
        if not shadow:
            return state
        if state.shadow is None:
            state.shadow = Ledger(self._seconds())
        return state.shadow

    def decay(self, led: Ledger, now: float) -> None:
        """Bring ``led``'s scores up to ``now`` (the rate handover's stash and merge)."""
        self._decay(led, now)

    def _decay(self, led: Ledger, now: float) -> None:
        """Linear decay since the last touch: ``suspicion_decay_per_minute`` points
        and ``violation_decay_per_minute`` violations per minute, floored at 0."""
        elapsed = now - led.decayed_at
        if elapsed > 0:
            p = self.policy
            minutes = elapsed / 60.0
            if led.suspicion:
                led.suspicion = max(0.0, led.suspicion - minutes * p.suspicion_decay_per_minute)
            if led.violations:
                led.violations = max(0.0, led.violations - minutes * p.violation_decay_per_minute)
            if led.warned and not led.suspicion and not led.violations:
                led.warned = False
        led.decayed_at = now

    def _rate_exceeded(self, cs: ConnState, user: UserState, now: float) -> Veto | None:
        p = self.policy
        shadow = p.modes["rate_user"] == SHADOW
        led = self._ledger(user, shadow)
        self._decay(led, now)
        first = not led.warned  # one warning per episode (until the scores decay to 0)
        led.violations += 1
        led.suspicion += 1  # as the reference: every violation is also suspicious
        if led.violations > p.violations_before_block:
            return self._sanction_user(
                cs, user, led, shadow, "rate_user", p.rate_block_seconds, now
            )
        if led.suspicion > p.suspicious_activity_threshold:
            return self._sanction_user(
                cs, user, led, shadow, "suspicion", p.suspicion_block_seconds, now
            )
        limit = p.rate_limit_per_minute
        if first and not shadow:
            led.warned = True
            cs.ctx.notify(
                f"warning: more than {limit} messages per minute; further messages are refused "
                f"and repeated excess blocks you for {p.rate_block_seconds:g} seconds"
            )
            self._decide("rate_user", "warn", cs, f"{user.count} messages this minute")
        if shadow:
            self._decide("rate_user", "shadow_throttle", cs, f"{user.count} messages this minute")
            return None
        self._decide("rate_user", "throttle", cs, f"{user.count} messages this minute")
        return Veto(429, f"rate limited: more than {limit} messages per minute (rate_user)")

    def _flooded(self, cs: ConnState, user: UserState, now: float) -> Veto | None:
        shadow = self.policy.modes["flood"] == SHADOW
        return self._suspect(cs, user, shadow, "flood", self.policy.flood_suspicion, now)

    def _oversize(self, cs: ConnState, size: int, now: float) -> Veto | None:
        mode = self.policy.modes["oversize"]
        if mode == OFF:
            return None
        shadow = mode == SHADOW
        user = cs.user
        veto = None
        if user is not None and not cs.trusted:
            veto = self._suspect(cs, user, shadow, "oversize", self.policy.oversize_suspicion, now)
        else:
            self._decide("oversize", "shadow_refuse" if shadow else "refuse", cs, f"{size} bytes")
        if veto is not None or shadow:
            return veto
        return Veto(
            413, f"message of {size} bytes exceeds {self.policy.max_message_size} (oversize)"
        )

    def _suspect(
        self, cs: ConnState, user: UserState, shadow: bool, rule: str, points: float, now: float
    ) -> Veto | None:
        p = self.policy
        led = self._ledger(user, shadow)
        self._decay(led, now)
        led.suspicion += points
        self._decide(
            rule, "shadow_suspect" if shadow else "suspect", cs, f"suspicion {led.suspicion:g}"
        )
        if led.suspicion > p.suspicious_activity_threshold:
            return self._sanction_user(
                cs, user, led, shadow, "suspicion", p.suspicion_block_seconds, now
            )
        if led.suspicion >= p.warn_suspicion and not led.warned:
            led.warned = True
            if not shadow:
                cs.ctx.notify(
                    "warning: your traffic looks automated; slow down or you will be blocked "
                    f"for {p.suspicion_block_seconds:g} seconds"
                )
            self._decide("suspicion", "shadow_warn" if shadow else "warn", cs, f"{led.suspicion:g}")
        return None

    def _sanction_user(
        self,
        cs: ConnState,
        user: UserState,
        led: Ledger,
        shadow: bool,
        rule: str,
        seconds: float,
        now: float,
    ) -> Veto | None:
        if shadow:
            if led.blocked_until <= now:
                led.blocked_until = now + seconds
                self._decide(rule, "shadow_block", cs, f"would block for {seconds:g}s")
            return None
        uid = cs.ctx.user_id
        self.block_user(uid, seconds, rule, now=now, state=user)
        self._decide(rule, "block", cs, f"blocked for {seconds:g}s")
        return Veto(403, f"blocked for {seconds:g} seconds ({rule})")

    def _ip_rate_exceeded(self, cs: ConnState, ip: IPState, now: float) -> Veto | None:
        p = self.policy
        shadow = p.modes["rate_ip"] == SHADOW
        led = self._ledger(ip, shadow)
        self._decay(led, now)
        led.violations += 1
        if led.violations > p.ip_violations_before_block:
            if shadow:
                if led.blocked_until <= now:
                    led.blocked_until = now + p.ip_block_seconds
                    self._decide("rate_ip", "shadow_block", cs, "would block the address")
                return None
            self.block_ip(cs.key, p.ip_block_seconds, "rate_ip", kick=False, now=now)
            self._decide("rate_ip", "block", cs, f"blocked for {p.ip_block_seconds:g}s")
            return Veto(
                403, f"your address is blocked for {p.ip_block_seconds:g} seconds (rate_ip)"
            )
        if shadow:
            self._decide("rate_ip", "shadow_throttle", cs, f"{ip.count} messages this minute")
            return None
        self._decide("rate_ip", "throttle", cs, f"{ip.count} messages this minute")
        return Veto(429, "rate limited: too many messages from your address (rate_ip)")

    def _content(self, cs: ConnState, rule: str, code: int, text: str) -> Veto | None:
        if self.policy.modes[rule] == SHADOW:
            self._decide(rule, "shadow_refuse", cs, text)
            return None
        self._decide(rule, "refuse", cs, text)
        return Veto(code, f"{text} ({rule})")

    # -- decisions ---------------------------------------------------------------------

    def _decide(
        self, rule: str, action: str, cs: ConnState | None, detail: str, always: bool = False
    ) -> None:
        """Count a decision (dict for /stats, Prometheus), and log it, at most
        once per ``log_interval_seconds`` per rule unless ``always``."""
        key = (rule, action)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(rule, action)
        child.inc()
        now = self._seconds()
        ctx = cs.ctx if cs is not None else None
        host = cs.key if cs is not None else None
        self.recent.append((now, rule, action, getattr(ctx, "user_id", None), host, detail))
        if (
            not always
            and now - self._last_log.get(key, -math.inf) < self.policy.log_interval_seconds
        ):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_log[key] = now
        suppressed = self._suppressed.pop(key, 0)
        _log.info(
            "security {action} ({rule}): {detail}; user {user_id} from {host}{more}",
            action=action,
            rule=rule,
            detail=detail,
            user_id=getattr(ctx, "user_id", None),
            host=host,
            more=f" (+{suppressed} similar not logged)" if suppressed else "",
        )

    # -- sanctions (rules and the admin API) ------------------------------------------------

    def block_user(
        self,
        user_id: int,
        seconds: float,
        reason: str,
        now: float | None = None,
        state: UserState | None = None,
        keep: bool = False,
        share: bool = True,
    ) -> Block:
        """Block (``seconds`` = inf: ban) a user, persistently; does not kick.
        ``share``: also push it to the cluster (an automatic block; the admin API and
        the cluster sync pass False: theirs is in Redis already)."""
        now = self._seconds() if now is None else now
        until = now + seconds
        if not math.isinf(until) and len(self.user_blocks) >= self.policy.max_blocks:
            self._make_room(self.user_blocks, now, "user")
        b = self.user_blocks[user_id] = Block(until, reason, now)
        state = state or self.users.get(user_id)
        if state is not None:
            state.blocked_until = until
        self.store.put("user", user_id, until, reason, now, keep=keep)
        if share and self.sync is not None:
            self.sync.push("user", user_id, b)
        return b

    def ban_user(self, user_id: int, reason: str = "admin_ban", now: float | None = None) -> bool:
        """Ban for good and kick; True if the user was connected. ``now``: the change's
        time (with --redis, the version already written to Redis)."""
        self.block_user(user_id, BAN, reason, now=now, keep=True, share=False)
        self._decide("admin", "ban", None, f"user {user_id}", always=True)
        if self.control is not None:
            return bool(self.control.kick_user(user_id, 403, f"banned ({reason})"))
        return False

    def unblock_user(self, user_id: int, rule: str = "admin") -> bool:
        """Lift a block or ban and forget the user's suspicion; True if one was lifted.
        ``rule``: "admin" (the admin API) or "cluster" (another node's unblock)."""
        b = self.user_blocks.pop(user_id, None)
        state = self.users.get(user_id)
        if state is not None:
            state.blocked_until = 0.0
            state.suspicion = state.violations = 0.0
            state.warned = False
            state.shadow = None
        if b is not None:
            self.store.delete("user", user_id, keep=rule == "admin")
        self._decide(rule, "unblock", None, f"user {user_id}", always=True)
        return b is not None

    def kick_user(self, user_id: int) -> bool:
        self._decide("admin", "kick", None, f"user {user_id}", always=True)
        if self.control is None:
            return False
        return bool(self.control.kick_user(user_id, 403, "kicked by an administrator"))

    def kick_user_anywhere(self, user_id: int) -> Any:
        """Deferred[bool]: ``kick_user`` on whichever node of the cluster holds the session."""
        self._decide("admin", "kick", None, f"user {user_id}", always=True)
        if self.control is None:
            return defer.succeed(False)
        return self.control.kick_user_anywhere(user_id, 403, "kicked by an administrator")

    def block_ip(
        self,
        key: str,
        seconds: float,
        reason: str,
        kick: bool = True,
        now: float | None = None,
        share: bool = True,
    ) -> int:
        """Block an address (``seconds`` = inf: until unblocked); returns connections kicked.
        ``share`` as for block_user."""
        now = self._seconds() if now is None else now
        until = now + seconds
        if not math.isinf(until) and len(self.ip_blocks) >= self.policy.max_blocks:
            self._make_room(self.ip_blocks, now, "ip")
        b = self.ip_blocks[key] = Block(until, reason, now)
        ip = self.ips.get(key)
        if ip is not None:
            ip.blocked_until = until
        self.store.put("ip", key, until, reason, now, keep=kick)  # kick: an admin call
        if not kick:  # an automatic block (rate_ip): logged by _decide
            if share and self.sync is not None:
                self.sync.push("ip", key, b)
            return 0
        self._decide("admin", "block_ip", None, f"{key} for {seconds:g}s ({reason})", always=True)
        return self.kick_address(key, f"your address is blocked ({reason})")

    def kick_address(self, key: str, text: str) -> int:
        """Close every connection from address ``key`` with Error{403, text}; how many."""
        hosts = {cs.ctx.peer_host for cs in self._conns.values() if cs.key == key}
        kicked = 0
        for host in hosts:
            if self.control is not None:
                kicked += self.control.kick_host(host, 403, text)
        return kicked

    def unblock_ip(self, key: str, rule: str = "admin") -> bool:
        b = self.ip_blocks.pop(key, None)
        ip = self.ips.get(key)
        if ip is not None:
            ip.blocked_until = 0.0
            ip.violations = ip.suspicion = 0.0
            ip.shadow = None
        if b is not None:
            self.store.delete("ip", key, keep=rule == "admin")
        self._decide(rule, "unblock_ip", None, key, always=True)
        return b is not None

    def block_text(self, key: Any, kind: str) -> str:
        """What a user or address blocked now is told (a kick on another node's change)."""
        blocks: dict[Any, Block] = self.user_blocks if kind == "user" else self.ip_blocks
        return self._block_text(blocks.get(key), self._seconds())

    def cluster_decision(self, kind: str, key: str, how: str) -> None:
        """Log and count a block another node made, applied here (rule "cluster")."""
        action = "block" if kind == "user" else "block_ip"
        self._decide("cluster", action, None, f"{kind} {key} ({how})", always=True)

    def _make_room(self, blocks: dict[Any, Block], now: float, kind: str) -> None:
        """At the cap: drop expired blocks; else the temporary one ending soonest."""
        expired = [k for k, b in blocks.items() if b.until <= now]
        for k in expired:
            del blocks[k]
            self.store.delete(kind, k)
        if len(blocks) < self.policy.max_blocks:
            return
        # Still full: drop the 10% ending soonest (never a ban), so the O(n) scan
        # runs once per tenth of the table's worth of new blocks, not on each.
        want = max(1, len(blocks) // 10)
        temporary = ((b.until, k) for k, b in blocks.items() if not math.isinf(b.until))
        for _until, k in heapq.nsmallest(want, temporary):
            del blocks[k]
            self.store.delete(kind, k)

    def load_blocks(self, rows: dict[str, list[tuple[Any, float, str, float]]]) -> None:
        """Install blocks read from disk at start-up."""
        for uid, until, reason, since in rows.get("user", ()):
            self.user_blocks[int(uid)] = Block(until, reason, since)
        for key, until, reason, since in rows.get("ip", ()):
            self.ip_blocks[str(key)] = Block(until, reason, since)
        for uid, st in self.users.items():
            b = self.user_blocks.get(uid)
            st.blocked_until = b.until if b else st.blocked_until
        for key, ip_st in self.ips.items():
            b = self.ip_blocks.get(key)
            ip_st.blocked_until = b.until if b else ip_st.blocked_until

    # -- bookkeeping ---------------------------------------------------------------------

    def _evict(self, table: dict[Any, Any]) -> None:
        """The table is full: drop the 1% least recently seen entries with no live connection."""
        want = max(1, len(table) // 100)
        victims = []
        for key, state in table.items():
            if state.conns <= 0:
                victims.append(key)
                if len(victims) >= want:
                    break
        for key in victims:
            del table[key]

    def sweep(self) -> None:
        """Forget idle users and addresses and expired blocks (runs every sweep interval)."""
        now = self._seconds()
        cutoff = now - self.policy.idle_expiry_seconds
        # Any keys: one loop for int (user) and str (address) keys, which mypy would
        # otherwise pair up crosswise.
        tables: tuple[dict[Any, UserState] | dict[Any, IPState], ...] = (self.users, self.ips)
        for table in tables:
            idle = [k for k, st in table.items() if st.conns <= 0 and st.last_seen < cutoff]
            for k in idle:
                del table[k]
        kinds: tuple[tuple[str, dict[Any, Block]], ...] = (
            ("user", self.user_blocks),
            ("ip", self.ip_blocks),
        )
        for kind, blocks in kinds:
            expired = [k for k, b in blocks.items() if b.until <= now]
            for k in expired:
                del blocks[k]
                self.store.delete(kind, k)
        if len(self._last_log) > 1000:  # (rule, action) is a fixed set; a safety net
            self._last_log.clear()
            self._suppressed.clear()

    # -- views -----------------------------------------------------------------------------

    def blocked_user_count(self) -> int:
        now = self._seconds()
        return sum(1 for b in self.user_blocks.values() if b.until > now)

    def blocked_ip_count(self) -> int:
        now = self._seconds()
        return sum(1 for b in self.ip_blocks.values() if b.until > now)

    def stats(self) -> dict[str, Any]:
        """The reference's stats, and ours: what /stats and GET /admin/security show."""
        now = self._seconds()
        suspicious = 0
        for st in self.users.values():
            if st.suspicion or st.violations:
                self._decay(st, now)
                if st.suspicion or st.violations:
                    suspicious += 1
        banned = sum(1 for b in self.user_blocks.values() if math.isinf(b.until))
        decisions: dict[str, dict[str, int]] = {}
        for (rule, action), n in sorted(self.decisions.items()):
            decisions.setdefault(rule, {})[action] = n
        return {
            "total_users": len(self.users),
            "blocked_users": self.blocked_user_count() - banned,
            "banned_users": banned,
            "suspicious_users": suspicious,
            "blocked_ips": self.blocked_ip_count() + len(self.policy.blocked_ips),
            "tracked_ips": len(self.ips),
            "connections": len(self._conns),
            "decisions": decisions,
            "modes": dict(self.policy.modes),
            "rate_limit_per_minute": self.policy.rate_limit_per_minute,
            "store": self.store.stats(),
            "cluster": None
            if self.sync is None
            else {
                **self.sync.stats(),
                "rate_handover": None if self.handover is None else self.handover.stats(),
            },
        }

    def user_view(self, user_id: int) -> dict[str, Any]:
        now = self._seconds()
        st = self.users.get(user_id)
        b = self.user_blocks.get(user_id)
        out: dict[str, Any] = {"user_id": user_id, "tracked": st is not None}
        if st is not None:
            self._decay(st, now)
            out.update(
                suspicion=round(st.suspicion, 3),
                violations=round(st.violations, 3),
                messages_this_window=st.count,
                connections=st.conns,
            )
        out["block"] = b.as_json(now) if b is not None and b.until > now else None
        return out

    def blocks_view(self, limit: int = RECENT_DECISIONS) -> dict[str, Any]:
        """Active blocks and bans (soonest to end first, bans last) and the recent
        decisions, newest first: GET /admin/blocks."""
        now = self._seconds()

        def rows(blocks: dict[Any, Block], key: str) -> list[dict[str, Any]]:
            live = sorted(
                ((b.until, k, b) for k, b in blocks.items() if b.until > now),
                key=lambda t: (t[0], str(t[1])),
            )
            return [{key: k, **b.as_json(now)} for _until, k, b in live[:limit]]

        return {
            "now": now,
            "users": rows(self.user_blocks, "user_id"),
            "ips": rows(self.ip_blocks, "ip"),
            "config_blocklist": [str(n) for n in self.policy.blocked_ips],
            "recent": [
                {
                    "at": at,
                    "rule": rule,
                    "action": action,
                    "user_id": uid,
                    "ip": host,
                    "detail": detail,
                }
                for at, rule, action, uid, host, detail in reversed(self.recent)
            ][:limit],
        }

    def ip_view(self, key: str) -> dict[str, Any]:
        now = self._seconds()
        st = self.ips.get(key)
        b = self.ip_blocks.get(key)
        _, addr = normalize_ip(key)
        out: dict[str, Any] = {
            "ip": key,
            "tracked": st is not None,
            "allowlisted": self._trusted(addr),
            "blocklisted": self._blocklisted(addr),
        }
        if st is not None:
            out.update(connections=st.conns, messages_this_window=st.count)
        out["block"] = b.as_json(now) if b is not None and b.until > now else None
        return out


class SecurityService(Service):
    """Loads blocks before clients are accepted; sweeps and flushes on the clock."""

    def __init__(self, mw: SecurityMiddleware, clock: IReactorTime, data_dir: str | None) -> None:
        self.mw = mw
        self.clock = clock
        self.data_dir = data_dir
        self._sweeper: LoopingCall | None = None
        self._flusher: LoopingCall | None = None

    def preflight(self) -> None:
        """Before the fork (gamed.tap): StoreError if the ban file cannot be used."""
        if self.data_dir is not None:
            preflight(os.path.join(self.data_dir, FILENAME), check=True)

    def startService(self) -> None:
        super().startService()
        if self.data_dir is not None and not self.mw.store.persistent:
            # Fail closed: a ban file that cannot be read raises StoreError, and
            # ServerRoot turns it into one line and exit 1 (see docs/operations.md).
            path = os.path.join(self.data_dir, FILENAME)
            store = BlockStore.open(path, self.clock)
            try:
                rows = store.load(self.clock.seconds())
            except BaseException:
                store.close()
                raise
            store.release()
            self.mw.store = store
            self.mw.load_blocks(rows)
            _log.info(
                "security: loaded {u} user and {i} address blocks from {path}",
                u=len(rows["user"]),
                i=len(rows["ip"]),
                path=path,
            )
        if self.mw.sync is not None:
            self.mw.sync.start()  # after the SQLite copy: merge it with Redis
        self._start_sweeper()
        self._flusher = LoopingCall(self._flush)
        self._flusher.clock = self.clock
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def _start_sweeper(self) -> None:
        self._sweeper = LoopingCall(self.mw.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.mw.policy.sweep_interval_seconds, now=False)

    def reschedule(self) -> None:
        """A reload changed ``sweep_interval_seconds``: restart the sweeper at the new pace."""
        loop = self._sweeper
        if loop is None or not loop.running:
            return
        if loop.interval != self.mw.policy.sweep_interval_seconds:
            loop.stop()
            self._start_sweeper()

    def _flush(self) -> None:
        try:
            self.mw.store.flush()
        except Exception:
            _log.failure("security: flush failed")

    def stopService(self) -> None:
        for loop in (self._sweeper, self._flusher):
            if loop is not None and loop.running:
                loop.stop()
        self._sweeper = self._flusher = None
        if self.mw.sync is not None:
            self.mw.sync.stop()
        self.mw.store.close()
        super().stopService()


@dataclass(frozen=True)
class SecurityConfig:
    """The validated ``[middleware.security]`` table, the CLI knobs and the secret files' bytes.

    The files are read while validating, so a missing or short secret fails
    start (a usage error) or refuses a reload before anything is applied.
    """

    policy: Policy
    # repr=False: a config may end up in a log line or a test report, secrets must not.
    auth_secret: bytes | None = field(default=None, repr=False)
    admin_token: bytes | None = field(default=None, repr=False)


def _read_secrets(settings: Settings) -> tuple[bytes | None, bytes | None]:
    """Both files' bytes; errors are ConfigErrors naming the option."""
    auth = admin = None
    if settings.auth_secret_file:
        try:
            auth = tokens.read_secret(settings.auth_secret_file)
        except OSError as e:
            raise ConfigError(
                "auth-secret-file", f"cannot read {settings.auth_secret_file}: {e.strerror}"
            ) from None
        except ValueError as e:
            raise ConfigError("auth-secret-file", str(e)) from None
    if settings.admin_token_file:
        try:
            with open(settings.admin_token_file, "rb") as f:
                admin = f.read().strip()
        except OSError as e:
            raise ConfigError(
                "admin-token-file", f"cannot read {settings.admin_token_file}: {e.strerror}"
            ) from None
        if len(admin) < 16:
            raise ConfigError(
                "admin-token-file",
                f"{settings.admin_token_file} holds {len(admin)} bytes; use at least 16",
            )
    return auth, admin


def validate(table: Mapping[str, Any], settings: Settings) -> SecurityConfig:
    """The plugin's validate step (see gamed.middleware.registry)."""
    policy = build_policy(table, settings)
    auth, admin = _read_secrets(settings)
    return SecurityConfig(policy, auth, admin)


def _refuse_token(text: str) -> Exception:
    return Refusal(401, f"authentication failed: {text}", close=True)


def make_plugin(env: PluginEnvironment) -> PluginParts:
    current: SecurityConfig = env.config  # the config in force (a reload swaps it)
    mw = SecurityMiddleware(current.policy, env.clock, env.control, env.registry)
    if env.shared is not None:  # --redis: bans, blocks and rate windows are cluster-wide
        mw.sync = BlockSync(mw, env.shared, env.clock)
        mw.handover = RateHandover(mw, env.shared, env.clock, WINDOW)
    verify = tokens.authenticator(
        lambda: current.auth_secret or b"", env.clock.seconds, _refuse_token
    )

    def authenticate(user_id: int, token: object) -> None:
        try:
            verify(user_id, token)
        except Refusal as refusal:
            mw._decide("auth", "refuse", None, f"user {user_id}: {refusal.message}")
            raise

    def install_auth() -> None:
        if env.control is not None:
            env.control.set_authenticator(authenticate if current.auth_secret is not None else None)

    install_auth()
    service = SecurityService(mw, env.clock, env.settings.data_dir)

    def reload(settings: Settings, new: SecurityConfig) -> None:
        nonlocal current
        old, current = current, new
        mw.set_policy(new.policy)
        service.reschedule()
        install_auth()
        _log.info(
            "security: reloaded (rate {rate}/min, modes {modes}, auth {auth}{rotated})",
            rate=new.policy.rate_limit_per_minute,
            modes=dict(new.policy.modes),
            auth="on" if new.auth_secret is not None else "off",
            rotated=", secret changed" if new.auth_secret != old.auth_secret else "",
        )

    env.admin.set_source(lambda: current.admin_token)  # other plugins' private pages use it too
    admin = AdminResource(mw, lambda: current.admin_token, env.control)
    return PluginParts(
        middleware=mw,
        service=service,
        resources={b"admin": admin},
        stats=mw.stats,
        reload=reload,
    )


#: The registry's entry (gamed.middleware.registry.BUILTIN): every key is applied live.
plugin = PluginFactory(make=make_plugin, validate=validate)


__all__ = [
    "Block",
    "SecurityConfig",
    "SecurityMiddleware",
    "SecurityService",
    "make_plugin",
    "normalize_ip",
    "plugin",
    "validate",
]
