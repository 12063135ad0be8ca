"""The metrics plugin: windows, rates, quantiles, the error-rate fix, psutil, Prometheus.

Time is a twisted Clock (collections) and a fake perf counter (latencies); the
full-stack tests run makeService on a MemoryReactorClock with StringTransport clients.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gamed import messages as m
from gamed.config import ConfigError, Settings
from gamed.errors import Refusal
from gamed.events import EventBus
from gamed.interfaces import IMiddleware, IServerControl
from gamed.middleware.metrics import middleware as metrics
from gamed.middleware.metrics.middleware import MetricsConfig, MetricsMiddleware, make_plugin
from gamed.middleware.metrics.prom import FOLD_AT, MIDDLEWARE_BUCKETS, PipelineTimer
from gamed.middleware.metrics.window import (
    LatencyRing,
    RoomActivity,
    error_rate_percent,
    quantile,
)
from gamed.middleware.registry import PluginEnvironment
from gamed.pipeline import Pipeline, Veto
from gamed.rooms import RoomService
from gamed.telemetry import ServerMetrics
from tests.unit.fakes import Ctx, FakeServerControl, Member, MemoryServer, send

# -- helpers ----------------------------------------------------------------------------------


class FakePerf:
    """A perf_counter the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """psutil.Process stand-in with fixed readings."""

    def __init__(self, rss: int = 50 * 1024 * 1024, cpu: float = 12.5) -> None:
        self.rss, self.cpu = rss, cpu

    def memory_info(self) -> Any:
        return type("mem", (), {"rss": self.rss})()

    def cpu_percent(self, interval: Any = None) -> float:
        return self.cpu


class Plugin:
    """make_plugin on a Clock, a real RoomService, a fake control."""

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        process: Any = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.rooms = RoomService(self.clock, 100, EventBus())
        self.control = FakeServerControl()
        self.registry = registry or ServerMetrics().registry
        self.config = dict(config or {})
        settings = Settings(plugin_config=MappingProxyType({"metrics": self.config}))
        env = PluginEnvironment(
            settings=settings,
            config=metrics.validate(settings.for_plugin("metrics"), settings),
            clock=self.clock,
            events=EventBus(),
            registry=self.registry,
            rooms=self.rooms,
            control=self.control,
        )
        if process is not None:
            original = metrics.psutil.Process
            metrics.psutil.Process = lambda: process  # type: ignore[assignment]
            try:
                self.parts = make_plugin(env)
            finally:
                metrics.psutil.Process = original  # type: ignore[assignment]
        else:
            self.parts = make_plugin(env)
        self.mw: MetricsMiddleware = self.parts.middleware  # type: ignore[assignment]
        self.perf = FakePerf()
        self.mw._perf = self.perf
        self.service = self.parts.service
        self.collector = self.service.collector  # type: ignore[union-attr]

    def start(self) -> Plugin:
        self.service.startService()  # type: ignore[union-attr]
        return self

    def message(
        self, msg: object, seconds: float = 0.001, result: object = None, ctx: Any = None
    ) -> None:
        ctx = ctx or Ctx()
        self.mw.before_process(ctx, msg)
        self.perf.now += seconds
        self.mw.after_process(ctx, msg, result)

    def fill_room(self, room_id: int, n: int, first_uid: int) -> None:
        for uid in range(first_uid, first_uid + n):
            self.rooms.join(Member(uid), room_id)

    def series(self) -> dict[str, list[Any]]:
        text = generate_latest(self.registry).decode()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}


def chat(room_id: int = 7) -> m.ChatMessage:
    return m.ChatMessage(user_id=1, room_id=room_id, message="hi")


# -- pure window arithmetic -------------------------------------------------------------------


def test_error_rate_is_errors_over_messages_of_the_same_window() -> None:
    assert error_rate_percent(200, 10) == 5.0
    assert error_rate_percent(4, 4) == 100.0
    assert error_rate_percent(0, 0) == 0.0
    assert error_rate_percent(0, 3) == 0.0  # nothing handled: no rate, not a division by zero
    assert error_rate_percent(5, 9) == 100.0  # never over 100 %


