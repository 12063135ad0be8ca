"""``make bench``: every scenario against the floor servers and gamed variants, in one run.

Starts, on free 127.0.0.1 ports: the framework floor (``python -m gamed.bench.floor``)
with stdlib json and with orjson, gamed with its default middleware, gamed with each
middleware plugin switched off in turn, and gamed with ``--middleware none`` (the gamed
variants only for what ``twistd gamed --help`` says exists). Then, scenario by scenario,
it loads each target in turn (interleaved, so drift on a shared machine hits every column
alike), prints one table (rows: scenario/metric, columns: targets, with the ratio to the
orjson floor), what each plugin costs (gamed against gamed without it), and writes the
results to ``--out`` (default ``bench-results.json`` in the working directory). Every
child is killed at the end, whatever happens.

    python -m gamed.bench.suite            # ~5 minutes
    python -m gamed.bench.suite --quick    # ~1 minute smoke run
    python -m gamed.bench.suite --repeat 3 # medians of 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.util
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import orjson

from gamed.bench.scenarios import BenchConfig, raise_nofile_limit, run, run_users
from gamed.bench.stats import format_table, human

#: Started by module name, so the suite works the same from a checkout and from a wheel.
FLOOR_MODULE = "gamed.bench.floor"
#: Relative: resolved against the working directory, never against the package.
DEFAULT_OUT = "bench-results.json"
BASELINE = "floor-orjson"
#: The orjson floor writing as gamed does (``--turn-write``: gamed.turnwrite).
FLOOR_TURN = "floor-turn"
START_TIMEOUT = 30.0
STOP_GRACE = 5.0


# -- what to run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One suite row group: a named BenchConfig and the metrics shown for it."""

    key: str
    cfg: BenchConfig
    #: (metric key in result["metrics"] or "errors", row label, show ratio to floor)
    rows: tuple[tuple[str, str, bool], ...]
    #: Targets this scenario skips (where it would only repeat another column).
    skip: frozenset[str] = frozenset()

    def runs(self, target: str) -> bool:
        """Whether ``target`` runs in this scenario: ``floor-turn`` only in the
        fan-out and open-loop ones, where the write path is what it shows."""
        if target == FLOOR_TURN and not self.key.startswith(("fanout", "open")):
            return False
        return target not in self.skip

    #: (metric, label, kind) compared between gamed and gamed without a plugin; kind is
    #: "lower" (cost = % less than without), "higher" (% more) or "diff" (absolute);
    #: the label names the unit.
    costs: tuple[tuple[str, str, str], ...] = ()
    #: Run on a freshly started server in every repeat (RSS per connection: a server
    #: that held connections before reuses the memory they freed).
    fresh: bool = False


