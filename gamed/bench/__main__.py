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
from typing import Any

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

    def option(group: Any, name: str, kind: Callable[[str], Any], help: str | None = None) -> None:
        """``--name`` (dashes for underscores), defaulting to BenchConfig's field ``name``."""
        group.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name), help=help
        )

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("target and run")
    g.add_argument("--host", default=d.host, help="server address (default %(default)s)")
    option(g, "port", int, "server port (default %(default)s)")
    g.add_argument(  # choices: not an option() (which takes a type)
        "--transport",
        choices=("tcp", "ws"),
        default=d.transport,
        help="tcp: the game port's framing; ws: WebSocket text messages on /ws at --port "
        "(gamed's --ws-port) (default %(default)s)",
    )
    option(g, "warmup", _positive(float), "seconds not counted")
    option(g, "duration", _positive(float), "seconds measured")
    option(
        g,
        "connect_timeout",
        _positive(float),
        "bound on the whole connect+join phase (default %(default)s s)",
    )
    option(g, "connect_concurrency", int, "handshakes in flight at once (default %(default)s)")
    option(g, "user_id_base", int, "client i uses user_id base+i; keep runs sharing a server apart")
    option(g, "room_id_base", int, "first room id")
    g.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="the server's pid, to report its RSS (idle, games, users) and CPU (fanout)",
    )
    g.add_argument("--json", action="store_true", help="print one line of JSON, not a table")
    g.add_argument("--out", metavar="PATH", default=None, help="also write the result JSON to PATH")
    g.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    option(g, "seed", int, "seed for jitter and sampling")

    ap = argparse.ArgumentParser(
        prog="gamed-bench",
        description="Load generator for the gamed protocol.",
        epilog="See docs/bench.md.",
    )
    sub = ap.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    f = sub.add_parser("fanout", parents=[common], help="rooms x members chatting")
    option(f, "rooms", int, "default %(default)s")
    option(f, "members", int, "per room, default %(default)s")
    option(f, "window", int, "closed loop: chats in flight per client")
    option(f, "rate", _positive(float), "open loop: messages/s per client (0 = closed loop)")
    option(f, "message_size", int, "chat text bytes (padded)")

    i = sub.add_parser("idle", parents=[common], help="joined connections that only heartbeat")
    option(i, "connections", int, "default %(default)s")
    i.add_argument("--rooms", type=int, default=100, help="spread over this many rooms (0: none)")
    option(i, "heartbeat_interval", _positive(float))

    gm = sub.add_parser("games", parents=[common], help="2-player games played to the end")
    option(gm, "games", int, "concurrent games")

    c = sub.add_parser("churn", parents=[common], help="connect/join/leave/disconnect cycles")
    option(c, "workers", int, "concurrent workers")
    c.add_argument("--rooms", type=int, default=10, help="rooms the workers spread over")

    u = sub.add_parser(
        "users", parents=[common], help="distinct users sign on and leave; server RSS growth"
    )
    option(u, "users", int, "default %(default)s")
    option(u, "workers", int, "users signing on at once")
    option(u, "settle", _positive(float), "seconds before each RSS reading")
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
