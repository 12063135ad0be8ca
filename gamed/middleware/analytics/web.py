"""HTTP for analytics: JSON reads and a Server-Sent Events stream, under /analytics/.

Reads that need SQLite return NOT_DONE_YET and finish when the store's
Deferred fires. Pages that name users (users, rooms, recent, top, the stream)
need the admin token when one is configured (``AdminGate``, shared through the
plugin environment); the index and /analytics/realtime are aggregate counters
and stay open (docs/security.md). The stream writes each event as it is aggregated; a client
whose socket buffer stays full gets its backlog counted and, past a bound, is
disconnected (its missed events counted as dropped), never buffered forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from gamed.httputil import AdminGate, path_id
from gamed.middleware.analytics.aggregates import EVENT_TYPES

if TYPE_CHECKING:
    from gamed.middleware.analytics.middleware import Analytics

_log = Logger()

USER_ID_MAX = 4_294_967_295
ROOM_ID_MIN, ROOM_ID_MAX = 1, 1_000_000
TOP_LIMIT_MAX = 100


def _json(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"


def _arg(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    return values[-1].decode("utf-8", "replace") if values else None


def _deferred_json(request: Request, d: defer.Deferred[Any], missing: str) -> Any:
    """Finish ``request`` with the Deferred's JSON result (None -> 404)."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(body: Any) -> None:
        if gone:
            return
        if body is None:
            request.write(_json(request, 404, {"error": missing}))
        else:
            request.write(_json(request, 200, body))
        request.finish()

    def failed(f: Failure) -> None:
        _log.failure("analytics read failed", f)
        if not gone:
            request.write(_json(request, 500, {"error": "analytics store unavailable"}))
            request.finish()

    d.addCallbacks(write, failed)
    return NOT_DONE_YET


class _Leaf(Resource):
    isLeaf = True
    #: Names users (ids, their activity): needs the admin token when one is set.
    private = True

    def __init__(self, hub: Analytics, admin: AdminGate | None = None) -> None:
        super().__init__()
        self.hub = hub
        self.admin = admin or AdminGate()

    def render(self, request: Request) -> Any:
        if self.private:
            refused = self.admin.refusal(request)
            if refused is not None:
                return self.admin.refuse(request, refused)
        return super().render(request)


class UserPage(_Leaf):
    def render_GET(self, request: Request) -> Any:
        assert request.postpath is not None  # Site.getResourceFor sets it before any render
        if len(request.postpath) != 1:
            return _json(request, 400, {"error": "expected /analytics/users/{user_id}"})
        user_id = path_id(request.postpath[0], 0, USER_ID_MAX)
        if user_id is None:
            return _json(request, 400, {"error": f"user id must be 0..{USER_ID_MAX}"})
        return _deferred_json(request, self.hub.user(user_id), f"no analytics for user {user_id}")


class RoomPage(_Leaf):
    def render_GET(self, request: Request) -> Any:
        assert request.postpath is not None  # Site.getResourceFor sets it before any render
        if len(request.postpath) != 1:
            return _json(request, 400, {"error": "expected /analytics/rooms/{room_id}"})
        room_id = path_id(request.postpath[0], ROOM_ID_MIN, ROOM_ID_MAX)
        if room_id is None:
            return _json(request, 400, {"error": f"room id must be {ROOM_ID_MIN}..{ROOM_ID_MAX}"})
        return _deferred_json(request, self.hub.room(room_id), f"no analytics for room {room_id}")


class RealtimePage(_Leaf):
    private = False  # counters and queue sizes, no user in them

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, self.hub.realtime())


class RecentPage(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        text = _arg(request, b"limit") or "50"
        limit = path_id(text.encode(), 1, 1000)
        if limit is None:
            return _json(request, 400, {"error": "limit must be 1..1000"})
        return _json(request, 200, {"events": self.hub.recent_events(limit)})


class TopPage(_Leaf):
    def render_GET(self, request: Request) -> Any:
        by = _arg(request, b"by") or "messages"
        if by not in ("messages", "playtime", "wins"):
            return _json(request, 400, {"error": "by must be messages, playtime or wins"})
        limit = path_id((_arg(request, b"limit") or "10").encode(), 1, TOP_LIMIT_MAX)
        if limit is None:
            return _json(request, 400, {"error": f"limit must be 1..{TOP_LIMIT_MAX}"})
        d = self.hub.top(by, limit)
        d.addCallback(lambda rows: {"by": by, "limit": limit, "users": rows})
        return _deferred_json(request, d, "")


@implementer(IPushProducer)
class SseClient:
    """One open stream. It is its transport's producer: when the socket buffer
    passes Twisted's high-water mark we are paused, and what we write while
    paused is counted; past ``max_backlog`` bytes the client is dropped."""

    def __init__(self, request: Request, types: frozenset[str] | None, max_backlog: int) -> None:
        self.request = request
        self.types = types
        self.max_backlog = max_backlog
        self.paused = False
        self.backlog = 0
        self.closed = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> bool:
        """Send ``data``; False if the client is (now) gone."""
        if self.closed:
            return False
        if self.paused:
            self.backlog += len(data)
            if self.backlog > self.max_backlog:
                self.drop()
                return False
        self.request.write(data)
        return True

    def drop(self) -> None:
        self.closed = True
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.request.finish()


class StreamPage(_Leaf):
    """GET /analytics/stream[?types=MessageSent,Error]: text/event-stream."""

    def render_GET(self, request: Request) -> Any:
        types: frozenset[str] | None = None
        text = _arg(request, b"types")
        if text:
            wanted = frozenset(t.strip() for t in text.split(",") if t.strip())
            unknown = sorted(wanted - set(EVENT_TYPES))
            if unknown:
                return _json(
                    request,
                    400,
                    {"error": f"unknown event types {unknown}", "types": list(EVENT_TYPES)},
                )
            types = wanted
        if not self.hub.stream_slot_free():
            return _json(request, 503, {"error": "too many stream clients"})
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        client = SseClient(request, types, self.hub.sse_max_backlog)
        request.registerProducer(client, True)
        request.write(b": gamed analytics stream\nretry: 3000\n\n")
        self.hub.add_stream(client)

        def gone(_: Any) -> None:
            client.closed = True
            self.hub.remove_stream(client)

        request.notifyFinish().addBoth(gone)
        return NOT_DONE_YET


class AnalyticsResource(Resource):
    """/analytics/: the index, and one child per endpoint."""

    def __init__(self, hub: Analytics, admin: AdminGate | None = None) -> None:
        super().__init__()
        for name, page in (
            (b"users", UserPage),
            (b"rooms", RoomPage),
            (b"realtime", RealtimePage),
            (b"recent", RecentPage),
            (b"top", TopPage),
            (b"stream", StreamPage),
        ):
            self.putChild(name, page(hub, admin))

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        return _json(
            request,
            200,
            {
                "endpoints": [
                    "/analytics/users/{user_id}",
                    "/analytics/rooms/{room_id}",
                    "/analytics/realtime",
                    "/analytics/recent?limit=N",
                    "/analytics/top?by=messages|playtime|wins&limit=N",
                    "/analytics/stream?types=A,B",
                ],
                "event_types": list(EVENT_TYPES),
            },
        )
