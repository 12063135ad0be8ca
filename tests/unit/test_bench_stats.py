"""Latency bookkeeping, counters and the result shape of the load generator (no timing)."""

from __future__ import annotations

import math

import orjson
import pytest

from gamed.bench import stats


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 50) == 50.0
    assert stats.percentile(values, 95) == 95.0
    assert stats.percentile(values, 99) == 99.0
    assert stats.percentile(values, 100) == 100.0
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([1.0, 2.0], 50) == 1.0
    assert math.isnan(stats.percentile([], 50))


def test_recorder_summary_exact_below_cap() -> None:
    rec = stats.LatencyRecorder(cap=1000)
    rec.extend([5.0, 1.0, 3.0, 2.0, 4.0])
    s = rec.summary()
    assert s == {"count": 5, "mean": 3.0, "p50": 3.0, "p95": 5.0, "p99": 5.0, "max": 5.0}
    assert len(rec) == 5


def test_empty_recorder_reports_none() -> None:
    s = stats.LatencyRecorder().summary()
    assert s["count"] == 0
    assert all(s[k] is None for k in ("mean", "p50", "p95", "p99", "max"))


def test_reservoir_bounds_memory_but_keeps_count_max_and_mean() -> None:
    rec = stats.LatencyRecorder(cap=100, seed=3)
    rec.extend(float(i) for i in range(10_000))
    s = rec.summary()
    assert s["count"] == 10_000
    assert s["max"] == 9999.0
    assert s["mean"] == pytest.approx(4999.5)
    assert len(rec._values) == 100
    # an unbiased sample of 0..9999: the median lands well inside, not at the start
    assert 2000 < s["p50"] < 8000


def test_recorder_rejects_zero_cap() -> None:
    with pytest.raises(ValueError):
        stats.LatencyRecorder(cap=0)


def test_counters_window_excludes_warmup() -> None:
    c = stats.Counters()
    c.sends, c.deliveries = 10, 200
    c.error(429)
    before = c.snapshot()
    c.sends += 5
    c.deliveries += 100
    c.error(429)
    c.error(404)
    c.error("bad_frame")
    w = stats.window(before, c.snapshot())
    assert w["sends"] == 5
    assert w["deliveries"] == 100
    assert w["errors"] == 3
    assert w["error_codes"] == {"429": 1, "404": 1, "bad_frame": 1}
    assert stats.window(c.snapshot(), c.snapshot())["error_codes"] == {}


def test_per_second() -> None:
    assert stats.per_second(100, 4.0) == 25.0
    assert stats.per_second(100, 0.0) == 0.0


def test_result_shape_is_stable_and_json_serialisable() -> None:
    rec = stats.LatencyRecorder()
    rec.extend([1.0, 2.0])
    metrics = {"deliveries_per_s": 10.0, **stats.latency_metrics("echo", rec)}
    res = stats.make_result(
        "fanout",
        "127.0.0.1:7000",
        {"rooms": 2},
        ok=True,
        elapsed_s=1.23456,
        measured_s=1.0,
        metrics=metrics,
        errors=0,
        error_codes={},
        connect_failures=0,
        notes=["x"],
    )
    assert tuple(res) == stats.RESULT_KEYS
    assert res["elapsed_s"] == 1.235
    assert set(res["metrics"]) == {
        "deliveries_per_s",
        "echo_count",
        "echo_p50_ms",
        "echo_p95_ms",
        "echo_p99_ms",
        "echo_max_ms",
    }
    line = orjson.dumps(res)
    assert b"\n" not in line
    assert orjson.loads(line) == res


def test_format_result_is_a_readable_table() -> None:
    res = stats.make_result(
        "idle",
        "127.0.0.1:7000",
        {"connections": 3},
        ok=False,
        elapsed_s=1,
        measured_s=1,
        metrics={"rss_per_conn_kib": 2.5, "connections": 3},
        errors=1,
        error_codes={"503": 1},
        connect_failures=2,
        notes=["connect/join failed: timed out"],
    )
    text = stats.format_result(res)
    assert "rss_per_conn_kib" in text
    assert "503x1" in text
    assert "FAILED" in text
    assert "note: connect/join failed" in text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (True, "yes"),
        (12, "12"),
        (250_000, "250.0k"),
        (484_779.0, "484.8k"),
        (1234.5, "1234"),
        (12.345, "12.3"),
        (1.234, "1.23"),
        (math.nan, "-"),
        ("x", "x"),
    ],
)
def test_human(value: object, text: str) -> None:
    assert stats.human(value) == text


def test_format_table_aligns_columns() -> None:
    out = stats.format_table(["a", "b"], [["row one", 1.5], ["r2", "text"]]).splitlines()
    assert out[0].startswith("a")
    assert len({len(line) for line in out[:2]}) == 1  # header and rule line up
    assert out[2].endswith("1.50")