def suite_scenarios(quick: bool, users: int | None = None) -> list[Scenario]:
    """The issue's scenario list; ``quick`` shrinks sizes and times for a smoke run.

    ``users`` overrides the size of the distinct-user memory scenario (100000 is what
    the analytics plugin was first measured with; the default keeps ``make bench`` short).
    """
    warm, dur = (0.5, 1.5) if quick else (1.0, 4.0)
    idle_n = 1000 if quick else 5000
    n_games = 100 if quick else 1000
    n_users = users if users is not None else (5000 if quick else 50_000)
    lat = (
        ("echo_p50_ms", "echo p50 ms", True),
        ("echo_p99_ms", "echo p99 ms", True),
        ("loadgen_cpu_cores", "load generator CPU (cores)", False),
    )
    err = (("errors", "errors", False),)
    return [
        Scenario(
            f"idle {idle_n}",
            BenchConfig(
                scenario="idle",
                connections=idle_n,
                rooms=idle_n // 10,
                warmup=0.0,
                duration=0.5 if quick else 1.0,
            ),
            (
                ("rss_per_conn_kib", "RSS KiB/conn", True),
                ("connects_per_s", "connects/s", True),
                *err,
            ),
            fresh=True,
        ),
        Scenario(
            "fanout 50x20 w2",
            BenchConfig(
                scenario="fanout", rooms=50, members=20, window=2, warmup=warm, duration=dur
            ),
            (
                ("deliveries_per_s", "deliveries/s", True),
                ("sends_per_s", "sends/s", True),
                ("server_cpu_us_per_delivery", "server CPU us/delivery", True),
                *lat,
                *err,
            ),
            costs=(
                ("deliveries_per_s", "deliveries/s lost %", "lower"),
                ("server_cpu_us_per_delivery", "server CPU/delivery added %", "higher"),
            ),
        ),
        Scenario(
            "fanout 500x2 w2",
            BenchConfig(
                scenario="fanout", rooms=500, members=2, window=2, warmup=warm, duration=dur
            ),
            (("deliveries_per_s", "deliveries/s", True), *lat, *err),
        ),
        Scenario(
            "open 1000x5/s f20",
            BenchConfig(
                scenario="fanout", rooms=50, members=20, rate=5.0, warmup=warm, duration=dur
            ),
            (("deliveries_per_s", "deliveries/s", True), *lat, *err),
        ),
        Scenario(
            f"games {n_games}",
            BenchConfig(
                scenario="games", games=n_games, warmup=0.0, duration=15.0 if quick else 30.0
            ),
            (
                ("games_per_s", "games/s", True),
                ("action_p50_ms", "action p50 ms", True),
                ("action_p99_ms", "action p99 ms", True),
                *err,
            ),
            # the floors answer every game with Error 404: nothing to measure there
            skip=frozenset({"floor-stdlib", BASELINE}),
        ),
        Scenario(
            "churn 20 workers",
            BenchConfig(
                scenario="churn", workers=20, rooms=10, warmup=0.5, duration=1.5 if quick else 3.0
            ),
            (
                ("cycles_per_s", "cycles/s", True),
                ("cycle_p99_ms", "cycle p99 ms", True),
                *err,
            ),
        ),
        Scenario(
            # Last: its RSS readings are not disturbed by later load, and it is long.
            f"users {_count(n_users)}",
            BenchConfig(
                scenario="users",
                users=n_users,
                workers=20,
                settle=6.0,  # > analytics' 5 s flush; the waits are shared by all targets
            ),
            (
                ("rss_growth_mib", "RSS growth MiB", False),
                ("users_per_s", "users/s", True),
                *err,
            ),
            # memory per user does not depend on the JSON library, the reactor or the transport
            skip=frozenset({"floor-stdlib", "gamed-uvloop", "gamed-ws"}),
            costs=(("rss_growth_mib", "RSS growth added MiB", "diff"),),
        ),
    ]


