"""The "framework floor": NOT product code, a yardstick for gamed-bench.

A minimal Twisted Int32StringReceiver server speaking the gamed wire protocol with no
checks, limits, auth or games: the fastest a Twisted server of this shape can be.
gamed's numbers are read as a ratio to it. ``--turn-write`` gives it gamed's own write path
(``gamed.turnwrite``) instead of Twisted's ``transport.write``: the floor for what gamed
does above that (the suite's ``floor-turn`` target). Connect -> ConnectionAck, HeartBeat ->
HeartBeatResponse, RoomJoin/RoomLeave with notices, ChatMessage encoded once and
written to every member (sender included); anything else gets Error 404.

It lives in the package (not a script beside it) so the suite can start it by module
name from an installed wheel:

    python -m gamed.bench.floor --port 0 --json orjson   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorCore, IReactorTCP, ITCPTransport
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

_LEN = struct.Struct(">I")
ROOMS: dict[int, dict[Floor, None]] = {}
#: With ``--turn-write``: the TurnWriter every connection queues its output on.
TURN: Any = None


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


loads: Callable[[bytes], Any] = json.loads
dumps: Callable[[Any], bytes] = _stdlib_dumps


def use_json(mode: str) -> None:
    """Pick the JSON library for the whole process: ``stdlib`` or ``orjson``."""
    global loads, dumps
    if mode == "orjson":
        import orjson

        loads, dumps = orjson.loads, orjson.dumps
    else:
        loads, dumps = json.loads, _stdlib_dumps


def framed(obj: Any) -> bytes:
    payload = dumps(obj)
    return _LEN.pack(len(payload)) + payload


class Floor(Int32StringReceiver):
    """One client: just enough of the protocol for the bench scenarios, nothing checked."""

    MAX_LENGTH = 65536
    user_id: int | None = None
    room_id: int | None = None
    nick: str | None = None
    #: ``transport`` as what it is once connected (typed, and just as cheap to reach).
    tcp: ITCPTransport

    def connectionMade(self) -> None:
        self.tcp = ITCPTransport(self.transport)
        self.tcp.setTcpNoDelay(True)
        if TURN is not None:  # --turn-write: the same TurnWriter as gamed's
            self._out: list[bytes] | None = None
            self._turn = TURN
            self._raw = self.transport
            self.write = self._queue  # type: ignore[method-assign]

    def write(self, data: bytes) -> None:
        self.tcp.write(data)

    def _queue(self, data: bytes) -> None:
        # gamed's ConnectionBase._queue_frame, for the floor's one kind of connection.
        out = self._out
        if out is not None:
            out.append(data)
            return
        self._out = [data]
        self._turn.dirty.append(self)
        if self._turn.call is None:
            self._turn.schedule()

    def send(self, tag: str, **body: Any) -> None:
        self.write(framed({tag: body}))

    def stringReceived(self, data: bytes) -> None:
        msg = loads(data)
        if msg == "HeartBeat":
            self.send("HeartBeatResponse", timestamp=int(time.time()))
            return
        ((tag, body),) = msg.items()
        if tag == "ChatMessage":
            out = framed(msg)  # encode once, write the same bytes to every member
            for member in ROOMS.get(body["room_id"], ()):
                member.write(out)
        elif tag == "Connect":
            self.user_id = body["user_id"]
            self.send("ConnectionAck", user_id=self.user_id)
        elif tag == "RoomJoin":
            self.leave()
            self.room_id, self.nick = body["room_id"], body["nickname"]
            room = ROOMS.setdefault(body["room_id"], {})
            room[self] = None
            n = len(room)
            self.send("RoomJoinSuccess", room_id=self.room_id, user_count=n)
            self.notify("UserJoinedRoom", n)
        elif tag == "RoomLeave":
            room_id, n = self.room_id, self.leave()
            self.send("RoomLeaveSuccess", room_id=room_id, user_count=n)
        else:
            self.send("Error", code=404, message=f"floor: no {tag}")

    def notify(self, tag: str, count: int) -> None:
        if self.room_id is None:
            return
        body = dict(
            room_id=self.room_id, user_id=self.user_id, nickname=self.nick, user_count=count
        )
        out = framed({tag: body})
        for member in ROOMS.get(self.room_id, ()):
            if member is not self:
                member.write(out)

    def leave(self) -> int:
        """Leave the current room (if any); the members left behind."""
        if self.room_id is None:
            return 0
        room = ROOMS.get(self.room_id)
        if room is None or self not in room:
            return 0
        del room[self]
        self.notify("UserLeftRoom", len(room))
        if not room:
            del ROOMS[self.room_id]
        self.room_id = None
        return len(room)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._out = None
        self.write = self._dropped  # type: ignore[method-assign]
        self.leave()

    @staticmethod
    def _dropped(data: bytes) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gamed.bench.floor",
        description="gamed-bench floor server (not product code); 127.0.0.1 only",
    )
    ap.add_argument("--port", type=int, default=7001, help="0 picks a free port")
    ap.add_argument("--json", choices=("stdlib", "orjson"), default="stdlib")
    ap.add_argument(
        "--turn-write",
        action="store_true",
        help="write as gamed does (gamed.turnwrite: one send per connection per turn)",
    )
    args = ap.parse_args(argv)
    use_json(args.json)
    if args.turn_write:
        global TURN
        from gamed.turnwrite import TurnWriter

        TURN = TurnWriter(reactor)
    tcp: IReactorTCP = reactor
    factory = protocol.ServerFactory()
    factory.protocol = Floor
    address = tcp.listenTCP(args.port, factory, interface="127.0.0.1").getHost()
    assert isinstance(address, IPv4Address)
    print(f"PORT {address.port}", flush=True)
    core: IReactorCore = reactor
    core.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
