"""The metrics plugin: server and room performance, every collection interval.

``MetricsMiddleware`` is the hot path: it counts messages and errors into
plain ints, stores one latency sample (before_process -> after_process, with
``perf_counter``) in a preallocated ring and one per-room count in a dict.
``MetricsCollector`` runs every ``collection_interval`` seconds on the
injected clock: it turns those counts into rates, quantiles and per-room
activity, reads psutil, updates the Prometheus gauges, logs one structured
line, and keeps the snapshot that /stats and /stats/rooms/{id} serve.

Configuration, ``[middleware.metrics]`` (docs/metrics.md):
``collection_interval`` (5 s), ``top_rooms`` (20), ``latency_samples`` (4096),
``room_window`` (60 s), ``log`` (true).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from time import perf_counter
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Gauge
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from gamed.config import PluginConfigError, Settings, check_plugin_keys, plugin_number
from gamed.httputil import json_response
from gamed.interfaces import IFrameObserver, IMessageContext, IMiddleware, IServerControl
from gamed.middleware.metrics.prom import PipelineTimer, RoomSeries
from gamed.middleware.metrics.window import (
    LatencyRing,
    RoomActivity,
    error_rate_percent,
    per_second,
)
from gamed.middleware.registry import PluginEnvironment, PluginFactory, PluginParts

_log = Logger(namespace="gamed.metrics")

NAME = "metrics"
MB = 1024 * 1024
#: Seconds of snapshots kept for GET /history (the console's charts).
HISTORY_SECONDS = 600.0
#: The fields of each /history point, in order.
HISTORY_FIELDS = (
    "timestamp",
    "connections",
    "sessions",
    "messages_per_second",
    "p95_ms",
    "memory_mb",
    "cpu_percent",
)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    collection_interval: float = 5.0
    top_rooms: int = 20
    latency_samples: int = 4096
    room_window: float = 60.0
    log: bool = True

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> MetricsConfig:
        """Validate ``[middleware.metrics]``; errors are PluginConfigErrors naming the key."""
        defaults = {f.name: f.default for f in fields(cls)}
        check_plugin_keys(NAME, table, defaults)

        def number(key: str, lo: float, hi: float, kind: type) -> Any:
            value = table.get(key, defaults[key])
            return kind(plugin_number(NAME, key, value, lo, hi, integer=kind is int))

        log = table.get("log", True)
        if not isinstance(log, bool):
            raise PluginConfigError(NAME, "log", f"expected true or false, got {log!r}")
        interval = number("collection_interval", 0.05, 3600, float)
        return cls(
            collection_interval=interval,
            top_rooms=number("top_rooms", 0, 1000, int),
            latency_samples=number("latency_samples", 16, 1_000_000, int),
            room_window=max(number("room_window", 1, 86400, float), interval),
            log=log,
        )


def validate(table: Mapping[str, Any], settings: Settings) -> MetricsConfig:
    """The plugin's validate step (see gamed.middleware.registry)."""
    return MetricsConfig.from_table(table)


