"""Domain events, emitted where things really happen, for plugins to observe.

The core emits these; analytics (and anything else) subscribes through the
EventBus. Emitting is a loop over a handful of subscribers: a subscriber must
be O(1) (append to a buffer) and must not raise; one that raises is logged and
counted, never allowed to break the emitter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from gamed.interfaces import IEventSink

_log = Logger()


@dataclass(slots=True, frozen=True)
class UserConnected:
    user_id: int
    peer_host: str
    at: float


@dataclass(slots=True, frozen=True)
class UserDisconnected:
    user_id: int
    session_seconds: float
    reason: str
    at: float


@dataclass(slots=True, frozen=True)
class RoomCreated:
    room_id: int
    creator: int
    at: float


@dataclass(slots=True, frozen=True)
class RoomDeleted:
    room_id: int
    at: float


@dataclass(slots=True, frozen=True)
class RoomJoined:
    room_id: int
    user_id: int
    user_count: int
    at: float


@dataclass(slots=True, frozen=True)
class RoomLeft:
    room_id: int
    user_id: int
    user_count: int
    at: float


@dataclass(slots=True, frozen=True)
class GameStarted:
    """A game went InProgress (everyone ready)."""

    room_id: int
    players: tuple[int, ...]
    at: float


@dataclass(slots=True, frozen=True)
class GameEnded:
    room_id: int
    duration_seconds: float
    winner: int | None
    final_scores: tuple[tuple[int, int], ...]
    at: float


@dataclass(slots=True, frozen=True)
class SeatExpired:
    """A dropped player's held seat was not reclaimed within the reconnect grace.

    The game service emits it; the router subscribes and takes the member out
    of its room (with the usual notices), so the game service never calls it.
    """

    user_id: int
    room_id: int
    at: float


Subscriber = Callable[[object], None]


@implementer(IEventSink)
class EventBus:
    """Synchronous fan-out of events to in-process subscribers."""

    def __init__(self) -> None:
        # A tuple, replaced on change: emit() iterates a snapshot, so a
        # subscriber that unsubscribes mid-emit does not make others miss it.
        self._subscribers: tuple[Subscriber, ...] = ()
        self.subscriber_errors = 0

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            subs = list(self._subscribers)
            if subscriber in subs:
                subs.remove(subscriber)
            self._subscribers = tuple(subs)

        return unsubscribe

    @property
    def active(self) -> bool:
        """True when someone listens; lets hot paths skip building events."""
        return bool(self._subscribers)

    def emit(self, event: object) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                self.subscriber_errors += 1
                _log.failure("event subscriber {subscriber!r} failed", subscriber=subscriber)