def test_error_rate_fixes_the_reference_bug() -> None:
    """The reference reset last_message_count before using it: errors/(0 + errors) = 100 %."""
    messages, errors = 1000, 1

    def reference(current_messages: int, current_errors: int) -> float:
        last_message_count = current_messages  # reset first (metrics_collector.rs:92)
        return current_errors / (current_messages - last_message_count + current_errors) * 100

    assert reference(messages, errors) == 100.0
    assert error_rate_percent(messages, errors) == pytest.approx(0.1)


def test_quantile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert quantile(values, 0.50) == 50
    assert quantile(values, 0.95) == 95
    assert quantile(values, 0.99) == 99
    assert quantile(values, 1.0) == 100
    assert quantile(values, 0.0) == 1
    assert quantile([], 0.5) == 0.0
    assert quantile([3.0], 0.99) == 3.0


def test_latency_ring_window_mean_and_quantiles() -> None:
    ring = LatencyRing(size=1000)
    for i in range(1, 101):
        ring.record(i / 1000)  # 1..100 ms
    w = ring.take_window()
    assert w["count"] == w["samples"] == 100
    assert w["mean"] == pytest.approx(50.5)
    assert (w["p50"], w["p95"], w["p99"], w["max"]) == (50.0, 95.0, 99.0, 100.0)
    # A new window starts empty.
    assert ring.take_window() == {
        "mean": 0.0,
        "p50": 0.0,
        "p95": 0.0,
        "p99": 0.0,
        "max": 0.0,
        "count": 0,
        "samples": 0,
    }


def test_latency_ring_wraps_and_keeps_the_latest_samples() -> None:
    ring = LatencyRing(size=8)
    for _ in range(5):
        ring.record(1.0)
    ring.take_window()
    for v in (0.001, 0.002, 0.003, 0.004, 0.005, 0.006):  # wraps past the end
        ring.record(v)
    w = ring.take_window()
    assert w["count"] == 6 and w["samples"] == 6
    assert w["max"] == 6.0 and w["p50"] == 3.0
    # More than `size` in one window: the mean stays exact, quantiles use the last 8.
    for i in range(20):
        ring.record(1.0 if i < 12 else 0.002)
    w = ring.take_window()
    assert w["count"] == 20 and w["samples"] == 8
    assert w["mean"] == pytest.approx((12 * 1000 + 8 * 2) / 20)
    assert w["p99"] == 2.0


def test_room_activity_slides_over_one_minute() -> None:
    act = RoomActivity(span=60)
    act.add_window(0, 30, {1: 30, 2: 6})
    act.add_window(30, 60, {1: 30})
    assert act.covered_seconds == 60
    assert act.per_minute(1) == 60 and act.per_minute(2) == 6
    act.add_window(60, 90, {2: 3})  # the first window falls out
    assert act.totals == {1: 30, 2: 3}
    assert act.per_minute(1) == 30 and act.per_minute(2) == 3
    act.add_window(90, 120, {})
    act.add_window(120, 150, {})
    assert act.totals == {}  # nothing kept for quiet rooms
    assert act.per_minute(3) == 0.0


def test_room_activity_forgets_deleted_rooms() -> None:
    act = RoomActivity(span=60)
    act.add_window(0, 5, {1: 5, 2: 5})
    act.forget({2})
    assert act.totals == {2: 5}
    act.add_window(5, 100, {})  # evicting the old window must not trip over room 1
    assert act.totals == {}


# -- the middleware (hot path) ------------------------------------------------------------------


def test_middleware_counts_messages_errors_latency_and_rooms() -> None:
    mw = MetricsMiddleware(16, perf=FakePerf())
    perf = mw._perf
    ctx = Ctx()
    mw.before_process(ctx, chat(3))
    perf.now += 0.002
    mw.after_process(ctx, chat(3), None)
    mw.before_process(ctx, m.HeartBeat())
    perf.now += 0.001
    mw.after_process(ctx, m.HeartBeat(), Refusal(401, "no"))
    assert (mw.messages, mw.errors) == (2, 1)
    assert mw.room_counts == {3: 1}  # refused messages and room-less ones are not room traffic
    assert mw.latency.count == 2
    assert mw.latency.total == pytest.approx(0.003)