@implementer(IMiddleware, IFrameObserver)
class MetricsMiddleware:
    """Counts on the hot path; never vetoes, never raises."""

    name = NAME

    def __init__(self, latency_samples: int = 4096, perf: Callable[[], float] = perf_counter):
        self._perf = perf
        self.latency = LatencyRing(latency_samples)
        self.messages = 0
        self.errors = 0
        #: room_id -> messages handled for it in the current window.
        self.room_counts: dict[int, int] = {}
        self._pending: object = None
        self._started = 0.0

    def before_process(self, ctx: IMessageContext, message: object) -> None:
        # Calls never interleave (one reactor thread), so one slot is enough;
        # the ctx check drops a sample when a plugin before us vetoed.
        self._pending = ctx
        self._started = self._perf()

    def after_process(self, ctx: IMessageContext, message: object, result: object) -> None:
        self.messages += 1
        if self._pending is ctx:
            self._pending = None
            # LatencyRing.record, inlined: this runs for every message.
            ring = self.latency
            seconds = self._perf() - self._started
            pos = ring.pos
            ring.samples[pos] = seconds
            pos += 1
            ring.pos = 0 if pos == ring.size else pos
            ring.count += 1
            ring.total += seconds
        if result is not None:
            self.errors += 1
            return
        room_id = getattr(message, "room_id", 0)
        if room_id:
            counts = self.room_counts
            counts[room_id] = counts.get(room_id, 0) + 1

    def frame_refused(self, ctx: IMessageContext, reason: str, size: int) -> None:
        """A frame that never decoded was still a message, answered with an error."""
        self.messages += 1
        self.errors += 1

    # The reference's API, for code ported from it.
    def record_message(self) -> None:
        self.messages += 1

    def record_error(self) -> None:
        self.errors += 1

    def record_response_time(self, seconds: float) -> None:
        self.latency.record(seconds)


def _game_state(control: IServerControl | None, room_id: int) -> str | None:
    """The status of the room's game ("Waiting", "InProgress"), or None.

    Asked of the server (``IServerControl.game_status``). No game in the room,
    games off, or no server: None, and the caller omits the field. A failing
    lookup is logged and omitted: it must not break a stats request.
    """
    if control is None:
        return None
    try:
        return control.game_status(room_id)
    except Exception:
        _log.failure("game_status({room_id}) failed", room_id=room_id)
        return None


