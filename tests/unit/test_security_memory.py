"""Nothing grows without bound: 100,000 distinct users through the plugin, memory flat."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import Logger

from gamed import messages as m
from gamed.middleware.security import middleware as security
from gamed.middleware.security.middleware import SecurityMiddleware
from gamed.middleware.security.policy import build_policy
from tests.unit.fakes import Ctx, FakeServerControl

USERS = 100_000
CAP = 5_000


@pytest.mark.slow
def test_100k_distinct_users_keep_tables_under_the_cap_and_memory_flat(monkeypatch) -> None:
    # Twisted buffers up to 64k log events until logging begins (twistd begins
    # it; pytest does not): keep that buffer out of the measurement.
    monkeypatch.setattr(security, "_log", Logger(observer=lambda event: None))
    clock = Clock()
    clock.advance(1_700_000_000)
    policy = build_policy(
        {
            "max_tracked_users": CAP,
            "max_tracked_ips": CAP,
            "idle_expiry_seconds": 60,
            "rate_limit_per_minute": 2,  # every user gets throttled: decisions are exercised
            "violations_before_block": 0,  # ... and blocked: the block table is exercised
            "max_blocks": CAP,
        }
    )
    mw = SecurityMiddleware(policy, clock, FakeServerControl(), CollectorRegistry())
    sweep_every = 30.0
    next_sweep = clock.seconds() + sweep_every

    def one(uid: int) -> None:
        nonlocal next_sweep
        ctx = Ctx(clock, f"10.{(uid >> 16) & 255}.{(uid >> 8) & 255}.{uid & 255}")
        mw.connection_opened(ctx)
        connect = m.Connect(0, uid)
        mw.before_process(ctx, connect)
        ctx.user_id = uid
        mw.after_process(ctx, connect, None)
        chat = m.ChatMessage(uid, 1, "hello")
        for _ in range(3):
            clock.advance(0.002)
            mw.after_process(ctx, chat, mw.before_process(ctx, chat))
        mw.connection_closed(ctx, "closed")
        if clock.seconds() >= next_sweep:
            mw.sweep()
            next_sweep += sweep_every

    for uid in range(10_000):  # warm up: tables reach their steady state
        one(uid)
    # tracemalloc slows everything ~4x: trace 40k users, then run the rest
    # with the cheap allocator block count as the flatness check.
    tracemalloc.start()
    try:
        for uid in range(10_000, 20_000):  # the tables' entries are now all traced ones
            one(uid)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        for uid in range(20_000, 50_000):
            one(uid)
            if uid % 1000 == 0:
                assert len(mw.users) <= CAP and len(mw.ips) <= CAP
                assert len(mw.user_blocks) <= CAP
        gc.collect()
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = now - base
    assert growth < 256 * 1024, f"memory grew by {growth} bytes over 30,000 users"
    gc.collect()
    blocks_before = sys.getallocatedblocks()
    for uid in range(50_000, USERS):
        one(uid)
        if uid % 1000 == 0:
            assert len(mw.users) <= CAP and len(mw.ips) <= CAP
            assert len(mw.user_blocks) <= CAP
    gc.collect()
    assert sys.getallocatedblocks() - blocks_before < 5_000
    assert len(mw._conns) == 0
    assert mw.decisions[("rate_user", "block")] == USERS  # everyone was sanctioned, and counted
