"""The analytics plugin: every event counted per user and per room, durable in SQLite.

Three speeds, kept apart:

* **hot path** (per message, per domain event): append one item to a bounded
  deque, or count it as dropped when the deque is full. O(1), no dicts, no I/O.
* **reactor batches** (a LoopingCall every ``tick_interval``): drain the deque,
  update the in-memory deltas (``analytics_aggregates``), feed subscribers and
  the SSE stream, keep the realtime counters.
* **store thread** (every ``flush_interval`` and on stop): add the deltas to
  SQLite (``analytics_storage``) through ``gamed.store.SqliteStore``.

See docs/analytics.md for the events, the aggregates and their guarantees.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from types import MappingProxyType
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed.config import Settings, check_plugin_keys, plugin_number
from gamed.interfaces import IMessageContext, IMiddleware
from gamed.middleware.analytics.aggregates import (
    BUS_EVENTS,
    EVENT_TYPES,
    Aggregates,
    Caps,
    Realtime,
    public,
)
from gamed.middleware.analytics.store import (
    DB_NAME,
    MIGRATIONS,
    InlineStore,
    merge_room,
    merge_user,
    prune,
    read_room,
    read_top,
    read_user,
    write_deltas,
)
from gamed.middleware.analytics.web import AnalyticsResource, SseClient
from gamed.middleware.registry import PluginEnvironment, PluginFactory, PluginParts
from gamed.pipeline import noop_hook
from gamed.store import describe_error, preflight

_log = Logger()

NAME = "analytics"

#: [middleware.analytics] keys, their defaults and allowed ranges.
DEFAULTS: dict[str, tuple[float, float, float]] = {
    "queue_size": (100_000, 100, 10_000_000),
    "tick_interval": (0.25, 0.01, 10),
    "flush_interval": (5.0, 0.1, 3600),
    "max_users": (10_000, 10, 10_000_000),
    "max_rooms": (10_000, 10, 10_000_000),
    "recent_size": (1000, 0, 1_000_000),
    "sse_max_backlog": (256 * 1024, 1024, 1 << 30),
    "sse_heartbeat": (15.0, 0.1, 3600),
    "max_stream_clients": (100, 0, 100_000),
    "retention_days": (365, 0, 100_000),
    "favourite_rooms": (10, 1, 20),
}

RETENTION_EVERY = 6 * 3600.0
#: Seconds a stop waits, beyond shutdown_grace, for the server to close its clients.
STOP_EXTRA_WAIT = 2.0


def options_from(config: Mapping[str, Any]) -> dict[str, float]:
    """The plugin's options: config file values checked against DEFAULTS.

    Errors are PluginConfigErrors naming ``[middleware.analytics] key``.
    """
    check_plugin_keys(NAME, config, DEFAULTS)
    return {
        key: plugin_number(NAME, key, config.get(key, default), lo, hi)
        for key, (default, lo, hi) in DEFAULTS.items()
    }


def validate(table: Mapping[str, Any], settings: Settings) -> Mapping[str, float]:
    """The plugin's validate step (see gamed.middleware.registry): the checked options."""
    return MappingProxyType(options_from(table))


#: Why analytics drops an event (the ``reason`` label of gamed_analytics_events_dropped).
DROP_REASONS = ("queue", "storage", "subscriber")