class MetricsCollector:
    """Turns the middleware's counts into one snapshot per interval."""

    def __init__(
        self,
        middleware: MetricsMiddleware,
        config: MetricsConfig,
        clock: IReactorTime,
        rooms: Any,
        control: IServerControl | None,
        registry: CollectorRegistry,
        settings: Settings,
        process: psutil.Process | None = None,
    ) -> None:
        self.mw = middleware
        self.config = config
        self.clock = clock
        self.rooms = rooms
        self.control = control
        # The handle is opened in ``open_process`` (MetricsService.startService):
        # twistd forks after makeService, and a psutil.Process made before the
        # fork watches the parent, which is gone (NoSuchProcess every interval).
        self._new_process: Callable[[], Any] = (
            psutil.Process if process is None else (lambda: process)
        )
        self.process: Any = None
        self.activity = RoomActivity(config.room_window)
        self.timer = PipelineTimer()
        self.room_series = RoomSeries()
        self.snapshot: dict[str, Any] | None = None
        #: The last HISTORY_SECONDS of snapshots, one HISTORY_FIELDS tuple each.
        self.history: deque[tuple[float, ...]] = deque(maxlen=self._history_len(config))
        self._window_start = clock.seconds()
        self._messages_mark = middleware.messages
        self._errors_mark = middleware.errors
        registry.register(self.timer)
        registry.register(self.room_series)
        self.memory = Gauge(
            "gamed_memory_rss_bytes",
            "Resident memory of the gamed process (psutil), updated every collection",
            registry=registry,
        )
        self.cpu = Gauge(
            "gamed_cpu_usage_ratio",
            "CPU used by gamed over the last collection interval, in cores (1.0 = one core)",
            registry=registry,
        )
        self.max_connections = Gauge(
            "gamed_max_connections",
            "The connection cap (--max-connections): alert when gamed_connections nears it",
            registry=registry,
        )
        self.max_connections.set(settings.max_connections)

    # -- the process handle --------------------------------------------------------------

    def open_process(self) -> None:
        """Watch the process we run in now (after twistd's fork); primes the CPU reading."""
        self.process = self._new_process()
        self.process.cpu_percent(None)  # the first call always says 0.0

    def close_process(self) -> None:
        self.process = None

    # -- collection -------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        """Close the window: compute, publish, log. Runs in a LoopingCall."""
        now = self.clock.seconds()
        mw = self.mw
        elapsed = now - self._window_start
        messages = mw.messages - self._messages_mark
        errors = mw.errors - self._errors_mark
        self._messages_mark, self._errors_mark = mw.messages, mw.errors
        room_counts, mw.room_counts = mw.room_counts, {}
        self.activity.add_window(self._window_start, now, room_counts)
        self._window_start = now
        latency = mw.latency.take_window()

        if self.process is None:  # collected before start (tests): open it now
            self.open_process()
        rss = self.process.memory_info().rss
        cpu = self.process.cpu_percent(None)
        self.memory.set(rss)
        self.cpu.set(cpu / 100.0)

        live = self.rooms.rooms()
        self.activity.forget({r.room_id for r in live})
        top = self._top_rooms(live)
        self._publish_rooms(live, top)

        snapshot: dict[str, Any] = {
            "timestamp": now,
            "window_seconds": round(elapsed, 3),
            "connections": self._connections(),
            "sessions": len(self.control.connected_user_ids()) if self.control else 0,
            "messages": messages,
            "errors": errors,
            "messages_per_second": round(per_second(messages, elapsed), 3),
            "error_rate_percent": round(error_rate_percent(messages, errors), 3),
            "response_time_ms": latency,
            "memory_mb": round(rss / MB, 2),
            "cpu_percent": round(cpu, 2),
            "rooms": {
                "count": len(live),
                "top_k": self.config.top_rooms,
                "top": [self._room_row(room) for room in top],
            },
            "middleware_mean_us": self.timer.mean_microseconds(),
        }
        self.snapshot = snapshot
        self.history.append(
            (
                now,
                snapshot["connections"],
                snapshot["sessions"],
                snapshot["messages_per_second"],
                latency["p95"],
                snapshot["memory_mb"],
                snapshot["cpu_percent"],
            )
        )
        if self.config.log:
            _log.info(
                "metrics: {connections} conn, {messages_per_second:.1f} msg/s, "
                "{mean_ms:.3f}ms avg (p99 {p99_ms:.3f}ms), {memory_mb:.1f}MB mem, "
                "{cpu_percent:.1f}% cpu, {error_rate_percent:.2f}% err, {room_count} rooms",
                connections=snapshot["connections"],
                messages_per_second=snapshot["messages_per_second"],
                mean_ms=latency["mean"],
                p99_ms=latency["p99"],
                memory_mb=snapshot["memory_mb"],
                cpu_percent=snapshot["cpu_percent"],
                error_rate_percent=snapshot["error_rate_percent"],
                room_count=len(live),
                metrics=snapshot,
            )
        return snapshot

    @staticmethod
    def _history_len(config: MetricsConfig) -> int:
        return max(2, math.ceil(HISTORY_SECONDS / config.collection_interval))

    def set_config(self, config: MetricsConfig) -> None:
        """A reloaded config: a new collection interval resizes the history (newest kept)."""
        self.config = config
        size = self._history_len(config)
        if size != self.history.maxlen:
            self.history = deque(self.history, maxlen=size)

    def history_view(self) -> dict[str, Any]:
        """GET /history: the last ten minutes of snapshots, oldest first (no user in them)."""
        return {
            "seconds": HISTORY_SECONDS,
            "collection_interval": self.config.collection_interval,
            "fields": list(HISTORY_FIELDS),
            "points": [list(p) for p in self.history],
        }

    def _connections(self) -> int:
        return self.control.connection_count() if self.control is not None else 0

    def _top_rooms(self, live: list[Any]) -> list[Any]:
        """The K busiest rooms: most messages in the last minute, then most members."""
        k = self.config.top_rooms
        if k <= 0 or not live:
            return []
        totals = self.activity.totals
        return heapq.nlargest(k, live, key=lambda r: (totals.get(r.room_id, 0), len(r)))

    def _publish_rooms(self, live: list[Any], top: list[Any]) -> None:
        covered = self.activity.covered_seconds
        totals = self.activity.totals
        rows: list[tuple[str, int, float]] = []
        top_members = top_messages = 0
        for room in top:
            n = totals.get(room.room_id, 0)
            top_members += len(room)
            top_messages += n
            rows.append((str(room.room_id), len(room), round(per_second(n, covered), 4)))
        if self.config.top_rooms > 0:
            members = sum(len(r) for r in live) - top_members
            messages = sum(totals.values()) - top_messages
            rows.append(("other", members, round(per_second(messages, covered), 4)))
        self.room_series.rows = rows

    def _room_row(self, room: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "room_id": room.room_id,
            "user_count": len(room),
            "messages_per_minute": round(self.activity.per_minute(room.room_id), 3),
            "last_activity": room.last_activity,
        }
        state = _game_state(self.control, room.room_id)
        if state is not None:
            row["game_state"] = state
        return row

    # -- HTTP sections ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        if self.snapshot is None:
            return {
                "collected": False,
                "collection_interval": self.config.collection_interval,
                "middleware_mean_us": self.timer.mean_microseconds(),
            }
        return {"collected": True, **self.snapshot}

    def room_stats(self, room_id: int) -> dict[str, Any] | None:
        room = self.rooms.get(room_id)
        if room is None:
            return None
        return self._room_row(room)


