"""Counting and latency bookkeeping for the load generator, and the result shape.

Everything here is plain data and arithmetic (no clocks, no sockets) so it can be
unit tested without timing. Counters only ever go up; a measurement window is the
difference of two ``Counters.snapshot()`` calls, so warm-up traffic never leaks in.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: Keys every result dict has, whatever the scenario (``--json`` prints one of these).
RESULT_KEYS = (
    "scenario",
    "target",
    "params",
    "ok",
    "elapsed_s",
    "measured_s",
    "metrics",
    "errors",
    "error_codes",
    "connect_failures",
    "notes",
)

PERCENTILES = (50.0, 95.0, 99.0)


def percentile(sorted_values: list[float] | array, p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty).

    Nearest-rank always returns a value that was really observed, which is what a
    latency tail should report.
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if p <= 0:
        return float(sorted_values[0])
    rank = math.ceil(p / 100.0 * n)
    return float(sorted_values[min(n, max(1, rank)) - 1])


class LatencyRecorder:
    """Latency samples in milliseconds, bounded in memory by reservoir sampling.

    Below ``cap`` samples every value is kept (exact percentiles); above it each new
    sample replaces a random kept one with probability cap/seen, which keeps an
    unbiased sample of the whole run instead of only its start.
    """

    __slots__ = ("_rng", "_values", "cap", "max", "seen", "total")

    def __init__(self, cap: int = 500_000, seed: int = 1) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._values = array("d")
        self._rng = random.Random(seed)
        self.seen = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.seen += 1
        self.total += ms
        if ms > self.max:
            self.max = ms
        if len(self._values) < self.cap:
            self._values.append(ms)
        else:
            i = self._rng.randrange(self.seen)
            if i < self.cap:
                self._values[i] = ms

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def __len__(self) -> int:
        return self.seen

    def summary(self) -> dict[str, float | int | None]:
        """``count``, ``mean``, ``p50``, ``p95``, ``p99``, ``max`` (ms); None when empty."""
        if self.seen == 0:
            return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
        values = sorted(self._values)
        out: dict[str, float | int | None] = {
            "count": self.seen,
            "mean": round(self.total / self.seen, 3),
        }
        for p in PERCENTILES:
            out[f"p{p:g}"] = round(percentile(values, p), 3)
        out["max"] = round(self.max, 3)
        return out


class Counters:
    """Monotonic counters shared by every client of one run."""

    __slots__ = ("connect_failures", "deliveries", "disconnects", "error_codes", "errors", "sends")

    def __init__(self) -> None:
        self.sends = 0
        self.deliveries = 0
        self.errors = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.error_codes: Counter[str] = Counter()

    def error(self, code: Any) -> None:
        """An ``Error`` frame from the server (``code`` as sent, or a local reason)."""
        self.errors += 1
        self.error_codes[str(code)] += 1

    def snapshot(self) -> dict[str, Any]:
        """Every counter by name (the error codes copied), for ``window``."""
        out = {name: getattr(self, name) for name in self.__slots__}
        out["error_codes"] = dict(self.error_codes)
        return out


def window(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Counter increase between two snapshots (error codes per code, zeros dropped)."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if key == "error_codes":
            prev = before.get(key, {})
            out[key] = {c: n - prev.get(c, 0) for c, n in value.items() if n - prev.get(c, 0)}
        else:
            out[key] = value - before.get(key, 0)
    return out


def per_second(count: float, seconds: float) -> float:
    """A rate rounded for reading; 0 for an empty window rather than a ZeroDivisionError."""
    if seconds <= 0:
        return 0.0
    return round(count / seconds, 1)


def make_result(
    scenario: str,
    target: str,
    params: Mapping[str, Any],
    *,
    ok: bool,
    elapsed_s: float,
    measured_s: float,
    metrics: Mapping[str, Any],
    errors: int,
    error_codes: Mapping[str, int],
    connect_failures: int,
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """One run's outcome, in the shape ``--json`` prints and the suite stores.

    ``metrics`` holds the scenario's numbers (rates, latency percentiles, RSS) flat,
    so a script can compare runs key by key without knowing the scenario.
    """
    return {
        "scenario": scenario,
        "target": target,
        "params": dict(params),
        "ok": ok,
        "elapsed_s": round(elapsed_s, 3),
        "measured_s": round(measured_s, 3),
        "metrics": dict(metrics),
        "errors": errors,
        "error_codes": dict(error_codes),
        "connect_failures": connect_failures,
        "notes": list(notes),
    }


def latency_metrics(prefix: str, rec: LatencyRecorder) -> dict[str, Any]:
    """Flatten a recorder's summary as ``<prefix>_p50_ms`` etc."""
    s = rec.summary()
    return {
        f"{prefix}_count": s["count"],
        f"{prefix}_p50_ms": s["p50"],
        f"{prefix}_p95_ms": s["p95"],
        f"{prefix}_p99_ms": s["p99"],
        f"{prefix}_max_ms": s["max"],
    }


def human(value: Any) -> str:
    """Short fixed-width-friendly rendering: 123456.7 -> '123.5k', None -> '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value / 1000:.1f}k" if abs(value) >= 100_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100_000:
            return f"{value / 1000:.1f}k"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned first column, right-aligned others; cells rendered with ``human``."""
    cells = [header] + [
        [r[0]] + [human(v) if not isinstance(v, str) else v for v in r[1:]] for r in rows
    ]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = [str(row[0]).ljust(widths[0])] + [
            str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_result(result: Mapping[str, Any]) -> str:
    """A readable table of one run for stdout."""
    rows: list[list[Any]] = [[k, v] for k, v in result["metrics"].items()]
    rows.append(["errors", result["errors"]])
    rows.append(["connect_failures", result["connect_failures"]])
    if result["error_codes"]:
        codes = ", ".join(f"{c}x{n}" for c, n in sorted(result["error_codes"].items()))
        rows.append(["error_codes", codes])
    params = " ".join(f"{k}={v}" for k, v in result["params"].items())
    head = f"{result['scenario']} -> {result['target']}  ({params})"
    body = format_table(["metric", "value"], rows)
    tail = "".join(f"\nnote: {n}" for n in result["notes"])
    status = "" if result["ok"] else "\nstatus: FAILED"
    return f"{head}\n{body}{status}{tail}"