def _counter_by(
    registry: CollectorRegistry, name: str, doc: str, label: str, values: tuple[str, ...]
) -> Counter:
    """A Counter with one label, exported at 0 for each of ``values`` from the start."""
    counter = Counter(name, doc, [label], registry=registry)
    for value in values:
        counter.labels(value)
    return counter


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = _counter_by(
            registry,
            "gamed_analytics_events",
            "Analytics events aggregated, by type",
            "type",
            EVENT_TYPES,
        )
        self.dropped = _counter_by(
            registry,
            "gamed_analytics_events_dropped",
            "Analytics events (or parts of them) dropped: queue full, storage behind, slow subscriber",
            "reason",
            DROP_REASONS,
        )
        self.flush = Histogram(
            "gamed_analytics_flush_seconds",
            "Time from starting a flush to its commit in SQLite",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.flush_failures = Counter(
            "gamed_analytics_flush_failures",
            "Flushes to SQLite that failed (their deltas are kept and re-sent on the next one)",
            registry=registry,
        )
        self.store_bytes = Gauge(
            "gamed_analytics_store_bytes",
            "Size of the analytics SQLite database",
            registry=registry,
        )
        self.queue = Gauge(
            "gamed_analytics_queue_events", "Events waiting to be aggregated", registry=registry
        )
        self.dirty = Gauge(
            "gamed_analytics_dirty_entries",
            "Users and rooms with changes not yet flushed",
            ["table"],
            registry=registry,
        )
        self.streams = Gauge(
            "gamed_analytics_stream_clients", "Open /analytics/stream clients", registry=registry
        )


class Analytics:
    """The hub: the hot-path queue, the batch aggregation, flushes, reads and subscribers."""

    def __init__(
        self,
        clock: IReactorTime,
        registry: CollectorRegistry,
        path: str,
        options: Mapping[str, float] | None = None,
        control: Any = None,
        shutdown_grace: float = 3.0,
        store_factory: Callable[[str], Any] | None = None,
    ) -> None:
        opts = {k: v[0] for k, v in DEFAULTS.items()} | dict(options or {})
        self.clock = clock
        self.now = clock.seconds
        self.path = path
        self.control = control
        self.shutdown_grace = shutdown_grace
        self.opts = opts
        self.queue_size = int(opts["queue_size"])
        self.queue: deque[Any] = deque()
        self.recent_items: deque[Any] = deque(maxlen=int(opts["recent_size"]))
        self.sse_max_backlog = int(opts["sse_max_backlog"])
        self.aggregates = Aggregates(
            Caps(users=int(opts["max_users"]), rooms=int(opts["max_rooms"]))
        )
        self.aggregates.needs_room = self._make_room
        self.realtime_counters = Realtime()
        self.metrics = _Metrics(registry)
        self._bus_types = frozenset(BUS_EVENTS)
        self._store_factory = store_factory
        self.store: Any = None
        # Dropped counts: plain ints on the hot path, pushed to Prometheus per tick.
        self.dropped_queue = 0
        self.dropped_subscriber = 0
        self._pushed = {"queue": 0, "storage": 0, "subscriber": 0}
        self._counts: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self._pushed_counts: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self._subscribers: tuple[
            tuple[Callable[[dict[str, Any]], None], frozenset[str] | None], ...
        ] = ()
        self.subscriber_errors = 0
        self.streams: set[SseClient] = set()
        self._wanted: frozenset[str] | None = frozenset()  # None = every type
        self.flushing = 0
        self.flush_failures = 0
        #: The cause of the failing flushes, None while they succeed (logged once per change).
        self.flush_error: str | None = None
        self.last_flush_at: float | None = None
        self.store_bytes = 0
        #: Called after ``reconfigure`` (the middleware's cached cap, the service's loops).
        self._reconfigured: list[Callable[[], None]] = []

    def reconfigure(self, options: Mapping[str, float], shutdown_grace: float) -> None:
        """Apply reloaded options: sizes and caps at once, intervals via AnalyticsService.

        Lowering a size never drops what is already held beyond the new cap:
        the queue drains, and full tables refuse new entries until the next flush.
        """
        opts = {k: v[0] for k, v in DEFAULTS.items()} | dict(options)
        self.opts = opts
        self.shutdown_grace = shutdown_grace
        self.queue_size = int(opts["queue_size"])
        if self.recent_items.maxlen != int(opts["recent_size"]):
            self.recent_items = deque(self.recent_items, maxlen=int(opts["recent_size"]))
        self.sse_max_backlog = int(opts["sse_max_backlog"])  # streams opened from now on
        caps = self.aggregates.caps
        self.aggregates.caps = Caps(
            users=int(opts["max_users"]),
            rooms=int(opts["max_rooms"]),
            open_sessions=caps.open_sessions,
        )
        for listener in self._reconfigured:
            listener()

    # -- hot path ----------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        """EventBus subscriber: queue the core's events analytics cares about."""
        if type(event) in self._bus_types:
            q = self.queue
            if len(q) < self.queue_size:
                q.append(event)
            else:
                self.dropped_queue += 1

    # -- storage -----------------------------------------------------------------------

    def open(self) -> None:
        """Open the database and bring its schema up to date (start-up: blocks)."""
        if self.store is not None:
            return
        if self._store_factory is not None:
            store = self._store_factory(self.path)
        elif IReactorThreads.providedBy(self.clock):
            from gamed.store import SqliteStore

            store = SqliteStore(self.path, reactor=self.clock)
        else:  # a test reactor without threads
            store = InlineStore(self.path)
        try:
            version = store.migrate(MIGRATIONS)
        except Exception:
            store.close()
            raise
        self.store = store
        _log.info("analytics: {path} at schema version {v}", path=self.path, v=version)

    def _make_room(self) -> bool:
        """A delta table is full: flush now, unless storage is already behind."""
        if self.store is None or self.flushing >= 2:
            return False
        self.flush()
        return True

    def flush(self) -> defer.Deferred[None]:
        """Add the dirty deltas to SQLite (in the store's thread); fires when committed."""
        agg = self.aggregates
        if self.store is None or (not agg.users and not agg.rooms):
            return defer.succeed(None)
        users, rooms = agg.swap()
        self.flushing += 1
        started = perf_counter()
        d = self.store.run(write_deltas, users, rooms)

        def done(size: int) -> None:
            self.flushing -= 1
            self.metrics.flush.observe(perf_counter() - started)
            self.store_bytes = size
            self.metrics.store_bytes.set(size)
            self.last_flush_at = self.now()
            if self.flush_error is not None:
                _log.info("analytics: writing {path} works again", path=self.path)
                self.flush_error = None

        def failed(f: Failure) -> None:
            self.flushing -= 1
            self.flush_failures += 1
            self.metrics.flush_failures.inc()
            agg.merge_back(users, rooms)  # nothing is lost: re-sent with the next flush
            cause = describe_error(f.value)
            if cause != self.flush_error:  # once per state change, not every flush
                _log.error(
                    "analytics: cannot write {path}: {cause}; the deltas stay in memory "
                    "and every flush retries",
                    path=self.path,
                    cause=cause,
                )
            self.flush_error = cause

        d.addCallbacks(done, failed)
        return d

    def prune(self) -> defer.Deferred[Any]:
        days = self.opts["retention_days"]
        if self.store is None or not days:
            return defer.succeed(None)
        d = self.store.run(prune, self.now() - days * 86400)

        def report(n: tuple[int, int]) -> None:
            if n != (0, 0):
                _log.info("analytics retention: forgot {u} users, {r} rooms", u=n[0], r=n[1])

        d.addCallback(report)
        d.addErrback(lambda f: _log.failure("analytics retention failed", f))
        return d

    def close(self) -> defer.Deferred[None]:
        """Aggregate everything queued, flush it, close the database and the streams."""
        while self.queue:
            self.process()
        d = self.flush()

        def shut(result: Any) -> Any:
            for client in list(self.streams):
                client.finish()
            self.streams.clear()
            if self.store is not None:
                self.store.close()
                self.store = None
            self.push_metrics()
            return result

        return d.addBoth(shut)

    # -- reactor batches ---------------------------------------------------------------

    def process(self, limit: int | None = None) -> int:
        """Aggregate up to ``limit`` queued items (all by default); returns how many."""
        q = self.queue
        n = len(q)
        if limit is not None and n > limit:
            n = limit
        if not n:
            return 0
        fill = len(q) / self.queue_size
        started = perf_counter()
        if n == len(q):
            items = list(q)
            q.clear()
        else:
            pop = q.popleft
            items = [pop() for _ in range(n)]
        self.recent_items.extend(items)
        wanted = self._wanted
        if wanted is not None and not wanted:
            self._aggregate_fast(items)
        else:
            self._aggregate_in_order(items, wanted)
        self.realtime_counters.record(self.now(), n, perf_counter() - started, fill)
        return n

    def _aggregate_fast(self, items: list[Any]) -> None:
        """Nobody listens: chats go to Counter-based bulk aggregation, the rest in order."""
        agg = self.aggregates
        handlers = agg._handlers
        counts = self._counts
        chats: list[tuple[Any, ...]] = []
        keep = chats.append
        for item in items:
            if type(item) is tuple and item[1] == "ChatMessage" and item[3] is None:
                keep(item)
                continue
            handler = handlers.get(type(item))
            if handler is not None:
                counts[handler(item)] += 1
        if chats:
            agg.apply_chats(chats)
            counts["MessageSent"] += len(chats)

    def _aggregate_in_order(self, items: list[Any], wanted: frozenset[str] | None) -> None:
        handlers = self.aggregates._handlers
        counts = self._counts
        for item in items:
            handler = handlers.get(type(item))
            if handler is None:
                continue
            kind = handler(item)
            counts[kind] += 1
            if wanted is None or kind in wanted:
                self._fan_out(kind, item)

    def tick(self) -> None:
        self.process(limit=max(self.queue_size // 2, 1))
        self.push_metrics()

    def push_metrics(self) -> None:
        m = self.metrics
        for kind, n in self._counts.items():
            delta = n - self._pushed_counts[kind]
            if delta:
                m.events.labels(kind).inc(delta)
                self._pushed_counts[kind] = n
        for reason, n in self.dropped_by_reason().items():
            delta = n - self._pushed[reason]
            if delta:
                m.dropped.labels(reason).inc(delta)
                self._pushed[reason] = n
        m.queue.set(len(self.queue))
        m.dirty.labels("users").set(len(self.aggregates.users))
        m.dirty.labels("rooms").set(len(self.aggregates.rooms))
        m.streams.set(len(self.streams))

    def dropped_by_reason(self) -> dict[str, int]:
        return {
            "queue": self.dropped_queue,
            "storage": self.aggregates.dropped,
            "subscriber": self.dropped_subscriber,
        }

    # -- subscribers -------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[dict[str, Any]], None], types: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(event_dict)`` for each aggregated event (of ``types``).

        Callbacks run on the reactor, in batches, off the hot path; one that
        raises is logged and counted. Returns a function that unsubscribes.
        """
        wanted = None if types is None else frozenset(types)
        if wanted is not None and not wanted <= set(EVENT_TYPES):
            raise ValueError(f"unknown event types {sorted(wanted - set(EVENT_TYPES))}")
        entry = (callback, wanted)
        self._subscribers = (*self._subscribers, entry)
        self._rewant()

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not entry)
            self._rewant()

        return unsubscribe

    def stream_slot_free(self) -> bool:
        return len(self.streams) < self.opts["max_stream_clients"]

    def add_stream(self, client: SseClient) -> None:
        self.streams.add(client)
        self._rewant()
        self.metrics.streams.set(len(self.streams))

    def remove_stream(self, client: SseClient) -> None:
        self.streams.discard(client)
        self._rewant()
        self.metrics.streams.set(len(self.streams))

    def _rewant(self) -> None:
        """The union of types anyone listens to (None = all), so unwanted events cost nothing."""
        sets = [w for _, w in self._subscribers] + [c.types for c in self.streams]
        if any(w is None for w in sets):
            self._wanted = None
        else:
            self._wanted = frozenset().union(*(w for w in sets if w is not None))

    def _fan_out(self, kind: str, item: Any) -> None:
        body = public(item)
        # Only items with an aggregation handler get here, and public() knows each of them.
        assert body is not None
        for callback, types in self._subscribers:
            if types is None or kind in types:
                try:
                    callback(body)
                except Exception:
                    self.subscriber_errors += 1
                    _log.failure("analytics subscriber {cb!r} failed", cb=callback)
        if self.streams:
            frame = b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(body))
            for client in list(self.streams):
                if client.types is None or kind in client.types:
                    if not client.write(frame):
                        self.dropped_subscriber += 1
                        self.streams.discard(client)
                        self._rewant()

    def heartbeat(self) -> None:
        for client in list(self.streams):
            client.write(b": keepalive\n\n")

    # -- reads -------------------------------------------------------------------------

    def _read(self, fn: Callable[..., Any], key: int) -> defer.Deferred[Any]:
        if self.store is None:
            return defer.succeed(None)
        return self.store.run(fn, key)

    def user(self, user_id: int) -> defer.Deferred[dict[str, Any] | None]:
        """The user's aggregates: the stored row plus the delta not yet flushed."""
        self.process()
        delta = self.aggregates.users.get(user_id)
        # Taken now: flushes queued after this read are in this snapshot, earlier
        # ones are in the row (the store runs jobs in order).
        snapshot = delta.as_dict() if delta is not None else None
        d = self._read(read_user, user_id)
        return d.addCallback(
            lambda row: present_user(user_id, merge_user(row, snapshot), self.opts)
        )

    def room(self, room_id: int) -> defer.Deferred[dict[str, Any] | None]:
        self.process()
        delta = self.aggregates.rooms.get(room_id)
        snapshot = delta.as_dict() if delta is not None else None
        d = self._read(read_room, room_id)
        return d.addCallback(lambda row: present_room(room_id, merge_room(row, snapshot)))

    def top(self, by: str, limit: int) -> defer.Deferred[list[dict[str, Any]]]:
        """Top users; flushes first so the ranking includes the last seconds."""
        self.process()
        if self.store is None:
            return defer.succeed([])
        self.flush()
        return self.store.run(read_top, by, limit)

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        items = list(self.recent_items)[-limit:]
        return [body for body in map(public, items) if body is not None]

    def realtime(self) -> dict[str, Any]:
        body = self.realtime_counters.snapshot(self.now())
        body.update(
            {
                "buffer_use_percent": round(len(self.queue) / self.queue_size * 100, 2),
                "queue": {"pending": len(self.queue), "capacity": self.queue_size},
                "recent_buffer": {
                    "size": len(self.recent_items),
                    "capacity": self.recent_items.maxlen,
                },
                "dropped": self.dropped_by_reason(),
                "events_by_type": dict(self._counts),
                "dirty": {"users": len(self.aggregates.users), "rooms": len(self.aggregates.rooms)},
                "open_sessions": {
                    "users": len(self.aggregates.user_sessions),
                    "rooms": len(self.aggregates.room_sessions),
                },
                "stream_clients": len(self.streams),
                "subscribers": len(self._subscribers),
                "flush": {
                    "interval_seconds": self.opts["flush_interval"],
                    "last_at": self.last_flush_at,
                    "in_flight": self.flushing,
                    "failures": self.flush_failures,
                    "error": self.flush_error,
                },
                "store_bytes": self.store_bytes,
            }
        )
        return body


def present_user(
    user_id: int, agg: dict[str, Any] | None, opts: Mapping[str, float]
) -> dict[str, Any] | None:
    if agg is None:
        return None
    favourites = sorted(agg["rooms"].items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "user_id": user_id,
        "total_sessions": agg["sessions"],
        "total_playtime_seconds": round(agg["playtime"], 3),
        "messages_sent": agg["messages"],
        "games_played": agg["games_played"],
        "games_won": agg["games_won"],
        "errors": agg["errors"],
        "rooms_created": agg["rooms_created"],
        "favourite_rooms": [
            {"room_id": r, "visits": n} for r, n in favourites[: int(opts["favourite_rooms"])]
        ],
        "first_seen": agg["first_seen"],
        "last_active": agg["last_active"],
        "activity_by_hour": agg["hours"],
    }


def present_room(room_id: int, agg: dict[str, Any] | None) -> dict[str, Any] | None:
    if agg is None:
        return None
    done = agg["completed_sessions"]
    finished = agg["games_finished"]
    hours = agg["hours"]
    popular = sorted((h for h in range(24) if hours[h]), key=lambda h: (-hours[h], h))[:5]
    return {
        "room_id": room_id,
        "total_sessions": agg["sessions"],
        "completed_sessions": done,
        "peak_users": agg["peak_users"],
        "total_messages": agg["messages"],
        "games_played": agg["games_played"],
        "games_finished": finished,
        "average_session_seconds": round(agg["session_seconds"] / done, 3) if done else 0.0,
        "average_game_seconds": round(agg["game_seconds"] / finished, 3) if finished else 0.0,
        "times_created": agg["times_created"],
        "last_creator": agg["last_creator"],
        "first_seen": agg["first_seen"],
        "last_active": agg["last_active"],
        "popular_hours": [{"hour": h, "joins": hours[h]} for h in popular],
        "joins_by_hour": hours,
    }


@implementer(IMiddleware)
class AnalyticsMiddleware:
    """Emits MessageSent (result None) and Error (a Refusal) from after_process.

    Also the handle other plugins use: ``subscribe(callback, types)``.
    """

    name = "analytics"

    def __init__(self, hub: Analytics) -> None:
        self.hub = hub
        self.subscribe = hub.subscribe
        # Bound once: after_process runs for every message.
        self._queue = hub.queue
        self._cap = hub.queue_size
        hub._reconfigured.append(self._recap)

    def _recap(self) -> None:
        self._cap = self.hub.queue_size

    @noop_hook  # the pipeline does not call it
    def before_process(self, ctx: IMessageContext, message: object) -> None:
        return None

    def after_process(self, ctx: IMessageContext, message: object, result: object) -> None:
        q = self._queue
        if len(q) < self._cap:
            # Plain values, not the message: the queue keeps no chat text alive.
            q.append(
                (
                    ctx.user_id,
                    # A ClientMessage (typing.cast was a Python call per message here).
                    message.TAG,  # type: ignore[attr-defined]
                    getattr(message, "room_id", None),
                    result,
                    ctx.received_at,  # the frame's arrival: no clock read of our own
                )
            )
        else:
            self.hub.dropped_queue += 1


class AnalyticsService(Service):
    """Opens the store, runs the batch, flush, heartbeat and retention loops; flushes on stop."""

    def __init__(self, hub: Analytics) -> None:
        self.hub = hub
        self._loops: list[task.LoopingCall] = []
        hub._reconfigured.append(self._reschedule)

    def preflight(self) -> None:
        """Before the fork (gamed.tap): StoreError if the database cannot be used."""
        preflight(self.hub.path)

    def startService(self) -> None:
        hub = self.hub
        hub.open()
        super().startService()
        self._start_loops(prune_now=True)

    def _reschedule(self) -> None:
        """A reload changed the options: restart the loops whose interval changed."""
        if not self.running:
            return
        wanted = self._intervals()
        if [loop.interval for loop in self._loops] == [i for _, i in wanted]:
            return
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self._start_loops(prune_now=False)

    def _intervals(self) -> list[tuple[Callable[[], Any], float]]:
        hub = self.hub
        return [
            (hub.tick, hub.opts["tick_interval"]),
            (hub.flush, hub.opts["flush_interval"]),
            (hub.heartbeat, hub.opts["sse_heartbeat"]),
            (hub.prune, RETENTION_EVERY),
        ]

    def _start_loops(self, prune_now: bool) -> None:
        hub = self.hub
        for fn, interval in self._intervals():
            now = prune_now and fn == hub.prune
            loop = task.LoopingCall(fn)
            loop.clock = hub.clock
            loop.start(interval, now=now).addErrback(
                lambda f, name: _log.failure("analytics loop {name} died", f, name=name),
                fn.__name__,
            )
            self._loops.append(loop)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        d = self._sessions_closed()
        return d.addCallback(lambda _: self.hub.close())

    def _sessions_closed(self) -> defer.Deferred[None]:
        """Fires once the server has closed its clients (their UserDisconnected and
        RoomLeft are then queued), or after the shutdown grace."""
        hub = self.hub
        control = hub.control
        d: defer.Deferred[None] = defer.Deferred()
        if control is None:
            d.callback(None)
            return d
        deadline = hub.now() + hub.shutdown_grace + STOP_EXTRA_WAIT

        def check() -> None:
            if not control.connected_user_ids() or hub.now() >= deadline:
                d.callback(None)
            else:
                hub.clock.callLater(0.05, check)

        check()
        return d


def make_plugin(env: PluginEnvironment) -> PluginParts:
    opts: Mapping[str, float] = env.config
    hub = Analytics(
        env.clock,
        env.registry,
        os.path.join(env.settings.data_dir, DB_NAME),
        opts,
        control=env.control,
        shutdown_grace=env.settings.shutdown_grace,
    )
    env.events.subscribe(hub.on_event)

    def reload(settings: Settings, new: Mapping[str, float]) -> None:
        hub.reconfigure(new, settings.shutdown_grace)
        _log.info("analytics: reloaded ({opts})", opts=dict(new))

    return PluginParts(
        middleware=AnalyticsMiddleware(hub),
        service=AnalyticsService(hub),
        resources={b"analytics": AnalyticsResource(hub, env.admin)},
        stats=hub.realtime,
        reload=reload,
    )


#: The registry's entry (gamed.middleware.registry.BUILTIN): every key is applied live
#: (sizes and caps at once, intervals by restarting the loops; see docs/analytics.md).
plugin = PluginFactory(make=make_plugin, validate=validate)