class MetricsService(Service):
    """Runs the collector every ``collection_interval`` on the injected clock."""

    def __init__(self, collector: MetricsCollector, clock: IReactorTime, control: Any) -> None:
        self.collector = collector
        self.clock = clock
        self.control = control
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self.collector.open_process()
        if self.control is not None:
            # Installed at start, not in make_plugin: the server builds its final
            # pipeline after loading every plugin. Timing costs two perf_counter
            # calls per plugin call, so it is on only while this plugin runs.
            self.control.set_pipeline_timer(self.collector.timer)
        self._start_loop()

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.control is not None:
            self.control.set_pipeline_timer(None)
        self.collector.close_process()
        return super().stopService()

    def _start_loop(self) -> None:
        loop = LoopingCall(self._tick)
        loop.clock = self.clock
        loop.start(self.collector.config.collection_interval, now=False)
        self._loop = loop

    def _tick(self) -> None:
        try:
            self.collector.collect()
        except Exception:  # a bad sample must not stop the loop
            _log.failure("metrics collection failed")

    def reconfigure(self, config: MetricsConfig) -> None:
        old = self.collector.config
        self.collector.set_config(config)
        self.collector.activity.span = config.room_window
        if config.latency_samples != old.latency_samples:
            self.collector.mw.latency = LatencyRing(config.latency_samples)
        if self.running and config.collection_interval != old.collection_interval:
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            self._start_loop()


class HistoryPage(Resource):
    """``/history``: the last ten minutes of snapshots (the console seeds its charts from it).
    Counts only, like /stats: as open as the HTTP port."""

    isLeaf = True

    def __init__(self, collector: MetricsCollector) -> None:
        super().__init__()
        self.collector = collector

    def render_GET(self, request: Request) -> bytes:
        return json_response(request, 200, self.collector.history_view())


def make_plugin(env: PluginEnvironment) -> PluginParts:
    config: MetricsConfig = env.config
    middleware = MetricsMiddleware(config.latency_samples)
    collector = MetricsCollector(
        middleware, config, env.clock, env.rooms, env.control, env.registry, env.settings
    )
    service = MetricsService(collector, env.clock, env.control)

    def reload(settings: Settings, new: MetricsConfig) -> None:
        service.reconfigure(new)
        collector.max_connections.set(settings.max_connections)

    return PluginParts(
        middleware=middleware,
        service=service,
        stats=collector.stats,
        room_stats=collector.room_stats,
        resources={b"history": HistoryPage(collector)},
        reload=reload,
    )


#: The registry's entry (gamed.middleware.registry.BUILTIN): every key is applied live.
plugin = PluginFactory(make=make_plugin, validate=validate)