def test_middleware_without_before_counts_but_takes_no_sample() -> None:
    """A plugin earlier in the pipeline vetoed: after_process runs, before_process did not."""
    mw = MetricsMiddleware(16, perf=FakePerf())
    mw.after_process(Ctx(), chat(), Refusal(429, "slow down"))
    assert (mw.messages, mw.errors, mw.latency.count) == (1, 1, 0)


def test_middleware_never_vetoes_and_counts_refused_frames() -> None:
    mw = MetricsMiddleware(16)
    assert verifyObject(IMiddleware, mw)
    assert mw.before_process(Ctx(), chat()) is None
    mw.frame_refused(Ctx(), "invalid", 12)
    assert (mw.messages, mw.errors) == (1, 1)


# -- the collector, on a Clock -------------------------------------------------------------


def test_collects_every_interval_on_the_clock() -> None:
    p = Plugin({"collection_interval": 2.0}).start()
    assert p.collector.snapshot is None
    assert p.parts.stats()["collected"] is False
    p.clock.advance(1.9)
    assert p.collector.snapshot is None
    p.clock.advance(0.1)
    assert p.collector.snapshot is not None
    assert p.collector.snapshot["window_seconds"] == 2.0
    first = p.collector.snapshot
    p.clock.advance(2.0)
    assert p.collector.snapshot is not first


def test_rates_quantiles_and_error_rate_over_the_window() -> None:
    p = Plugin(process=FakeProcess()).start()
    for i in range(100):
        p.message(chat(), seconds=(i + 1) / 10000)  # 0.1 .. 10 ms
    for _ in range(25):
        p.message(chat(), seconds=0.0001, result=Refusal(429, "slow down"))
    p.mw.frame_refused(Ctx(), "invalid", 9)
    p.clock.advance(5)
    s = p.collector.snapshot
    assert s["messages"] == 126 and s["errors"] == 26
    assert s["messages_per_second"] == pytest.approx(126 / 5, abs=1e-3)
    assert s["error_rate_percent"] == pytest.approx(100 * 26 / 126, abs=1e-3)
    rt = s["response_time_ms"]
    assert rt["count"] == 125
    assert rt["mean"] == pytest.approx((sum(range(1, 101)) / 10 + 25 * 0.1) / 125, abs=1e-3)
    assert rt["p50"] == pytest.approx(3.8, abs=1e-6)  # nearest rank 63 of 125
    assert rt["p99"] == pytest.approx(9.9, abs=1e-6)
    assert rt["max"] == pytest.approx(10.0)
    # The next window sees only its own traffic: one message, no error.
    p.message(chat())
    p.clock.advance(5)
    s = p.collector.snapshot
    assert (s["messages"], s["errors"], s["error_rate_percent"]) == (1, 0, 0.0)
    assert s["messages_per_second"] == pytest.approx(0.2)
    assert s["response_time_ms"]["count"] == 1


def test_snapshot_system_and_connection_fields() -> None:
    p = Plugin(process=FakeProcess(rss=200 * 1024 * 1024, cpu=37.5)).start()
    p.control.connections = {object(), object(), object()}
    p.control.sessions = [1, 2]
    p.clock.advance(5)
    s = p.collector.snapshot
    assert (s["connections"], s["sessions"]) == (3, 2)
    assert (s["memory_mb"], s["cpu_percent"]) == (200.0, 37.5)
    series = p.series()
    assert series["gamed_memory_rss_bytes"][0].value == 200 * 1024 * 1024
    assert series["gamed_cpu_usage_ratio"][0].value == 0.375
    assert series["gamed_max_connections"][0].value == Settings().max_connections


def test_psutil_values_are_real_and_sane() -> None:
    p = Plugin().start()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn some CPU for psutil to see
        sum(range(1000))
    p.clock.advance(5)
    s = p.collector.snapshot
    rss_mb = psutil.Process().memory_info().rss / 1024 / 1024
    assert 5 < s["memory_mb"] < 64 * 1024
    assert s["memory_mb"] == pytest.approx(rss_mb, rel=0.5)
    assert 0 < s["cpu_percent"] <= 100 * (psutil.cpu_count() or 1)


