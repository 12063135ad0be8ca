"""Bytes <-> messages: the only place that knows the wire format.

Framing is a 4-byte big-endian length then UTF-8 JSON (serde's externally
tagged enum form). ``decode`` validates a client frame into a typed message or
raises ``DecodeError`` whose text says exactly what was wrong; ``encode`` and
``frame`` serialise with orjson, once per broadcast.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any

import orjson

from gamed import messages as m

_PREFIX = struct.Struct(">I")
U32_MAX = 0xFFFFFFFF
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


class DecodeError(ValueError):
    """A frame that is not a valid client message; answered with Error{400}."""

    code = 400


# -- encoding ------------------------------------------------------------------


def encode(msg: Any) -> bytes:
    """JSON payload (no length prefix) for any message object."""
    tag = msg.TAG
    if getattr(msg, "UNIT", False):  # a variant without fields is a bare string
        return orjson.dumps(tag)
    if tag == "PlayerAction":
        return orjson.dumps({tag: {"room_id": msg.room_id, "action": action_to_wire(msg.action)}})
    return orjson.dumps({tag: msg})


def frame(msg: Any) -> bytes:
    """Length-prefixed frame, ready for ``transport.write`` (build once per broadcast)."""
    payload = encode(msg)
    return _PREFIX.pack(len(payload)) + payload


def frame_chat(msg: m.ChatMessage) -> bytes:
    """``frame(msg)`` for a ChatMessage, the one message broadcast per chat: no dispatch."""
    payload = _dumps({"ChatMessage": msg})
    return _pack(len(payload)) + payload


_dumps = orjson.dumps
_pack = _PREFIX.pack


def frame_payload(payload: bytes) -> bytes:
    return _PREFIX.pack(len(payload)) + payload


def action_to_wire(action: m.Action) -> dict[str, Any]:
    return {action.TAG: action}


def decode_any(payload: bytes) -> tuple[str, Any]:
    """Loose decoding for clients and tools: ``(tag, body)``; body is None for unit variants."""
    value = orjson.loads(payload)
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and len(value) == 1:
        ((tag, body),) = value.items()
        return tag, body
    raise DecodeError(f"not an externally tagged message: {payload[:80]!r}")


# -- decoding (server side: strict) ----------------------------------------------------


def _u32(where: str, v: Any) -> int:
    if type(v) is int and 0 <= v <= U32_MAX:
        return v
    raise DecodeError(f"{where}: expected an integer 0..{U32_MAX}, got {_show(v)}")


def _i32(where: str, v: Any) -> int:
    if type(v) is int and I32_MIN <= v <= I32_MAX:
        return v
    raise DecodeError(f"{where}: expected an integer {I32_MIN}..{I32_MAX}, got {_show(v)}")


def _f64(where: str, v: Any) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise DecodeError(f"{where}: expected a number, got {_show(v)}")


def _str(where: str, v: Any) -> str:
    if type(v) is str:
        return v
    raise DecodeError(f"{where}: expected a string, got {_show(v)}")


def _opt_str(where: str, v: Any) -> str | None:
    if v is None or type(v) is str:
        return v
    raise DecodeError(f"{where}: expected a string or null, got {_show(v)}")


def _action(where: str, v: Any) -> m.Action:
    if type(v) is not dict or len(v) != 1:
        raise DecodeError(
            f'{where}: expected one of {{"Move": ...}}, {{"Attack": ...}}, {{"UseItem": ...}}'
        )
    ((tag, body),) = v.items()
    spec = _ACTIONS.get(tag)
    if spec is None:
        raise DecodeError(f"{where}: unknown action {tag!r} (Move, Attack or UseItem)")
    return _build(f"{where}.{tag}", spec, body)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**12 else "an out-of-range integer"
    if isinstance(v, float):
        return "a non-integer number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


_Check = Callable[[str, Any], Any]
# (class, ((field, checker, required), ...)); optional fields default to None.
_Spec = tuple[type, tuple[tuple[str, _Check, bool], ...]]

_SPECS: dict[str, _Spec] = {
    "Connect": (
        m.Connect,
        (
            ("room_id", _u32, True),
            ("user_id", _u32, True),
            ("token", _opt_str, False),
            ("nickname", _opt_str, False),
        ),
    ),
    "RoomJoin": (
        m.RoomJoin,
        (("user_id", _u32, True), ("room_id", _u32, True), ("nickname", _str, True)),
    ),
    "RoomLeave": (m.RoomLeave, (("user_id", _u32, True), ("room_id", _u32, True))),
    "ChatMessage": (
        m.ChatMessage,
        (("user_id", _u32, True), ("room_id", _u32, True), ("message", _str, True)),
    ),
    "StartGame": (m.StartGame, (("room_id", _u32, True),)),
    "ToggleReady": (m.ToggleReady, (("room_id", _u32, True),)),
    "PlayerAction": (m.PlayerAction, (("room_id", _u32, True), ("action", _action, True))),
}

_ACTIONS: dict[str, _Spec] = {
    "Move": (m.Move, (("x", _f64, True), ("y", _f64, True), ("direction", _f64, True))),
    "Attack": (m.Attack, (("target_id", _u32, True), ("damage", _i32, True))),
    "UseItem": (m.UseItem, (("item_id", _str, True),)),
}

_UNITS: dict[str, Any] = {"HeartBeat": m.HeartBeat()}


def _build(where: str, spec: _Spec, body: Any) -> Any:
    cls, fields = spec
    if type(body) is not dict:
        raise DecodeError(f"{where}: expected an object of fields, got {_show(body)}")
    args: list[Any] = []
    for name, check, required in fields:
        v = body.get(name)
        if v is None and name not in body:
            if required:
                raise DecodeError(f"{where}: missing field {name!r}")
            args.append(None)
            continue
        args.append(check(f"{where}.{name}", v))
    return cls(*args)


# -- duplicate keys ---------------------------------------------------------------------
#
# serde refuses a JSON object with a key twice; orjson keeps the last one and has no
# hook to say so. The check: every JSON string in the text (keys and string values)
# is still in the decoded value unless a duplicate member was dropped, and the
# number of strings does not depend on formatting (whitespace, escapes, number
# spelling). So the frame has a duplicate key iff it holds more strings than
# ``orjson.dumps`` of what was decoded. A frame without a backslash has only
# unescaped quotes, and its decoded strings hold no quote, backslash or control
# character (raw controls are invalid JSON), so counting ``"`` bytes is exact;
# with escapes, the escape sequences are stripped first (rare: the slow path).

_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def _quotes(text: bytes) -> int:
    """Twice the number of JSON strings in valid JSON ``text``."""
    if b"\\" in text:
        text = _ESCAPE.sub(b"", text)
    return text.count(b'"')


def _duplicate_key(payload: bytes) -> str | None:
    """The first key that appears twice in one object of ``payload`` (valid JSON), or None."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(items)

    json.loads(payload, object_pairs_hook=pairs)
    return found[0] if found else None


