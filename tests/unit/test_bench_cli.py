"""The gamed-bench command line and the suite's pure helpers (no processes started)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from gamed.bench import suite
from gamed.bench.__main__ import build_parser, config_from_args, validate
from gamed.bench.scenarios import BenchConfig


def parse(*argv: str) -> BenchConfig:
    return config_from_args(build_parser().parse_args(argv), progress=False)


def test_fanout_flags_map_onto_the_config() -> None:
    cfg = parse(
        "fanout", "--rooms", "3", "--members", "4", "--window", "5", "--port", "7100",
        "--user-id-base", "500", "--warmup", "0", "--duration", "2", "--no-uvloop",
    )  # fmt: skip
    assert (cfg.scenario, cfg.rooms, cfg.members, cfg.window) == ("fanout", 3, 4, 5)
    assert (cfg.host, cfg.port, cfg.user_id_base) == ("127.0.0.1", 7100, 500)
    assert cfg.use_uvloop is False
    assert cfg.hard_timeout() == 0 + 2 + cfg.connect_timeout + 10
    assert validate(cfg) is None


def test_other_scenarios_parse() -> None:
    assert parse("idle", "--connections", "9", "--server-pid", "1").server_pid == 1
    assert parse("games", "--games", "3").games == 3
    assert parse("churn", "--workers", "2").workers == 2
    assert parse("fanout", "--rate", "5").rate == 5.0


def test_bad_values_are_rejected() -> None:
    assert validate(parse("fanout", "--rooms", "0")) is not None
    assert validate(parse("fanout", "--window", "0")) is not None
    assert validate(parse("fanout", "--window", "0", "--rate", "2")) is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fanout", "--duration", "-1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nosuch"])


HELP = """Options:
  -m, --middleware=          Comma list of middleware plugins to run, in order;
                             'none' for none [default: all available: {avail}]
      --max-connections=     Open connections [default: 10000]
