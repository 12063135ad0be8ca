"""Client side of RFC 6455 for the load generator (and raw-socket tests): just what gamed needs.

The server side is autobahn (gamed.websocket); this is a client, kept minimal and
fast for the same reason as ``wire.FrameReader``: a chat in a room of 20 comes
back 20 times, so the receive path walks frame headers and counts chats with one
C-level ``count`` over the raw stream (a frame header cannot contain
``{"ChatMessage"``). Client frames are masked (the RFC requires it) with one
random key per connection, XORed as one big integer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from gamed.bench.wire import _NONE, CHAT_PREFIX, MAX_FRAME, Batch, FrameReader, WireError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0

_LEN = struct.Struct(">I")
_H = struct.Struct(">H")
_Q = struct.Struct(">Q")


def handshake_request(
    host: str, port: int, path: str = "/ws", origin: str | None = None
) -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value the server must answer."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        b"GET %s HTTP/1.1" % path.encode(),
        b"Host: %s:%d" % (host.encode(), port),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(b"Origin: " + origin.encode())
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return b"\r\n".join(lines) + b"\r\n\r\n", accept


def check_handshake_response(head: bytes, accept: bytes) -> None:
    """Raise WireError unless ``head`` (up to the blank line) is a 101 with the right accept."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise WireError(f"WebSocket handshake refused: {lines[0][:80]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept" and value.strip() == accept:
            return
    raise WireError("WebSocket handshake: missing or wrong Sec-WebSocket-Accept")


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return payload
    stream = key * (n // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(
        n, "little"
    )


def encode(opcode: int, payload: bytes, key: bytes | None = None, fin: bool = True) -> bytes:
    """One client frame (masked with ``key``, or a fresh random one)."""
    if key is None:
        key = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + _H.pack(n)
    else:
        head = bytes((b0, 0x80 | 127)) + _Q.pack(n)
    return head + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return _H.pack(code) + reason.encode()[:123]


def text_frames(prefixed: bytes, key: bytes) -> bytes:
    """Length-prefixed gamed frames (``wire``'s encoders) as masked WebSocket text frames."""
    out = []
    pos, n = 0, len(prefixed)
    while pos + 4 <= n:
        size = _LEN.unpack_from(prefixed, pos)[0]
        out.append(encode(TEXT, prefixed[pos + 4 : pos + 4 + size], key))
        pos += 4 + size
    return b"".join(out)


class WsFrameReader(FrameReader):
    """``FrameReader`` for a server's WebSocket stream: the same ``Batch`` out.

    Text messages are the frames; control frames land in ``control`` as
    ``(opcode, payload)`` for the connection to answer (ping -> pong, close).
    A fragmented message is reassembled (the server does not fragment, but may).
    """

    __slots__ = ("_fragments", "control")

    def __init__(self, marker: bytes | None = None) -> None:
        super().__init__(marker)
        self.control: list[tuple[int, bytes]] = []
        self._fragments: list[bytes] | None = None

    def feed(self, data: bytes) -> Batch:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        startswith = buf.startswith
        others: list[bytes] | None = None
        while n - pos >= 2:
            b0 = buf[pos]
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size = _H.unpack_from(buf, pos + 2)[0]
                head = 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = _Q.unpack_from(buf, pos + 2)[0]
                head = 10
                if size > MAX_FRAME:
                    raise WireError(f"frame length {size} exceeds {MAX_FRAME}")
            if buf[pos + 1] & 0x80:
                raise WireError("a server frame is masked")
            start = pos + head
            end = start + size
            if end > n:
                break
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == TEXT and fin:
                if not startswith(CHAT_PREFIX, start):
                    if others is None:
                        others = []
                    others.append(buf[start:end])
            elif opcode >= 0x8:
                self.control.append((opcode, buf[start:end]))
            elif opcode == TEXT or opcode == CONTINUATION:
                if opcode == TEXT:
                    self._fragments = []
                if self._fragments is None:
                    raise WireError("continuation frame without a message")
                self._fragments.append(buf[start:end])
                if fin:
                    # Decoded like any other message; its pieces' prefix counts
                    # cancel out against the whole's (see the count below).
                    if others is None:
                        others = []
                    others.append(b"".join(self._fragments))
                    self._fragments = None
            else:
                raise WireError(f"unexpected opcode {opcode}")
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        if pos == 0:
            return Batch(0, _NONE, others or _NONE)
        # Frame headers cannot hold the prefix: one count over the raw stream, less
        # what the decoded messages hold (the server does not fragment chats).
        return self._batch(buf, pos, others)


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """``(code, reason)`` of a close frame's payload (code None: the frame had none)."""
    if len(payload) < 2:
        return None, ""
    return _H.unpack_from(payload)[0], payload[2:].decode(errors="replace")
