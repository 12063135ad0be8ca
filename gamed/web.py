"""The side HTTP port: /metrics, /healthz, /stats, and whatever plugins mount.

Everything here runs on the reactor thread and only reads the services'
state, so no locks are needed; the Prometheus exposition is generated on the
reactor thread too (a few hundred microseconds for our bounded series), which
keeps gauges consistent with the state they describe.
"""

from __future__ import annotations

import heapq
import io
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gamed import __version__
from gamed.httputil import json_response, path_id
from gamed.router import ROOM_ID_MAX, ROOM_ID_MIN, Router

#: Rooms listed in /stats (largest first); the total is always given.
STATS_ROOM_LIMIT = 100

#: Largest request body the HTTP port reads (the admin API's JSON is far below it).
MAX_REQUEST_BODY = 64 * 1024

StatsSection = Callable[[], Any]


class _SourcePage(Resource):
    """A leaf page rendered from one source it is given (the registry, the router)."""

    isLeaf = True

    def __init__(self, source: Any) -> None:
        super().__init__()
        self._source = source


class MetricsPage(_SourcePage):
    _source: CollectorRegistry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._source)


class HealthPage(_SourcePage):
    _source: Router

    def render_GET(self, request: Request) -> bytes:
        if self._source.draining:
            return json_response(request, 503, {"status": "draining"})
        return json_response(request, 200, {"status": "serving"})


class RoomStatsPage(Resource):
    """/stats/rooms/{id}: one room, with every plugin's extra fields."""

    isLeaf = True

    def __init__(self, router: Router, sections: dict[str, Callable[[int], Any]]) -> None:
        super().__init__()
        self._router = router
        self._sections = sections

    def render_GET(self, request: Request) -> bytes:
        postpath = request.postpath
        assert postpath is not None  # Site.getResourceFor sets it before any render
        if len(postpath) != 1:
            return json_response(request, 400, {"error": "expected /stats/rooms/{room_id}"})
        room_id = path_id(postpath[0], ROOM_ID_MIN, ROOM_ID_MAX)
        if room_id is None:
            return json_response(
                request, 400, {"error": f"room id must be {ROOM_ID_MIN}..{ROOM_ID_MAX}"}
            )
        room = self._router.rooms.get(room_id)
        if room is None:
            return json_response(request, 404, {"error": f"no room {room_id}"})
        body: dict[str, Any] = {
            "room_id": room_id,
            "user_count": len(room),
            "peak_users": room.peak_users,
            "messages": room.message_count,
            "created_at": room.created_at,
            "last_activity": room.last_activity,
        }
        for name, section in self._sections.items():
            body[name] = section(room_id)
        return json_response(request, 200, body)


class StatsPage(Resource):
    def __init__(
        self,
        router: Router,
        sections: dict[str, StatsSection],
        room_sections: dict[str, Callable[[int], Any]] | None = None,
    ) -> None:
        super().__init__()
        self._router = router
        self._sections = sections
        self.putChild(b"rooms", RoomStatsPage(router, room_sections or {}))

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        return json_response(request, 200, self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        router = self._router
        rooms = router.rooms
        largest = heapq.nlargest(STATS_ROOM_LIMIT, rooms.rooms(), key=len)
        body: dict[str, Any] = {
            "version": __version__,
            "uptime_seconds": round(router.clock.seconds() - router.started_at, 3),
            "draining": router.draining,
            "connections": len(router.connections),
            "sessions": len(router.sessions),
            "middleware": list(router.pipeline.names),
            "rooms": {
                "count": len(rooms),
                "listed": len(largest),
                "largest": [
                    {
                        "room_id": r.room_id,
                        "user_count": len(r),
                        "messages": r.message_count,
                        "last_activity": r.last_activity,
                    }
                    for r in largest
                ],
            },
        }
        for name, section in self._sections.items():
            body[name] = section()
        return body


class Root(Resource):
    def render_GET(self, request: Request) -> bytes:
        return json_response(
            request,
            200,
            {"gamed": __version__, "endpoints": sorted(k.decode() for k in self.children)},
        )

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)


class BodyLimitedRequest(Request):
    """A Request whose body is held in memory and capped at the site's ``max_request_body``.

    twisted.web spools a body of unknown length (chunked) or of 100,000 bytes
    or more to a temporary file while it is received, before any resource (or
    auth check) runs. Here a declared ``Content-Length`` over the cap is
    answered 413 as soon as the headers are in, and a chunked body as soon as
    its running total passes the cap; either way the connection is closed and
    nothing more is read or kept. A body within the cap is a ``BytesIO``.
    """

    _body_bytes = 0
    _refused = False

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)  # set by Site.buildProtocol
        return getattr(site, "max_request_body", MAX_REQUEST_BODY)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            self._refuse(f"request body of {length} bytes")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return  # the 413 is out; bytes already read are dropped
        self._body_bytes += len(data)
        if self._body_bytes > self._limit():
            self._refuse("chunked request body")
            return
        assert self.content is not None  # gotLength set it
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered 413 already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self, what: str) -> None:
        self._refused = True
        self.content = io.BytesIO()
        # No "100 Continue" after the 413 (HTTPChannel sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        body = orjson.dumps({"error": f"{what} is over the limit of {self._limit()} bytes"})
        transport = self.channel.transport
        assert transport is not None  # we are reading from it
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        self.channel.loseConnection()  # stops reading; the reply is flushed first


class QuietSite(Site):
    """A Site that logs only failed requests: scrapes every 15 s are not news.

    Its requests are ``BodyLimitedRequest``s: no body over ``max_request_body``
    is read, and none is written to disk.
    """

    requestFactory = BodyLimitedRequest
    max_request_body = MAX_REQUEST_BODY

    def log(self, request: http.Request) -> None:
        if request.code >= 400:
            super().log(request)


def make_site(
    router: Router,
    registry: CollectorRegistry,
    stats_sections: dict[str, StatsSection] | None = None,
    extra: dict[bytes, Resource] | None = None,
    room_sections: dict[str, Callable[[int], Any]] | None = None,
) -> Site:
    root = Root()
    root.putChild(b"metrics", MetricsPage(registry))
    root.putChild(b"healthz", HealthPage(router))
    root.putChild(b"stats", StatsPage(router, stats_sections or {}, room_sections))
    for name, resource in (extra or {}).items():
        root.putChild(name, resource)
    site = QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
