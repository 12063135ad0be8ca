#!/usr/bin/env python
"""CPU per chat on the fan-out hot path, in-process: a real service tree, no sockets.

    .venv/bin/python -m gamed.bench.fanout_micro [--rooms 50 --members 20] [--chats 20000]
        [--middleware none] [--repeat 5] [--json]

``makeService`` builds gamed as ``twistd gamed`` would (the suite's bench flags: rate
limits and flood detection off, nothing allowlisted, so every security check runs), on
a stand-in reactor. Each client is a ``GameProtocol`` on Twisted's TCP connection
class over a socket whose ``send`` takes everything and sends nothing (``len``): the
server's ``TurnWriter`` sends each member's frames once per turn on it, as on a real
socket, and whatever would reach Twisted's own buffer is emptied between rounds, as
``doWrite`` would. Member 0 of each room sends chats in turn, then the turn ends (the
writer's flush); the time is the process CPU per chat (frame parsing, decode, plugins,
the broadcast, the flush), min/median/max over rounds.

Instruction counts (repeatable on a loaded machine): run it under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0`` (a random seed changes dict
and set layouts, and the count by ~1k per chat) and a small ``--chats``; the
difference of two runs (e.g. 200 and 1,200 chats, same ``--warmup``) divided by the
difference in chats is the count per chat. ``--pipeline-timer`` installs the metrics
plugin's sampled per-plugin timing, as its service does when a server starts (the
services are not started here). To compare two checkouts, run this
module from each checkout's directory in turn.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import sys
import tempfile
import time
from typing import Any

import orjson
from twisted.internet import abstract, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import Clock
from zope.interface import implementer


@implementer(IReactorFDSet)
class _Reactor(Clock):
    """A Clock with the reader/writer registry a FileDescriptor needs (all no-ops)."""

    def addReader(self, r: object) -> None:
        pass

    def removeReader(self, r: object) -> None:
        pass

    def addWriter(self, w: object) -> None:
        pass

    def removeWriter(self, w: object) -> None:
        pass

    def getReaders(self) -> list[Any]:
        return []

    def getWriters(self) -> list[Any]:
        return []

    def removeAll(self) -> list[Any]:
        return []


class _NullSocket:
    """A socket that takes every byte at once: ``send`` is ``len`` (a C call, no syscall)."""

    send = staticmethod(len)


class BenchTransport(tcp.Connection):
    """Twisted's TCP connection (its buffered ``write`` and all) on a socket that sends
    nothing: gamed's ``TurnWriter`` sends on it as on a real one."""

    protocol: Any = None

    def __init__(self, reactor: _Reactor, port: int) -> None:
        abstract.FileDescriptor.__init__(self, reactor)  # not Connection's: no real socket
        self.socket: Any = _NullSocket()
        self.connected = 1
        self._peer = IPv4Address("TCP", "127.0.0.1", port)

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 7000)

    def setTcpNoDelay(self, on: bool) -> None:
        pass

    def drain(self) -> int:
        """Forget what was written (as a completed ``doWrite`` would); the bytes dropped."""
        n = len(self.dataBuffer) - self.offset + self._tempDataLen
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer = []
        self._tempDataLen = 0
        return n


def _frame(obj: object) -> bytes:
    payload = orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


def build(
    middleware: str | None, data_dir: str, pipeline_timer: bool = False
) -> tuple[Any, Any, _Reactor]:
    from gamed.protocol import GameFactory
    from gamed.tap import Options, makeService

    reactor = _Reactor()
    reactor.advance(1_700_000_000)
    toml = f"{data_dir}/bench.toml"
    with open(toml, "w") as f:
        f.write("[middleware.security]\nallowlist = []\nip_max_connections = 1000000\n")
    argv = ["--port", "tcp:0:interface=127.0.0.1", "--rate-limit", "0"]
    argv += ["--flood-detection", "off", "--config", toml, "--data-dir", data_dir]
    if middleware is not None:
        argv += ["--middleware", middleware]
    opts = Options()
    opts.parseOptions(argv)
    top = makeService(opts, reactor)
    router = top.router  # type: ignore[attr-defined]
    if pipeline_timer:
        # What the metrics plugin's service installs when it starts (the services are
        # not started here): the pipeline's sampled per-plugin timing.
        metrics: Any = top.getServiceNamed("middleware-metrics")  # type: ignore[attr-defined]
        router.set_pipeline_timer(metrics.collector.timer)
    return router, GameFactory(router, reactor), reactor


def setup(factory: Any, reactor: _Reactor, rooms: int, members: int) -> list[list[Any]]:
    out: list[list[Any]] = []
    uid = 1
    for r in range(rooms):
        room: list[Any] = []
        for _ in range(members):
            t = BenchTransport(reactor, 10000 + uid)
            p = factory.buildProtocol(t.getPeer())
            t.protocol = p
            p.makeConnection(t)
            p.dataReceived(_frame({"Connect": {"room_id": 0, "user_id": uid}}))
            p.dataReceived(
                _frame({"RoomJoin": {"user_id": uid, "room_id": r + 1, "nickname": f"u{uid}"}})
            )
            room.append((p, t, uid))
            uid += 1
        out.append(room)
    for room in out:
        for _, t, _ in room:
            t.drain()
    return out


def run_round(rooms: list[list[Any]], reactor: _Reactor, chats: int, router: Any) -> float:
    senders = [(room[0][0], room[0][2], i + 1) for i, room in enumerate(rooms)]
    frames = [
        _frame({"ChatMessage": {"user_id": uid, "room_id": rid, "message": "x" * 64}})
        for _, uid, rid in senders
    ]
    transports = [t for room in rooms for _, t, _ in room]
    hub_queue = _analytics_queue(router)
    n = 0
    elapsed = 0.0
    while n < chats:
        t0 = time.process_time()
        for (p, _, _), data in zip(senders, frames, strict=True):
            p.dataReceived(data)
        reactor.advance(0)  # the end of the reactor turn: gamed's TurnWriter sends
        elapsed += time.process_time() - t0
        n += len(senders)
        reactor.advance(0.002)
        for t in transports:
            t.drain()
        if hub_queue is not None:
            hub_queue.clear()  # the analytics batch would take them
    return elapsed / n


def _analytics_queue(router: Any) -> Any:
    for mw in router.pipeline.middleware:
        q = getattr(mw, "_queue", None)
        if q is not None:
            return q
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gamed.bench.fanout_micro")
    ap.add_argument("--rooms", type=int, default=50)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--chats", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2000, help="chats before the timed rounds")
    ap.add_argument("--middleware", default=None, help="as gamed's --middleware (default: all)")
    ap.add_argument(
        "--pipeline-timer",
        action="store_true",
        help="install the metrics plugin's pipeline timer, as a started server does",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gamed-micro-") as d:
        router, factory, reactor = build(args.middleware, d, args.pipeline_timer)
        rooms = setup(factory, reactor, args.rooms, args.members)
        run_round(rooms, reactor, args.warmup, router)
        gc.collect()
        times = [run_round(rooms, reactor, args.chats, router) for _ in range(args.repeat)]
    us = sorted(t * 1e6 for t in times)
    out = {
        "rooms": args.rooms,
        "members": args.members,
        "middleware": args.middleware or "default",
        "pipeline_timer": args.pipeline_timer,
        "us_per_chat": {"min": us[0], "median": statistics.median(us), "max": us[-1]},
    }
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        u = out["us_per_chat"]
        print(
            f"{args.rooms}x{args.members} middleware={out['middleware']}: "
            f"{u['median']:.2f} us/chat (min {u['min']:.2f}, max {u['max']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