def _count(n: int) -> str:
    """50000 -> '50k' for scenario names (which must not change between runs)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def id_bases(scenarios: Sequence[Scenario], repeat: int) -> list[tuple[int, int]]:
    """(user_id_base, room_id_base) per run slot (repeat x scenario): no two runs share ids.

    A user id seen before is a returning user to the server (sessions, analytics), so
    every run gets fresh ones; rooms get a fixed stride (no scenario uses 2000 rooms).
    """
    out: list[tuple[int, int]] = []
    user = 1_000_000
    for slot in range(repeat * len(scenarios)):
        out.append((user, 1 + slot * 2000))
        user += scenarios[slot % len(scenarios)].cfg.id_span()
    return out


# -- child processes ------------------------------------------------------------------------


@dataclass
class Target:
    """A server under test: how to start it on a port, and its process once started."""

    name: str
    argv: list[str]  # "{port}" is replaced by the chosen port
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None
    problem: str = ""
    #: How the load generator talks to ``port``: ``tcp`` frames or ``ws`` (gamed's /ws).
    transport: str = "tcp"
    _log: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (start() retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(target: Target, workdir: Path, attempts: int = 3) -> bool:
    """Start ``target`` on a free port and wait until it accepts; retry on a lost port race."""
    for attempt in range(attempts):
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in target.argv]
        target.log_path = workdir / f"{target.name}.{attempt}.log"
        target._log = open(target.log_path, "wb")  # closed in stop_all
        target.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=target._log,
            stderr=subprocess.STDOUT,
            cwd=target.cwd or workdir,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we clean up
        )
        target.port = port
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if target.proc.poll() is not None:
                break
            if accepting(port):
                target.problem = ""
                return True
            time.sleep(0.1)
        stop(target)
        tail = log_tail(target.log_path)
        target.problem = f"did not start (exit {target.proc.returncode}): {tail}"
        if "in use" not in tail.lower():
            break
    return False


def log_tail(path: Path | None, lines: int = 3) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def stop(target: Target) -> None:
    stop_all([target])


def stop_all(targets: Sequence[Target]) -> None:
    """SIGTERM every child, SIGKILL whatever is left after ``STOP_GRACE`` seconds."""
    procs = [t.proc for t in targets if t.proc is not None and t.proc.poll() is None]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=5)
    for t in targets:
        if t._log is not None:
            t._log.close()
            t._log = None


# -- gamed discovery ------------------------------------------------------------------------


@dataclass
class GamedSupport:
    ok: bool
    options: set[str] = field(default_factory=set)
    middleware: list[str] = field(default_factory=list)
    reason: str = ""


#: Words of a help sentence that are never plugin names.
_NOT_NAMES = {
    "none", "all", "and", "or", "default", "the", "of", "for", "in", "order",
    "available", "installed", "plugins", "plugin", "middleware", "comma", "list",
}  # fmt: skip


def parse_middleware_help(help_text: str) -> list[str]:
    """Middleware names listed in the ``--middleware`` paragraph of ``twistd gamed --help``.

    Only a fallback for when ``gamed.middleware.registry`` cannot be imported: help
    prose is a weak contract, so only explicit lists are read (``available: a, b`` or
    ``[default: a,b]``) and help words are filtered out.
    """
    lines = help_text.splitlines()
    block: list[str] = []
    for i, line in enumerate(lines):
        if re.search(r"--middleware\b", line):
            block.append(line.split("--middleware", 1)[1])
            for nxt in lines[i + 1 :]:
                if re.match(r"\s*-", nxt) or not nxt.strip():
                    break
                block.append(nxt)
            break
    text = " ".join(s.strip() for s in block)
    for pattern in (r"available:\s*([^\];)]+)", r"\[default:\s*([^\]]+)\]"):
        for m in re.finditer(pattern, text):
            words = re.split(r"[\s,]+", m.group(1))
            names = [w for w in words if re.fullmatch(r"[a-z][a-z0-9_\-]*", w)]
            names = [w for w in dict.fromkeys(names) if w not in _NOT_NAMES]
            if names:
                return names
    return []


def registry_names() -> list[str] | None:
    """``gamed.middleware.registry.available()`` as names; None if there is no registry."""
    try:
        registry = importlib.import_module("gamed.middleware.registry")
        available = registry.available()
    except Exception:
        return None
    if isinstance(available, dict):
        available = list(available)
    names = []
    for item in available:
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if isinstance(name, str):
            names.append(name)
    return names


def detect_gamed(twistd: Path, workdir: Path) -> GamedSupport:
    """Ask ``twistd gamed --help`` (once) which options and middleware this gamed has."""
    if not twistd.exists():
        return GamedSupport(False, reason=f"{twistd} not found")
    try:
        r = subprocess.run(
            [str(twistd), "gamed", "--help"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return GamedSupport(False, reason=f"twistd gamed --help: {e}")
    if r.returncode != 0 or "--port" not in r.stdout:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return GamedSupport(False, reason=f"twistd gamed --help failed: {last[0][:200]}")
    options = set(re.findall(r"--([a-z][a-z0-9-]*)", r.stdout))
    middleware: list[str] = []
    if "middleware" in options:
        from_registry = registry_names()
        middleware = parse_middleware_help(r.stdout) if from_registry is None else from_registry
    return GamedSupport(True, options, middleware)


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def gamed_targets(twistd: Path, support: GamedSupport, workdir: Path, quick: bool) -> list[Target]:
    """gamed with default middleware, ``none``, and (unless quick) each plugin switched off."""
    base = [str(twistd), "-n", "--pidfile=", "gamed", "--port", "tcp:{port}:interface=127.0.0.1"]
    opts = support.options
    if "metrics-port" in opts:
        base += ["--metrics-port", "tcp:0:interface=127.0.0.1"]
    if "ws-port" in opts:
        base += ["--ws-port", "none"]  # the TCP rows; the WebSocket row starts its own
    if "rate-limit" in opts:
        base += ["--rate-limit", "0"]
    if "flood-detection" in opts:
        base += ["--flood-detection", "off"]

    config: list[str] = []
    if "config" in opts:
        # An allowlisted address skips the security plugin's per-message
        # limits: say allowlist = [] (the default) whatever the default is, so
        # every check runs, and raise only the limits the load would trip:
        # the per-IP connection cap (all clients share 127.0.0.1); the message
        # rates are off through --rate-limit 0 and flooding through the flag.
        bench_toml = workdir / "gamed-bench.toml"
        bench_toml.write_text(
            "[middleware.security]\nallowlist = []\nip_max_connections = 1000000\n"
        )
        config = ["--config", str(bench_toml)]

    def make(name: str, extra: list[str]) -> Target:
        argv = list(base) + config
        if "data-dir" in opts:
            data = workdir / f"data-{name}"
            data.mkdir(parents=True, exist_ok=True)
            argv += ["--data-dir", str(data)]
        return Target(name, argv + extra, cwd=workdir)

    out = [make("gamed", [])]
    if "ws-port" in opts:
        # The same server (default plugins), loaded over its WebSocket port: the
        # game port binds a port of its own choosing, {port} is the WebSocket's.
        ws = make("gamed-ws", [])
        ws.argv[ws.argv.index("tcp:{port}:interface=127.0.0.1")] = "tcp:0:interface=127.0.0.1"
        ws.argv[ws.argv.index("--ws-port") + 1] = "tcp:{port}:interface=127.0.0.1"
        ws.transport = "ws"
        out.append(ws)
    if "middleware" in opts:
        out.append(make("gamed-none", ["--middleware", "none"]))
        if not quick:
            for name in support.middleware:
                rest = [m for m in support.middleware if m != name]
                out.append(make(f"gamed-no-{name}", ["--middleware", ",".join(rest) or "none"]))
    if not quick and _has_uvloop():
        # The asyncio reactor on uvloop, all default plugins: twistd's global
        # --reactor option goes before the subcommand.
        uv = make("gamed-uvloop", [])
        uv.argv[1:1] = ["--reactor", "uvloop"]
        out.append(uv)
    return out


# -- running and reporting --------------------------------------------------------------------


def median_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median over repeats (ignoring missing values); errors summed."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r["metrics"]))
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r["metrics"].get(k) for r in runs]
        nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
        out[k] = statistics.median(nums) if nums else None
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def spread_metrics(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per numeric metric, (min, max) over repeats: the spread beside each median."""
    out: dict[str, tuple[float, float]] = {}
    for k in {k for r in runs for k in r["metrics"]}:
        vals = [r["metrics"].get(k) for r in runs]
        nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
        if nums:
            out[k] = (min(nums), max(nums))
    return out


