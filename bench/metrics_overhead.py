"""What the metrics plugin costs: fan-out throughput with it on vs off, in one run.

Starts two gamed servers on free 127.0.0.1 ports, ``--middleware metrics`` and
``--middleware none``, and drives them alternately (order swapped every round)
with gamed-bench's fan-out scenario: 50 rooms x 20 members, closed loop with 2
chats in flight per member. Prints the median deliveries/s of each and the
overhead; ``--json`` for a machine-readable line.

    .venv/bin/python bench/metrics_overhead.py [--rounds 3] [--duration 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from gamed.bench.scenarios import BenchConfig, run
from gamed.bench.server import GamedServer


class Server(GamedServer):
    def __init__(self, middleware: str, workdir: Path) -> None:
        self.middleware = middleware
        super().__init__(workdir, ["--middleware", middleware, "--idle-timeout", "0"])

    def cpu_and_deliveries(self) -> tuple[float, float]:
        """(CPU seconds the server used, chat deliveries it made) so far."""
        times = psutil.Process(self.proc.pid).cpu_times()
        text = self.http_get("/metrics").decode()
        deliveries = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "gamed_chat_deliveries":
                deliveries = sum(s.value for s in family.samples if s.name.endswith("_total"))
        return times.user + times.system, deliveries


def measure(server: Server, args: argparse.Namespace, round_no: int) -> tuple[float, float]:
    """(deliveries/s in the measured window, server CPU µs per delivery over the run)."""
    cfg = BenchConfig(
        scenario="fanout",
        port=server.port,
        rooms=args.rooms,
        members=args.members,
        window=args.window,
        warmup=args.warmup,
        duration=args.duration,
        # Fresh users every round: no takeover of the last round's sessions.
        user_id_base=1_000_000 + round_no * 100_000,
    )
    cpu0, deliveries0 = server.cpu_and_deliveries()
    result = run(cfg)
    cpu1, deliveries1 = server.cpu_and_deliveries()
    if not result["ok"]:
        raise SystemExit(f"bench against {server.middleware} failed: {result['notes']}")
    cost = (cpu1 - cpu0) / (deliveries1 - deliveries0) * 1e6 if deliveries1 > deliveries0 else 0
    return float(result["metrics"]["deliveries_per_s"]), cost


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rooms", type=int, default=50)
    p.add_argument("--members", type=int, default=20)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--on", default="metrics", help="--middleware of the 'on' server")
    p.add_argument(
        "--off", default="none", help="--middleware of the 'off' server (--on none: an A/A run)"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gamed-metrics-bench-") as tmp:
        servers = {
            "on": Server(args.on, Path(tmp) / "on"),
            "off": Server(args.off, Path(tmp) / "off"),
        }
        runs: dict[str, list[float]] = {name: [] for name in servers}
        costs: dict[str, list[float]] = {name: [] for name in servers}
        try:
            for r in range(args.rounds):
                order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
                for name in order:
                    rate, cost = measure(servers[name], args, r)
                    runs[name].append(round(rate))
                    costs[name].append(round(cost, 3))
                    print(
                        f"round {r + 1} {name:3s} ({servers[name].middleware:8s}) "
                        f"{rate:12,.0f} deliveries/s "
                        f"{cost:7.3f} µs CPU/delivery",
                        file=sys.stderr,
                    )
        finally:
            for s in servers.values():
                s.stop()

    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    cost_on, cost_off = statistics.median(costs["on"]), statistics.median(costs["off"])
    overhead = (off - on) / off * 100 if off else 0.0
    # Each round's on/off pair ran back to back: the median of the paired ratios
    # cancels much of the drift of a shared machine.
    paired = statistics.median(
        (b - a) / b * 100 for a, b in zip(runs["on"], runs["off"], strict=True) if b
    )
    cpu_overhead = (cost_on - cost_off) / cost_off * 100 if cost_off else 0.0
    summary: dict[str, Any] = {
        "scenario": f"fanout {args.rooms}x{args.members}, window {args.window}",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "on": args.on,
        "off": args.off,
        "deliveries_per_s_on": runs["on"],
        "deliveries_per_s_off": runs["off"],
        "median_on": round(on),
        "median_off": round(off),
        "overhead_percent": round(overhead, 1),
        "paired_overhead_percent": round(paired, 1),
        "cpu_us_per_delivery_on": costs["on"],
        "cpu_us_per_delivery_off": costs["off"],
        "cpu_overhead_percent": round(cpu_overhead, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"on  ({args.on}): {on:12,.0f} deliveries/s (median of {args.rounds})\n"
            f"off ({args.off}): {off:12,.0f} deliveries/s\n"
            f"overhead: {overhead:5.1f} % throughput (medians), {paired:5.1f} % (median of "
            f"paired rounds), {cpu_overhead:5.1f} % server CPU per delivery "
            f"({cost_on:.3f} vs {cost_off:.3f} µs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
