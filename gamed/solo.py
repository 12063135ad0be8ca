"""NullCluster: the cluster seam (ICluster) of a server that runs as one process.

Imports nothing of gamed.cluster: without ``--redis`` no Redis client is loaded.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from gamed.interfaces import ICluster, IConnection, IRoomClient


@implementer(ICluster)
class NullCluster:
    """Every member is local: joins are decided by the room service alone, nothing is relayed.

    False in a boolean test, so a caller that must skip cluster work costs one check.
    """

    state = ""

    def __bool__(self) -> bool:
        return False

    def require(self) -> None:
        pass

    def session_opened(self, conn: IConnection) -> defer.Deferred[None]:
        return defer.succeed(None)

    def session_closed(self, conn: IConnection) -> None:
        pass

    def join(self, conn: IConnection, room_id: int, nickname: str) -> defer.Deferred[None]:
        return defer.succeed(None)

    def seated(self, room: object, seat: object) -> None:
        pass

    def unseat(self, user_id: int, room_id: int) -> None:
        pass

    def left(self, room: object, member: IRoomClient) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {}

    def kick_remote(self, user_id: int, code: int, text: str) -> defer.Deferred[bool]:
        return defer.succeed(False)