def ratio_cell(value: Any, base: Any, spread: tuple[float, float] | None = None) -> str:
    text = human(value)
    if spread is not None and spread[0] != spread[1]:
        text += f" [{human(spread[0])}..{human(spread[1])}]"
    if isinstance(value, int | float) and isinstance(base, int | float) and base:
        return f"{text} ({value / base:.2f}x)"
    return text


Spreads = dict[str, dict[str, dict[str, tuple[float, float]]]]


def render(
    scenarios: list[Scenario],
    targets: list[Target],
    medians: dict[str, dict[str, dict[str, Any]]],
    spreads: Spreads | None = None,
) -> str:
    """Rows = scenario/metric, columns = targets; non-floor cells carry the ratio to the floor.

    With ``spreads`` (several repeats), each median is followed by [min..max].
    """
    names = [t.name for t in targets]
    rows: list[list[Any]] = []
    for sc in scenarios:
        for key, label, ratio in sc.rows:
            row: list[Any] = [f"{sc.key} | {label}"]
            base = medians.get(BASELINE, {}).get(sc.key, {}).get(key)
            for name in names:
                m = medians.get(name, {}).get(sc.key)
                if m is None:
                    row.append("n/a")
                    continue
                v = m.get(key)
                sp = (spreads or {}).get(name, {}).get(sc.key, {}).get(key)
                row.append(ratio_cell(v, base if ratio and name != BASELINE else None, sp))
            rows.append(row)
    return format_table(["scenario | metric", *names], rows)


@dataclass(frozen=True)
class Goal:
    """One row of issue 14's target table: ``target``'s metric against the floor's (or alone)."""

    label: str
    scenario: str  # a prefix of the scenario key ("fanout 50x20", "idle", ...)
    metric: str
    target: str  # the gamed variant
    op: str  # "ratio>=", "ratio<=", "ratio" (reported), "<=", "report"
    bound: float = 0.0
    base: str = BASELINE  # what a ratio is to


