"""MultiTierCache on an injected Clock: TTL, sweeping, tiers, compression, stats, and a model."""

from __future__ import annotations

import pickle

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from gamed.cache import CacheCollector, CacheConfig, GameStateCache, MultiTierCache, make_sweeper


def cache(clock: Clock | None = None, **config: object) -> tuple[MultiTierCache, Clock]:
    clock = clock or Clock()
    return MultiTierCache(clock, CacheConfig(**config)), clock


# -- the basics ---------------------------------------------------------------------------


def test_defaults_are_the_references() -> None:
    c = CacheConfig()
    assert (c.l1_size, c.l2_size, c.ttl, c.enable_compression) == (1000, 10000, 300.0, True)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        CacheConfig(l1_size=0)
    with pytest.raises(ValueError, match="unknown cache setting"):
        CacheConfig.from_mapping({"l1size": 3})
    assert CacheConfig.from_mapping({"l1_size": 3}).l1_size == 3


def test_get_set_remove_and_miss() -> None:
    c, _ = cache()
    assert c.get("a") is None
    assert c.get("a", 5) == 5
    c.set("a", [1])
    assert c.get("a") == [1]
    c.set("a", [2])
    assert c.get("a") == [2]
    assert "a" in c
    assert c.remove("a") is True
    assert c.remove("a") is False
    assert c.get("a") is None
    s = c.stats()
    assert (s["l1_hits"], s["l2_hits"], s["misses"]) == (2, 0, 3)


def test_ttl_drops_on_access_exactly_after_ttl() -> None:
    c, clock = cache(ttl=10)
    c.set("a", 1)
    clock.advance(10)
    assert c.get("a") == 1  # the reference expires when elapsed > ttl
    clock.advance(0.001)
    assert "a" not in c
    assert c.get("a") is None
    assert c.tier_of("a") is None
    assert c.stats()["expired"] == 1


def test_set_restarts_the_ttl_but_reads_do_not() -> None:
    c, clock = cache(ttl=10)
    c.set("a", 1)
    clock.advance(8)
    assert c.get("a") == 1
    clock.advance(3)
    assert c.get("a") is None  # 11 s after the set: reads did not extend it
    c.set("b", 1)
    clock.advance(8)
    c.set("b", 2)
    clock.advance(8)
    assert c.get("b") == 2


# -- tiers ---------------------------------------------------------------------------------


def test_full_l1_demotes_the_least_recently_accessed_quarter() -> None:
    c, _ = cache(l1_size=8, l2_size=100)
    for i in range(8):
        c.set(f"k{i}", i)
    for i in (0, 1):  # touch the two oldest: k2..k3 become the least recent
        c.get(f"k{i}")
    c.set("new", 99)
    assert [k for k in (f"k{i}" for i in range(8)) if c.tier_of(k) == 2] == ["k2", "k3"]
    assert c.tier_of("new") == 1
    s = c.stats()
    assert (s["l1_size"], s["l2_size"], s["demotions"]) == (7, 2, 2)


def test_l2_hit_is_promoted_and_never_left_in_both_tiers() -> None:
    c, _ = cache(l1_size=4, l2_size=100)
    for i in range(5):
        c.set(f"k{i}", i)
    assert c.tier_of("k0") == 2
    assert c.get("k0") == 0
    assert c.tier_of("k0") == 1
    s = c.stats()
    assert (s["l2_hits"], s["promotions"]) == (1, 1)
    assert s["l1_size"] + s["l2_size"] == 5  # the reference kept a stale copy in L2
    assert c.get("k0") == 0
    assert c.stats()["l1_hits"] == 1


def test_promotion_keeps_the_original_ttl() -> None:
    c, clock = cache(l1_size=1, l2_size=10, ttl=10)
    c.set("a", 1)
    clock.advance(6)
    c.set("b", 2)  # demotes a
    assert c.tier_of("a") == 2
    assert c.get("a") == 1  # promoted
    clock.advance(5)
    assert c.get("a") is None  # 11 s after its set


