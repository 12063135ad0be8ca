"""The "framework floor": NOT product code, a yardstick for gamed-bench.

A minimal Twisted Int32StringReceiver server speaking the gamed wire protocol with no
checks, limits, auth or games: the fastest a Twisted server of this shape can be.
gamed's numbers are read as a ratio to it. Connect -> ConnectionAck, HeartBeat ->
HeartBeatResponse, RoomJoin/RoomLeave with notices, ChatMessage encoded once and
written to every member (sender included); anything else gets Error 404.

    python bench/floor_server.py --port 0 --json orjson   # prints "PORT <n>"
"""

import argparse
import json
import struct
import sys
import time

from twisted.internet import protocol, reactor
from twisted.protocols.basic import Int32StringReceiver

_LEN = struct.Struct(">I")
ROOMS: dict[int, dict["Floor", None]] = {}
loads, dumps = json.loads, lambda o: json.dumps(o, separators=(",", ":")).encode()


def framed(obj) -> bytes:
    payload = dumps(obj)
    return _LEN.pack(len(payload)) + payload


class Floor(Int32StringReceiver):
    MAX_LENGTH = 65536
    user_id = room_id = nick = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def send(self, tag, **body):
        self.transport.write(framed({tag: body}))

    def stringReceived(self, data):
        msg = loads(data)
        if msg == "HeartBeat":
            return self.send("HeartBeatResponse", timestamp=int(time.time()))
        ((tag, body),) = msg.items()
        if tag == "ChatMessage":
            out = framed(msg)  # encode once, write the same bytes to every member
            for member in ROOMS.get(body["room_id"], ()):
                member.transport.write(out)
        elif tag == "Connect":
            self.user_id = body["user_id"]
            self.send("ConnectionAck", user_id=self.user_id)
        elif tag == "RoomJoin":
            self.leave()
            self.room_id, self.nick = body["room_id"], body["nickname"]
            room = ROOMS.setdefault(self.room_id, {})
            room[self] = None
            n = len(room)
            self.send("RoomJoinSuccess", room_id=self.room_id, user_count=n)
            self.notify("UserJoinedRoom", n)
        elif tag == "RoomLeave":
            room_id, n = self.room_id, self.leave()
            self.send("RoomLeaveSuccess", room_id=room_id, user_count=n)
        else:
            self.send("Error", code=404, message=f"floor: no {tag}")

    def notify(self, tag, count):
        body = dict(
            room_id=self.room_id, user_id=self.user_id, nickname=self.nick, user_count=count
        )
        out = framed({tag: body})
        for member in ROOMS.get(self.room_id, ()):
            if member is not self:
                member.transport.write(out)

    def leave(self) -> int:
        room = ROOMS.get(self.room_id)
        if room is None or self not in room:
            return 0
        del room[self]
        self.notify("UserLeftRoom", len(room))
        if not room:
            del ROOMS[self.room_id]
        self.room_id = None
        return len(room)

    def connectionLost(self, reason):
        self.leave()


def main() -> None:
    global loads, dumps
    ap = argparse.ArgumentParser(description="gamed-bench floor server (not product code)")
    ap.add_argument("--port", type=int, default=7001, help="0 picks a free port")
    ap.add_argument("--json", choices=("stdlib", "orjson"), default="stdlib")
    args = ap.parse_args()
    if args.json == "orjson":
        import orjson

        loads, dumps = orjson.loads, orjson.dumps
    port = reactor.listenTCP(args.port, protocol.Factory.forProtocol(Floor), interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
