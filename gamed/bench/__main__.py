"""``gamed-bench`` / ``python -m gamed.bench``: run one load scenario against a gamed server.

    gamed-bench fanout --rooms 50 --members 20 --window 2 --duration 5
    gamed-bench fanout --rooms 50 --members 20 --rate 5          # open loop, msgs/s per client
    gamed-bench idle --connections 5000 --rooms 500 --server-pid 1234
    gamed-bench games --games 200
    gamed-bench churn --workers 20

A readable table goes to stdout (``--json``: exactly one line of JSON instead);
``--out PATH`` also writes the result as JSON to PATH (relative to the working
directory). A progress bar goes to stderr only when it is a terminal. Exit status 0
on success, 2 when connecting to the server failed, 1 on a bad command line.

The whole suite (every scenario against the floors and gamed variants) is
``python -m gamed.bench.suite``; ``python -m gamed.bench.floor`` is the floor server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from gamed.bench.scenarios import SCENARIO_NAMES, BenchConfig, run
from gamed.bench.stats import format_result

EXIT_CONNECT_FAILED = 2


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type that refuses negative numbers (named like ``kind`` in errors)."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per scenario; the common flags are accepted by all of them."""
    d = BenchConfig()
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("target and run")
    g.add_argument("--host", default=d.host, help="server address (default %(default)s)")
    g.add_argument("--port", type=int, default=d.port, help="server port (default %(default)s)")
    g.add_argument("--warmup", type=_positive(float), default=d.warmup, help="seconds not counted")
    g.add_argument("--duration", type=_positive(float), default=d.duration, help="seconds measured")
    g.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=d.connect_timeout,
        help="bound on the whole connect+join phase (default %(default)s s)",
    )
    g.add_argument(
        "--connect-concurrency",
        type=int,
        default=d.connect_concurrency,
        help="handshakes in flight at once (default %(default)s)",
    )
    g.add_argument(
        "--user-id-base",
        type=int,
        default=d.user_id_base,
        help="client i uses user_id base+i; keep runs sharing a server apart",
    )
    g.add_argument("--room-id-base", type=int, default=d.room_id_base, help="first room id")
    g.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="the server's pid, to report its RSS (idle, games, users) and CPU (fanout)",
    )
    g.add_argument("--json", action="store_true", help="print one line of JSON, not a table")
    g.add_argument("--out", metavar="PATH", default=None, help="also write the result JSON to PATH")
    g.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for jitter and sampling")

    ap = argparse.ArgumentParser(
        prog="gamed-bench",
        description="Load generator for the gamed protocol.",
        epilog="See docs/bench.md.",
    )
    sub = ap.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    f = sub.add_parser("fanout", parents=[common], help="rooms x members chatting")
    f.add_argument("--rooms", type=int, default=d.rooms, help="default %(default)s")
    f.add_argument("--members", type=int, default=d.members, help="per room, default %(default)s")
    f.add_argument(
        "--window", type=int, default=d.window, help="closed loop: chats in flight per client"
    )
    f.add_argument(
        "--rate",
        type=_positive(float),
        default=d.rate,
        help="open loop: messages/s per client (0 = closed loop)",
    )
    f.add_argument(
        "--message-size", type=int, default=d.message_size, help="chat text bytes (padded)"
    )

    i = sub.add_parser("idle", parents=[common], help="joined connections that only heartbeat")
    i.add_argument("--connections", type=int, default=d.connections, help="default %(default)s")
    i.add_argument("--rooms", type=int, default=100, help="spread over this many rooms (0: none)")
    i.add_argument("--heartbeat-interval", type=_positive(float), default=d.heartbeat_interval)

    gm = sub.add_parser("games", parents=[common], help="2-player games played to the end")
    gm.add_argument("--games", type=int, default=d.games, help="concurrent games")

    c = sub.add_parser("churn", parents=[common], help="connect/join/leave/disconnect cycles")
    c.add_argument("--workers", type=int, default=d.workers, help="concurrent workers")
    c.add_argument("--rooms", type=int, default=10, help="rooms the workers spread over")

    u = sub.add_parser(
        "users", parents=[common], help="distinct users sign on and leave; server RSS growth"
    )
    u.add_argument("--users", type=int, default=d.users, help="default %(default)s")
    u.add_argument("--workers", type=int, default=d.workers, help="users signing on at once")
    u.add_argument(
        "--settle", type=_positive(float), default=d.settle, help="seconds before each RSS reading"
    )
    assert set(sub.choices) == set(SCENARIO_NAMES)
    return ap


def config_from_args(ns: argparse.Namespace, *, progress: bool) -> BenchConfig:
    """Map parsed flags onto a ``BenchConfig`` (flags not in a scenario keep defaults)."""
    fields = BenchConfig.__dataclass_fields__
    values = {k: v for k, v in vars(ns).items() if k in fields and v is not None}
    cfg = BenchConfig(**values)
    cfg.use_uvloop = not ns.no_uvloop
    cfg.progress = progress
    return cfg


def validate(cfg: BenchConfig) -> str | None:
    """A message for a configuration that cannot run, else None."""
    if cfg.scenario == "fanout":
        if cfg.rooms < 1 or cfg.members < 1:
            return "--rooms and --members must be >= 1"
        if cfg.rate <= 0 and cfg.window < 1:
            return "--window must be >= 1 in closed loop"
    if cfg.scenario == "users" and cfg.users < 1:
        return "--users must be >= 1"
    if cfg.connect_concurrency < 1:
        return "--connect-concurrency must be >= 1"
    if not 0 <= cfg.user_id_base <= 0xFFFFFFFF - 1_000_000:
        return "--user-id-base out of the u32 range"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (console script ``gamed-bench``)."""
    ap = build_parser()
    ns = ap.parse_args(argv)
    cfg = config_from_args(ns, progress=sys.stderr.isatty() and not ns.json)
    problem = validate(cfg)
    if problem:
        ap.error(problem)
    result = run(cfg)
    if ns.out:
        out = Path(ns.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if ns.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        sys.stdout.write(format_result(result) + "\n")
    sys.stdout.flush()
    return EXIT_CONNECT_FAILED if result["connect_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