def test_setting_a_demoted_key_moves_it_back_to_l1() -> None:
    c, _ = cache(l1_size=4, l2_size=100)
    for i in range(5):
        c.set(f"k{i}", i)
    c.set("k0", "fresh")
    assert c.tier_of("k0") == 1
    assert c.get("k0") == "fresh"
    assert len(c) == 5


def test_l2_overflow_evicts_lru_and_counts() -> None:
    c, _ = cache(l1_size=4, l2_size=2)
    for i in range(12):
        c.set(f"k{i}", i)
    s = c.stats()
    assert s["l2_size"] == 2
    assert s["evictions"] == s["demotions"] - 2
    assert c.get("k0") is None  # gone for good


def test_demotion_drops_expired_entries_instead_of_moving_them() -> None:
    c, clock = cache(l1_size=4, l2_size=100, ttl=10)
    c.set("old", 1)
    clock.advance(11)
    for i in range(4):
        c.set(f"k{i}", i)
    assert c.tier_of("old") is None
    assert c.stats()["expired"] == 1


# -- sweeping ------------------------------------------------------------------------------


def test_cleanup_expired_sweeps_both_tiers() -> None:
    c, clock = cache(l1_size=4, l2_size=100, ttl=10)
    for i in range(6):
        c.set(f"k{i}", i)
    assert c.stats()["l2_size"] > 0
    clock.advance(5)
    c.set("young", 1)
    clock.advance(6)
    assert c.cleanup_expired() == 6
    assert len(c) == 1 and c.get("young") == 1


def test_sweeper_service_runs_on_the_injected_clock() -> None:
    c, clock = cache(ttl=10, sweep_interval=30)
    svc = make_sweeper(c, clock)
    c.set("a", 1)
    svc.startService()
    try:
        assert c.stats()["sweeps"] == 1  # TimerService runs once at start
        clock.advance(29)
        assert c.stats()["sweeps"] == 1
        clock.advance(1)
        assert c.stats()["sweeps"] == 2
        assert c.tier_of("a") is None and c.stats()["expired"] == 1
    finally:
        svc.stopService()
    clock.advance(60)
    assert c.stats()["sweeps"] == 2


# -- compression ---------------------------------------------------------------------------


def test_large_bytes_and_str_round_trip_compressed() -> None:
    c, _ = cache(compress_threshold=100)
    blob = b"x" * 5000
    text = "héllo " * 1000
    c.set("b", blob)
    c.set("s", text)
    c.set("small", b"y" * 50)
    assert c._l1["b"].value != blob  # stored compressed
    assert c.get("b") == blob and c.get("s") == text and c.get("small") == b"y" * 50
    s = c.stats()
    assert s["compressed_values"] == 2
    assert s["compression_saved_bytes"] > 9000


def test_objects_compress_only_with_a_serializer() -> None:
    state = {"players": [{"user_id": i, "nickname": f"p{i}", "score": 0} for i in range(100)]}
    plain = MultiTierCache(Clock(), CacheConfig(compress_threshold=100))
    plain.set("g", state)
    assert plain.get("g") is state  # kept as is: the live object
    ser = MultiTierCache(Clock(), CacheConfig(compress_threshold=100), (orjson.dumps, orjson.loads))
    ser.set("g", state)
    got = ser.get("g")
    assert got == state and got is not state
    assert ser.stats()["compressed_values"] == 1
    pick = MultiTierCache(Clock(), CacheConfig(compress_threshold=10), (pickle.dumps, pickle.loads))
    pick.set("t", (1, 2, "three" * 20))
    assert pick.get("t") == (1, 2, "three" * 20)


def test_compressed_values_survive_demotion_and_promotion() -> None:
    c, _ = cache(l1_size=1, l2_size=10, compress_threshold=100)
    c.set("a", b"a" * 1000)
    c.set("b", b"b" * 1000)
    assert c.tier_of("a") == 2
    assert c.get("a") == b"a" * 1000


def test_incompressible_and_disabled_values_are_kept_raw() -> None:
    import os

    c, _ = cache(compress_threshold=100)
    noise = os.urandom(1000)
    c.set("n", noise)
    assert c._l1["n"].value is noise
    off, _ = cache(enable_compression=False, compress_threshold=10)
    off.set("x", b"x" * 1000)
    assert off._l1["x"].value == b"x" * 1000
    assert off.stats()["compressed_values"] == 0