GOALS: tuple[Goal, ...] = (
    Goal("fan-out 50x20 W=2, all plugins, vs orjson floor", "fanout 50x20", "deliveries_per_s",
         "gamed", "ratio>=", 0.85),
    Goal("fan-out 50x20 W=2, no plugins, vs orjson floor", "fanout 50x20", "deliveries_per_s",
         "gamed-none", "ratio>=", 0.95),
    Goal("fan-out 500x2 W=2, all plugins, vs orjson floor", "fanout 500x2", "deliveries_per_s",
         "gamed", "ratio>=", 0.75),
    Goal("open loop 1000 x 5/s f20, p99 vs floor's", "open 1000x5", "echo_p99_ms", "gamed",
         "ratio<=", 1.3),
    Goal("idle, KiB per joined connection, all plugins", "idle", "rss_per_conn_kib", "gamed",
         "<=", 3.5),
    Goal("games, games/s, all plugins", "games", "games_per_s", "gamed", "report"),
    # Not targets: against the floor that writes as gamed does (gamed.turnwrite), what
    # gamed's own per-message work costs once the write path is the same on both sides.
    Goal("fan-out 50x20 W=2, all plugins, vs floor-turn", "fanout 50x20", "deliveries_per_s",
         "gamed", "ratio", base=FLOOR_TURN),
    Goal("fan-out 50x20 W=2, no plugins, vs floor-turn", "fanout 50x20", "deliveries_per_s",
         "gamed-none", "ratio", base=FLOOR_TURN),
    Goal("fan-out 500x2 W=2, all plugins, vs floor-turn", "fanout 500x2", "deliveries_per_s",
         "gamed", "ratio", base=FLOOR_TURN),
    Goal("open loop p99 vs floor-turn's", "open 1000x5", "echo_p99_ms", "gamed", "ratio",
         base=FLOOR_TURN),
)  # fmt: skip


def goal_rows(
    goals: Sequence[Goal], medians: dict[str, dict[str, dict[str, Any]]], spreads: Spreads
) -> list[list[Any]]:
    """[goal, target, measured (median, [min..max]), verdict] per goal whose scenario ran."""
    rows: list[list[Any]] = []
    for g in goals:
        key = next((k for k in medians.get(g.target, {}) if k.startswith(g.scenario)), None)
        if key is None:
            continue
        value = medians[g.target][key].get(g.metric)
        sp = spreads.get(g.target, {}).get(key, {}).get(g.metric)
        shown = ratio_cell(value, None, sp)
        verdict = "report"
        if g.op.startswith("ratio"):
            base = medians.get(g.base, {}).get(key, {}).get(g.metric)
            bound = f"{g.op[5:]} {g.bound}x" if g.op != "ratio" else "(report)"
            if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
                if g.op != "ratio" or g.base in medians:  # a report whose base did not run: no row
                    rows.append([g.label, bound, shown, "n/a"])
                continue
            r = value / base
            shown = f"{r:.2f}x ({shown} vs {human(base)})"
            if g.op == "ratio":
                rows.append([g.label, bound, shown, "report"])
                continue
            ok = r >= g.bound if g.op == "ratio>=" else r <= g.bound
            verdict = "met" if ok else f"MISSED by {abs(r - g.bound):.2f}x"
            rows.append([g.label, bound, shown, verdict])
            continue
        if g.op == "<=" and isinstance(value, int | float):
            verdict = "met" if value <= g.bound else f"MISSED by {value - g.bound:.2f}"
            rows.append([g.label, f"<= {g.bound}", shown, verdict])
            continue
        base = medians.get("gamed-baseline", {}).get(key, {}).get(g.metric)
        if isinstance(value, int | float) and isinstance(base, int | float) and base:
            r = value / base
            shown = f"{r:.2f}x ({shown} vs baseline {human(base)})"
            verdict = "met" if r >= 1.0 else f"lower by {(1 - r) * 100:.0f}% (noise?)"
        rows.append([g.label, "no lower than before", shown, verdict])
    return rows


