"""The side HTTP port: /metrics, /healthz, /stats, and whatever plugins mount.

Everything here runs on the reactor thread and only reads the services'
state, so no locks are needed; the Prometheus exposition is generated on the
reactor thread too (a few hundred microseconds for our bounded series), which
keeps gauges consistent with the state they describe.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gamed import __version__
from gamed.httputil import json_response, path_id
from gamed.router import ROOM_ID_MAX, ROOM_ID_MIN, Router

#: Rooms listed in /stats (largest first); the total is always given.
STATS_ROOM_LIMIT = 100

StatsSection = Callable[[], Any]


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class HealthPage(Resource):
    isLeaf = True

    def __init__(self, router: Router) -> None:
        super().__init__()
        self._router = router

    def render_GET(self, request: Request) -> bytes:
        if self._router.draining:
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


class QuietSite(Site):
    """A Site that logs only failed requests: scrapes every 15 s are not news."""

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
