"""What nodes publish to each other's channel (``gamed:n:{node}``): one envelope per message.

An envelope is one kind byte, an ASCII header of space-separated fields, a newline,
then a body of ready-made client frames (each with its 4-byte length prefix, so the
receiving node writes them as they are: encoded once, on the sending node)::

    F<room>\\n<frame>                               a frame for the room's members
    M<room> <node> <n> <total>\\n[<frame>...]       <node> has <n> members in <room>, the
                                                   room <total>; then notices to deliver
    K<user> <epoch>\\n                              close <user>'s session older than <epoch>
    X<user> <code>\\n<text>                        an operator's kick: close <user>'s session
                                                   with Error{<code>, <text>}

The node dispatches on the kind byte through a table (``ClusterNode.handlers``): a new
kind (games across nodes: ``G``) is one more entry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

FRAME = ord("F")
MEMBERS = ord("M")
KICK = ord("K")
ADMIN_KICK = ord("X")

_LENGTH = struct.Struct(">I")


class BadEnvelope(ValueError):
    """An envelope this node cannot read (another version, or damage): counted, dropped."""


def room_frame(room_id: int, frame: bytes) -> bytes:
    return b"F%d\n" % room_id + frame


def members(room_id: int, node: str, n: int, total: int, frames: bytes = b"") -> bytes:
    return b"M%d %s %d %d\n" % (room_id, node.encode(), n, total) + frames


def kick(user_id: int, epoch: str) -> bytes:
    return b"K%d %s\n" % (user_id, epoch.encode())


def admin_kick(user_id: int, code: int, text: str) -> bytes:
    return b"X%d %d\n" % (user_id, code) + text.encode()


def split(payload: bytes) -> tuple[int, list[bytes], bytes]:
    """(kind, header fields, body) of an envelope; BadEnvelope if it is not one."""
    end = payload.find(b"\n")
    if end < 1:
        raise BadEnvelope("no header")
    return payload[0], payload[1:end].split(b" "), payload[end + 1 :]


def frames(body: bytes) -> Iterator[bytes]:
    """The length-prefixed frames of a body, one by one (a transport takes one per call)."""
    at, size = 0, len(body)
    while at < size:
        if at + 4 > size:
            raise BadEnvelope("truncated frame length")
        (n,) = _LENGTH.unpack_from(body, at)
        end = at + 4 + n
        if end > size:
            raise BadEnvelope("truncated frame")
        yield body[at:end]
        at = end
