#!/usr/bin/env python
"""CPU per relayed chat on the cluster's relay path, in-process: sender and receiver apart.

    PYTHONHASHSEED=0 .venv/bin/python -m gamed.bench.relay_micro [--chats 20000]
        [--batch 1] [--members 1] [--side both|sender|receiver] [--repeat 5]
        [--profile] [--json]

Two ``ClusterNode``s ("a" sends, "b" receives) built as ``startService`` builds them,
each on a real ``RedisLink`` whose two connections are ``RespProtocol``s on Twisted's
buffered writer (``FileDescriptor.write``, as a TCP transport) with no socket behind it.
What Redis would do is played from bytes: the sender gets ``:1`` per PUBLISH, the
receiver the ``message`` pushes Redis writes for them, ``--batch`` of them per read
(1: a quiet node, one read per message; a busy one reads many at once).

* sender: ``ClusterNode.relay`` (envelope, ``RedisLink.publish``, the write) plus
  reading the PUBLISH replies;
* receiver: ``dataReceived`` on the subscriber (hiredis), the handler, the envelope's
  decode, dispatch, ``RoomService.deliver`` to ``--members`` members whose
  ``send_frame`` is a list's ``append`` (a member's write is not relay cost).

Not counted: the syscalls and the reactor's ``doRead``/``doWrite`` (the same per read
or write whatever the relay does), and redis-server.

Instruction counts (repeatable on a loaded machine): run under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, ``--repeat 1`` and a small
``--chats`` for one ``--side``; the difference of two runs (e.g. 500 and 2,500 chats)
divided by the difference in chats is the count per relayed chat.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from gamed.bench.fanout_micro import BenchTransport, _Reactor
from gamed.bench.redisserver import redis_server_argv
from gamed.cluster.link import RedisLink, RespProtocol
from gamed.cluster.node import ClusterNode
from gamed.config import Settings
from gamed.events import EventBus
from gamed.rooms import Room, RoomService

ROOM = 1


class _Member:
    """A room member whose writes land in a list (cleared between rounds)."""

    def __init__(self, user_id: int, sink: Callable[[bytes], None]) -> None:
        self.user_id = user_id
        self.nickname = f"u{user_id}"
        self.send_frame = sink


class BenchLink(RedisLink):
    """A RedisLink whose connections are made by ``connect`` on bench transports."""

    def start(self) -> None:
        self._running = True

    def connect(self, reactor: _Reactor) -> tuple[BenchTransport, BenchTransport]:
        out = []
        for conn in (self.command, self.subscriber):  # command first: no probe queued
            conn.stopped = False
            t = BenchTransport(reactor, 6379)
            p = RespProtocol(conn, conn.encoding)
            t.protocol = p
            p.makeConnection(t)
            out.append(t)
        assert self.command.ready and self.subscriber.ready
        return out[0], out[1]


def _node(name: str, reactor: _Reactor, members: int, out: list[bytes]) -> Any:
    rooms = RoomService(reactor, 1000, EventBus())
    link: BenchLink | None = None

    def factory(*args: Any) -> BenchLink:
        nonlocal link
        link = BenchLink(*args)
        return link

    node = ClusterNode(
        Settings(redis="redis://127.0.0.1:6379/0", node_id=name),
        reactor,
        rooms,
        link_factory=factory,
    )
    node.startService()
    assert link is not None
    command, subscriber = link.connect(reactor)
    room = Room(ROOM, reactor.seconds())
    for i in range(members):
        room.members[i + 1] = _Member(i + 1, out.append)  # type: ignore[assignment]
    rooms._rooms[ROOM] = room
    return node, room, command, subscriber


def chat_frame() -> bytes:
    payload = orjson.dumps(
        {"ChatMessage": {"user_id": 1, "room_id": ROOM, "nickname": "u1", "message": "x" * 64}}
    )
    return struct.pack(">I", len(payload)) + payload


def pushes(node: ClusterNode, frame: bytes, batch: int) -> bytes:
    """What Redis writes to ``node``'s subscriber for ``batch`` relayed chats."""
    from gamed.cluster import envelope as env

    ch = f"gamed:n:{node.node_id}".encode()
    payload = env.room_frame(ROOM, frame)
    one = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(ch),
        ch,
        len(payload),
        payload,
    )
    return one * batch


