"""One typed class per variant of the gamed wire protocol (docs/protocol.md).

Each class's ``TAG`` is its serde variant name. Instances are plain
dataclasses so orjson serialises them natively (no Python-level hook on the
hot path). They are deliberately *not* slotted: orjson's fast path reads the
instance ``__dict__``; a slotted dataclass takes ~3x longer to encode. ``ChatMessage`` is both a client and a server message: the same
object that was decoded is re-encoded for the room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# -- client -> server -------------------------------------------------------


@dataclass
class Connect:
    TAG: ClassVar[str] = "Connect"
    room_id: int
    user_id: int
    token: str | None = None
    nickname: str | None = None


@dataclass
class HeartBeat:
    TAG: ClassVar[str] = "HeartBeat"
    UNIT: ClassVar[bool] = True  # a variant without fields: a bare JSON string


@dataclass
class RoomJoin:
    TAG: ClassVar[str] = "RoomJoin"
    user_id: int
    room_id: int
    nickname: str


@dataclass
class RoomLeave:
    TAG: ClassVar[str] = "RoomLeave"
    user_id: int
    room_id: int


@dataclass
class ChatMessage:
    TAG: ClassVar[str] = "ChatMessage"
    user_id: int
    room_id: int
    message: str


@dataclass
class StartGame:
    TAG: ClassVar[str] = "StartGame"
    room_id: int


@dataclass
class ToggleReady:
    TAG: ClassVar[str] = "ToggleReady"
    room_id: int


@dataclass
class Move:
    TAG: ClassVar[str] = "Move"
    x: float
    y: float
    direction: float


@dataclass
class Attack:
    TAG: ClassVar[str] = "Attack"
    target_id: int
    damage: int


@dataclass
class UseItem:
    TAG: ClassVar[str] = "UseItem"
    item_id: str


Action = Move | Attack | UseItem


@dataclass
class PlayerAction:
    TAG: ClassVar[str] = "PlayerAction"
    room_id: int
    action: Action


ClientMessage = (
    Connect
    | HeartBeat
    | RoomJoin
    | RoomLeave
    | ChatMessage
    | StartGame
    | ToggleReady
    | PlayerAction
)

#: Variant names a client may send, in protocol.md order; also the bounded
#: label set of the ``type`` label in metrics.
CLIENT_TAGS: tuple[str, ...] = (
    "Connect",
    "HeartBeat",
    "RoomJoin",
    "RoomLeave",
    "ChatMessage",
    "StartGame",
    "ToggleReady",
    "PlayerAction",
)

# -- server -> client -------------------------------------------------------


@dataclass
class ConnectionAck:
    TAG: ClassVar[str] = "ConnectionAck"
    user_id: int


@dataclass
class HeartBeatResponse:
    TAG: ClassVar[str] = "HeartBeatResponse"
    timestamp: int


@dataclass
class Error:
    TAG: ClassVar[str] = "Error"
    code: int
    message: str


@dataclass
class RoomJoinSuccess:
    TAG: ClassVar[str] = "RoomJoinSuccess"
    room_id: int
    user_count: int


@dataclass
class UserJoinedRoom:
    TAG: ClassVar[str] = "UserJoinedRoom"
    room_id: int
    user_id: int
    nickname: str
    user_count: int


@dataclass
class RoomLeaveSuccess:
    TAG: ClassVar[str] = "RoomLeaveSuccess"
    room_id: int
    user_count: int


@dataclass
class UserLeftRoom:
    TAG: ClassVar[str] = "UserLeftRoom"
    room_id: int
    user_id: int
    nickname: str
    user_count: int


@dataclass
class SystemMessage:
    TAG: ClassVar[str] = "SystemMessage"
    message: str


@dataclass
class GameStarted:
    TAG: ClassVar[str] = "GameStarted"
    room_id: int
    players: list[dict]


@dataclass
class PlayerReadyUpdate:
    TAG: ClassVar[str] = "PlayerReadyUpdate"
    room_id: int
    user_id: int
    ready: bool


@dataclass
class GameInProgress:
    TAG: ClassVar[str] = "GameInProgress"
    room_id: int
    current_turn: int
    round: int


@dataclass
class ActionResult:
    TAG: ClassVar[str] = "ActionResult"
    room_id: int
    user_id: int
    action: dict  # wire form, e.g. {"Move": {"x": 1.0, "y": 2.0, "direction": 0.0}}
    game_state: dict


@dataclass
class GameEnded:
    TAG: ClassVar[str] = "GameEnded"
    room_id: int
    winner: dict | None
    final_scores: list[list[int]]


ServerMessage = (
    ConnectionAck
    | HeartBeatResponse
    | Error
    | RoomJoinSuccess
    | UserJoinedRoom
    | RoomLeaveSuccess
    | UserLeftRoom
    | ChatMessage
    | SystemMessage
    | GameStarted
    | PlayerReadyUpdate
    | GameInProgress
    | ActionResult
    | GameEnded
)

SERVER_TAGS: tuple[str, ...] = (
    "ConnectionAck",
    "HeartBeatResponse",
    "Error",
    "RoomJoinSuccess",
    "UserJoinedRoom",
    "RoomLeaveSuccess",
    "UserLeftRoom",
    "ChatMessage",
    "SystemMessage",
    "GameStarted",
    "PlayerReadyUpdate",
    "GameInProgress",
    "ActionResult",
    "GameEnded",
)

#: Error codes of protocol.md, and the bounded label set of ``code`` in metrics.
ERROR_CODES: tuple[int, ...] = (400, 401, 403, 404, 409, 413, 422, 429, 500, 503)