"""


@pytest.mark.parametrize(
    ("avail", "names"),
    [
        ("none installed", []),
        ("security, metrics,", ["security", "metrics"]),
        ("security, metrics, analytics", ["security", "metrics", "analytics"]),
    ],
)
def test_middleware_names_from_help(avail: str, names: list[str]) -> None:
    assert suite.parse_middleware_help(HELP.format(avail=avail)) == names


def test_gamed_variants_follow_the_supported_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "_has_uvloop", lambda: True)
    support = suite.GamedSupport(
        True,
        {"port", "metrics-port", "ws-port", "data-dir", "middleware", "rate-limit"},
        ["security", "metrics"],
    )
    targets = suite.gamed_targets(Path("/x/twistd"), support, tmp_path, quick=False)
    names = [t.name for t in targets]
    assert names == [
        "gamed",
        "gamed-ws",
        "gamed-none",
        "gamed-no-security",
        "gamed-no-metrics",
        "gamed-uvloop",
    ]
    assert targets[-1].argv[:6] == ["/x/twistd", "--reactor", "uvloop", "-n", "--pidfile=", "gamed"]
    tcp, ws = targets[0], targets[1]
    assert tcp.transport == "tcp" and tcp.argv[tcp.argv.index("--ws-port") + 1] == "none"
    assert ws.transport == "ws"
    assert ws.argv[ws.argv.index("--ws-port") + 1] == "tcp:{port}:interface=127.0.0.1"
    assert ws.argv[ws.argv.index("--port") + 1] == "tcp:0:interface=127.0.0.1"
    argv = targets[3].argv
    assert argv[:4] == ["/x/twistd", "-n", "--pidfile=", "gamed"]
    assert "tcp:{port}:interface=127.0.0.1" in argv
    assert argv[argv.index("--middleware") + 1] == "metrics"
    assert argv[argv.index("--rate-limit") + 1] == "0"
    assert "--flood-detection" not in argv  # not in the help text: never passed
    monkeypatch.setattr(suite, "_has_uvloop", lambda: False)
    bare = suite.gamed_targets(
        Path("/x/twistd"), suite.GamedSupport(True, {"port"}), tmp_path, False
    )
    assert [t.name for t in bare] == ["gamed"]
    assert "--data-dir" not in bare[0].argv


def test_medians_and_table() -> None:
    runs = [
        {"metrics": {"deliveries_per_s": v, "echo_p99_ms": None}, "errors": e}
        for v, e in ((100.0, 0), (300.0, 1), (200.0, 0))
    ]
    med = suite.median_metrics(runs)
    assert med == {"deliveries_per_s": 200.0, "echo_p99_ms": None, "errors": 1}
    sc = suite.Scenario(
        "fanout x",
        BenchConfig(),
        (("deliveries_per_s", "deliveries/s", True), ("errors", "errors", False)),
    )
    targets = [
        suite.Target(suite.BASELINE, []),
        suite.Target("gamed", []),
        suite.Target("down", []),
    ]
    medians = {
        suite.BASELINE: {"fanout x": {"deliveries_per_s": 400.0, "errors": 0}},
        "gamed": {"fanout x": {"deliveries_per_s": 200.0, "errors": 2}},
    }
    table = suite.render([sc], targets, medians)
    assert "200 (0.50x)" in table
    assert "n/a" in table
    assert table.splitlines()[0].split() == [
        "scenario",
        "|",
        "metric",
        suite.BASELINE,
        "gamed",
        "down",
    ]


def test_suite_scenarios_cover_the_issue_list() -> None:
    keys = [s.key for s in suite.suite_scenarios(quick=False)]
    assert keys == [
        "idle 5000",
        "fanout 50x20 w2",
        "fanout 500x2 w2",
        "open 1000x5/s f20",
        "games 1000",
        "churn 20 workers",
        "users 50k",
    ]
    for s in suite.suite_scenarios(quick=True):
        if s.cfg.scenario == "users":  # counted, not timed
            assert s.cfg.users <= 5000 and s.cfg.settle <= 6
        else:
            assert s.cfg.warmup + s.cfg.duration <= 15
    assert suite.suite_scenarios(quick=True, users=100_000)[-1].key == "users 100k"


def test_every_run_slot_gets_fresh_user_ids() -> None:
    scenarios = suite.suite_scenarios(quick=False)
    bases = suite.id_bases(scenarios, repeat=3)
    spans = [
        (base, base + scenarios[i % len(scenarios)].cfg.id_span())
        for i, (base, _) in enumerate(bases)
    ]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    assert spans[-1][1] <= 0xFFFFFFFF
    rooms = [room for _, room in bases]
    assert len(set(rooms)) == len(rooms)
    assert all(s.cfg.rooms < 2000 and s.cfg.games < 2000 for s in scenarios)


def test_users_scenario_is_bounded_by_its_size() -> None:
    cfg = parse("users", "--users", "1000", "--settle", "0.5", "--server-pid", "7")
    assert (cfg.scenario, cfg.users, cfg.settle, cfg.server_pid) == ("users", 1000, 0.5, 7)
    assert cfg.id_span() == 1200
    assert cfg.hard_timeout() < parse("users", "--users", "100000").hard_timeout()
    assert validate(parse("users", "--users", "0")) is not None


def test_results_go_to_the_working_directory_by_default() -> None:
    assert not Path(suite.DEFAULT_OUT).is_absolute()
    source = Path(suite.__file__).read_text()
    assert "parents[" not in source and "__file__" not in source
    assert build_parser().parse_args(["churn", "--out", "x.json"]).out == "x.json"


def run_result(metrics: dict[str, float]) -> dict[str, object]:
    return {"metrics": metrics, "errors": 0}


def test_plugin_costs_pair_runs_of_one_repeat() -> None:
    sc = suite.Scenario(
        "fanout x",
        BenchConfig(),
        (),
        costs=(
            ("deliveries_per_s", "deliveries/s lost %", "lower"),
            ("cpu", "CPU added %", "higher"),
            ("rss", "RSS added MiB", "diff"),
        ),
    )
    runs = {
        "gamed": {"fanout x": [run_result({"deliveries_per_s": 90.0, "cpu": 2.2, "rss": 3.0})]},
        "gamed-none": {
            "fanout x": [run_result({"deliveries_per_s": 100.0, "cpu": 2.0, "rss": 1.0})]
        },
        "gamed-no-metrics": {
            "fanout x": [run_result({"deliveries_per_s": 95.0, "cpu": 2.2, "rss": 3.5})]
        },
    }
    costs = suite.plugin_costs([sc], runs)
    assert costs == {
        "fanout x | deliveries/s lost %": {"all": 10.0, "metrics": 5.3},
        "fanout x | CPU added %": {"all": 10.0, "metrics": 0.0},
        "fanout x | RSS added MiB": {"all": 2.0, "metrics": -0.5},
    }
    table = suite.render_costs(costs)
    assert table.splitlines()[0].split()[-2:] == ["metrics", "all"]
    assert "+10.0" in table and "-0.5" in table


def test_websocket_summary_is_a_ratio_to_the_same_runs_tcp() -> None:
    medians = {
        "gamed": {
            "fanout 50x20 w2": {"deliveries_per_s": 100_000.0},
            "idle 5000": {"rss_per_conn_kib": 10.0},
        },
        "gamed-ws": {
            "fanout 50x20 w2": {"deliveries_per_s": 80_000.0},
            "idle 5000": {"rss_per_conn_kib": 25.0},
        },
    }
    summary = suite.websocket_summary(medians)
    assert summary["fanout_ratio"] == 0.8
    assert summary["idle_memory_ratio"] == 2.5
    text = suite.describe_websocket(summary)
    assert "0.80x (target >= 0.6x: met)" in text
    assert "2.50x (target <= 2.0x: MISSED)" in text
    assert suite.websocket_summary({"gamed": {}}) == {}
    fresh = {  # the first idle run is on a fresh process: that one counts
        name: {"idle 5000": [{"metrics": {"rss_per_conn_kib": kib}}, {"metrics": {}}]}
        for name, kib in (("gamed", 5.0), ("gamed-ws", 7.5))
    }
    assert suite.websocket_summary(medians, fresh)["idle_memory_ratio"] == 1.5


def test_issue_targets_get_a_verdict_with_their_spread() -> None:
    runs = {
        suite.BASELINE: {"fanout 50x20 w2": [{"metrics": {"deliveries_per_s": 400.0}}] * 3},
        "gamed": {
            "fanout 50x20 w2": [
                {"metrics": {"deliveries_per_s": v}} for v in (330.0, 350.0, 360.0)
            ],
            "idle 5000": [{"metrics": {"rss_per_conn_kib": 3.6}}],
        },
    }
    medians = {
        name: {k: {"deliveries_per_s": None, **suite.median_metrics([{**r, "errors": 0} for r in v])}
               for k, v in per.items()}
        for name, per in runs.items()
    }  # fmt: skip
    spreads = {n: {k: suite.spread_metrics(v) for k, v in per.items()} for n, per in runs.items()}
    rows = suite.goal_rows(suite.GOALS, medians, spreads)
    by_label = {r[0]: r for r in rows}
    fan = by_label["fan-out 50x20 W=2, all plugins, vs orjson floor"]
    assert fan[2].startswith("0.88x (350 [330..360] vs 400")
    assert fan[3] == "met"
    idle = by_label["idle, KiB per joined connection, all plugins"]
    assert idle[3] == "MISSED by 0.10"
    assert "fan-out 500x2 W=2, all plugins, vs orjson floor" not in by_label  # did not run


def test_ratios_to_the_turn_writing_floor_are_reported_not_judged() -> None:
    runs = {
        suite.BASELINE: {"fanout 50x20 w2": [{"metrics": {"deliveries_per_s": 400.0}}]},
        suite.FLOOR_TURN: {"fanout 50x20 w2": [{"metrics": {"deliveries_per_s": 500.0}}]},
        "gamed": {"fanout 50x20 w2": [{"metrics": {"deliveries_per_s": 450.0}}]},
    }
    medians = {
        name: {k: suite.median_metrics([{**r, "errors": 0} for r in v]) for k, v in per.items()}
        for name, per in runs.items()
    }
    spreads = {n: {k: suite.spread_metrics(v) for k, v in per.items()} for n, per in runs.items()}
    by_label = {r[0]: r for r in suite.goal_rows(suite.GOALS, medians, spreads)}
    turn = by_label["fan-out 50x20 W=2, all plugins, vs floor-turn"]
    assert turn[1] == "(report)" and turn[3] == "report" and turn[2].startswith("0.90x")
    assert by_label["fan-out 50x20 W=2, all plugins, vs orjson floor"][3] == "met"  # 1.12x
    # Without floor-turn in the run, its rows are left out rather than shown as n/a.
    del medians[suite.FLOOR_TURN]
    labels = {r[0] for r in suite.goal_rows(suite.GOALS, medians, spreads)}
    assert "fan-out 50x20 W=2, all plugins, vs floor-turn" not in labels


def test_floor_turn_runs_only_where_the_write_path_shows() -> None:
    by_key = {sc.key: sc for sc in suite.suite_scenarios(False, 5000)}
    assert by_key["fanout 500x2 w2"].runs(suite.FLOOR_TURN)
    assert by_key["open 1000x5/s f20"].runs(suite.FLOOR_TURN)
    assert not next(sc for k, sc in by_key.items() if k.startswith("idle")).runs(suite.FLOOR_TURN)
    assert next(sc for k, sc in by_key.items() if k.startswith("idle")).runs("gamed")