class Bench:
    def __init__(self, members: int, batch: int) -> None:
        self.reactor = _Reactor()
        self.reactor.advance(1_700_000_000)
        self.delivered: list[bytes] = []
        self.a, self.room_a, self.cmd_a, self.sub_a = _node("a", self.reactor, 1, [])
        self.b, self.room_b, self.cmd_b, self.sub_b = _node(
            "b", self.reactor, members, self.delivered
        )
        self.room_a.remote = {"b": members}
        self.room_a.total = members + 1
        self.room_b.remote = {"a": 1}
        self.frame = chat_frame()
        self.batch = batch
        self.replies = b":1\r\n" * batch
        self.data = pushes(self.b, self.frame, batch)
        self.members = members
        for t in (self.cmd_a, self.sub_a, self.cmd_b, self.sub_b):
            t.drain()

    def sender(self, chats: int) -> float:
        """CPU per chat of relay + reading the PUBLISH replies (and emptying the buffer,
        as ``doWrite`` would)."""
        relay, room, frame, batch = self.a.relay, self.room_a, self.frame, self.batch
        reply = self.cmd_a.protocol.dataReceived
        replies, drain = self.replies, self.cmd_a.drain
        inner = range(batch)
        t0 = time.process_time()
        for _ in range(chats // batch):
            for _ in inner:
                relay(room, frame)
            reply(replies)
            drain()
        elapsed = time.process_time() - t0
        assert not self.cmd_a.protocol.queue
        return elapsed / (chats // batch * batch)

    def receiver(self, chats: int) -> float:
        """CPU per chat of the subscriber's read through to the members' send_frame."""
        feed, data, batch = self.sub_b.protocol.dataReceived, self.data, self.batch
        clear = self.delivered.clear
        before = self.b.deliveries_in
        rounds = chats // batch
        t0 = time.process_time()
        for _ in range(rounds):
            feed(data)
            clear()
        elapsed = time.process_time() - t0
        assert self.b.deliveries_in - before == rounds * batch * self.members
        return elapsed / (rounds * batch)


def _redis_cpu(pid: int) -> float:
    """redis-server's CPU seconds so far (utime + stime, clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def real(chats: int, batch: int) -> dict[str, float]:
    """Both nodes in this process on the real reactor and a real redis-server (a free
    127.0.0.1 port, no persistence): ``batch`` chats relayed per turn, the next batch once
    the receiver has them all. CPU per relayed chat of this process (both nodes: their
    reads, writes and syscalls) and of redis-server."""
    import shutil
    import socket
    import subprocess
    import tempfile

    from twisted.internet import reactor

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="gamed-relay-")
    proc = subprocess.Popen(
        redis_server_argv(exe, port, tmp),
        stdout=subprocess.DEVNULL,
    )
    out: dict[str, float] = {}
    try:
        got = [0]
        nodes = []
        for name in ("a", "b"):
            rooms = RoomService(reactor, 1000, EventBus())
            node = ClusterNode(
                Settings(redis=f"redis://127.0.0.1:{port}/0", node_id=name), reactor, rooms
            )
            room = Room(ROOM, reactor.seconds())
            rooms._rooms[ROOM] = room
            nodes.append((node, room))
        (a, room_a), (b, room_b) = nodes
        local: list[bytes] = []  # the sender's own member (its writes are not relay cost)
        room_a.members[1] = _Member(1, local.append)  # type: ignore[assignment]
        room_a.remote, room_b.remote = {"b": 1}, {"a": 1}
        frame = chat_frame()
        state: dict[str, float] = {}

        def received(_: bytes) -> None:
            got[0] += 1
            if got[0] == state["sent"]:
                if got[0] >= chats:
                    state["cpu"] = time.process_time() - state["t0"]
                    state["redis"] = _redis_cpu(proc.pid) - state["r0"]
                    reactor.stop()
                else:
                    reactor.callLater(0, send)

        room_b.members[2] = _Member(2, received)  # type: ignore[assignment]

        def send() -> None:
            for _ in range(batch):
                a.relay(room_a, frame)
            state["sent"] += batch

        def ready(deadline: float) -> None:
            if a.state == "up" and b.state == "up":
                state.update(sent=0, t0=time.process_time(), r0=_redis_cpu(proc.pid))
                send()
            elif time.monotonic() > deadline:
                reactor.stop()
            else:
                reactor.callLater(0.05, ready, deadline)

        for node, _ in nodes:
            node.startService()
        reactor.callLater(0.05, ready, time.monotonic() + 15)
        reactor.run()
        if "cpu" not in state:
            raise SystemExit(f"not done: links {a.state}/{b.state}, {got[0]} of {chats} relayed")
        n = got[0]
        out = {"node_us": state["cpu"] / n * 1e6, "redis_us": state["redis"] / n * 1e6}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gamed.bench.relay_micro")
    ap.add_argument("--chats", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1, help="messages (and replies) per read")
    ap.add_argument("--members", type=int, default=1, help="the receiving node's members")
    ap.add_argument("--side", choices=("both", "sender", "receiver"), default="both")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile one round of each side")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--redis", action="store_true", help="both nodes on a real redis-server, real sockets"
    )
    args = ap.parse_args(argv)
    if args.redis:
        r = real(args.chats, args.batch)
        print(
            orjson.dumps(r).decode()
            if args.json
            else f"nodes {r['node_us']:.2f} µs + redis-server {r['redis_us']:.2f} µs per relayed "
            f"chat ({args.chats} chats, batch {args.batch})"
        )
        return 0
    bench = Bench(args.members, args.batch)
    sides = ("sender", "receiver") if args.side == "both" else (args.side,)
    out: dict[str, Any] = {"batch": args.batch, "members": args.members, "chats": args.chats}
    for side in sides:
        run = getattr(bench, side)
        run(args.warmup)
        gc.collect()
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(run, args.chats)
            print(f"--- {side}: {args.chats} chats", file=sys.stderr)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(14)
            continue
        us = sorted(run(args.chats) * 1e6 for _ in range(args.repeat))
        out[side] = {"min": us[0], "median": statistics.median(us), "max": us[-1]}
    if args.json:
        print(orjson.dumps(out).decode())
    elif not args.profile:
        for side in sides:
            s = out[side]
            print(
                f"{side:9} {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} µs per relayed "
                f"chat (min/median/max of {args.repeat} x {args.chats}, batch {args.batch})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
