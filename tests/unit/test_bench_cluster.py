"""The cluster benchmark's pure parts (gamed/bench/cluster.py): ratios, verdicts, the
table and projection, /healthz readiness; no process started."""

from __future__ import annotations

from typing import Any

import pytest

from gamed.bench import cluster


def result(**metrics: Any) -> dict[str, Any]:
    return {"metrics": metrics, "errors": 0, "connect_failures": 0, "ok": True}


def test_paired_ratios_are_taken_round_by_round() -> None:
    runs = {
        "a": [result(x=90.0), result(x=200.0), result(x=None)],
        "b": [result(x=100.0), result(x=100.0), result(x=5.0)],
    }
    median, spread = cluster.paired(runs, "a", "b", "x")
    assert median == pytest.approx(1.45)  # (0.9 + 2.0) / 2: the round without a value is left out
    assert spread == (0.9, 2.0)
    assert cluster.paired(runs, "a", "missing", "x") == (None, None)


def test_verdicts() -> None:
    assert cluster.verdict(0.95, 0.9) == "met"
    assert cluster.verdict(0.85, 0.9) == "MISSED by 0.05x"
    assert cluster.verdict(1.2, None) == "report"
    assert cluster.verdict(None, 0.9) == "n/a"
    assert cluster.cell(0.5, (0.25, 0.75)) == "0.50x [0.25x..0.75x]"
    assert cluster.cell(None, None) == "n/a"


def test_readiness_of_a_node_and_of_a_workers_parent() -> None:
    assert cluster.cluster_up({"status": "serving", "cluster": "up"})
    assert not cluster.cluster_up({"status": "serving", "cluster": "degraded"})
    assert not cluster.cluster_up({"status": "draining"})
    both = {"1": {"cluster": "up"}, "2": {"cluster": "up"}}
    assert cluster.cluster_up({"status": "serving", "workers": both})
    one_down = {"1": {"cluster": "up"}, "2": {"status": "no answer"}}
    assert not cluster.cluster_up({"status": "degraded", "workers": one_down})
    assert not cluster.cluster_up({"status": "down", "workers": {}})


def test_summary_goals_and_projection() -> None:
    def t(name: str) -> cluster.Target:
        return cluster.Target(name, [], [])

    targets = [t("solo"), t("redis-1"), t("split-2"), t("workers-2")]
    solo = result(deliveries_per_s=400e3, deliveries_per_cpu_s_whole=500e3, cpu_us_per_delivery=2)
    runs = {
        "solo": [solo, solo, solo],
        "redis-1": [result(deliveries_per_s=380e3, cpu_us_per_delivery=2)] * 3,
        "split-2": [
            result(
                deliveries_per_s=300e3,
                deliveries_per_cpu_s_whole=200e3,
                redis_cpu_us_per_publish_whole=1.0,
                sends_per_gamed_cpu_s_whole=20e3,
            )
        ]
        * 3,
        "workers-2": [],
    }
    s = cluster.summarize(targets, runs)
    goals = {row[0]: row for row in s["goals"]}
    a = goals["(a) --redis, every room on one node, vs no Redis: deliveries/s"]
    assert a[2].startswith("0.95x") and a[3] == "met"
    b = goals["(b) rooms split over 2 nodes: deliveries per CPU-s (gamed+redis) vs solo"]
    assert b[2].startswith("0.40x") and b[3] == "MISSED by 0.10x"
    assert goals["(c) --workers 2 vs 1: deliveries/s"][2:] == ["n/a", "n/a"]
    # 1 us of Redis CPU per PUBLISH at 80% of a core; 20k chats per node-core, one PUBLISH each
    assert s["projection"]["publishes_per_s_per_redis"] == 800_000
    assert s["projection"]["nodes_per_redis"] == 40.0
    assert "workers-2" not in s["table"].splitlines()[0]  # no runs, no column
    assert "800,000 messages/s per Redis" in cluster.describe_projection(s["projection"])


def test_the_command_line_rejects_a_bad_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cluster.main(["--repeat", "0"])
    assert e.value.code == 2
    assert "--repeat must be >= 1" in capsys.readouterr().err
