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
import pstats
import statistics
import struct
import sys
import time
from typing import Any

import orjson

from gamed.bench.fanout_micro import BenchTransport, _Reactor
from gamed.cluster.link import RedisLink, RespProtocol
from gamed.cluster.node import ClusterNode
from gamed.config import Settings
from gamed.rooms import Room, RoomService

ROOM = 1


class _Member:
    """A room member whose writes land in a list (cleared between rounds)."""

    def __init__(self, user_id: int, out: list[bytes]) -> None:
        self.user_id = user_id
        self.nickname = f"u{user_id}"
        self.send_frame = out.append


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
    rooms = RoomService(reactor, 1000, _NoEvents())
    link: BenchLink | None = None

    def factory(*args: Any) -> BenchLink:
        nonlocal link
        link = BenchLink(*args)
        return link

    node = ClusterNode(
        Settings(redis="redis://127.0.0.1:6379/0", node_id=name), reactor, rooms, link_factory=factory
    )
    node.startService()
    assert link is not None
    command, subscriber = link.connect(reactor)
    room = Room(ROOM, reactor.seconds())
    for i in range(members):
        room.members[i + 1] = _Member(i + 1, out)  # type: ignore[assignment]
    rooms._rooms[ROOM] = room
    return node, room, command, subscriber


class _NoEvents:
    def emit(self, event: object) -> None:
        pass


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
    one = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(ch), ch, len(payload), payload)
    return one * batch


class Bench:
    def __init__(self, members: int, batch: int) -> None:
        self.reactor = _Reactor()
        self.reactor.advance(1_700_000_000)
        self.delivered: list[bytes] = []
        self.a, self.room_a, self.cmd_a, self.sub_a = _node("a", self.reactor, 1, [])
        self.b, self.room_b, self.cmd_b, self.sub_b = _node("b", self.reactor, members, self.delivered)
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
    args = ap.parse_args(argv)
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