def plugin_costs(
    scenarios: Sequence[Scenario], runs: dict[str, dict[str, list[dict[str, Any]]]]
) -> dict[str, dict[str, float]]:
    """What each plugin costs: ``gamed`` against ``gamed-no-X`` (and ``gamed-none``: "all").

    Per scenario and metric, the median over repeats of the paired difference (the two
    runs of one repeat were back to back, so machine drift cancels better than in a
    difference of medians): in % for rates and CPU, absolute for "diff" metrics.
    """
    others = {"all": "gamed-none"} | {
        name.removeprefix("gamed-no-"): name
        for name in runs
        if name.startswith("gamed-no-") and name != "gamed-none"
    }
    out: dict[str, dict[str, float]] = {}
    for sc in scenarios:
        for metric, label, kind in sc.costs:
            with_all = runs.get("gamed", {}).get(sc.key, [])
            for plugin, name in others.items():
                without = runs.get(name, {}).get(sc.key, [])
                diffs: list[float] = []
                for a, b in zip(with_all, without, strict=False):
                    on, off = a["metrics"].get(metric), b["metrics"].get(metric)
                    if not isinstance(on, int | float) or not isinstance(off, int | float):
                        continue
                    if kind == "diff":
                        diffs.append(on - off)
                    elif off:
                        sign = -1 if kind == "lower" else 1
                        diffs.append(sign * (on - off) / off * 100)
                if diffs:
                    cell = out.setdefault(f"{sc.key} | {label}", {})
                    cell[plugin] = round(statistics.median(diffs), 1)
    return out


def render_costs(costs: dict[str, dict[str, float]]) -> str:
    """The plugin cost table: rows = scenario/metric, columns = plugins ("all" last)."""
    plugins: list[str] = []
    for cells in costs.values():
        plugins += [p for p in cells if p not in plugins and p != "all"]
    plugins.append("all")
    rows: list[list[Any]] = [
        [key, *(f"{cells[p]:+.1f}" if p in cells else "n/a" for p in plugins)]
        for key, cells in costs.items()
    ]
    return format_table(["plugin cost: gamed vs gamed without it", *plugins], rows)


def still_alive(t: Target) -> bool:
    """False (and the reason recorded, once) when a target's process has exited."""
    if t.alive():
        return True
    if not t.problem:
        code = t.proc.returncode if t.proc else None
        t.problem = f"exited ({code}): {log_tail(t.log_path)}"
        print(f"{t.name} died: {t.problem}", file=sys.stderr)
    return False


def run_scenario(
    sc: Scenario, targets: Sequence[Target], user_base: int, room_base: int
) -> Iterator[tuple[Target, dict[str, Any] | None]]:
    """Each target's result for one scenario (None: the target is down), in order.

    One target after the other, except ``users``: it loads them one after the other too,
    but waits for their memory to settle once for all (``scenarios.run_users``).
    """

    def config(t: Target) -> BenchConfig:
        pid = t.proc.pid if t.proc else None
        return replace(
            sc.cfg,
            port=t.port,
            transport=t.transport,
            user_id_base=user_base,
            room_id_base=room_base,
            server_pid=pid,
        )

    if sc.cfg.scenario == "users":
        up = [t for t in targets if still_alive(t)]
        results = run_users([config(t) for t in up]) if up else []
        done = dict(zip((t.name for t in up), results, strict=True))
        for t in targets:
            yield t, done.get(t.name)
        return
    for t in targets:
        if not still_alive(t):
            yield t, None
            continue
        yield t, run(config(t))
        time.sleep(0.3)  # let the server finish the disconnects


#: The issue's WebSocket targets: fan-out throughput >= 0.6x TCP, idle memory <= 2x TCP.
WS_FANOUT_TARGET = 0.6
WS_MEMORY_TARGET = 2.0


def websocket_summary(
    medians: dict[str, dict[str, dict[str, Any]]],
    runs: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
) -> dict[str, Any]:
    """gamed over WebSocket against the same run's gamed over TCP (both with every plugin).

    Idle memory comes from the first idle run of each server (``runs``): it is the
    one on a fresh process; later repeats reuse the memory the first one freed.
    """
    tcp, ws = medians.get("gamed", {}), medians.get("gamed-ws", {})
    if runs:
        for name, per in (("gamed", tcp), ("gamed-ws", ws)):
            for key, results in runs.get(name, {}).items():
                if key.startswith("idle") and results and key in per:
                    first = results[0]["metrics"].get("rss_per_conn_kib")
                    per[key] = {**per[key], "rss_per_conn_kib": first}
    out: dict[str, Any] = {}
    fan_key = next((k for k in ws if k.startswith("fanout 50x20")), None)

    def compare(
        key: str, metric: str, ws_out: str, tcp_out: str, ratio: str, tcp_over_ws: bool = False
    ) -> None:
        a, b = ws[key].get(metric), tcp[key].get(metric)
        if a and b:
            out[ws_out] = a
            out[tcp_out] = b
            out[ratio] = round(b / a if tcp_over_ws else a / b, 3)

    if fan_key and fan_key in tcp:
        compare(
            fan_key,
            "deliveries_per_s",
            "fanout_50x20_ws_per_s",
            "fanout_50x20_tcp_per_s",
            "fanout_ratio",
        )
        # fanout_cpu_ratio > 1 would mean ws is cheaper
        compare(
            fan_key,
            "server_cpu_us_per_delivery",
            "fanout_cpu_us_per_delivery_ws",
            "fanout_cpu_us_per_delivery_tcp",
            "fanout_cpu_ratio",
            tcp_over_ws=True,
        )
    idle_key = next((k for k in ws if k.startswith("idle")), None)
    if idle_key and idle_key in tcp:
        compare(
            idle_key,
            "rss_per_conn_kib",
            "idle_kib_per_ws_conn",
            "idle_kib_per_tcp_conn",
            "idle_memory_ratio",
        )
    return out


