"""Window arithmetic for the metrics plugin: latency samples, quantiles, rates.

Pure functions and small containers, no Twisted, no Prometheus: the hot path
only writes into these (plain ints, a preallocated ring); everything that
sorts or divides runs once per collection interval.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


def error_rate_percent(messages: int, errors: int) -> float:
    """Errors as a percentage of the messages handled in the same window.

    ``errors`` is a subset of ``messages`` (a refused message was still
    received). The reference divided the window's errors by (messages - a
    counter it had already reset, i.e. 0, + errors), so any error at all gave
    100 %; and its ``messages > 0`` guard looked at the lifetime total.
    """
    if messages <= 0:
        return 0.0
    return 100.0 * min(errors, messages) / messages


def per_second(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]) of an ascending sequence; 0 when empty."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q * n))
    return sorted_values[min(rank, n) - 1]


class LatencyRing:
    """The last ``size`` latency samples, in a list allocated once.

    ``record`` is an index store and two int adds. The exact mean of a window
    comes from a running sum and count; the quantiles from the samples still
    in the ring (all of them unless more than ``size`` arrived in the window).
    """

    __slots__ = ("_mark_count", "_mark_total", "count", "pos", "samples", "size", "total")

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.samples = [0.0] * size
        self.pos = 0
        self.count = 0
        self.total = 0.0
        self._mark_count = 0
        self._mark_total = 0.0

    def record(self, seconds: float) -> None:
        pos = self.pos
        self.samples[pos] = seconds
        pos += 1
        self.pos = 0 if pos == self.size else pos
        self.count += 1
        self.total += seconds

    def take_window(self) -> dict[str, float | int]:
        """Summarise the samples since the last call, and start a new window.

        Returns mean, p50, p95, p99 and max in milliseconds, and the counts.
        """
        n = self.count - self._mark_count
        total = self.total - self._mark_total
        self._mark_count, self._mark_total = self.count, self.total
        kept = min(n, self.size)
        if kept == 0:
            window: list[float] = []
        elif self.pos >= kept:
            window = self.samples[self.pos - kept : self.pos]
        else:
            window = self.samples[self.size - (kept - self.pos) :] + self.samples[: self.pos]
        window.sort()
        ms = 1000.0
        return {
            "mean": round(total / n * ms, 4) if n else 0.0,
            "p50": round(quantile(window, 0.50) * ms, 4),
            "p95": round(quantile(window, 0.95) * ms, 4),
            "p99": round(quantile(window, 0.99) * ms, 4),
            "max": round(window[-1] * ms, 4) if window else 0.0,
            "count": n,
            "samples": kept,
        }


class RoomActivity:
    """Messages per room over a sliding span (default one minute), by window.

    Each collection hands in the counts of the window that just closed; the
    running totals add it and subtract windows older than ``span`` seconds, so
    a rate query is a dict lookup and memory is bounded by the active rooms.
    """

    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self._windows: deque[tuple[float, float, dict[int, int]]] = deque()
        self.totals: dict[int, int] = {}

    def add_window(self, start: float, end: float, counts: dict[int, int]) -> None:
        self._windows.append((start, end, counts))
        totals = self.totals
        for room_id, n in counts.items():
            totals[room_id] = totals.get(room_id, 0) + n
        while self._windows and self._windows[0][1] <= end - self.span:
            _, _, old = self._windows.popleft()
            for room_id, n in old.items():
                left = totals[room_id] - n
                if left:
                    totals[room_id] = left
                else:
                    del totals[room_id]

    @property
    def covered_seconds(self) -> float:
        """How many seconds the kept windows cover (less than span while warming up)."""
        if not self._windows:
            return 0.0
        return self._windows[-1][1] - self._windows[0][0]

    def per_minute(self, room_id: int) -> float:
        covered = self.covered_seconds
        if covered <= 0:
            return 0.0
        return self.totals.get(room_id, 0) * 60.0 / covered

    def forget(self, live: set[int] | dict[int, object]) -> None:
        """Drop rooms that no longer exist from every kept window."""
        for _, _, counts in self._windows:
            for room_id in [r for r in counts if r not in live]:
                del counts[room_id]
        for room_id in [r for r in self.totals if r not in live]:
            del self.totals[room_id]
