"""The side HTTP port: /metrics, /healthz, /stats, /console/, and whatever plugins mount.

``/stats`` and ``/stats/rooms`` (counts, no user in them) are as open as the
port; what names users (a room's members and players, ``/stats/users/{id}``)
needs the admin token when one is set (``AdminGate``), like the analytics
per-user pages. ``/console/`` is static files: the page reads these endpoints
and acts only through ``/admin/`` with the token the operator typed.

Everything here runs on the reactor thread and only reads the services'
state, so no locks are needed; the Prometheus exposition is generated on the
reactor thread too (a few hundred microseconds for our bounded series), which
keeps gauges consistent with the state they describe.
"""

from __future__ import annotations

import heapq
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gamed import __version__
from gamed.httputil import AdminGate, json_response, path_id
from gamed.router import ROOM_ID_MAX, ROOM_ID_MIN, Router
from gamed.ws_site import StaticFiles

#: Rooms listed in /stats (largest first); the total is always given.
STATS_ROOM_LIMIT = 100
#: The largest user id (the protocol's u32).
USER_ID_MAX = 2**32 - 1
#: Rows per page of /stats/rooms: the default and the largest ``limit``.
ROOMS_PAGE_DEFAULT, ROOMS_PAGE_MAX = 50, 500
#: A room is "busy" in /stats/rooms?filter=busy when it saw a chat, a join or a leave this
#: many seconds ago or less.
BUSY_SECONDS = 30.0
#: The operator console's files (HTML, CSS, JS), shipped in the package (setup.cfg package_data).
CONSOLE_DIR = Path(__file__).with_name("console")
_ROOM_SORTS: dict[str, Callable[[Any], Any]] = {
    "room_id": lambda r: r.room_id,
    "users": lambda r: (len(r), r.room_id),
    "messages": lambda r: (r.message_count, r.room_id),
    "activity": lambda r: (r.last_activity, r.room_id),
    "created": lambda r: (r.created_at, r.room_id),
}
_ROOM_FILTERS = ("busy", "full", "game")

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
        router = self._source
        if router.draining:
            return json_response(request, 503, {"status": "draining"})
        cluster = router.cluster
        if cluster:
            # down: this node cannot admit anyone (Connect and RoomJoin get 503): let the
            # balancer send new players elsewhere; degraded still serves (docs/cluster.md)
            state = cluster.state
            status = 503 if state == "down" else 200
            return json_response(request, status, {"status": "serving", "cluster": state})
        return json_response(request, 200, {"status": "serving"})


