"""The endpoints the operator console reads (/stats/rooms, /stats/rooms/{id}, /stats/users/{id},
/admin/blocks) and serves (/console/), on the real service tree over a MemoryReactorClock: HTTP
requests are parsed by the real Site from a StringTransport, game clients are real GameProtocols
on StringTransports. And: no request the console can make changes anything without the token.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from gamed import tap
from gamed.protocol import GameFactory
from gamed.web import BUSY_SECONDS, ROOMS_PAGE_MAX
from tests.unit.fakes import admin_token_args

TOKEN = b"console-admin-token-0123456789"


class Tree:
    """makeService (security + analytics, maybe an admin token) on a MemoryReactorClock."""

    def __init__(self, tmp_path: Path, token: bool = True, *extra: str) -> None:
        from twisted.internet.testing import MemoryReactorClock

        args = ["--port", "tcp:7001", "--metrics-port", "tcp:9701", "-d", str(tmp_path / "d")]
        args += ["--ws-port", "none", "--middleware", "security,analytics", "--max-room-users", "3"]
        args += ["--rate-limit", "0", "--idle-timeout", "0", *extra]
        if token:
            args += admin_token_args(tmp_path, TOKEN)
        options = tap.Options()
        options.parseOptions(args)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)
        self.service = tap.makeService(options, reactor=self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.router = self.service.router
        self.site = self.service.getServiceNamed("http-listener").factory
        self.site.timeOut = None
        self.factory = GameFactory(self.router, self.reactor)
        self._port = 40000

    def stop(self) -> None:
        self.service.stopService()

    # -- HTTP ------------------------------------------------------------------------------------
    def http(
        self, method: str, path: str, token: bytes | None = None, body: bytes = b""
    ) -> tuple[int, bytes, bytes]:
        """(status, lower-cased head, body) of one request through the real Site."""
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        proto.makeConnection(transport)
        head = f"{method} {path} HTTP/1.0\r\nHost: t\r\nContent-Length: {len(body)}\r\n".encode()
        if token is not None:
            head += b"Authorization: Bearer " + token + b"\r\n"
        proto.dataReceived(head + b"\r\n" + body)
        if method != "GET":
            # An admin change is answered once it is on disk: write it now (the store's
            # thread reports through the real reactor, which a unit test does not run).
            for mw in self.router.pipeline.middleware:
                if getattr(mw, "name", None) == "security":
                    mw.store.flush_sync()
        raw_head, _, raw_body = transport.value().partition(b"\r\n\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
        return int(raw_head.split(b" ", 2)[1]), raw_head.lower(), raw_body

    def get(self, path: str, token: bytes | None = TOKEN) -> tuple[int, Any]:
        status, _, body = self.http("GET", path, token)
        return status, orjson.loads(body)

    # -- game clients ----------------------------------------------------------------------------
    def client(self, user_id: int, room: int | None = None, nickname: str | None = None) -> Any:
        self._port += 1
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", self._port))
        proto = self.factory.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        send(proto, {"Connect": {"room_id": 0, "user_id": user_id}})
        if room is not None:
            send(
                proto,
                {
                    "RoomJoin": {
                        "user_id": user_id,
                        "room_id": room,
                        "nickname": nickname or f"u{user_id}",
                    }
                },
            )
        return proto


def send(proto: Any, *objs: object) -> None:
    data = b""
    for obj in objs:
        payload = orjson.dumps(obj)
        data += struct.pack(">I", len(payload)) + payload
    proto.dataReceived(data)


@pytest.fixture
def tree(tmp_path: Path) -> Any:
    t = Tree(tmp_path)
    yield t
    t.stop()


def _ids(body: dict[str, Any]) -> list[int]:
    return [r["room_id"] for r in body["rooms"]]


# -- /stats/rooms ------------------------------------------------------------------------------


def test_rooms_listing_pages_sorts_and_counts(tree: Tree) -> None:
    # rooms 10 (3 users: full), 11 (2), 12 (1), 105 (1), 120 (1)
    uid = 1
    for room, n in ((10, 3), (11, 2), (12, 1), (105, 1), (120, 1)):
        for _ in range(n):
            tree.client(uid, room)
            uid += 1
    status, body = tree.get("/stats/rooms", token=None)  # counts only: open like /stats
    assert status == 200
    assert (body["total"], body["matched"], body["max_users"]) == (5, 5, 3)
    assert _ids(body)[:2] == [10, 11], "default: most users first"
    assert body["rooms"][0] == {
        **body["rooms"][0],
        "user_count": 3,
        "full": True,
        "busy": True,
        "game": None,
    }

    _, body = tree.get("/stats/rooms?sort=room_id&limit=2")
    assert (_ids(body), body["order"]) == ([10, 11], "asc")
    _, body = tree.get("/stats/rooms?sort=room_id&limit=2&offset=2")
    assert _ids(body) == [12, 105]
    _, body = tree.get("/stats/rooms?sort=room_id&order=desc&offset=4")
    assert _ids(body) == [10]
    _, body = tree.get("/stats/rooms?q=1")
    assert sorted(_ids(body)) == [10, 11, 12, 105, 120]
    _, body = tree.get("/stats/rooms?q=10&sort=room_id")
    assert (_ids(body), body["total"], body["matched"]) == ([10, 105], 5, 2)
    _, body = tree.get("/stats/rooms?filter=full")
    assert _ids(body) == [10]

    # busy: activity in the last BUSY_SECONDS; a chat in room 12 makes it the only busy one
    tree.reactor.advance(BUSY_SECONDS + 1)
    send(tree.router.sessions[6], {"ChatMessage": {"user_id": 6, "room_id": 12, "message": "hi"}})
    _, body = tree.get("/stats/rooms?filter=busy")
    assert _ids(body) == [12]
    _, body = tree.get("/stats/rooms?sort=messages&limit=1")
    assert body["rooms"][0]["messages"] == 1 and _ids(body) == [12]


def test_rooms_listing_filters_rooms_in_a_game(tree: Tree) -> None:
    a, _b = tree.client(1, 7), tree.client(2, 7)
    tree.client(3, 8)
    send(a, {"StartGame": {"room_id": 7}})
    _, body = tree.get("/stats/rooms?filter=game")
    assert _ids(body) == [7]
    assert body["rooms"][0]["game"] == "Waiting"
    _, body = tree.get("/stats/rooms?filter=game,full")
    assert _ids(body) == []


@pytest.mark.parametrize(
    "query",
    [
        "sort=nope",
        "order=up",
        "filter=hot",
        "q=abc",
        "limit=0",
        f"limit={ROOMS_PAGE_MAX + 1}",
        "offset=-1",
        "offset=x",
    ],
)
def test_rooms_listing_bad_parameters_are_400(tree: Tree, query: str) -> None:
    status, body = tree.get("/stats/rooms?" + query)
    assert status == 400 and body["error"]


# -- /stats/rooms/{id} ---------------------------------------------------------------------------


def test_room_detail_members_and_a_running_games_turn(tree: Tree) -> None:
    ann = tree.client(1, 5, "ann")
    bob = tree.client(2, 5, "bob")
    tree.reactor.advance(4)
    send(ann, {"StartGame": {"room_id": 5}})
    send(bob, {"ToggleReady": {"room_id": 5}})
    tree.reactor.advance(10)  # 10 of the 30 s turn gone

    status, body = tree.get("/stats/rooms/5")
    assert status == 200
    assert (body["user_count"], body["max_users"]) == (2, 3)
    assert body["members"] == [
        {"user_id": 1, "nickname": "ann", "transport": "tcp", "connected_for": 14.0, "away": False},
        {"user_id": 2, "nickname": "bob", "transport": "tcp", "connected_for": 14.0, "away": False},
    ]
    game = body["game"]
    assert (game["status"], game["round"], game["current_turn"]) == ("InProgress", 1, 1)
    assert game["turn_time_left"] == pytest.approx(20.0)
    assert [p["nickname"] for p in game["players"]] == ["ann", "bob"]

    # ann moves: bob's turn, the clock restarts
    send(
        ann, {"PlayerAction": {"room_id": 5, "action": {"Move": {"x": 1, "y": 2, "direction": 0}}}}
    )
    _, body = tree.get("/stats/rooms/5")
    assert (body["game"]["current_turn"], body["game"]["turn_time_left"]) == (2, 30.0)

    # bob drops: his seat is held, he shows as away
    bob.transport.loseConnection()
    bob.connectionLost(Failure(ConnectionDone()))
    _, body = tree.get("/stats/rooms/5")
    assert [m["away"] for m in body["members"]] == [False, True]
    assert body["game"]["players"][1]["away"] is True


def test_room_detail_hides_members_without_the_token(tree: Tree) -> None:
    ann = tree.client(1, 5, "ann")
    bob = tree.client(2, 5, "bob")
    send(ann, {"StartGame": {"room_id": 5}})
    send(bob, {"ToggleReady": {"room_id": 5}})
    for token in (None, b"wrong-token"):
        status, body = tree.get("/stats/rooms/5", token=token)
        assert status == 200, "counts and the game's progress stay open"
        assert body["members"] is None and "admin token" in body["members_hidden"]
        assert (body["user_count"], body["game"]["status"], body["game"]["round"]) == (
            2,
            "InProgress",
            1,
        )
        assert "players" not in body["game"] and "current_turn" not in body["game"]
        assert b"ann" not in orjson.dumps(body)


def test_without_an_admin_token_members_are_as_open_as_the_port(tmp_path: Path) -> None:
    t = Tree(tmp_path, token=False)
    try:
        t.client(1, 5, "ann")
        _, body = t.get("/stats/rooms/5", token=None)
        assert body["members"][0]["nickname"] == "ann"
        assert t.get("/stats/users/1", token=None)[0] == 200
    finally:
        t.stop()


def test_room_detail_errors(tree: Tree) -> None:
    assert tree.get("/stats/rooms/9")[0] == 404
    assert tree.get("/stats/rooms/x")[0] == 400
    assert tree.get("/stats/rooms/99999999999")[0] == 400


# -- /stats/users/{id} ------------------------------------------------------------------------------


def test_user_detail_needs_the_token(tree: Tree) -> None:
    tree.client(1, 5, "ann")
    tree.reactor.advance(2.5)
    status, head, _ = tree.http("GET", "/stats/users/1")
    assert status == 401 and b'www-authenticate: bearer realm="gamed-admin"' in head
    assert tree.get("/stats/users/1", token=b"nope")[0] == 401
    status, body = tree.get("/stats/users/1")
    assert status == 200
    assert body["connected"] is True and body["room_id"] == 5 and body["game_room_id"] is None
    session = body["session"]
    assert (session["nickname"], session["transport"], session["peer_host"]) == (
        "ann",
        "tcp",
        "127.0.0.1",
    )
    assert session["connected_for"] == 2.5
    status, body = tree.get("/stats/users/2")
    assert (status, body["connected"], body["session"], body["room_id"]) == (200, False, None, None)
    assert tree.get("/stats/users/abc")[0] == 400


# -- /admin/blocks ------------------------------------------------------------------------------------


def test_admin_blocks_lists_bans_blocks_and_recent_decisions(tree: Tree) -> None:
    tree.client(1, 5)
    status, _, body = tree.http("POST", "/admin/users/1/ban", TOKEN, b'{"reason": "cheating"}')
    assert status == 200 and orjson.loads(body)["kicked"] is True
    status, _, _ = tree.http("POST", "/admin/ips/10.1.2.3/block", TOKEN, b'{"duration": 60}')
    assert status == 200
    tree.reactor.advance(15)
    assert tree.get("/admin/blocks", token=None)[0] == 401
    status, body = tree.get("/admin/blocks")
    assert status == 200
    (user,) = body["users"]
    assert (user["user_id"], user["reason"], user["permanent"]) == (1, "cheating", True)
    (ip,) = body["ips"]
    assert (ip["ip"], ip["permanent"], ip["remaining_seconds"]) == ("10.1.2.3", False, 45.0)
    recent = [(d["rule"], d["action"]) for d in body["recent"]]
    assert recent[:2] == [("admin", "block_ip"), ("admin", "ban")], "newest first"
    assert "user 1" in body["recent"][1]["detail"]


def test_every_admin_action_is_logged_with_its_target_and_caller(tree: Tree) -> None:
    with capturedLogs() as events:
        tree.http("POST", "/admin/users/42/ban", TOKEN)
        tree.http("POST", "/admin/users/42/kick", b"wrong")
        tree.get("/admin/security")  # reads are not logged
    lines = [e["log_format"].format(**e) for e in events if "log_format" in e]
    audit = [line for line in lines if line.startswith("admin ")]
    assert audit == [
        "admin POST /admin/users/42/ban from 127.0.0.1: 200",
        "admin POST /admin/users/42/kick from 127.0.0.1: 401 (wrong admin token)",
    ]


# -- /console/ ------------------------------------------------------------------------------------------


def _static(tree: Tree, path: str) -> tuple[int, DummyRequest, bytes]:
    """A GET of a static file through the real Site's resource tree (files are written by a
    pull producer, which DummyRequest runs to the end at once)."""
    request = DummyRequest([seg.encode() for seg in path.lstrip("/").split("/")])
    resource = tree.site.getResourceFor(request)
    out = resource.render(request)
    body = out if isinstance(out, bytes) else b"".join(request.written)
    return request.responseCode or 200, request, body


def test_console_is_served_with_a_strict_policy(tree: Tree) -> None:
    status, request, _ = _static(tree, "/console")
    assert status in (301, 302) and request.responseHeaders.getRawHeaders(b"location")
    status, request, body = _static(tree, "/console/")
    headers = request.responseHeaders
    assert status == 200
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    (policy,) = headers.getRawHeaders(b"content-security-policy")
    assert policy.startswith(b"default-src 'self'") and b"frame-ancestors 'none'" in policy
    assert b'<script src="console.js">' in body
    for asset, kind in (("console.js", b"text/javascript"), ("console.css", b"text/css")):
        status, request, body = _static(tree, "/console/" + asset)
        (ctype,) = request.responseHeaders.getRawHeaders(b"content-type")
        assert status == 200 and ctype.startswith(kind) and body
        assert b"http://" not in body and b"https://" not in body, "nothing from elsewhere"
    assert _static(tree, "/console/nope.js")[0] == 404


# -- nothing changes state without the token ------------------------------------------------------------

#: Every state-changing request the console can make (the admin API), and writes to the
#: read-only endpoints it uses.
WRITES = [
    ("POST", "/admin/users/1/ban"),
    ("POST", "/admin/users/1/kick"),
    ("POST", "/admin/users/2/unblock"),
    ("POST", "/admin/ips/127.0.0.1/block"),
    ("POST", "/admin/ips/10.9.9.9/unblock"),
    ("POST", "/admin/reload"),
    ("POST", "/stats/rooms"),
    ("POST", "/stats/rooms/5"),
    ("DELETE", "/stats/rooms/5"),
    ("POST", "/stats/users/1"),
    ("PUT", "/console/index.html"),
    ("POST", "/console/"),
    ("DELETE", "/console/console.js"),
]


@pytest.mark.parametrize("token", [None, b"wrong-token-0123456789"])
def test_no_console_request_changes_state_without_the_token(
    tree: Tree, token: bytes | None
) -> None:
    ann = tree.client(1, 5, "ann")
    mw = tree.router.pipeline.middleware[0]
    mw.ban_user(2, "earlier")
    mw.block_ip("10.9.9.9", float("inf"), "earlier")
    reloads: list[int] = []
    tree.router.reloader = lambda: reloads.append(1)
    before = tree.get("/admin/blocks")[1]
    for method, path in WRITES:
        status, _, _ = tree.http(method, path, token, b'{"reason": "x"}')
        # 401: the admin API's answer; 405/501: a method the read-only endpoints do not have
        assert status in (401, 405, 501), f"{method} {path} without the right token: {status}"
    assert tree.router.sessions.get(1) is ann and not ann.transport.disconnecting
    after = tree.get("/admin/blocks")[1]
    assert after["users"] == before["users"] and after["ips"] == before["ips"]
    assert reloads == []
    assert (tree.router.rooms.size(5), len(tree.router.sessions)) == (1, 1)


# -- /history (the metrics plugin) ------------------------------------------------------------------


def test_history_keeps_ten_minutes_of_snapshots(tmp_path: Path) -> None:
    t = Tree(tmp_path, False, "--middleware", "metrics")
    try:
        status, body = t.get("/history", token=None)
        assert (status, body["points"], body["seconds"]) == (200, [], 600.0)
        t.client(1, 5)
        interval = body["collection_interval"]
        for _ in range(130):  # more than ten minutes of collections
            t.reactor.advance(interval)
        _, body = t.get("/history", token=None)
        fields = body["fields"]
        assert fields[:2] == ["timestamp", "connections"] and "p95_ms" in fields
        points = body["points"]
        assert len(points) == int(600 / interval)
        assert points[-1][0] == t.reactor.seconds() and points[-1][1] == 1
        assert points[0][0] == pytest.approx(t.reactor.seconds() - 600 + interval)
    finally:
        t.stop()


def test_the_console_ships_in_the_package() -> None:
    """setup.cfg's package_data carries gamed/console/ (an editable install would hide a miss)."""
    import configparser

    from gamed.web import CONSOLE_DIR

    cfg = configparser.ConfigParser()
    cfg.read(CONSOLE_DIR.parents[1] / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["gamed"].split(",")]
    assert "console/*" in patterns
    shipped = {p.name for p in CONSOLE_DIR.iterdir()}
    assert {"index.html", "console.js", "console.css"} <= shipped
    assert all(not p.is_dir() for p in CONSOLE_DIR.iterdir()), "console/* takes no subfolder"