def test_per_room_stats_count_messages_per_minute() -> None:
    p = Plugin().start()
    p.fill_room(7, 3, first_uid=1)
    p.fill_room(8, 1, first_uid=10)
    for _ in range(30):
        p.message(chat(7))
    p.clock.advance(5)
    p.message(chat(8))
    p.clock.advance(5)
    top = p.collector.snapshot["rooms"]["top"]
    assert [r["room_id"] for r in top] == [7, 8]
    # 30 messages over the 10 s covered so far = 180 a minute.
    assert top[0]["messages_per_minute"] == pytest.approx(180)
    assert top[0]["user_count"] == 3
    assert top[0]["last_activity"] == p.rooms.get(7).last_activity
    assert "game_state" not in top[0]  # no game service
    assert p.parts.room_stats(8)["messages_per_minute"] == pytest.approx(6)
    assert p.parts.room_stats(99) is None
    # A minute later room 7's burst has left the window.
    for _ in range(12):
        p.clock.advance(5)
    assert p.parts.room_stats(7)["messages_per_minute"] == 0


def test_game_state_comes_from_the_games_service_when_there_is_one() -> None:
    class Games:
        def game_state(self, room_id: int) -> str | None:
            return "InProgress" if room_id == 7 else None

    p = Plugin().start()
    p.fill_room(7, 2, first_uid=1)
    p.fill_room(8, 2, first_uid=5)
    p.control.games = Games()
    assert p.parts.room_stats(7)["game_state"] == "InProgress"
    assert "game_state" not in p.parts.room_stats(8)


def test_the_fake_control_is_a_whole_server_control() -> None:
    verifyObject(IServerControl, Plugin().control)


def test_game_state_lookup_failure_is_omitted() -> None:
    class Broken:
        def game_state(self, room_id: int) -> None:
            raise RuntimeError("boom")

    p = Plugin().start()
    p.fill_room(7, 1, first_uid=1)
    p.control.games = Broken()
    assert "game_state" not in p.parts.room_stats(7)


def test_one_structured_log_line_per_interval() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        p = Plugin(process=FakeProcess(rss=64 * 1024 * 1024, cpu=3.0)).start()
        p.control.connections = {object()}
        for _ in range(10):
            p.message(chat(), seconds=0.002)
        p.message(chat(), result=Refusal(404, "no"))
        p.clock.advance(5)
        p.clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace") == "gamed.metrics"]
    assert len(lines) == 2
    text = formatEvent(lines[0])
    assert text.startswith("metrics: 1 conn, 2.2 msg/s, ")
    assert "64.0MB mem, 3.0% cpu, 9.09% err" in text
    assert lines[0]["metrics"]["messages"] == 11


def test_log_can_be_turned_off() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        Plugin({"log": False}).start().clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_namespace") == "gamed.metrics"]


def test_collection_failure_is_logged_and_the_loop_goes_on() -> None:
    events: list[dict[str, Any]] = []
    p = Plugin().start()
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    p.collector.collect = broken  # type: ignore[method-assign]
    globalLogPublisher.addObserver(events.append)
    try:
        p.clock.advance(5)
        p.clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(calls) == 2
    assert any("metrics collection failed" in (formatEvent(e) or "") for e in events)


# -- configuration and reload ------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    assert MetricsConfig.from_table({}) == MetricsConfig()
    cfg = MetricsConfig.from_table({"collection_interval": 1, "top_rooms": 5})
    assert (cfg.collection_interval, cfg.top_rooms) == (1.0, 5)
    for bad in (
        {"collection_interval": 0},
        {"collection_interval": "5"},
        {"top_rooms": 2.5},
        {"top_rooms": -1},
        {"top_rooms": True},
        {"latency_samples": 1},
        {"log": "yes"},
        {"colection_interval": 5},
    ):
        with pytest.raises(ConfigError, match=r"middleware\.metrics"):
            MetricsConfig.from_table(bad)


