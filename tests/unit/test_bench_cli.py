"""The gamed-bench command line and the suite's pure helpers (no processes started)."""

from __future__ import annotations

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


def test_gamed_variants_follow_the_supported_options(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(suite, "_has_uvloop", lambda: True)
    support = suite.GamedSupport(
        True,
        {"port", "metrics-port", "data-dir", "middleware", "rate-limit"},
        ["security", "metrics"],
    )
    targets = suite.gamed_targets(Path("/x/twistd"), support, tmp_path, quick=False)
    names = [t.name for t in targets]
    assert names == [
        "gamed",
        "gamed-none",
        "gamed-no-security",
        "gamed-no-metrics",
        "gamed-uvloop",
    ]
    assert targets[-1].argv[:6] == ["/x/twistd", "--reactor", "uvloop", "-n", "--pidfile=", "gamed"]
    argv = targets[2].argv
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
        "games 200",
        "churn 20 workers",
    ]
    for s in suite.suite_scenarios(quick=True):
        assert s.cfg.warmup + s.cfg.duration <= 15