def _refuse_duplicates(payload: bytes, value: Any) -> None:
    """Raise DecodeError if ``payload``, decoded to ``value``, had a key twice."""
    if _quotes(payload) == _quotes(orjson.dumps(value)):
        return
    key = _duplicate_key(payload)
    if key is not None:  # (always, for valid JSON; the guard keeps a mistake from refusing)
        raise DecodeError(f"duplicate key {_name(key)} in a JSON object")


def _strings_at_least(msg: Any, body: dict[str, Any]) -> int:
    """A lower bound of the JSON strings in a decoded message: its tag, its keys and its
    string fields (unknown extra fields may hold more). The frame's quote bytes are at
    least twice the strings it holds, which are at least the decoded ones: a frame with
    exactly twice this bound holds no escaped quote and no dropped duplicate."""
    n = 1 + len(body)
    cls = msg.__class__
    if cls is m.RoomJoin:
        n += 1
    elif cls is m.Connect:
        n += (msg.token is not None) + (msg.nickname is not None)
    elif cls is m.PlayerAction:
        ((_tag, inner),) = body["action"].items()
        n += 1 + len(inner) + (msg.action.__class__ is m.UseItem)
    return n


def _not_json(payload: bytes, e: orjson.JSONDecodeError) -> DecodeError:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as u:
        # orjson says "surrogates not allowed" for any bad byte; say what it is.
        return DecodeError(f"not valid JSON: invalid UTF-8 at byte {u.start}")
    return DecodeError(f"not valid JSON: {e}")


def decode(payload: bytes) -> m.ClientMessage:
    """Validate one client frame (without its length prefix) into a typed message."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise _not_json(payload, e) from None
    if type(value) is dict:
        if len(value) != 1:
            _refuse_duplicates(payload, value)
            raise DecodeError(
                f"expected an object with exactly one key (the message type), got {len(value)} keys"
            )
        ((tag, body),) = value.items()
        if tag == "ChatMessage" and type(body) is dict:
            # The hot path: the checks of _build, unrolled. Anything unusual
            # falls through to _build for the precise error message.
            u, r, t = body.get("user_id"), body.get("room_id"), body.get("message")
            if (
                type(u) is int
                and type(r) is int
                and type(t) is str
                and 0 <= u <= U32_MAX
                and 0 <= r <= U32_MAX
            ):
                # Duplicate keys, cheaply: a chat's four keys and its text are five
                # strings, so ten quote bytes (see _strings_at_least).
                if len(body) != 3 or payload.count(b'"') != 10:
                    _refuse_duplicates(payload, value)
                return m.ChatMessage(u, r, t)
        spec = _SPECS.get(tag)
        if spec is not None:
            msg = _build(tag, spec, body)
            if payload.count(b'"') != 2 * _strings_at_least(msg, body):
                _refuse_duplicates(payload, value)
            return msg
        _refuse_duplicates(payload, value)
        unit = _UNITS.get(tag)
        if unit is not None:
            if body is not None:
                raise DecodeError(f"{tag} takes no fields")
            return unit
        raise DecodeError(f"unknown message type {_name(tag)}")
    if type(value) is str:
        unit = _UNITS.get(value)
        if unit is not None:
            return unit
        if value in _SPECS:
            raise DecodeError(f"{value} needs its fields: {{{value!r}: {{...}}}}")
        raise DecodeError(f"unknown message type {_name(value)}")
    raise DecodeError(
        f'expected a message object like {{"HeartBeat": ...}} or a string, got {_show(value)}'
    )


def _name(tag: str) -> str:
    return repr(tag[:40] + ("..." if len(tag) > 40 else ""))