def describe_websocket(summary: dict[str, Any]) -> str:
    lines = ["WebSocket vs TCP (gamed, every plugin, same run):"]
    if "fanout_ratio" in summary:
        r = summary["fanout_ratio"]
        lines.append(
            f"  fan-out 50x20 deliveries/s: ws {human(summary['fanout_50x20_ws_per_s'])} / "
            f"tcp {human(summary['fanout_50x20_tcp_per_s'])} = {r:.2f}x "
            f"(target >= {WS_FANOUT_TARGET}x: {'met' if r >= WS_FANOUT_TARGET else 'MISSED'})"
        )
    if "fanout_cpu_ratio" in summary:
        lines.append(
            f"  server CPU per delivery: ws {summary['fanout_cpu_us_per_delivery_ws']:.2f} us / "
            f"tcp {summary['fanout_cpu_us_per_delivery_tcp']:.2f} us: throughput bound "
            f"{summary['fanout_cpu_ratio']:.2f}x (steadier than deliveries/s on a shared host)"
        )
    if "idle_memory_ratio" in summary:
        r = summary["idle_memory_ratio"]
        lines.append(
            f"  idle memory: {summary['idle_kib_per_ws_conn']:.1f} KiB per ws connection / "
            f"{summary['idle_kib_per_tcp_conn']:.1f} KiB per tcp = {r:.2f}x "
            f"(target <= {WS_MEMORY_TARGET}x: {'met' if r <= WS_MEMORY_TARGET else 'MISSED'})"
        )
    return "\n".join(lines)


