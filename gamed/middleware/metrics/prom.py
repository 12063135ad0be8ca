"""The metrics plugin's Prometheus side: per-middleware cost, top-K rooms.

Both collectors render plain Python state, read on the reactor thread (the
core renders /metrics there): the per-middleware timer appends its timings to a
list on the hot path and counts them into buckets when they are read, and the room
series are a snapshot the collection LoopingCall computes. Only the current top-K
rooms (plus ``other``) are yielded, so rooms that leave the top-K leave /metrics with them and the
series count stays bounded whatever the number of rooms.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from zope.interface import implementer

from gamed.interfaces import IPipelineObserver

#: Seconds. A plugin call is typically 0.3-3 µs; a millisecond is a bug.
MIDDLEWARE_BUCKETS: tuple[float, ...] = (
    0.000001,
    0.0000025,
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.001,
    0.01,
    0.1,
)

PHASES = ("before", "after")


class _Timing:
    """One (plugin, phase) histogram as plain numbers; the last slot is +Inf."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(MIDDLEWARE_BUCKETS) + 1)
        self.total = 0.0


#: Raw timings kept before they are folded into the histograms (bounds the buffer).
FOLD_AT = 4096


@implementer(IPipelineObserver)
class PipelineTimer(Collector):
    """Told the cost of every sampled plugin call by the pipeline; exports it.

    ``middleware_timed`` only appends the (name, phase, seconds) it is told to a
    list: the bucket search and the two dict lookups run when the numbers are read
    (``collect``, ``mean_microseconds``) or the list holds FOLD_AT timings, in
    arrival order, so the counts and sums are the ones a fold per call gives.
    """

    def __init__(self) -> None:
        self._timings: dict[str, dict[str, _Timing]] = {p: {} for p in PHASES}
        self._raw: list[tuple[str, str, float]] = []
        self.vetoes: dict[str, int] = {}

    def middleware_timed(self, name: str, phase: str, seconds: float) -> None:
        raw = self._raw
        raw.append((name, phase, seconds))
        if len(raw) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the raw timings into the per-(plugin, phase) histograms."""
        raw, self._raw = self._raw, []
        timings = self._timings
        for name, phase, seconds in raw:
            by_name = timings.get(phase)
            if by_name is None:
                by_name = timings[phase] = {}
            t = by_name.get(name)
            if t is None:
                t = by_name[name] = _Timing()
            t.counts[bisect_left(MIDDLEWARE_BUCKETS, seconds)] += 1
            t.total += seconds

    def middleware_vetoed(self, name: str) -> None:
        self.vetoes[name] = self.vetoes.get(name, 0) + 1

    def mean_microseconds(self) -> dict[str, dict[str, float]]:
        """Lifetime mean cost per plugin and phase, for /stats."""
        self.fold()
        out: dict[str, dict[str, float]] = {}
        for phase, by_name in self._timings.items():
            for name, t in by_name.items():
                n = sum(t.counts)
                if n:
                    out.setdefault(name, {})[phase] = round(t.total / n * 1e6, 3)
        return out

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "gamed_middleware_duration_seconds",
            "Time spent in one middleware call, by plugin and phase (before/after)",
            labels=["plugin", "phase"],
        )
        self.fold()
        for phase, by_name in sorted(self._timings.items()):
            for name, t in sorted(by_name.items()):
                cumulative, buckets = 0, []
                for bound, n in zip((*MIDDLEWARE_BUCKETS, float("inf")), t.counts, strict=True):
                    cumulative += n
                    buckets.append((_le(bound), cumulative))
                hist.add_metric([name, phase], buckets, t.total)
        yield hist
        vetoes = CounterMetricFamily(
            "gamed_middleware_vetoes",
            "Messages refused by a middleware's before_process, by plugin and phase",
            labels=["plugin", "phase"],
        )
        for name, n in sorted(self.vetoes.items()):
            vetoes.add_metric([name, "before"], n)
        yield vetoes

    def describe(self) -> list[Metric]:
        return []


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class RoomSeries(Collector):
    """Per-room gauges for the top-K busiest rooms and an ``other`` bucket.

    ``rows`` is replaced wholesale by the collection LoopingCall: a list of
    (room label, members, messages per second). Scrapes only read it.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float]] = []

    def collect(self) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "gamed_room_members",
            "Members of the busiest rooms (top-K by messages in the last minute); "
            'room="other" sums every other room',
            labels=["room"],
        )
        rate = GaugeMetricFamily(
            "gamed_room_messages_per_second",
            "Messages handled per room over the last minute (top-K rooms and other)",
            labels=["room"],
        )
        for label, n, per_second in self.rows:
            members.add_metric([label], n)
            rate.add_metric([label], per_second)
        yield members
        yield rate

    def describe(self) -> list[Metric]:
        return []
