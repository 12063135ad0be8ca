"""gamed.codec: strict decoding of client frames, encoding and framing of server frames."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gamed import codec
from gamed import messages as m
from gamed.codec import DecodeError, decode

U32_MAX = 2**32 - 1


def j(obj: object) -> bytes:
    return orjson.dumps(obj)


def rejects(payload: bytes, *fragments: str) -> str:
    """Assert ``payload`` is refused with a DecodeError whose text holds every fragment."""
    with pytest.raises(DecodeError) as info:
        decode(payload)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert info.value.code == 400
    return text


# -- every client variant decodes to its class ----------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ({"Connect": {"room_id": 0, "user_id": 7}}, m.Connect(0, 7, None, None)),
        (
            {"Connect": {"room_id": 1, "user_id": 7, "token": "abc:1", "nickname": "neo"}},
            m.Connect(1, 7, "abc:1", "neo"),
        ),
        (
            {"Connect": {"room_id": 1, "user_id": 7, "nickname": "neo"}},
            m.Connect(1, 7, None, "neo"),
        ),
        ({"Connect": {"room_id": 1, "user_id": 7, "token": "t"}}, m.Connect(1, 7, "t", None)),
        (
            {"Connect": {"room_id": 1, "user_id": 7, "token": None, "nickname": None}},
            m.Connect(1, 7, None, None),
        ),
        ("HeartBeat", m.HeartBeat()),
        ({"HeartBeat": None}, m.HeartBeat()),
        (
            {"RoomJoin": {"user_id": 7, "room_id": 5, "nickname": "neo"}},
            m.RoomJoin(7, 5, "neo"),
        ),
        ({"RoomLeave": {"user_id": 7, "room_id": 5}}, m.RoomLeave(7, 5)),
        (
            {"ChatMessage": {"user_id": 7, "room_id": 5, "message": "hi ☃"}},
            m.ChatMessage(7, 5, "hi ☃"),
        ),
        ({"StartGame": {"room_id": 5}}, m.StartGame(5)),
        ({"ToggleReady": {"room_id": 5}}, m.ToggleReady(5)),
        (
            {
                "PlayerAction": {
                    "room_id": 5,
                    "action": {"Move": {"x": 1.5, "y": -2, "direction": 0}},
                }
            },
            m.PlayerAction(5, m.Move(1.5, -2.0, 0.0)),
        ),
        (
            {"PlayerAction": {"room_id": 5, "action": {"Attack": {"target_id": 8, "damage": -3}}}},
            m.PlayerAction(5, m.Attack(8, -3)),
        ),
        (
            {"PlayerAction": {"room_id": 5, "action": {"UseItem": {"item_id": "potion"}}}},
            m.PlayerAction(5, m.UseItem("potion")),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_client_variants_decode_to_their_class(wire: object, expected: object) -> None:
    msg = decode(j(wire))
    assert type(msg) is type(expected)
    assert msg == expected


def test_heartbeat_is_a_unit_variant() -> None:
    assert isinstance(decode(b'"HeartBeat"'), m.HeartBeat)
    assert isinstance(decode(b'{"HeartBeat":null}'), m.HeartBeat)
    # whitespace around the JSON value is fine
    assert isinstance(decode(b'  "HeartBeat"\n'), m.HeartBeat)


def test_move_coordinates_are_floats_even_from_integers() -> None:
    msg = decode(
        j({"PlayerAction": {"room_id": 1, "action": {"Move": {"x": 3, "y": 4, "direction": 5}}}})
    )
    assert isinstance(msg, m.PlayerAction)
    assert isinstance(msg.action, m.Move)
    assert all(type(v) is float for v in (msg.action.x, msg.action.y, msg.action.direction))


def test_unknown_extra_fields_are_ignored() -> None:
    msg = decode(
        j({"RoomJoin": {"user_id": 7, "room_id": 5, "nickname": "neo", "colour": "red", "x": [1]}})
    )
    assert msg == m.RoomJoin(7, 5, "neo")
    msg = decode(
        j(
            {
                "PlayerAction": {
                    "room_id": 5,
                    "future": True,
                    "action": {"Attack": {"target_id": 1, "damage": 2, "crit": True}},
                }
            }
        )
    )
    assert msg == m.PlayerAction(5, m.Attack(1, 2))


def test_u32_and_i32_bounds_are_accepted() -> None:
    assert decode(j({"StartGame": {"room_id": U32_MAX}})) == m.StartGame(U32_MAX)
    assert decode(j({"StartGame": {"room_id": 0}})) == m.StartGame(0)
    for damage in (-(2**31), 2**31 - 1, 0):
        msg = decode(
            j(
                {
                    "PlayerAction": {
                        "room_id": 1,
                        "action": {"Attack": {"target_id": 2, "damage": damage}},
                    }
                }
            )
        )
        assert msg.action.damage == damage


# -- rejections -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"hello", b"{'HeartBeat': null}", b'"HeartBeat" "HeartBeat"', b"NaN"],
)
def test_not_json(payload: bytes) -> None:
    rejects(payload, "not valid JSON")


@pytest.mark.parametrize(
    ("payload", "at"),
    [
        (b'"\xff"', 1),
        (b'{"ChatMessage": {"message": "\xc3\x28"}}', 29),
        (b'"\xed\xa0\x80"', 1),  # an encoded surrogate is not UTF-8 either
    ],
)
def test_invalid_utf8_is_called_invalid_utf8_not_surrogates(payload: bytes, at: int) -> None:
    text = rejects(payload, f"invalid UTF-8 at byte {at}")
    assert "surrogate" not in text


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (
            b'{"ChatMessage": {"user_id": 1, "room_id": 2, "message": "a", "message": "b"}}',
            "message",
        ),
        (b'{"ChatMessage": {"user_id": 1, "user_id": 2, "room_id": 2, "message": "a"}}', "user_id"),
        # the chat fast path, with an escape in the text (the counting slow path)
        (
            b'{"ChatMessage":{"user_id":1,"room_id":2,"message":"say \\"hi\\"","room_id":3}}',
            "room_id",
        ),
        (b'{"ChatMessage":{"user_id":1,"room_id":2,"message":"x\\\\","room_id":2}}', "room_id"),
        (
            b'{"RoomJoin": {"user_id": 1, "room_id": 5, "nickname": "a", "nickname": "b"}}',
            "nickname",
        ),
        (b'{"Connect": {"room_id": 0, "user_id": 1, "token": null, "token": "t"}}', "token"),
        (
            b'{"PlayerAction": {"room_id": 1, "action": {"Move": {"x": 1, "y": 2, "x": 3, '
            b'"direction": 0}}}}',
            "x",
        ),
        (b'{"HeartBeat": null, "HeartBeat": null}', "HeartBeat"),
        (
            b'{"RoomLeave": {"user_id": 1, "room_id": 2}, "RoomLeave": {"user_id": 1, "room_id": 3}}',
            "RoomLeave",
        ),
        (
            b'{"ChatMessage": {"user_id": 1, "room_id": 2, "message": "a", "extra": {"k": 1, "k": 2}}}',
            "k",
        ),
        (b'{"Nope": {"a": 1, "a": 1}}', "a"),
    ],
)
def test_duplicate_keys_are_refused_like_serde(payload: bytes, key: str) -> None:
    rejects(payload, f"duplicate key {key!r}")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"ChatMessage":{"user_id":1,"room_id":2,"message":"a \\"quoted\\" \\\\ \\u0022 text"}}',
        b'{"ChatMessage": {"user_id": 1, "room_id": 2, "message": "a", "extra": "x"}}',
        b'{"ChatMessage": {"user_id": 1, "room_id": 2, "message": "\\"", "x": {"message": 1}}}',
        b'{"RoomJoin": {"user_id": 1, "room_id": 5, "nickname": "\\u00e9\\ud83d\\ude00"}}',
        b'{"PlayerAction": {"room_id": 1, "action": {"Move": {"x": 1e5, "y": 2, "direction": 0}}}}',
        b'{ "HeartBeat" : null }',
    ],
)
def test_escapes_nesting_and_equal_keys_in_different_objects_are_not_duplicates(
    payload: bytes,
) -> None:
    decode(payload)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.integers(-(2**60), 2**60) | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
            max_leaves=8,
        ),
        max_size=4,
    )
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_duplicate_check_agrees_with_a_json_parser_that_sees_every_pair(body: dict) -> None:
    """Random bodies, with and without one key repeated: refused exactly when duplicated."""
    import json

    plain = orjson.dumps({"ChatMessage": {"user_id": 1, "room_id": 2, "message": "m", **body}})
    try:
        decode(plain)
    except DecodeError as e:
        assert "duplicate" not in str(e)
        return  # invalid without a duplicate: its own error comes first, as in serde
    if body:
        key = next(iter(body))
        extra = json.dumps(key).encode() + b":" + orjson.dumps(body[key])
        duplicated = plain[:-2] + b"," + extra + b"}}"
        rejects(duplicated, "duplicate key")


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        (b"[]", "an array"),
        (b'["HeartBeat"]', "an array"),
        (b"42", "42"),
        (b"-1.5", "a non-integer number"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_non_object_top_level(payload: bytes, shown: str) -> None:
    rejects(payload, "expected a message object", shown)


def test_object_with_zero_keys() -> None:
    rejects(b"{}", "exactly one key", "got 0 keys")


def test_object_with_two_keys() -> None:
    rejects(
        j({"HeartBeat": None, "StartGame": {"room_id": 1}}),
        "exactly one key",
        "got 2 keys",
    )


@pytest.mark.parametrize(
    "payload",
    [j({"Dance": {"room_id": 1}}), b'"Dance"', j({"heartbeat": None}), j({"Move": {"x": 1}})],
)
def test_unknown_variant(payload: bytes) -> None:
    rejects(payload, "unknown message type")


def test_unknown_variant_name_is_shown_and_truncated() -> None:
    assert "'Dance'" in rejects(b'"Dance"', "unknown message type")
    text = rejects(j({"X" * 500: 1}), "unknown message type")
    assert "X" * 40 + "..." in text
    assert "X" * 41 not in text


def test_variant_with_fields_given_as_bare_string() -> None:
    rejects(b'"RoomJoin"', "RoomJoin needs its fields")


def test_heartbeat_with_fields_is_rejected() -> None:
    rejects(j({"HeartBeat": {"x": 1}}), "HeartBeat takes no fields")


@pytest.mark.parametrize("body", [None, [], 5, "x", True])
def test_body_that_is_not_an_object(body: object) -> None:
    rejects(j({"StartGame": body}), "StartGame", "expected an object of fields")


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"Connect": {"user_id": 7}}, "room_id"),
        ({"Connect": {"room_id": 7}}, "user_id"),
        ({"RoomJoin": {"user_id": 7, "room_id": 5}}, "nickname"),
        ({"RoomLeave": {"user_id": 7}}, "room_id"),
        ({"ChatMessage": {"user_id": 7, "room_id": 5}}, "message"),
        ({"StartGame": {}}, "room_id"),
        ({"ToggleReady": {"roomid": 3}}, "room_id"),
        ({"PlayerAction": {"room_id": 5}}, "action"),
        ({"PlayerAction": {"action": {"UseItem": {"item_id": "a"}}}}, "room_id"),
        ({"PlayerAction": {"room_id": 5, "action": {"Move": {"x": 1, "y": 2}}}}, "direction"),
        ({"PlayerAction": {"room_id": 5, "action": {"Attack": {"damage": 2}}}}, "target_id"),
        ({"PlayerAction": {"room_id": 5, "action": {"UseItem": {}}}}, "item_id"),
    ],
)
def test_missing_field(wire: dict, field: str) -> None:
    rejects(j(wire), f"missing field {field!r}")


def test_required_field_given_as_null_is_a_wrong_type_not_missing() -> None:
    text = rejects(j({"StartGame": {"room_id": None}}), "StartGame.room_id", "got null")
    assert "missing" not in text
    rejects(j({"RoomJoin": {"user_id": 1, "room_id": 2, "nickname": None}}), "expected a string")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "a boolean"),
        (False, "a boolean"),
        (1.5, "a non-integer number"),
        (1.0, "a non-integer number"),
        (-1, "got -1"),
        (2**32, "got 4294967296"),
        (2**40, "an out-of-range integer"),
        ("5", "a string"),
        ([5], "an array"),
        ({"n": 5}, "an object"),
    ],
)
def test_u32_wrong_type_or_range(value: object, shown: str) -> None:
    rejects(
        j({"RoomLeave": {"user_id": 1, "room_id": value}}),
        "RoomLeave.room_id",
        "0..4294967295",
        shown,
    )
    rejects(j({"Connect": {"room_id": 1, "user_id": value}}), "Connect.user_id", shown)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2**31, "got 2147483648"),
        (-(2**31) - 1, "got -2147483649"),
        (1.5, "non-integer"),
        ("1", "a string"),
        (True, "a boolean"),
    ],
)
def test_i32_damage_out_of_range_or_wrong_type(value: object, shown: str) -> None:
    wire = {"PlayerAction": {"room_id": 1, "action": {"Attack": {"target_id": 2, "damage": value}}}}
    rejects(j(wire), "PlayerAction.action.Attack.damage", "-2147483648..2147483647", shown)


def test_attack_target_is_a_u32() -> None:
    wire = {"PlayerAction": {"room_id": 1, "action": {"Attack": {"target_id": -1, "damage": 1}}}}
    rejects(j(wire), "PlayerAction.action.Attack.target_id", "0..4294967295")


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1.0", "a string"), (True, "a boolean"), (None, "null"), ([1], "an array")],
)
def test_f64_wrong_type(value: object, shown: str) -> None:
    wire = {
        "PlayerAction": {"room_id": 1, "action": {"Move": {"x": 1, "y": value, "direction": 0}}}
    }
    rejects(j(wire), "PlayerAction.action.Move.y", "expected a number", shown)


@pytest.mark.parametrize(
    ("wire", "fragments"),
    [
        (
            {"RoomJoin": {"user_id": 1, "room_id": 2, "nickname": 5}},
            ("RoomJoin.nickname", "expected a string", "got 5"),
        ),
        (
            {"ChatMessage": {"user_id": 1, "room_id": 2, "message": ["hi"]}},
            ("ChatMessage.message", "an array"),
        ),
        (
            {"Connect": {"room_id": 1, "user_id": 2, "token": 123}},
            ("Connect.token", "a string or null"),
        ),
        (
            {"Connect": {"room_id": 1, "user_id": 2, "nickname": False}},
            ("Connect.nickname", "a boolean"),
        ),
        (
            {"PlayerAction": {"room_id": 1, "action": {"UseItem": {"item_id": 9}}}},
            ("PlayerAction.action.UseItem.item_id", "expected a string"),
        ),
    ],
)
def test_string_fields_wrong_type(wire: dict, fragments: tuple[str, ...]) -> None:
    rejects(j(wire), *fragments)


def test_unknown_action() -> None:
    wire = {"PlayerAction": {"room_id": 1, "action": {"Fly": {"x": 1}}}}
    rejects(j(wire), "PlayerAction.action", "unknown action 'Fly'", "Move, Attack or UseItem")


@pytest.mark.parametrize("action", ["Move", 3, None, [{"Move": {}}], {}])
def test_action_not_an_object_with_one_key(action: object) -> None:
    wire = {"PlayerAction": {"room_id": 1, "action": action}}
    rejects(j(wire), "PlayerAction.action", '{"Move": ...}')


def test_action_with_two_keys() -> None:
    action = {"Move": {"x": 1, "y": 2, "direction": 3}, "UseItem": {"item_id": "a"}}
    rejects(
        j({"PlayerAction": {"room_id": 1, "action": action}}),
        "PlayerAction.action",
        '{"Attack": ...}',
    )


def test_action_body_not_an_object() -> None:
    wire = {"PlayerAction": {"room_id": 1, "action": {"Move": [1, 2, 3]}}}
    rejects(j(wire), "PlayerAction.action.Move", "expected an object of fields", "an array")


def test_decode_error_is_a_value_error_with_code_400() -> None:
    assert issubclass(DecodeError, ValueError)
    assert DecodeError.code == 400


# -- encoding and framing -------------------------------------------------------------


def test_encode_exact_bytes() -> None:
    assert codec.encode(m.ConnectionAck(7)) == b'{"ConnectionAck":{"user_id":7}}'
    assert (
        codec.encode(m.Error(409, "room 5 is full"))
        == b'{"Error":{"code":409,"message":"room 5 is full"}}'
    )
    assert codec.encode(m.HeartBeat()) == b'"HeartBeat"'
    assert (
        codec.encode(m.UserJoinedRoom(5, 7, "neo", 2))
        == b'{"UserJoinedRoom":{"room_id":5,"user_id":7,"nickname":"neo","user_count":2}}'
    )
    assert codec.encode(m.GameEnded(5, None, [[1, 10], [2, -3]])) == (
        b'{"GameEnded":{"room_id":5,"winner":null,"final_scores":[[1,10],[2,-3]]}}'
    )


def test_encode_keeps_non_ascii_as_utf8() -> None:
    payload = codec.encode(m.SystemMessage("café ☃"))
    assert payload == '{"SystemMessage":{"message":"café ☃"}}'.encode()


def test_encode_player_action_uses_the_tagged_action_form() -> None:
    payload = codec.encode(m.PlayerAction(3, m.Attack(8, -2)))
    assert (
        payload == b'{"PlayerAction":{"room_id":3,"action":{"Attack":{"target_id":8,"damage":-2}}}}'
    )
    assert codec.action_to_wire(m.UseItem("k")) == {"UseItem": m.UseItem("k")}


def test_frame_has_a_four_byte_big_endian_length_prefix() -> None:
    msg = m.HeartBeatResponse(1_700_000_000)
    data = codec.frame(msg)
    payload = b'{"HeartBeatResponse":{"timestamp":1700000000}}'
    assert data == struct.pack(">I", len(payload)) + payload
    assert data[:4] == len(payload).to_bytes(4, "big")
    assert data[:4] == b"\x00\x00\x00" + bytes([len(payload)])


def test_frame_length_prefix_counts_bytes_not_characters() -> None:
    data = codec.frame(m.SystemMessage("☃" * 100))  # 3 UTF-8 bytes each
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    assert n > 300
    # a payload over 255 bytes uses the second byte of the prefix too
    assert data[2] != 0


def test_frame_payload() -> None:
    assert codec.frame_payload(b"xyz") == b"\x00\x00\x00\x03xyz"
    big = b"a" * 70000
    assert codec.frame_payload(big)[:4] == b"\x00\x01\x11\x70"


def test_decode_any_is_loose() -> None:
    assert codec.decode_any(b'"HeartBeatResponse"') == ("HeartBeatResponse", None)
    assert codec.decode_any(b'{"Error":{"code":400,"message":"x"}}') == (
        "Error",
        {"code": 400, "message": "x"},
    )
    with pytest.raises(DecodeError):
        codec.decode_any(b'{"a":1,"b":2}')
    with pytest.raises(DecodeError):
        codec.decode_any(b"[1]")


CLIENT_SAMPLES = [
    m.Connect(0, 1),
    m.Connect(3, U32_MAX, "tok:123", "nick"),
    m.HeartBeat(),
    m.RoomJoin(1, 2, "n"),
    m.RoomLeave(1, 2),
    m.ChatMessage(1, 2, 'quote " and \\ and \n and ☃'),
    m.StartGame(9),
    m.ToggleReady(9),
    m.PlayerAction(9, m.Move(1.25, -3.5, 0.0)),
    m.PlayerAction(9, m.Attack(4, -(2**31))),
    m.PlayerAction(9, m.UseItem("")),
]


@pytest.mark.parametrize("msg", CLIENT_SAMPLES, ids=lambda msg: msg.TAG)
def test_client_messages_round_trip(msg: object) -> None:
    data = codec.frame(msg)
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    back = decode(data[4:])
    assert type(back) is type(msg)
    assert back == msg


def test_every_client_tag_has_a_decoder() -> None:
    decoded = {type(decode(codec.encode(s))).TAG for s in CLIENT_SAMPLES}
    assert decoded == set(m.CLIENT_TAGS)


# -- fuzzing: decode returns a message or raises DecodeError, nothing else --------------

CLIENT_CLASSES = (
    m.Connect,
    m.HeartBeat,
    m.RoomJoin,
    m.RoomLeave,
    m.ChatMessage,
    m.StartGame,
    m.ToggleReady,
    m.PlayerAction,
)

KNOWN_KEYS = [
    *m.CLIENT_TAGS,
    "Move",
    "Attack",
    "UseItem",
    "room_id",
    "user_id",
    "nickname",
    "token",
    "message",
    "action",
    "x",
    "y",
    "direction",
    "target_id",
    "damage",
    "item_id",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, -1, U32_MAX, U32_MAX + 1, 2**31 - 1, -(2**31), -(2**31) - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(KNOWN_KEYS)
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=10)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)
# Shapes close to real messages, so the field checkers are reached often.
variant_like = st.builds(
    lambda tag, body: {tag: body},
    st.sampled_from(m.CLIENT_TAGS),
    json_values | st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=5),
)
action_like = st.builds(
    lambda room_id, tag, body: {"PlayerAction": {"room_id": room_id, "action": {tag: body}}},
    scalars,
    st.sampled_from(["Move", "Attack", "UseItem", "Other"]),
    json_values | st.dictionaries(st.sampled_from(KNOWN_KEYS), scalars, max_size=4),
)


def _decode_total(payload: bytes) -> None:
    try:
        msg = decode(payload)
    except DecodeError as e:
        assert str(e)
    else:
        assert isinstance(msg, CLIENT_CLASSES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_is_total(payload: bytes) -> None:
    _decode_total(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | variant_like | action_like)
def test_decode_of_arbitrary_json_is_total(value: object) -> None:
    _decode_total(orjson.dumps(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.builds(
            m.Connect,
            st.integers(0, U32_MAX),
            st.integers(0, U32_MAX),
            st.none() | st.text(),
            st.none() | st.text(),
        ),
        st.builds(m.RoomJoin, st.integers(0, U32_MAX), st.integers(0, U32_MAX), st.text()),
        st.builds(m.ChatMessage, st.integers(0, U32_MAX), st.integers(0, U32_MAX), st.text()),
        st.builds(
            m.PlayerAction,
            st.integers(0, U32_MAX),
            st.builds(
                m.Move,
                st.floats(allow_nan=False, allow_infinity=False),
                st.floats(allow_nan=False, allow_infinity=False),
                st.floats(allow_nan=False, allow_infinity=False),
            )
            | st.builds(m.Attack, st.integers(0, U32_MAX), st.integers(-(2**31), 2**31 - 1))
            | st.builds(m.UseItem, st.text()),
        ),
    )
)
def test_round_trip_property(msg: object) -> None:
    assert decode(codec.encode(msg)) == msg


def test_integer_beyond_64_bits_is_refused_with_the_field_named() -> None:
    # orjson reads integers past 64 bits as floats: still a clean DecodeError.
    rejects(b'{"StartGame":{"room_id":18446744073709551616}}', "StartGame.room_id", "0..4294967295")