def _arg(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    return values[0].decode("utf-8", "replace") if values else None


class _BadRequest(Exception):
    pass


def _int_arg(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    text = _arg(request, name.encode())
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or not lo <= int(text) <= hi:
        raise _BadRequest(f"{name} must be an integer {lo}..{hi}")
    return int(text)


class RoomStatsPage(Resource):
    """``/stats/rooms``: a page of rooms (sort, filters, search by id);
    ``/stats/rooms/{id}``: one room, its game, its members, every plugin's extra fields."""

    isLeaf = True

    def __init__(
        self,
        router: Router,
        sections: dict[str, Callable[[int], Any]],
        admin: AdminGate | None = None,
    ) -> None:
        super().__init__()
        self._router = router
        self._sections = sections
        self._admin = admin or AdminGate()

    def render_GET(self, request: Request) -> bytes:
        postpath = request.postpath
        assert postpath is not None  # Site.getResourceFor sets it before any render
        if postpath in ([], [b""]):
            try:
                return json_response(request, 200, self.listing(request))
            except _BadRequest as e:
                return json_response(request, 400, {"error": str(e)})
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
        router = self._router
        games = router.games
        body: dict[str, Any] = {
            "room_id": room_id,
            "user_count": len(room),
            "max_users": router.rooms.max_room_users,
            "peak_users": room.peak_users,
            "messages": room.message_count,
            "created_at": room.created_at,
            "last_activity": room.last_activity,
        }
        game = games.game_detail(room_id)
        refused = self._admin.refusal(request)
        if refused is None:
            now = router.clock.seconds()
            members = []
            for member in room.members.values():
                ctx = getattr(member, "ctx", None)
                since = getattr(ctx, "connected_at", None)
                members.append(
                    {
                        "user_id": member.user_id,
                        "nickname": member.nickname,
                        "transport": getattr(member, "transport_name", None),
                        "connected_for": None if since is None else round(now - since, 3),
                        "away": games.is_away(member.user_id),
                    }
                )
            body["members"] = members
        else:
            # Who is in the room is personal data: counts only without the token.
            body["members"] = None
            body["members_hidden"] = f"members need the admin token ({refused})"
            if game is not None:
                game = {k: v for k, v in game.items() if k not in ("players", "current_turn")}
        body["game"] = game
        for name, section in self._sections.items():
            body[name] = section(room_id)
        return json_response(request, 200, body)

    def listing(self, request: Request) -> dict[str, Any]:
        """One page of rooms: ``offset``, ``limit`` (1..500), ``sort`` (room_id, users,
        messages, activity, created), ``order`` (asc, desc), ``filter`` (a comma list of
        busy, full, game: all must hold), ``q`` (room ids starting with these digits)."""
        sort = _arg(request, b"sort") or "users"
        if sort not in _ROOM_SORTS:
            raise _BadRequest(f"sort must be one of {', '.join(_ROOM_SORTS)}")
        order = _arg(request, b"order") or ("asc" if sort == "room_id" else "desc")
        if order not in ("asc", "desc"):
            raise _BadRequest("order must be asc or desc")
        filters = [f for f in (_arg(request, b"filter") or "").split(",") if f]
        for f in filters:
            if f not in _ROOM_FILTERS:
                raise _BadRequest(f"filter must be a comma list of {', '.join(_ROOM_FILTERS)}")
        query = (_arg(request, b"q") or "").strip()
        if query and (not query.isascii() or not query.isdigit() or len(query) > 10):
            raise _BadRequest("q must be the digits a room id starts with")
        offset = _int_arg(request, "offset", 0, 0, 10**9)
        limit = _int_arg(request, "limit", ROOMS_PAGE_DEFAULT, 1, ROOMS_PAGE_MAX)

        router = self._router
        games = router.games
        cap = router.rooms.max_room_users
        busy_since = router.clock.seconds() - BUSY_SECONDS
        all_rooms = router.rooms.rooms()
        rooms = all_rooms
        if query:
            rooms = [r for r in rooms if str(r.room_id).startswith(query)]
        if "full" in filters:
            rooms = [r for r in rooms if len(r) >= cap]
        if "busy" in filters:
            rooms = [r for r in rooms if r.last_activity >= busy_since]
        if "game" in filters:
            rooms = [r for r in rooms if games.game_state(r.room_id) is not None]
        rooms.sort(key=_ROOM_SORTS[sort], reverse=order == "desc")
        page = rooms[offset : offset + limit]
        return {
            "total": len(all_rooms),
            "matched": len(rooms),
            "offset": offset,
            "limit": limit,
            "sort": sort,
            "order": order,
            "filter": filters,
            "q": query,
            "max_users": cap,
            "busy_seconds": BUSY_SECONDS,
            "rooms": [
                {
                    "room_id": r.room_id,
                    "user_count": len(r),
                    "full": len(r) >= cap,
                    "busy": r.last_activity >= busy_since,
                    "messages": r.message_count,
                    "peak_users": r.peak_users,
                    "created_at": r.created_at,
                    "last_activity": r.last_activity,
                    "game": games.game_state(r.room_id),
                }
                for r in page
            ],
        }


class UserStatsPage(Resource):
    """``/stats/users/{id}``: the user's session and room; personal data, so it needs the
    admin token when one is set."""

    isLeaf = True

    def __init__(self, router: Router, admin: AdminGate | None = None) -> None:
        super().__init__()
        self._router = router
        self._admin = admin or AdminGate()

    def render_GET(self, request: Request) -> bytes:
        refused = self._admin.refusal(request)
        if refused is not None:
            return self._admin.refuse(request, refused)
        postpath = request.postpath
        assert postpath is not None  # Site.getResourceFor sets it before any render
        user_id = path_id(postpath[0], 0, USER_ID_MAX) if len(postpath) == 1 else None
        if user_id is None:
            return json_response(
                request, 400, {"error": f"expected /stats/users/{{user_id}}, 0..{USER_ID_MAX}"}
            )
        router = self._router
        conn = router.sessions.get(user_id)
        room = router.rooms.room_of(user_id)
        session: dict[str, Any] | None = None
        if conn is not None:
            ctx = conn.ctx
            session = {
                "nickname": conn.nickname,
                "transport": getattr(conn, "transport_name", None),
                "peer_host": ctx.peer_host,
                "connected_for": round(router.clock.seconds() - ctx.connected_at, 3),
                "bytes_in": conn.bytes_in,
                "bytes_out": conn.bytes_out,
            }
        return json_response(
            request,
            200,
            {
                "user_id": user_id,
                "connected": conn is not None,
                "session": session,
                "room_id": room.room_id if room is not None else None,
                "game_room_id": router.games.game_of_user(user_id) if room is not None else None,
                "away": router.games.is_away(user_id),
            },
        )


class ConsoleFiles(StaticFiles):
    """The console's static files, with a policy that lets them load nothing from elsewhere."""

    def render_GET(self, request: Request) -> Any:
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return super().render_GET(request)


class StatsPage(Resource):
    def __init__(
        self,
        router: Router,
        sections: dict[str, StatsSection],
        room_sections: dict[str, Callable[[int], Any]] | None = None,
        admin: AdminGate | None = None,
    ) -> None:
        super().__init__()
        self._router = router
        self._sections = sections
        self.putChild(b"rooms", RoomStatsPage(router, room_sections or {}, admin))
        self.putChild(b"users", UserStatsPage(router, admin))

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
    admin: AdminGate | None = None,
    console_dir: str | os.PathLike[str] = CONSOLE_DIR,
) -> Site:
    """``admin``: the gate the security plugin feeds (None: no token, personal data open)."""
    root = Root()
    root.putChild(b"metrics", MetricsPage(registry))
    root.putChild(b"healthz", HealthPage(router))
    root.putChild(b"stats", StatsPage(router, stats_sections or {}, room_sections, admin))
    root.putChild(b"console", ConsoleFiles(os.fspath(console_dir), defaultType="text/plain"))
    for name, resource in (extra or {}).items():
        root.putChild(name, resource)
    site = QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
