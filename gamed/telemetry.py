"""The core's Prometheus instruments, on a registry of the server's own.

A private ``CollectorRegistry`` (with the standard process/platform/gc
collectors added) keeps tests and multiple servers in one process apart.
Every label set here is bounded: message types and error codes come from the
protocol's fixed lists, never from client data.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gamed import __version__
from gamed.messages import CLIENT_TAGS, ERROR_CODES

#: Seconds; from 10 µs (a heartbeat) to 1 s (something is badly wrong).
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

DISCONNECT_REASONS = (
    "closed",
    "idle",
    "replaced",
    "oversize",
    "slow",
    "shutdown",
    "refused",
    "kicked",
    "auth",
    "partial",
)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `_created` series double the exposition for no operational value.
        disable_created_metrics()
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self.connections = Gauge("gamed_connections", "Open client connections", registry=registry)
        self.rooms = Gauge("gamed_rooms", "Rooms with at least one member", registry=registry)
        self.sessions = Gauge(
            "gamed_sessions", "Connections that completed Connect", registry=registry
        )
        build = Gauge(
            "gamed_build_info", "Version of the running gamed", ["version"], registry=registry
        )
        build.labels(__version__).set(1)
        self.connections_refused = Counter(
            "gamed_connections_refused",
            "Connections refused at accept, by reason",
            ["reason"],
            registry=registry,
        )
        disconnects = Counter(
            "gamed_disconnects",
            "Connections closed, by reason",
            ["reason"],
            registry=registry,
        )
        self.middleware_failures = Counter(
            "gamed_middleware_failures",
            "Exceptions raised by a middleware (the message went on as if it had passed)",
            ["plugin", "phase"],
            registry=registry,
        )
        # The per-message instruments are plain ints and lists, bumped on the
        # reactor thread and exported by MessageCollector at scrape time: a
        # prometheus_client child takes a lock per inc/observe, which costs
        # several microseconds per chat on the hot path.
        tags = (*CLIENT_TAGS, "invalid")
        self.received: dict[str, int] = dict.fromkeys(tags, 0)
        self.processing: dict[str, FastHistogram] = {
            t: FastHistogram(LATENCY_BUCKETS) for t in tags
        }
        self.errors: dict[int, int] = dict.fromkeys(ERROR_CODES, 0)
        self.chat_deliveries = 0
        self.disconnects = {r: disconnects.labels(r) for r in DISCONNECT_REASONS}
        registry.register(MessageCollector(self))

    def error_sent(self, code: int) -> None:
        if code not in self.errors:  # a plugin's own code: bucket it rather than grow labels
            code = 500 if code >= 500 else 400
        self.errors[code] += 1

    def disconnected(self, reason: str) -> None:
        self.disconnects.get(reason, self.disconnects["closed"]).inc()


class FastHistogram:
    """A histogram for one thread (the reactor's): bisect into plain int buckets."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus's "le" bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((floatToGoString(bound), running))
        return out


class MessageCollector(Collector):
    """Exports ServerMetrics' plain-int instruments."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        received = CounterMetricFamily(
            "gamed_messages_received",
            "Client frames received, by message type (invalid: failed to decode)",
            labels=["type"],
        )
        for tag, n in m.received.items():
            received.add_metric([tag], n)
        yield received
        errors = CounterMetricFamily(
            "gamed_errors_sent", "Error frames sent to clients, by code", labels=["code"]
        )
        for code, n in m.errors.items():
            errors.add_metric([str(code)], n)
        yield errors
        yield CounterMetricFamily(
            "gamed_chat_deliveries",
            "Chat frames written to room members",
            value=m.chat_deliveries,
        )
        processing = HistogramMetricFamily(
            "gamed_message_processing_seconds",
            "Time to handle one client frame (decode, middleware, handler, fan-out)",
            labels=["type"],
        )
        for tag, h in m.processing.items():
            processing.add_metric([tag], h.cumulative(), sum_value=h.sum)
        yield processing

    def describe(self) -> list[Metric]:
        return []


class TrafficSource(Protocol):
    """What TrafficCollector reads from the router.

    Structural, so that telemetry (which the router imports) need not import the router.
    """

    @property
    def frames_refused(self) -> Mapping[str, int]: ...

    def bytes_totals(self) -> tuple[int, int]: ...


class TrafficCollector(Collector):
    """Bytes and refused frames, read from plain counters at scrape time.

    The hot path bumps ints (an attribute add per write); a locked Prometheus
    counter per delivery would cost more than the rest of the write. /metrics is
    rendered on the reactor thread, so the reads are consistent.
    """

    def __init__(self, router: TrafficSource) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        received, sent = self._router.bytes_totals()
        yield CounterMetricFamily(
            "gamed_received_bytes", "Bytes received from clients", value=received
        )
        yield CounterMetricFamily("gamed_sent_bytes", "Bytes written to clients", value=sent)
        refused = CounterMetricFamily(
            "gamed_frames_refused",
            "Client frames refused before handling, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(self._router.frames_refused.items()):
            refused.add_metric([reason], n)
        yield refused

    def describe(self) -> list[Metric]:
        return []


class RouterView(Protocol):
    """What TransportCollector reads from the router (structural, like TrafficSource)."""

    @property
    def connections(self) -> Collection[Any]: ...

    @property
    def metrics(self) -> ServerMetrics: ...


class MessageCounter(Protocol):
    """The WebSocket factory's count of messages handed to the router."""

    @property
    def messages(self) -> int: ...


class SendCounts(Protocol):
    """A listener's ``TurnWriter`` (gamed.turnwrite): its sends and buffered writes."""

    @property
    def sends(self) -> int: ...

    @property
    def fallbacks(self) -> int: ...


def _by_transport(
    family: GaugeMetricFamily | CounterMetricFamily, total: float, ws: float
) -> Metric:
    """``family`` with a ``tcp`` sample (``total`` less ``ws``) and a ``ws`` sample."""
    family.add_metric(["tcp"], total - ws)
    family.add_metric(["ws"], ws)
    return family


class TransportCollector(Collector):
    """Open connections and messages received, by transport (tcp, ws).

    Nothing is added to the TCP path: the WebSocket side counts its own
    messages and the TCP figure is the total minus that; open connections are
    counted by their ``transport_name`` at scrape time (one pass over the
    connections, well under a millisecond for 10,000).
    """

    def __init__(
        self,
        router: RouterView,
        ws: MessageCounter | None,
        writers: Mapping[str, SendCounts] | None = None,
    ) -> None:
        self._router = router
        self._ws = ws
        #: Each transport's TurnWriter, by label ("tcp", "ws"): plain ints read here.
        self._writers = dict(writers or {})

    def collect(self) -> Iterator[Metric]:
        router, ws = self._router, self._ws
        total = len(router.connections)
        ws_open = 0
        if ws is not None:
            ws_open = sum(
                1 for c in router.connections if getattr(c, "transport_name", "tcp") == "ws"
            )
        yield _by_transport(
            GaugeMetricFamily(
                "gamed_transport_connections",
                "Open client connections, by transport",
                labels=["transport"],
            ),
            total,
            ws_open,
        )
        received = sum(router.metrics.received.values())
        ws_messages = ws.messages if ws is not None else 0
        yield _by_transport(
            CounterMetricFamily(
                "gamed_transport_messages_received",
                "Client messages received (frames on TCP, text messages on WebSocket), by transport",
                labels=["transport"],
            ),
            received,
            ws_messages,
        )
        if self._writers:
            sends = CounterMetricFamily(
                "gamed_transport_sends",
                "Sends straight on client sockets, one per connection per reactor turn "
                "with output, by transport",
                labels=["transport"],
            )
            buffered = CounterMetricFamily(
                "gamed_transport_buffered_writes",
                "Output handed to Twisted's transport buffer instead (the socket was full "
                "or still held unsent bytes: a client reading slower than it is sent to)",
                labels=["transport"],
            )
            for name, w in sorted(self._writers.items()):
                sends.add_metric([name], w.sends)
                buffered.add_metric([name], w.fallbacks)
            yield sends
            yield buffered

    def describe(self) -> list[Metric]:
        return []