def test_reload_changes_the_interval_and_top_k() -> None:
    p = Plugin().start()
    settings = Settings(
        max_connections=77,
        plugin_config=MappingProxyType({"metrics": {"collection_interval": 1, "top_rooms": 1}}),
    )
    p.parts.reload(settings, metrics.validate(settings.for_plugin("metrics"), settings))
    p.fill_room(1, 1, first_uid=1)
    p.fill_room(2, 1, first_uid=2)
    p.clock.advance(1)
    assert p.collector.snapshot is not None
    assert len(p.collector.snapshot["rooms"]["top"]) == 1
    assert p.series()["gamed_max_connections"][0].value == 77


def test_timer_is_installed_only_while_running() -> None:
    p = Plugin()
    assert p.control.timer == "unset"  # not at make_plugin time: the pipeline is rebuilt after
    p.start()
    assert isinstance(p.control.timer, PipelineTimer)
    p.service.stopService()
    assert p.control.timer is None


# -- Prometheus --------------------------------------------------------------------------------


@implementer(IMiddleware)
class Stub:
    def __init__(self, name: str, veto: bool = False) -> None:
        self.name = name
        self.veto = veto

    def before_process(self, ctx: Any, message: object) -> object:
        return Veto(429, "no") if self.veto else None

    def after_process(self, ctx: Any, message: object, result: object) -> None:
        pass


def test_pipeline_timer_exports_per_middleware_latency_and_vetoes() -> None:
    timer = PipelineTimer()
    registry = CollectorRegistry()
    registry.register(timer)
    pipeline = Pipeline([Stub("security", veto=True), Stub("metrics")])
    pipeline.timer = timer
    from gamed.pipeline import TIMER_SAMPLE

    for _ in range(3 * TIMER_SAMPLE):  # one message in TIMER_SAMPLE is timed
        assert isinstance(pipeline.before(Ctx(), chat()), Veto)
        pipeline.after(Ctx(), chat(), Refusal(429, "no"))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    hist = families["gamed_middleware_duration_seconds"]
    counts = {
        (s.labels["plugin"], s.labels["phase"]): s.value
        for s in hist.samples
        if s.name.endswith("_count")
    }
    # security ran before and after; metrics only after (security vetoed first).
    assert counts == {("security", "before"): 3, ("security", "after"): 3, ("metrics", "after"): 3}
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert len(buckets) == 3 * (len(MIDDLEWARE_BUCKETS) + 1)
    vetoes = families["gamed_middleware_vetoes"].samples
    assert [(s.name, s.labels, s.value) for s in vetoes] == [  # every veto is counted
        (
            "gamed_middleware_vetoes_total",
            {"plugin": "security", "phase": "before"},
            3 * TIMER_SAMPLE,
        )
    ]
    assert timer.mean_microseconds()["security"].keys() == {"before", "after"}


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    timer = PipelineTimer()
    timer.middleware_timed("x", "before", 0.000001)  # exactly the first bound
    timer.middleware_timed("x", "before", 0.00003)
    timer.middleware_timed("x", "before", 5.0)  # +Inf only
    (hist, _) = list(timer.collect())
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["1e-06"] == 1
    assert buckets["2.5e-05"] == 1
    assert buckets["5e-05"] == 2
    assert buckets["0.1"] == 2
    assert buckets["+Inf"] == 3


def test_raw_timings_are_bounded_and_fold_to_the_exact_counts_and_sums() -> None:
    """The hot path only appends; what /metrics and /stats show is what a fold per call
    gives (same buckets, same float sum in the same order), and the list never holds
    FOLD_AT timings."""
    timer = PipelineTimer()
    values = [(i % 7) * 0.000004 + 0.0000001 * (i % 3) for i in range(FOLD_AT * 2 + 5)]
    expected = [0] * (len(MIDDLEWARE_BUCKETS) + 1)
    total = 0.0
    for v in values:
        timer.middleware_timed("x", "after", v)
        assert len(timer._raw) < FOLD_AT
        expected[sum(1 for b in MIDDLEWARE_BUCKETS if b < v)] += 1
        total += v
    assert len(timer._raw) == 5  # the rest were folded as the list filled
    (hist, _) = list(timer.collect())
    assert timer._raw == []
    samples = {(s.name, s.labels.get("le")): s.value for s in hist.samples}
    assert samples[("gamed_middleware_duration_seconds_count", None)] == len(values)
    assert samples[("gamed_middleware_duration_seconds_sum", None)] == total  # exact
    cumulative = 0
    for bound, n in zip(MIDDLEWARE_BUCKETS, expected, strict=False):
        cumulative += n
        assert samples[("gamed_middleware_duration_seconds_bucket", repr(bound))] == cumulative
    assert timer.mean_microseconds() == {"x": {"after": round(total / len(values) * 1e6, 3)}}


