"""The load generator's wire code: frames it builds, and frames it splits out of a stream."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from gamed import codec
from gamed import messages as m
from gamed.bench import wire


def server_frame(obj: object, *, stdlib: bool = False) -> bytes:
    payload = json.dumps(obj).encode() if stdlib else orjson.dumps(obj)
    return wire.frame(payload)


def chat(user_id: int, text: str, *, stdlib: bool = False) -> bytes:
    body = {"user_id": user_id, "room_id": 5, "message": text}
    return server_frame({"ChatMessage": body}, stdlib=stdlib)


def unframe(data: bytes) -> bytes:
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    return data[4:]


# -- what we send must be what the server accepts --------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (wire.connect(7), m.Connect(room_id=0, user_id=7)),
        (wire.HEARTBEAT, m.HeartBeat()),
        (wire.room_join(7, 5, "u7"), m.RoomJoin(user_id=7, room_id=5, nickname="u7")),
        (wire.room_leave(7, 5), m.RoomLeave(user_id=7, room_id=5)),
        (wire.chat(7, 5, "hi"), m.ChatMessage(user_id=7, room_id=5, message="hi")),
        (wire.start_game(5), m.StartGame(room_id=5)),
        (wire.toggle_ready(5), m.ToggleReady(room_id=5)),
        (
            wire.move(5, 1, 2.5, 0),
            m.PlayerAction(room_id=5, action=m.Move(x=1.0, y=2.5, direction=0.0)),
        ),
    ],
)
def test_client_frames_pass_the_servers_strict_decoder(data: bytes, expected: object) -> None:
    assert codec.decode(unframe(data)) == expected


def test_chat_template_builds_a_valid_chat_padded_to_size() -> None:
    tpl = wire.ChatTemplate(user_id=42, room_id=9, size=64)
    msg = codec.decode(unframe(tpl.build(3, 123456789)))
    assert msg == m.ChatMessage(user_id=42, room_id=9, message=tpl.text(3, 123456789).decode())
    assert msg.message.startswith("#42:3:123456789")
    assert len(msg.message) == 64


def test_chat_template_never_truncates_a_long_probe() -> None:
    tpl = wire.ChatTemplate(user_id=42, room_id=9, size=4)
    assert tpl.text(10**6, 10**18) == b"#42:1000000:1000000000000000000"


# -- receiving ----------------------------------------------------------------------------


def test_decode_plain_and_unit_variants() -> None:
    assert wire.decode(b'"HeartBeat"') == ("HeartBeat", None)
    assert wire.decode(b'{"ConnectionAck":{"user_id":7}}') == ("ConnectionAck", {"user_id": 7})
    with pytest.raises(wire.WireError):
        wire.decode(b"[1,2]")
    with pytest.raises(wire.WireError):
        wire.decode(b"not json")


def sample_stream(me: int) -> tuple[bytes, int, list[tuple[int, int]], list[bytes]]:
    """A mixed server stream; returns it with the expected chats, echoes and other payloads."""
    tpl = wire.ChatTemplate(me, 5, size=40)
    parts: list[bytes] = []
    echoes: list[tuple[int, int]] = []
    others: list[bytes] = []
    chats = 0
    ack = {"ConnectionAck": {"user_id": me}}
    parts.append(server_frame(ack))
    others.append(orjson.dumps(ack))
    for seq in range(1, 13):
        # someone whose id starts with ours must not count as our echo
        parts.append(chat(me * 10 + 7, f"#{me * 10 + 7}:{seq}:99"))
        parts.append(chat(me + 1, "hello, not a probe"))
        parts.append(chat(3, f"#{me}:looks like a probe but in the middle", stdlib=True))
        text = tpl.text(seq, 1000 + seq).decode()
        parts.append(chat(me, text, stdlib=seq % 2 == 0))
        chats += 4
        echoes.append((seq, 1000 + seq))
        if seq % 4 == 0:
            err = {"Error": {"code": 429, "message": "slow down"}}
            parts.append(server_frame(err))
            others.append(orjson.dumps(err))
    parts.append(wire.frame(b'"HeartBeatResponse"'))
    others.append(b'"HeartBeatResponse"')
    return b"".join(parts), chats, echoes, others


def feed_all(reader: wire.FrameReader, chunks: list[bytes]) -> wire.Batch:
    chats, echoes, others = 0, [], []
    for c in chunks:
        b = reader.feed(c)
        chats += b.chats
        echoes += b.echoes
        others += b.others
    return wire.Batch(chats, echoes, others)


def test_whole_stream_in_one_chunk() -> None:
    stream, chats, echoes, others = sample_stream(7)
    reader = wire.FrameReader(wire.own_marker(7))
    got = feed_all(reader, [stream])
    assert (got.chats, got.echoes, got.others) == (chats, echoes, others)
    assert reader.pending == 0


def test_every_split_point_gives_the_same_frames() -> None:
    stream, chats, echoes, others = sample_stream(7)
    for cut in range(len(stream) + 1):  # bounded: one pass per byte of a ~3 KB stream
        reader = wire.FrameReader(wire.own_marker(7))
        got = feed_all(reader, [stream[:cut], stream[cut:]])
        assert (got.chats, got.echoes, got.others) == (chats, echoes, others), cut
        assert reader.pending == 0


def test_random_chunking_and_byte_at_a_time() -> None:
    stream, chats, echoes, others = sample_stream(123)
    rng = random.Random(5)
    for _ in range(50):
        chunks, pos = [], 0
        while pos < len(stream):
            n = rng.randint(1, 40)
            chunks.append(stream[pos : pos + n])
            pos += n
        got = feed_all(wire.FrameReader(wire.own_marker(123)), chunks)
        assert (got.chats, got.echoes, got.others) == (chats, echoes, others)
    singles = [stream[i : i + 1] for i in range(len(stream))]
    got = feed_all(wire.FrameReader(wire.own_marker(123)), singles)
    assert (got.chats, got.echoes, got.others) == (chats, echoes, others)


def test_without_a_marker_chats_are_only_counted() -> None:
    stream, chats, _, others = sample_stream(7)
    got = feed_all(wire.FrameReader(), [stream])
    assert (got.chats, got.echoes, got.others) == (chats, [], others)


def test_partial_frame_is_held_back() -> None:
    data = chat(1, "abc")
    reader = wire.FrameReader()
    assert reader.feed(data[:-1]).chats == 0
    assert reader.pending == len(data) - 1
    assert reader.feed(data[-1:]).chats == 1
    assert reader.pending == 0


def test_chat_object_inside_another_frame_is_not_a_delivery() -> None:
    nested = server_frame({"History": {"items": [{"ChatMessage": {"message": "#7:1:2"}}]}})
    got = feed_all(wire.FrameReader(wire.own_marker(7)), [nested + chat(7, "#7:3:4")])
    assert got.chats == 1
    assert len(got.others) == 1


def test_absurd_length_prefix_is_an_error() -> None:
    reader = wire.FrameReader()
    with pytest.raises(wire.WireError):
        reader.feed((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"{}")
