"""The core's Prometheus instruments, on a registry of the server's own.

A private ``CollectorRegistry`` (with the standard process/platform/gc
collectors added) keeps tests and multiple servers in one process apart.
Every label set here is bounded: message types and error codes come from the
protocol's fixed lists, never from client data.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

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
        received = Counter(
            "gamed_messages_received",
            "Client frames received, by message type (invalid: failed to decode)",
            ["type"],
            registry=registry,
        )
        errors = Counter(
            "gamed_errors_sent",
            "Error frames sent to clients, by code",
            ["code"],
            registry=registry,
        )
        processing = Histogram(
            "gamed_message_processing_seconds",
            "Time to handle one client frame (decode, middleware, handler, fan-out)",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
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
        self.chat_deliveries = Counter(
            "gamed_chat_deliveries", "Chat frames written to room members", registry=registry
        )
        # Pre-resolved children: the hot path does a dict lookup, not .labels().
        tags = (*CLIENT_TAGS, "invalid")
        self.received = {t: received.labels(t) for t in tags}
        self.processing = {t: processing.labels(t) for t in tags}
        self.errors = {c: errors.labels(str(c)) for c in ERROR_CODES}
        self.disconnects = {r: disconnects.labels(r) for r in DISCONNECT_REASONS}

    def error_sent(self, code: int) -> None:
        child = self.errors.get(code)
        if child is None:  # a plugin's own code: bucket it rather than grow labels
            child = self.errors[500 if code >= 500 else 400]
        child.inc()

    def disconnected(self, reason: str) -> None:
        self.disconnects.get(reason, self.disconnects["closed"]).inc()


class TrafficCollector(Collector):
    """Bytes and refused frames, read from plain counters at scrape time.

    The hot path bumps ints (an attribute add per write); a locked Prometheus
    counter per delivery would cost more than the rest of the write. /metrics is
    rendered on the reactor thread, so the reads are consistent.
    """

    def __init__(self, router: object) -> None:
        self._router = router

    def collect(self):  # type: ignore[override]
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

    def describe(self):  # type: ignore[override]
        return []