def test_exposition_parses_with_no_duplicate_names_next_to_the_core() -> None:
    """The core's registry has the process_* collector: ours must not clash with it."""
    p = Plugin().start()
    p.clock.advance(5)
    text = generate_latest(p.registry).decode()
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    assert {"process_resident_memory_bytes", "gamed_memory_rss_bytes"} <= set(names)
    ours = {n for n in names if n.startswith("gamed_")} - {
        "gamed_connections",
        "gamed_rooms",
        "gamed_sessions",
        "gamed_build_info",
        "gamed_messages_received",
        "gamed_errors_sent",
        "gamed_message_processing_seconds",
        "gamed_connections_refused",
        "gamed_disconnects",
        "gamed_middleware_failures",
        "gamed_chat_deliveries",
    }
    assert ours == {
        "gamed_memory_rss_bytes",
        "gamed_cpu_usage_ratio",
        "gamed_max_connections",
        "gamed_middleware_duration_seconds",
        "gamed_middleware_vetoes",
        "gamed_room_members",
        "gamed_room_messages_per_second",
    }


def _room_series(p: Plugin) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ("gamed_room_members", "gamed_room_messages_per_second"):
        out[name] = {s.labels["room"]: s.value for s in p.series().get(name, [])}
    return out


def test_top_k_rooms_and_other_bucket() -> None:
    p = Plugin({"top_rooms": 2}).start()
    for room_id, members, chats in ((1, 5, 10), (2, 1, 50), (3, 2, 0), (4, 3, 5)):
        p.fill_room(room_id, members, first_uid=room_id * 100)
        for _ in range(chats):
            p.message(chat(room_id))
    p.clock.advance(5)
    series = _room_series(p)
    assert series["gamed_room_members"] == {"2": 1, "1": 5, "other": 5}
    rates = series["gamed_room_messages_per_second"]
    assert rates == {"2": 10.0, "1": 2.0, "other": 1.0}


def test_room_series_stay_bounded_with_5000_rooms() -> None:
    k = 20
    p = Plugin({"top_rooms": k}).start()
    p.clock.advance(5)
    baseline = sum(len(s) for s in p.series().values())
    uid = 1
    for room_id in range(1, 5001):
        p.fill_room(room_id, 2, first_uid=uid)
        uid += 2
        p.message(chat(room_id))
    for room_id in range(1, 31):  # rooms 1..30 are the busiest this minute
        for _ in range(room_id):
            p.message(chat(room_id))
    p.clock.advance(5)
    series = _room_series(p)
    expected_top = {str(r) for r in range(11, 31)}
    assert set(series["gamed_room_members"]) == expected_top | {"other"}
    assert series["gamed_room_members"]["other"] == 2 * (5000 - k)
    total = sum(len(s) for s in p.series().values())
    assert total == baseline + 2 * (k + 1) - 2  # baseline had only the two `other` series
    # Rooms that leave the top-K leave /metrics: a new set becomes the busiest.
    for _ in range(13):  # the first minute slides out
        p.clock.advance(5)
    for room_id in range(4001, 4021):
        for _ in range(100):
            p.message(chat(room_id))
    p.clock.advance(5)
    series = _room_series(p)
    assert set(series["gamed_room_members"]) == {str(r) for r in range(4001, 4021)} | {"other"}
    assert sum(len(s) for s in p.series().values()) == total


