#!/usr/bin/env python
"""Nanoseconds per message on two hot paths: the security plugin's ``before_process`` and
``codec.decode``. In-process, no sockets; the best of REPEAT timings of N calls each, in
process CPU time.

    .venv/bin/python -m gamed.bench.hot_path_micro [--n 200000] [--repeat 7]
    .venv/bin/python -m gamed.bench.hot_path_micro --baseline /path/to/other/checkout

With ``--baseline`` the same measurements run on that checkout's ``gamed/codec.py`` and
security plugin (loaded from their files, the rest of gamed from here), interleaved
with this tree's round by round, so both see the same machine load: before/after.

Security: one connected user (not allowlisted, every rule on, rate limits high enough never
to fire) sending ChatMessage and PlayerAction; the clock advances 2 ms per message
(``Clock.advance`` is outside the timed loop: the clock's ``seconds`` is read by the plugin).
Decode: a short chat frame, a RoomJoin and a PlayerAction (Move).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import time
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from zope.interface import implementer

from gamed import codec
from gamed import messages as m
from gamed.interfaces import IMessageContext
from gamed.middleware.security.middleware import SecurityMiddleware
from gamed.middleware.security.policy import build_policy


@implementer(IMessageContext)
class _Ctx:
    def __init__(self, clock: Clock) -> None:
        self.connection_id = 1
        self.user_id: int | None = None
        self.peer_host = "10.1.2.3"
        self.peer_port = 5000
        self.clock = clock
        self.connected_at = clock.seconds()
        self.frame_size = 60

    @property
    def received_at(self) -> float:
        return self.clock.seconds()

    def notify(self, text: str) -> None:  # pragma: no cover - no rule fires
        pass

    def disconnect(self, code: int, text: str) -> None:  # pragma: no cover - plugins veto
        pass


class _Tick:
    """A clock whose ``seconds`` moves 2 ms per call: arrival times without a Python
    ``advance`` per message in the timed loop."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def seconds(self) -> float:
        self.now += 0.002
        return self.now

    def callLater(self, *a: Any, **kw: Any) -> Any:  # pragma: no cover - unused
        raise NotImplementedError


#: CPU time of this process, not wall time: on a shared machine the time spent waiting
#: for a core is not the code's cost.
_cpu = time.process_time


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def baseline_modules(root: Path) -> tuple[ModuleType, Any, Any]:
    """(codec, SecurityMiddleware, build_policy) from another checkout's files."""
    codec_mod = _load("baseline_codec", root / "gamed/codec.py")
    sec = root / "gamed/middleware/security"
    policy_mod = _load("baseline_policy", sec / "policy.py")
    key = "gamed.middleware.security.policy"
    ours = sys.modules[key]
    sys.modules[key] = policy_mod  # the old middleware imports the old policy
    try:
        mw_mod = _load("baseline_security", sec / "middleware.py")
    finally:
        sys.modules[key] = ours
    return codec_mod, mw_mod.SecurityMiddleware, policy_mod.build_policy


def bench_security(
    n: int, repeat: int, mw_class: Any = SecurityMiddleware, policy_fn: Any = build_policy
) -> dict[str, float]:
    clock: Any = _Tick()
    table: dict[str, Any] = {
        "allowlist": [],
        "rate_limit_per_minute": 10_000_000,
        "ip_rate_limit_per_minute": 100_000_000,
    }
    if policy_fn is build_policy:  # the token bucket: 500 a second must fit (the old gap rule:
        table["flood_rate_per_second"] = 1000.0  # 2 ms apart is over its 1 ms)
    policy = policy_fn(table)
    mw = mw_class(policy, clock, None, CollectorRegistry())
    ctx = _Ctx(clock)
    mw.connection_opened(ctx)
    hello = m.Connect(0, 7)
    assert mw.before_process(ctx, hello) is None
    ctx.user_id = 7
    mw.after_process(ctx, hello, None)
    out: dict[str, float] = {}
    for name, msg in (
        ("chat", m.ChatMessage(7, 1, "hello there, how is it going?")),
        ("player_action", m.PlayerAction(1, m.Move(1.0, 2.0, 0.5))),
    ):
        bp = mw.before_process
        assert bp(ctx, msg) is None
        best = min(
            timeit.repeat(functools.partial(bp, ctx, msg), number=n, repeat=repeat, timer=_cpu)
        )
        out[name] = best / n * 1e9
        # Never refused: the measurement is of the pass-through path.
        assert bp(ctx, msg) is None
    return out


def bench_decode(n: int, repeat: int, codec_mod: Any = codec) -> dict[str, float]:
    frames = {
        "chat": codec.encode(m.ChatMessage(7, 1, "hello there, how is it going?")),
        "room_join": codec.encode(m.RoomJoin(7, 1, "alice")),
        "player_action": codec.encode(m.PlayerAction(1, m.Move(1.0, 2.0, 0.5))),
        "heartbeat": codec.encode(m.HeartBeat()),
    }
    out: dict[str, float] = {}
    dec = codec_mod.decode
    for name, payload in frames.items():
        dec(payload)
        best = min(
            timeit.repeat(functools.partial(dec, payload), number=n, repeat=repeat, timer=_cpu)
        )
        out[name] = best / n * 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds with --baseline")
    a = ap.parse_args()
    if a.baseline is None:
        for title, fn in (("before_process", bench_security), ("decode", bench_decode)):
            for name, ns in fn(a.n, a.repeat).items():
                print(f"{title:15s} {name:14s} {ns:8.0f} ns/msg")
        return
    old_codec, old_mw, old_policy = baseline_modules(a.baseline)
    best: dict[tuple[str, str, str], float] = {}
    for _ in range(a.rounds):
        for side, runs in (
            ("before", ((bench_security, (old_mw, old_policy)), (bench_decode, (old_codec,)))),
            ("after", ((bench_security, ()), (bench_decode, ()))),
        ):
            for fn, extra in runs:
                title = "before_process" if fn is bench_security else "decode"
                for name, ns in fn(a.n, a.repeat, *extra).items():
                    k = (title, name, side)
                    best[k] = min(best.get(k, ns), ns)
    print(f"{'':15s} {'':14s} {'before':>8s} {'after':>8s}  (ns/msg, best of {a.rounds} rounds)")
    for title, name, side in best:
        if side == "before":
            before, after = best[(title, name, "before")], best[(title, name, "after")]
            print(f"{title:15s} {name:14s} {before:8.0f} {after:8.0f}")


if __name__ == "__main__":
    main()
