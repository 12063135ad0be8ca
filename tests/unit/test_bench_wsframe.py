"""The load generator's client half of RFC 6455 (gamed/bench/wsframe.py), against autobahn's
server framing: the same Batch as the TCP FrameReader, frames split anywhere."""

from __future__ import annotations

import orjson
import pytest

from gamed import codec
from gamed import messages as m
from gamed.bench import wire, wsframe
from gamed.websocket import text_message


def server_stream(*messages: object) -> bytes:
    """What gamed writes to a WebSocket client: autobahn's framing of each protocol frame."""
    return b"".join(text_message(codec.frame(msg)) for msg in messages)


def chat(uid: int, text: str) -> m.ChatMessage:
    return m.ChatMessage(uid, 5, text)


def test_chats_are_counted_and_own_echoes_found_in_the_raw_stream() -> None:
    reader = wsframe.WsFrameReader(wire.own_marker(7))
    data = server_stream(
        chat(7, "#7:1:123..."), chat(8, "#8:1:5"), m.HeartBeatResponse(3), chat(7, "#7:2:456")
    )
    batch = reader.feed(data)
    assert batch.chats == 3
    assert list(batch.echoes) == [(1, 123), (2, 456)]
    assert [orjson.loads(p) for p in batch.others] == [{"HeartBeatResponse": {"timestamp": 3}}]


@pytest.mark.parametrize("size", [10, 200, 70_000])  # 7-bit, 16-bit and 64-bit lengths
def test_a_frame_split_at_every_byte_comes_out_once(size: int) -> None:
    data = server_stream(m.SystemMessage("s" * size), chat(1, "hi"))
    reader = wsframe.WsFrameReader()
    step = 1 if size < 1000 else 997
    chats, others = 0, []
    for i in range(0, len(data), step):
        batch = reader.feed(data[i : i + step])
        chats += batch.chats
        others += batch.others
    assert chats == 1
    assert [orjson.loads(p)["SystemMessage"]["message"] for p in others] == ["s" * size]
    assert reader.pending == 0


def test_control_frames_are_handed_over() -> None:
    reader = wsframe.WsFrameReader()
    data = bytes((0x89, 2)) + b"hi" + bytes((0x88, 2)) + b"\x03\xe9"
    assert reader.feed(data).others == ()
    assert reader.control == [(wsframe.PING, b"hi"), (wsframe.CLOSE, b"\x03\xe9")]
    assert wsframe.parse_close(reader.control[1][1]) == (1001, "")


def test_client_frames_are_masked_and_round_trip() -> None:
    key = b"\x11\x22\x33\x44"
    frames = wsframe.text_frames(wire.chat(1, 5, "hé") + wire.HEARTBEAT, key)
    payloads, i = [], 0
    while i < len(frames):
        assert frames[i] == 0x81 and frames[i + 1] & 0x80  # FIN + text, masked
        n = frames[i + 1] & 0x7F
        mask_key = frames[i + 2 : i + 6]
        payloads.append(wsframe.mask(frames[i + 6 : i + 6 + n], mask_key))
        i += 6 + n
    assert [orjson.loads(p) for p in payloads] == [
        {"ChatMessage": {"user_id": 1, "room_id": 5, "message": "hé"}},
        "HeartBeat",
    ]


def test_a_masked_server_frame_is_a_wire_error() -> None:
    with pytest.raises(wire.WireError):
        wsframe.WsFrameReader().feed(bytes((0x81, 0x82)) + b"\0\0\0\0ab")
