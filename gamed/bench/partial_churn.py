"""RSS of a real `twistd -n gamed` under churn of half-sent frames (issue 12 item 8).

Each round opens N clients that each send 65,500 bytes of a 65,536-byte frame and close.
RSS is read from /proc before the churn and after it, once it has stopped falling (no forced
gc.collect in the server; gamed trims the C heap itself about a second after a churn).

    .venv/bin/python -m gamed.bench.partial_churn [--clients 1000] [--rounds 5] [-- extra gamed args]
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from gamed.bench.server import GamedServer


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def connections(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/stats", timeout=10) as r:
        return int(orjson.loads(r.read())["connections"])


def settle(srv: GamedServer, timeout: float = 30.0) -> None:
    """Wait (bounded) until the server has seen every client go."""
    deadline = time.monotonic() + timeout
    while connections(srv.http_port) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.1)


def settled_rss(pid: int, timeout: float = 5.0) -> float:
    """RSS once it stops falling (gamed returns freed memory about a second after a churn)."""
    deadline = time.monotonic() + timeout
    last = rss_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_mib(pid)
        if now >= last:
            return now
        last = now
    return last


def churn_round(port: int, n: int) -> None:
    data = struct.pack(">I", 65536) + b"x" * 65_500
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        s.sendall(data)
    for s in socks:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        srv = GamedServer(Path(d), ["--max-connections", str(args.clients * 2), *args.extra])
        try:
            # Warm-up: a few clients, so that first-use allocations are not counted.
            churn_round(srv.port, 10)
            settle(srv)
            before = settled_rss(srv.pid)
            print(f"RSS before churn: {before:.1f} MiB")
            peak = before
            for i in range(args.rounds):
                churn_round(srv.port, args.clients)
                settle(srv)
                peak = max(peak, rss_mib(srv.pid))
                now = settled_rss(srv.pid)
                print(f"after round {i + 1}: {now:.1f} MiB")
            after = settled_rss(srv.pid)
            print(
                f"RSS after {args.rounds} rounds of {args.clients}: {after:.1f} MiB "
                f"({(after / before - 1) * 100:+.0f}% vs before; peak {peak:.1f} MiB)"
            )
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