def test_top_rooms_zero_exports_no_room_series() -> None:
    p = Plugin({"top_rooms": 0}).start()
    p.fill_room(1, 1, first_uid=1)
    p.clock.advance(5)
    assert _room_series(p) == {"gamed_room_members": {}, "gamed_room_messages_per_second": {}}


# -- the whole server, no sockets ----------------------------------------------------------------


def metrics_server(tmp_path: Path, middleware: str = "metrics") -> MemoryServer:
    config = tmp_path / "gamed.toml"
    config.write_text("[middleware.metrics]\ncollection_interval = 1\n")
    return MemoryServer(tmp_path, "--config", str(config), "--middleware", middleware, start=True)


def test_full_stack_stats_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gamed.pipeline.TIMER_SAMPLE", 1)  # time every call in this test
    server = metrics_server(tmp_path)
    try:
        a, b = server.client(), server.client()
        send(a, {"Connect": {"room_id": 0, "user_id": 1}})
        send(b, {"Connect": {"room_id": 0, "user_id": 2}})
        for c, uid in ((a, 1), (b, 2)):
            send(c, {"RoomJoin": {"user_id": uid, "room_id": 9, "nickname": "x"}})
        for _ in range(5):
            send(a, {"ChatMessage": {"user_id": 1, "room_id": 9, "message": "hi"}})
        send(a, {"ChatMessage": {"user_id": 1, "room_id": 10, "message": "hi"}})  # 404
        a.dataReceived(struct.pack(">I", 3) + b"{x}")  # invalid: 400
        server.reactor.advance(1)
        stats = orjson.loads(server.get(b"/stats")[2])["metrics"]
        assert stats["collected"] is True
        assert (stats["connections"], stats["sessions"]) == (2, 2)
        assert (stats["messages"], stats["errors"]) == (11, 2)
        assert stats["error_rate_percent"] == pytest.approx(100 * 2 / 11, abs=1e-3)
        assert stats["response_time_ms"]["count"] == 10
        assert stats["rooms"]["top"][0]["room_id"] == 9
        assert set(stats["middleware_mean_us"]["metrics"]) == {"before", "after"}
        room = orjson.loads(server.get(b"/stats/rooms/9")[2])
        assert room["metrics"]["user_count"] == 2
        assert room["metrics"]["messages_per_minute"] == pytest.approx(7 * 60)
        text = server.get(b"/metrics")[2].decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        timed = {
            (s.labels["plugin"], s.labels["phase"]): s.value
            for s in families["gamed_middleware_duration_seconds"].samples
            if s.name.endswith("_count")
        }
        assert timed == {("metrics", "before"): 10, ("metrics", "after"): 10}
        assert {s.labels["room"] for s in families["gamed_room_members"].samples} == {"9", "other"}
    finally:
        server.stop()


def test_without_the_plugin_nothing_is_timed(tmp_path: Path) -> None:
    server = metrics_server(tmp_path, middleware="none")
    try:
        assert server.router.pipeline.timer is None
        text = server.get(b"/metrics")[2].decode()
        assert "gamed_middleware_duration_seconds" not in text
        assert "metrics" not in orjson.loads(server.get(b"/stats")[2])
    finally:
        server.stop()


def test_game_state_from_the_real_games_service() -> None:
    from gamed.games import Games

    p = Plugin().start()
    p.fill_room(7, 2, first_uid=1)
    p.fill_room(8, 2, first_uid=5)
    games = Games(p.clock, p.rooms, EventBus(), Settings())
    p.control.games = games
    assert "game_state" not in p.parts.room_stats(7)
    games.handle(p.rooms.get(7).members[1], m.StartGame(room_id=7))
    assert p.parts.room_stats(7)["game_state"] == "Waiting"
    games.handle(p.rooms.get(7).members[2], m.ToggleReady(room_id=7))
    assert p.parts.room_stats(7)["game_state"] == "InProgress"
    assert "game_state" not in p.parts.room_stats(8)
    p.message(chat(7))
    p.clock.advance(5)
    (row,) = [r for r in p.collector.snapshot["rooms"]["top"] if r["room_id"] == 7]
    assert row["game_state"] == "InProgress"
