#!/usr/bin/env python
"""What the analytics plugin costs: fan-out throughput with it on and off, and memory under churn.

Starts two real servers on free 127.0.0.1 ports, ``--middleware analytics`` and
``--middleware none``, and drives both in one run, alternating rounds, with the
same closed-loop fan-out: ROOMS rooms x MEMBERS members, every member keeping
IN_FLIGHT chats outstanding (it sends the next when one of its own comes
back); every chat is delivered to every member. Reports the medians of
deliveries per second and of server CPU per delivery. Then it runs CYCLES
connect/disconnect cycles of distinct users through each server (after a
warm-up of CYCLES/5) and reports the RSS before and after: the analytics
server's growth must match the core's ("none") within noise.

    .venv/bin/python bench/analytics_overhead.py [--rounds 3] [--seconds 5] [--cycles 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import struct
import tempfile
import time
from pathlib import Path

import psutil

from gamed.bench.server import GamedServer

LEN = struct.Struct(">I")


def frame(obj: object) -> bytes:
    payload = json.dumps(obj, separators=(",", ":")).encode()
    return LEN.pack(len(payload)) + payload


class Server(GamedServer):
    def __init__(self, middleware: str, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.middleware = middleware
        super().__init__(
            workdir / middleware,
            ["--middleware", middleware, "--idle-timeout", "0", *extra],
        )
        self.ps = psutil.Process(self.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def get(self, path: str) -> dict:
        return json.loads(self.http_get(path))


# -- fan-out ----------------------------------------------------------------------------------


class Member(asyncio.Protocol):
    """Counts chat frames without decoding them; sends the next chat per own echo."""

    def __init__(self, run: FanOut, user_id: int, room_id: int) -> None:
        self.run, self.user_id, self.room_id = run, user_id, room_id
        # The server re-encodes chats with orjson: the sender's id comes first.
        self.own = b'{"ChatMessage":{"user_id":%d,' % user_id
        self.buf = b""
        self.frames = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.chat = frame(
            {"ChatMessage": {"user_id": user_id, "room_id": room_id, "message": "x" * 32}}
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(frame({"Connect": {"room_id": 0, "user_id": self.user_id}}))
        transport.write(
            frame({"RoomJoin": {"user_id": self.user_id, "room_id": self.room_id, "nickname": "b"}})
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        i, n = 0, len(buf)
        chats = own = 0
        while n - i >= 4:
            (size,) = LEN.unpack_from(buf, i)
            if n - i - 4 < size:
                break
            if buf.startswith(b'{"ChatMessage"', i + 4):
                chats += 1
                if buf.startswith(self.own, i + 4):
                    own += 1
            elif not self.ready.done() and buf.startswith(b'{"RoomJoinSuccess"', i + 4):
                self.ready.set_result(None)
            i += 4 + size
        self.buf = buf[i:]
        if chats:
            self.run.deliveries += chats
            if own and self.run.running:
                self.transport.write(self.chat * own)


class FanOut:
    def __init__(self, port: int, rooms: int, members: int, in_flight: int, base_uid: int) -> None:
        self.port, self.rooms, self.members, self.in_flight = port, rooms, members, in_flight
        self.base_uid = base_uid
        self.deliveries = 0
        self.running = False

    async def run(self, server: Server, warmup: float, seconds: float) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        conns: list[Member] = []
        for r in range(self.rooms):
            for k in range(self.members):
                uid = self.base_uid + r * self.members + k
                _, proto = await loop.create_connection(
                    lambda uid=uid, r=r: Member(self, uid, r + 1),
                    "127.0.0.1",
                    self.port,
                )
                conns.append(proto)
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in conns)), 30)
        self.running = True
        for c in conns:
            c.transport.write(c.chat * self.in_flight)
        await asyncio.sleep(warmup)
        d0, c0, t0 = self.deliveries, server.cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        d1, c1, t1 = self.deliveries, server.cpu(), time.perf_counter()
        self.running = False
        await asyncio.sleep(0.3)
        for c in conns:
            c.transport.close()
        await asyncio.sleep(0.5)
        rate = (d1 - d0) / (t1 - t0)
        return {"deliveries_per_s": rate, "server_cpu_us_per_delivery": (c1 - c0) / (d1 - d0) * 1e6}


# -- churn ------------------------------------------------------------------------------------


async def churn(port: int, cycles: int, first_uid: int, concurrency: int = 64) -> float:
    """``cycles`` distinct users: connect, Connect, wait for the ack, close. Returns seconds."""
    connect = frame  # local alias
    next_uid = first_uid
    end_uid = first_uid + cycles

    async def worker() -> None:
        nonlocal next_uid
        while next_uid < end_uid:
            uid = next_uid
            next_uid += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(connect({"Connect": {"room_id": 0, "user_id": uid}}))
            head = await reader.readexactly(4)
            await reader.readexactly(LEN.unpack(head)[0])
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def run_loop(coro: object) -> object:
    """uvloop when installed (the client must not be the bottleneck), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rooms", type=int, default=50)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--in-flight", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cycles", type=int, default=100_000, help="0 skips the memory check")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gamed-analytics-bench-"))
    servers = {name: Server(name, workdir) for name in ("analytics", "none")}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    summary: dict[str, object] = {
        "rooms": args.rooms,
        "members": args.members,
        "in_flight": args.in_flight,
        "rounds": args.rounds,
        "seconds": args.seconds,
    }
    try:
        uid = 1
        for r in range(args.rounds):
            order = ["analytics", "none"] if r % 2 == 0 else ["none", "analytics"]
            for name in order:
                run = FanOut(servers[name].port, args.rooms, args.members, args.in_flight, uid)
                uid += args.rooms * args.members
                got = run_loop(run.run(servers[name], args.warmup, args.seconds))
                results[name].append(got)
                print(
                    f"round {r + 1} {name:9s} {got['deliveries_per_s']:10.0f} deliveries/s "
                    f"{got['server_cpu_us_per_delivery']:6.2f} server-CPU us/delivery",
                    flush=True,
                )
        med = {
            name: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
            for name, rs in results.items()
        }
        on, off = med["analytics"], med["none"]
        summary["median"] = med
        summary["throughput_cost_percent"] = round(
            (1 - on["deliveries_per_s"] / off["deliveries_per_s"]) * 100, 2
        )
        summary["cpu_cost_percent"] = round(
            (on["server_cpu_us_per_delivery"] / off["server_cpu_us_per_delivery"] - 1) * 100, 2
        )
        # Each round's on/off pair ran back to back: their ratio is less exposed to
        # load from other processes than the medians are.
        paired = [
            (1 - a["deliveries_per_s"] / b["deliveries_per_s"]) * 100
            for a, b in zip(results["analytics"], results["none"], strict=True)
        ]
        summary["paired_throughput_cost_percent"] = [round(x, 2) for x in paired]
        summary["median_paired_throughput_cost_percent"] = round(statistics.median(paired), 2)
        rt = servers["analytics"].get("/analytics/realtime")
        summary["analytics_realtime_after_fanout"] = {
            k: rt[k]
            for k in ("total_processed", "avg_processing_us", "dropped", "buffer_peak_percent")
        }
        print(
            f"median: analytics {on['deliveries_per_s']:.0f}/s vs none {off['deliveries_per_s']:.0f}/s "
            f"-> throughput cost {summary['throughput_cost_percent']}%, "
            f"server CPU per delivery +{summary['cpu_cost_percent']}%; "
            f"median of paired rounds {summary['median_paired_throughput_cost_percent']}%",
            flush=True,
        )

        if args.cycles:
            # Warm up first (allocator arenas, caches), then measure: flat means the
            # second pass adds nothing. The "none" server is the core's own baseline.
            summary["churn"] = {}
            uid = 10_000_000
            for name in ("analytics", "none"):
                srv = servers[name]
                run_loop(churn(srv.port, args.cycles // 5, uid))
                uid += args.cycles
                time.sleep(6)  # a flush interval: deltas leave memory
                before = srv.rss()
                took = run_loop(churn(srv.port, args.cycles, uid))
                uid += args.cycles
                time.sleep(6)
                after = srv.rss()
                got: dict[str, object] = {
                    "cycles": args.cycles,
                    "seconds": round(took, 1),
                    "rss_before_mib": round(before / 2**20, 1),
                    "rss_after_mib": round(after / 2**20, 1),
                    "rss_growth_mib": round((after - before) / 2**20, 1),
                }
                if name == "analytics":
                    rt = srv.get("/analytics/realtime")
                    got |= {
                        "dirty_after": rt["dirty"],
                        "open_sessions_after": rt["open_sessions"],
                        "dropped": rt["dropped"],
                        "store_mib": round(rt["store_bytes"] / 2**20, 1),
                    }
                summary["churn"][name] = got
                print(f"churn {name}: {json.dumps(got)}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