# -- stats and metrics ----------------------------------------------------------------------


def test_stats_hit_rate_in_percent() -> None:
    c, _ = cache(l1_size=2, l2_size=10)
    assert c.stats()["hit_rate"] == 0.0
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3)  # demotes a
    c.get("a")  # l2 hit
    c.get("c")  # l1 hit
    c.get("zz")  # miss
    c.get("zz")  # miss
    s = c.stats()
    assert (s["l1_hits"], s["l2_hits"], s["misses"]) == (1, 1, 2)
    assert s["hit_rate"] == 50.0
    for key in ("l1_size", "l2_size", "evictions", "expired", "promotions", "demotions"):
        assert key in s


def test_prometheus_collector() -> None:
    reg = CollectorRegistry()
    c, _ = cache(l1_size=2, l2_size=1, compress_threshold=10)
    reg.register(CacheCollector(c))
    c.set("a", b"a" * 100)
    c.set("b", 2)
    c.set("c", 3)
    c.set("d", 4)
    c.get("a")
    c.get("d")

    def val(name: str, **labels: str) -> float:
        v = reg.get_sample_value(name, labels)
        assert v is not None, name
        return v

    assert val("gamed_cache_hits_total", tier="l1") == 1
    assert val("gamed_cache_misses_total") == 1
    assert val("gamed_cache_entries", tier="l1") + val("gamed_cache_entries", tier="l2") == len(c)
    assert val("gamed_cache_evictions_total") == 1
    assert val("gamed_cache_demotions_total") == 2
    assert val("gamed_cache_compression_saved_bytes_total") > 50
    assert val("gamed_cache_expired_total") == 0
    assert val("gamed_cache_promotions_total") == 0


def test_game_state_keys() -> None:
    assert GameStateCache.room_key(7) == "game_state:7"
    assert GameStateCache.user_key(9) == "user_game:9"


# -- a model: a dict with expiry times ---------------------------------------------------------

KEYS = st.sampled_from([f"k{i}" for i in range(12)])
VALUES = st.one_of(st.integers(), st.binary(min_size=0, max_size=300), st.text(max_size=200))


class CacheModel(RuleBasedStateMachine):
    """Same answers as a dict whose entries expire ``ttl`` after their set.

    L2 is large enough that nothing is evicted, so every answer must match;
    L1 is tiny so demotion and promotion happen all the time.
    """

    TTL = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.cache = MultiTierCache(
            self.clock, CacheConfig(l1_size=4, l2_size=1000, ttl=self.TTL, compress_threshold=64)
        )
        self.model: dict[str, tuple[object, float]] = {}
        self.gets = 0

    def _live(self, key: str) -> bool:
        item = self.model.get(key)
        return item is not None and self.clock.seconds() - item[1] <= self.TTL

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: object) -> None:
        self.cache.set(key, value)
        self.model[key] = (value, self.clock.seconds())

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        self.gets += 1
        expected = self.model[key][0] if self._live(key) else None
        assert self.cache.get(key) == expected
        if not self._live(key):
            self.model.pop(key, None)

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        removed = self.cache.remove(key)
        if self._live(key):
            assert removed
        elif key not in self.model:
            assert not removed
        # an expired key may or may not still be stored (demotion drops expired entries)
        self.model.pop(key, None)

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.99, 10.0, 10.01, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.model))
    @rule()
    def sweep(self) -> None:
        self.cache.cleanup_expired()
        for key in [k for k in self.model if not self._live(k)]:
            del self.model[key]

    @invariant()
    def agrees(self) -> None:
        c = self.cache
        assert len(c._l1) <= 4
        assert not set(c._l1) & set(c._l2.keys())
        for key in [f"k{i}" for i in range(12)]:
            assert (key in c) == self._live(key)
        s = c.stats()
        assert s["l1_hits"] + s["l2_hits"] + s["misses"] == self.gets
        assert s["evictions"] == 0


CacheModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_cache_matches_model = CacheModel.TestCase
