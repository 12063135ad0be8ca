"""Client side of the gamed wire format, tuned for a load generator.

A frame is a 4-byte big-endian length then UTF-8 JSON in serde's externally tagged
form (docs/protocol.md). The load generator receives far more frames than it sends
(a chat in a room of 20 comes back 20 times), so the receive path must not decode
every ``ChatMessage``: ``FrameReader`` counts chat frames by their prefix, pulls the
sequence and send time out of the client's *own* echoes with a byte search, and only
hands the rest (acks, errors, game messages) over for a real JSON decode.

Client frames are built from byte templates instead of through ``gamed.codec`` so
the encoder is not on the load generator's budget either; ``decode`` is the codec's
loose ``decode_any``, with its errors as ``WireError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from gamed.codec import DecodeError, decode_any

_LEN = struct.Struct(">I")
#: Both orjson (``{"ChatMessage":{``) and stdlib json (``{"ChatMessage": {``) start so.
CHAT_PREFIX = b'{"ChatMessage"'
#: Larger than any sane server frame; a bigger prefix means the stream is garbage.
MAX_FRAME = 16 * 1024 * 1024


class WireError(ValueError):
    """The server sent something that is not a gamed frame; the connection is unusable."""


def frame(payload: bytes) -> bytes:
    """Prefix a JSON payload with its 4-byte big-endian length."""
    return _LEN.pack(len(payload)) + payload


def dumps(obj: Any) -> bytes:
    """Framed JSON for any message object (orjson; for the cold path)."""
    return frame(orjson.dumps(obj))


def decode(payload: bytes) -> tuple[str, Any]:
    """``(tag, body)`` of one server frame; body is None for a unit variant like ``"HeartBeat"``."""
    try:
        return decode_any(payload)
    except orjson.JSONDecodeError as e:
        raise WireError(f"not JSON: {payload[:80]!r}") from e
    except DecodeError as e:
        raise WireError(str(e)) from e


# -- client messages ------------------------------------------------------------

HEARTBEAT = frame(b'"HeartBeat"')


def connect(user_id: int, room_id: int = 0, token: str | None = None) -> bytes:
    """``Connect``: must be the first frame of a connection."""
    body: dict[str, Any] = {"room_id": room_id, "user_id": user_id}
    if token is not None:
        body["token"] = token
    return dumps({"Connect": body})


def room_join(user_id: int, room_id: int, nickname: str) -> bytes:
    return dumps({"RoomJoin": {"user_id": user_id, "room_id": room_id, "nickname": nickname}})


def room_leave(user_id: int, room_id: int) -> bytes:
    return dumps({"RoomLeave": {"user_id": user_id, "room_id": room_id}})


def chat(user_id: int, room_id: int, message: str) -> bytes:
    return dumps({"ChatMessage": {"user_id": user_id, "room_id": room_id, "message": message}})


def start_game(room_id: int) -> bytes:
    return dumps({"StartGame": {"room_id": room_id}})


def toggle_ready(room_id: int) -> bytes:
    return dumps({"ToggleReady": {"room_id": room_id}})


def move(room_id: int, x: float, y: float, direction: float) -> bytes:
    action = {"Move": {"x": float(x), "y": float(y), "direction": float(direction)}}
    return dumps({"PlayerAction": {"room_id": room_id, "action": action}})


def own_marker(user_id: int) -> bytes:
    """The bytes that open a JSON string holding one of ``user_id``'s probe chats.

    Another user's marker cannot match inside it: the colon ends the id.
    """
    return b'"#%d:' % user_id


class ChatTemplate:
    """Builds probe chats ``#<uid>:<seq>:<send ns><padding>`` as framed bytes, fast.

    The text carries the sequence number and the monotonic send time, so the echo
    alone gives the latency (no per-client bookkeeping that an error could desync).
    ``size`` pads the text with dots up to that many bytes (never truncates it).
    """

    __slots__ = ("_dots", "_fixed", "_head", "_prefix", "_size")

    _TAIL = b'"}}'

    def __init__(self, user_id: int, room_id: int, size: int = 0) -> None:
        self._head = b'{"ChatMessage":{"user_id":%d,"room_id":%d,"message":"#%d:' % (
            user_id,
            room_id,
            user_id,
        )
        self._prefix = b"#%d:" % user_id
        self._fixed = len(self._prefix)
        self._size = size
        self._dots = b"." * size  # '.' needs no JSON escaping

    def text(self, seq: int, sent_ns: int) -> bytes:
        """The message text alone (what the server echoes back)."""
        core = b"%d:%d" % (seq, sent_ns)
        return self._prefix + core + self._dots[: max(0, self._size - self._fixed - len(core))]

    def build(self, seq: int, sent_ns: int) -> bytes:
        core = b"%d:%d" % (seq, sent_ns)
        payload = self._head + core + self._dots[: max(0, self._size - self._fixed - len(core))]
        payload += self._TAIL
        return _LEN.pack(len(payload)) + payload


# -- receiving ---------------------------------------------------------------------


class Batch(NamedTuple):
    """What one chunk of received bytes completed, in arrival order within each field."""

    chats: int
    #: ``(seq, sent_ns)`` of this client's own probe chats that came back.
    echoes: Sequence[tuple[int, int]]
    #: Payloads (no length prefix) of every frame that is not a ChatMessage.
    others: Sequence[bytes]


_NONE: tuple[Any, ...] = ()


class FrameReader:
    """Splits a TCP byte stream into frames; a frame may straddle any number of chunks.

    The per-frame Python work is only the walk over the length prefixes (the receive path
    is the generator's budget: ~20 frames arrive per chat sent). Chats are then counted and
    own echoes found with one C-level ``count``/``find`` over all complete frames: in JSON
    the bytes ``{"ChatMessage"`` and ``"#<uid>:`` cannot occur inside a string (its quotes
    would be escaped), so they only occur where a frame or a message text starts.
    """

    __slots__ = ("_buf", "_marker", "_mlen")

    def __init__(self, marker: bytes | None = None) -> None:
        self._buf = b""
        self._marker = marker
        self._mlen = len(marker) if marker else 0

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Batch:
        """Consume ``data``; return the complete frames it finished."""
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        unpack = _LEN.unpack_from
        startswith = buf.startswith
        others: list[bytes] | None = None
        while n - pos >= 4:
            size = unpack(buf, pos)[0]
            end = pos + 4 + size
            if end > n:
                if size > MAX_FRAME:
                    raise WireError(f"frame length {size} exceeds {MAX_FRAME}: stream out of sync")
                break
            if not startswith(CHAT_PREFIX, pos + 4):
                if others is None:
                    others = []
                others.append(buf[pos + 4 : end])
            pos = end
        self._buf = buf[pos:] if pos < n else b""
        if pos == 0:
            return Batch(0, _NONE, _NONE)
        return self._batch(buf, pos, others)

    def _batch(self, buf: bytes, pos: int, others: list[bytes] | None) -> Batch:
        """The ``Batch`` of the ``pos`` bytes read: ``others`` are the non-chat payloads."""
        chats = buf.count(CHAT_PREFIX, 0, pos)
        if others is not None:
            # a non-chat frame could embed a chat object (say, a history replay)
            chats -= sum(p.count(CHAT_PREFIX) for p in others)
        echoes: list[tuple[int, int]] | None = None
        marker = self._marker
        if marker is not None and chats:
            echoes = _echoes(buf, pos, marker, self._mlen)
        return Batch(chats, echoes or _NONE, others or _NONE)


def _echoes(buf: bytes, pos: int, marker: bytes, mlen: int) -> list[tuple[int, int]]:
    """``(seq, sent_ns)`` of the client's own probe chats in ``buf[:pos]`` (see FrameReader)."""
    echoes: list[tuple[int, int]] = []
    i = buf.find(marker, 0, pos)
    while i >= 0:
        j = i + mlen
        k = buf.find(b'"', j, pos)
        if k < 0:
            break
        parts = buf[j:k].split(b":")
        if len(parts) == 2:
            digits = parts[1]
            dot = digits.find(b".")  # the padding follows the send time
            if dot >= 0:
                digits = digits[:dot]
            try:
                echoes.append((int(parts[0]), int(digits)))
            except ValueError:
                pass  # someone else's text that merely looks like a probe
        i = buf.find(marker, k, pos)
    return echoes