def run_suite(args: argparse.Namespace) -> int:
    t_begin = time.monotonic()
    raise_nofile_limit()  # children inherit it: 5000 idle connections need the fds
    out = Path(args.out).resolve()  # before any chdir of a child: relative to the caller
    workdir = Path(tempfile.mkdtemp(prefix="gamed-bench-"))
    targets: list[Target] = []
    keep_logs = args.keep_logs
    try:
        if importlib.util.find_spec(FLOOR_MODULE) is not None:
            for mode in ("stdlib", "orjson"):
                argv = [sys.executable, "-m", FLOOR_MODULE, "--port", "{port}", "--json", mode]
                targets.append(Target(f"floor-{mode}", argv))
            targets.append(Target(FLOOR_TURN, [*argv, "--turn-write"]))
        else:
            print(f"note: {FLOOR_MODULE} missing: no floor columns", file=sys.stderr)
        twistd = Path(sys.executable).parent / "twistd"
        support = detect_gamed(twistd, workdir)
        if support.ok:
            targets += gamed_targets(twistd, support, workdir, args.quick)
            mw = ", ".join(support.middleware) or "none found"
            print(f"gamed: middleware {mw}", file=sys.stderr)
        else:
            print(f"note: gamed skipped: {support.reason}", file=sys.stderr)
        if args.baseline and support.ok:
            # The same gamed (every default plugin) from another checkout, in the same
            # run: its code first on the path (twistd finds its plugin there too).
            src = str(Path(args.baseline).resolve())
            base_t = next(t for t in targets if t.name == "gamed")
            argv = ["env", f"PYTHONPATH={src}", *base_t.argv]
            if "--data-dir" in argv:  # a database of its own
                i = argv.index("--data-dir") + 1
                argv[i] = str(workdir / "data-gamed-baseline")
                Path(argv[i]).mkdir(parents=True, exist_ok=True)
            targets.append(Target("gamed-baseline", argv, cwd=base_t.cwd))
        if args.targets:
            wanted = set(args.targets.split(","))
            targets = [t for t in targets if t.name in wanted]
        scenarios = suite_scenarios(args.quick, args.users)
        if args.scenarios:
            wanted_s = [s.strip() for s in args.scenarios.split(",")]
            scenarios = [s for s in scenarios if any(w in s.key for w in wanted_s)]

        for t in targets:
            if start(t, workdir):
                print(f"started {t.name} on 127.0.0.1:{t.port} (pid {t.proc.pid})", file=sys.stderr)  # type: ignore[union-attr]
            else:
                print(f"FAILED to start {t.name}: {t.problem}", file=sys.stderr)
                keep_logs = True
        live = [t for t in targets if t.problem == ""]

        runs: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
        bases = id_bases(scenarios, args.repeat)
        total = sum(1 for sc in scenarios for t in live if sc.runs(t.name)) * args.repeat
        n = 0
        for rep in range(args.repeat):
            for si, sc in enumerate(scenarios):
                user_base, room_base = bases[rep * len(scenarios) + si]
                todo = [t for t in live if sc.runs(t.name)]
                if rep % 2:  # ABC CBA ...: drift over a repeat hits every target alike
                    todo.reverse()
                if sc.fresh and rep > 0:
                    for t in todo:
                        stop(t)
                        t.problem = ""
                        if not start(t, workdir):
                            print(f"FAILED to restart {t.name}: {t.problem}", file=sys.stderr)
                for t, res in run_scenario(sc, todo, user_base, room_base):
                    n += 1
                    if res is None:
                        continue
                    res["target_name"] = t.name
                    runs[t.name].setdefault(sc.key, []).append(res)
                    first = sc.rows[0][0]
                    print(
                        f"[{n}/{total}] {sc.key} on {t.name}: {sc.rows[0][1]} "
                        f"{human(res['metrics'].get(first))}, errors {res['errors']}"
                        + ("" if res["ok"] else f", FAILED {res['notes'][:1]}"),
                        file=sys.stderr,
                    )
        keep_logs = keep_logs or any(t.problem for t in targets)
        medians = {
            name: {k: median_metrics(v) for k, v in per.items()} for name, per in runs.items()
        }
        spreads = {
            name: {k: spread_metrics(v) for k, v in per.items()} for name, per in runs.items()
        }
        print(render(scenarios, targets, medians, spreads))
        goals = goal_rows(GOALS, medians, spreads)
        if goals:
            print()
            print(format_table(["issue 14 target", "target", "measured", "verdict"], goals))
        costs = plugin_costs(scenarios, runs)
        if costs:
            print()
            print(render_costs(costs))
        ws_summary = websocket_summary(medians, runs)
        if ws_summary:
            print(describe_websocket(ws_summary))
        for t in targets:
            if t.problem:
                print(f"{t.name}: {t.problem}")
        doc = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, "-m", "gamed.bench.suite", *args.argv]),
            "quick": args.quick,
            "repeat": args.repeat,
            "baseline": BASELINE,
            "elapsed_s": round(time.monotonic() - t_begin, 1),
            "targets": {
                t.name: {"argv": t.argv, "port": t.port, "problem": t.problem} for t in targets
            },
            "scenarios": {sc.key: orjson.loads(orjson.dumps(sc.cfg)) for sc in scenarios},
            "medians": medians,
            "spreads": spreads,
            "goals": goals,
            "plugin_costs": costs,
            "websocket": ws_summary,
            "runs": runs,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        print(f"wrote {out} in {time.monotonic() - t_begin:.0f}s")
        return 0 if live and all(not t.problem for t in targets) else 1
    finally:
        stop_all(targets)
        if keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind through run_suite's finally: children die too


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gamed.bench.suite", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the table shows medians")
    ap.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="results JSON, relative to the working directory (default %(default)s)",
    )
    ap.add_argument(
        "--users",
        type=int,
        default=None,
        help="distinct users in the memory scenario (default 50000, --quick 5000)",
    )
    ap.add_argument("--targets", default="", help="comma list of target names to keep")
    ap.add_argument("--scenarios", default="", help="comma list of scenario name parts to keep")
    ap.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    ap.add_argument(
        "--baseline",
        default="",
        help="a checkout of gamed (e.g. `git worktree add /tmp/base main`) run as the "
        "'gamed-baseline' target: before/after in one run",
    )
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.users is not None and args.users < 1:
        ap.error("--users must be >= 1")
    signal.signal(signal.SIGTERM, _terminate)
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
