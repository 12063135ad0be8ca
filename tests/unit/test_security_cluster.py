"""The security plugin in a --redis cluster: shared bans and blocks, rate handover.

Two or three plugins (nodes) share a SharedHub (an in-memory Redis, fakes.py) and
one Clock; the admin API is rendered from DummyRequests. The real Redis path is
tests/integration/test_cluster_security.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from twisted.internet.task import Clock

from gamed import messages as m
from gamed.cluster.link import DEGRADED, DOWN, UP
from gamed.cluster.shared import CHANNEL, PREFIX, SharedState, decode_record, node_shared_state
from gamed.errors import SharedStateUnavailable
from gamed.middleware.security import handover, sync
from gamed.pipeline import Veto
from tests.unit.fakes import Ctx, FakeLink, SecurityPlugin, SharedHub

T0 = 1_700_000_000.0


class Node(SecurityPlugin):
    """One node: the plugin with the hub's FakeSharedState, its sync started."""

    def __init__(self, tmp: Path, hub: SharedHub, name: str, **table: object) -> None:
        tmp.mkdir()
        self.shared = hub.node(name)
        super().__init__(tmp, shared=self.shared, clock=hub.clock, **table)  # type: ignore[arg-type]

    def start(self) -> None:
        assert self.mw.sync is not None
        self.mw.sync.start()

    def connect(self, uid: int, host: str = "10.0.0.1") -> tuple[Ctx, object]:
        ctx = Ctx(self.clock, host)
        self.control.hosts.append(host)
        veto = self.mw.connection_opened(ctx)
        if veto is not None:
            return ctx, veto
        msg = m.Connect(0, uid)
        out = self.mw.before_process(ctx, msg)
        if out is None:
            ctx.user_id = uid
            self.control.sessions.append(uid)
            self.mw.after_process(ctx, msg, None)
        return ctx, out

    def chat(self, ctx: Ctx) -> object:
        return self.mw.before_process(ctx, m.ChatMessage(ctx.user_id or 0, 1, "hi"))

    def close(self, ctx: Ctx, reason: str = "closed") -> None:
        if ctx.user_id in self.control.sessions:
            self.control.sessions.remove(ctx.user_id)
        self.mw.connection_closed(ctx, reason)


@pytest.fixture
def hub() -> SharedHub:
    clock = Clock()
    clock.advance(T0)
    return SharedHub(clock)


@pytest.fixture
def nodes(tmp_path: Path, hub: SharedHub) -> tuple[Node, Node]:
    a, b = Node(tmp_path / "a", hub, "a"), Node(tmp_path / "b", hub, "b")
    a.start()
    b.start()
    return a, b


def code(out: object) -> int | None:
    return out.code if isinstance(out, Veto) else None


# -- bans and blocks -------------------------------------------------------------------------


def test_a_ban_on_one_node_kicks_and_refuses_the_user_on_another(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = nodes
    ctx, _ = b.connect(42)
    status, body = a.call("POST", "users/42/ban", {"reason": "cheating"})
    assert status == 200 and body["banned"] is True
    # B holds the session: B kicks it, and refuses the next Connect.
    assert ("user", 42, 403) in b.control.kicked
    assert code(b.chat(ctx)) == 403
    assert code(b.connect(42)[1]) == 403
    assert math.isinf(b.mw.user_blocks[42].until)
    assert b.mw.decisions[("cluster", "block")] == 1
    version, expires, value = hub.tables["user_blocks"]["42"]
    assert expires is None and orjson.loads(value) == {
        "until": None,
        "reason": "cheating",
        "kick": True,
    }
    assert version == a.mw.user_blocks[42].since == b.mw.user_blocks[42].since


def test_unblock_on_one_node_lifts_everywhere(nodes: tuple[Node, Node], hub: SharedHub) -> None:
    a, b = nodes
    a.call("POST", "users/42/ban")
    hub.clock.advance(1)
    assert b.call("POST", "users/42/unblock") == (200, {"user_id": 42, "unblocked": True})
    assert 42 not in a.mw.user_blocks and 42 not in b.mw.user_blocks
    assert code(a.connect(42)[1]) is None
    _v, expires, value = hub.tables["user_blocks"]["42"]
    assert orjson.loads(value) == {"lifted": True}  # a tombstone, kept for a while
    assert expires == pytest.approx(hub.clock.seconds() + sync.TOMBSTONE_SECONDS)


def test_an_ip_block_with_expiry_kicks_the_address_everywhere(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    b.connect(7, host="10.9.9.9")
    status, body = a.call("POST", "ips/10.9.9.9/block", {"duration": 60})
    assert status == 200 and body["duration"] == 60
    assert ("host", "10.9.9.9", 403) in b.control.kicked
    assert code(b.mw.connection_opened(Ctx(b.clock, "10.9.9.9"))) == 403
    b.clock.advance(61)  # expiry holds on every node
    assert b.mw.connection_opened(Ctx(b.clock, "10.9.9.9")) is None
    assert a.mw.connection_opened(Ctx(a.clock, "10.9.9.9")) is None


def test_redis_down_refuses_changes_with_503_and_keeps_enforcing(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = nodes
    a.call("POST", "users/5/ban")
    hub.down = True
    for path in ("users/6/ban", "users/5/unblock", "ips/10.0.0.9/block", "ips/10.0.0.9/unblock"):
        status, body = a.call("POST", path)
        assert status == 503, (path, body)
        assert "cluster unavailable" in body["error"] and "not made" in body["error"]
    # Nothing changed on either node; the ban in force stays enforced on both.
    assert 6 not in a.mw.user_blocks and "10.0.0.9" not in a.mw.ip_blocks
    assert code(a.connect(5)[1]) == 403 and code(b.connect(5)[1]) == 403
    assert code(b.connect(6)[1]) is None


def test_without_redis_the_admin_api_is_unchanged(tmp_path: Path) -> None:
    p = SecurityPlugin(tmp_path)
    assert p.mw.sync is None and p.mw.handover is None
    assert p.call("POST", "users/1/ban")[0] == 200
    assert p.mw.stats()["cluster"] is None


def test_a_newer_change_in_redis_wins_409(nodes: tuple[Node, Node], hub: SharedHub) -> None:
    a, _b = nodes
    hub.tables["user_blocks"] = {"3": (T0 + 100, None, '{"lifted":true}')}  # a node ahead in time
    status, body = a.call("POST", "users/3/ban")
    assert status == 409 and "newer change" in body["error"]
    assert 3 not in a.mw.user_blocks


def test_automatic_blocks_are_shared_without_waiting(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = nodes
    b.connect(9)  # its session is on A below; B only learns of the block
    _ctx, _ = a.connect(9)
    a.mw.block_user(9, 300, "rate_user")  # as the rule does
    a.mw.block_ip("10.0.0.1", 300, "rate_ip", kick=False)
    assert b.mw.user_blocks[9].until == a.mw.user_blocks[9].until
    assert "10.0.0.1" in b.mw.ip_blocks
    assert b.control.kicked == []  # an automatic block refuses messages, kicks nobody
    assert orjson.loads(hub.tables["user_blocks"]["9"][2])["kick"] is False


def test_a_node_that_missed_notices_catches_up_at_the_resync(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = nodes
    b.connect(11)
    hub.deaf.add("b")  # B's subscriber is down: the notice does not reach it
    a.call("POST", "users/11/ban")
    a.call("POST", "ips/10.5.5.5/block")
    assert 11 not in b.mw.user_blocks
    hub.clock.advance(sync.RESYNC_SECONDS)
    assert 11 in b.mw.user_blocks and "10.5.5.5" in b.mw.ip_blocks
    assert ("user", 11, 403) in b.control.kicked  # a ban kicks, whenever it arrives
    assert b.mw.stats()["cluster"]["resyncs"] == 2


def test_a_missed_unblock_is_not_pushed_back(nodes: tuple[Node, Node], hub: SharedHub) -> None:
    a, b = nodes
    a.call("POST", "users/12/ban")
    hub.deaf.add("b")
    hub.clock.advance(1)
    a.call("POST", "users/12/unblock")
    assert 12 in b.mw.user_blocks  # stale until the resync
    hub.clock.advance(sync.RESYNC_SECONDS)
    assert 12 not in b.mw.user_blocks  # the tombstone is newer than B's ban
    assert orjson.loads(hub.tables["user_blocks"]["12"][2]) == {"lifted": True}


def test_start_merges_the_local_copy_and_redis(tmp_path: Path, hub: SharedHub) -> None:
    a = Node(tmp_path / "a", hub, "a")
    a.start()
    a.call("POST", "users/1/ban")  # only in Redis (and A)
    b = Node(tmp_path / "b", hub, "b")
    # B's SQLite copy: a ban Redis does not have, and an expired block.
    b.mw.load_blocks({"user": [(2, math.inf, "old", T0 - 10), (3, T0 - 1, "x", T0 - 20)], "ip": []})
    b.start()
    assert set(b.mw.user_blocks) >= {1, 2}
    assert "2" in hub.tables["user_blocks"] and "3" not in hub.tables["user_blocks"]
    assert 2 in a.mw.user_blocks  # pushed, so A heard it too


def test_the_service_merges_the_sqlite_copy_with_redis_at_start(
    tmp_path: Path, hub: SharedHub
) -> None:
    """The real start-up order: SQLite loaded first, then merged with Redis, then swept
    and resynced on the clock; a restarted node keeps its bans even with Redis down."""
    first = Node(tmp_path / "a", hub, "a")
    first.parts.service.startService()  # type: ignore[union-attr]
    first.mw.ban_user(1)
    first.mw.block_ip("10.3.3.3", 600, "admin_block")
    first.parts.service.stopService()  # type: ignore[union-attr]
    hub.tables.clear()  # Redis lost everything meanwhile
    again = SecurityPlugin(tmp_path / "a", shared=hub.node("a2"), clock=hub.clock)
    again.parts.service.startService()  # type: ignore[union-attr]
    try:
        assert set(hub.tables["user_blocks"]) == {"1"}  # pushed back from the SQLite copy
        assert set(hub.tables["ip_blocks"]) == {"10.3.3.3"}
        hub.down = True
        assert again.mw.sync is not None and again.mw.sync.resync() is None  # nothing to do
        ctx = Ctx(hub.clock)
        assert again.mw.connection_opened(ctx) is None
        assert code(again.mw.before_process(ctx, m.Connect(0, 1))) == 403
    finally:
        again.parts.service.stopService()  # type: ignore[union-attr]


def test_redis_restarted_empty_gets_the_nodes_bans_back(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, _b = nodes
    a.call("POST", "users/21/ban")
    a.call("POST", "ips/10.7.7.7/block", {"duration": 600})
    hub.down = True
    hub.clock.advance(5)
    hub.restart(lose_data=True)
    assert set(hub.tables["user_blocks"]) == {"21"}
    assert set(hub.tables["ip_blocks"]) == {"10.7.7.7"}
    expires = hub.tables["ip_blocks"]["10.7.7.7"][1]
    assert expires == pytest.approx(T0 + 600)  # the same expiry, not a new one


def test_no_redis_call_per_message(nodes: tuple[Node, Node], hub: SharedHub) -> None:
    a, _b = nodes
    ctx, _ = a.connect(30)
    hub.clock.advance(handover.RETRY_SECONDS)  # the Connect's second look for a stash
    before = hub.commands
    for _ in range(50):
        hub.clock.advance(0.5)
        assert a.chat(ctx) is None
    assert hub.commands == before


# -- the rate window follows the session ------------------------------------------------------


@pytest.fixture
def limited(tmp_path: Path, hub: SharedHub) -> tuple[Node, Node]:
    """Nodes a and b allowing 10 messages a minute per user (Connect counts one)."""
    a = Node(tmp_path / "a", hub, "a", rate_limit_per_minute=10)
    return a, Node(tmp_path / "b", hub, "b", rate_limit_per_minute=10)


def chat_every_second(node: Node, hub: SharedHub, ctx: Ctx, times: int) -> None:
    """``times`` chats a second apart, each let through."""
    for _ in range(times):
        hub.clock.advance(1)
        assert node.chat(ctx) is None


def test_a_users_rate_window_follows_them_to_another_node(
    limited: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = limited
    ctx, _ = a.connect(50)
    chat_every_second(a, hub, ctx, 7)
    a.close(ctx)
    assert "rate:50" in hub.stashes
    ctx_b, _ = b.connect(50)  # Connect counts 1: 8 on A + 1 here
    assert b.mw.users[50].count == 9
    assert b.chat(ctx_b) is None  # the 10th
    assert code(b.chat(ctx_b)) == 429  # the 11th in the same minute, though only 3 on B
    assert "rate:50" not in hub.stashes  # taken, not copied


def test_takeover_merges_the_window_a_second_later(
    limited: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = limited
    ctx, _ = a.connect(51)
    chat_every_second(a, hub, ctx, 8)
    ctx_b, _ = b.connect(51)  # the takeover: A closes its session after this Connect
    assert b.mw.users[51].count == 1
    a.close(ctx, "replaced")
    hub.clock.advance(handover.RETRY_SECONDS)
    assert b.mw.users[51].count == 10
    assert code(b.chat(ctx_b)) == 429


def test_nothing_is_stashed_when_the_window_is_over(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, _b = nodes
    ctx, _ = a.connect(52)
    hub.clock.advance(61)
    a.close(ctx)
    assert hub.stashes == {}


def test_handover_with_redis_down_costs_only_the_carry_over(
    nodes: tuple[Node, Node], hub: SharedHub
) -> None:
    a, b = nodes
    ctx, _ = a.connect(53)
    a.chat(ctx)
    hub.down = True
    a.close(ctx)
    ctx_b, out = b.connect(53)
    assert out is None and b.chat(ctx_b) is None  # the Connect never waits for Redis


# -- SharedState on a (fake) link ---------------------------------------------------------------


def set_state(link: FakeLink, new: str) -> None:
    old, link.state = link.state, new
    for listener in link.listeners:
        listener(old, new)


def test_shared_state_put_runs_one_script_that_stores_and_publishes() -> None:
    link = FakeLink()
    link.reply = lambda command: 1
    s = SharedState(link, "n1", Clock())  # type: ignore[arg-type]
    out: list[object] = []
    s.put("user_blocks", "7", '{"x":1}', 12.5, None).addBoth(out.append)
    assert out == [True]
    (name, key, field, version, raw, channel, notice) = link.commands[0]
    assert (name, key) == ("SCRIPT:shared_put", "gamed:shared:user_blocks")
    assert (field, version, channel) == ("7", "12.5", "gamed:shared")
    assert decode_record(raw) == (12.5, None, '{"x":1}')
    assert notice.encode().startswith(PREFIX)


def test_shared_state_fails_fast_while_down_and_signals_ready() -> None:
    link = FakeLink()
    s = SharedState(link, "n1", Clock())  # type: ignore[arg-type]
    ready: list[int] = []
    s.on_ready(lambda: ready.append(1))
    set_state(link, DOWN)
    assert not s.available()
    failures: list[object] = []
    s.put("t", "k", "v", 1.0, None).addErrback(failures.append)
    s.records("t").addErrback(failures.append)
    assert len(failures) == 2 and all(f.check(SharedStateUnavailable) for f in failures)  # type: ignore[attr-defined]
    assert link.commands == []  # failed before asking Redis
    set_state(link, DEGRADED)  # commands work again: resync (notices may have been missed)
    assert ready == [1]
    set_state(link, UP)  # the subscriber is back: notices sent meanwhile were lost
    assert ready == [1, 1]
    set_state(link, DEGRADED)  # nothing to re-read while the subscriber is away
    assert ready == [1, 1]


def test_shared_state_notices_reach_watchers_of_other_nodes_only() -> None:
    link = FakeLink()
    s = SharedState(link, "n1", Clock())  # type: ignore[arg-type]
    seen: list[tuple[object, ...]] = []
    s.watch("user_blocks", lambda *a: seen.append(a))
    deliver = link.handlers[CHANNEL]
    raw = orjson.dumps([5.0, None, "v"]).decode()
    for node in ("n2", "n1"):
        deliver(PREFIX + orjson.dumps({"n": node, "t": "user_blocks", "k": "3", "r": raw}))
    deliver(b"something else")  # not ours: ignored
    deliver(PREFIX + b"{broken")  # malformed: ignored, never raises
    assert seen == [("3", 5.0, None, "v")]


def test_shared_state_records_reads_pages_and_deletes_expired() -> None:
    clock = Clock()
    clock.advance(100)
    link = FakeLink()
    s = SharedState(link, "n1", clock)  # type: ignore[arg-type]
    live = orjson.dumps([1.0, 500.0, "a"]).decode()
    dead = orjson.dumps([1.0, 50.0, "b"]).decode()
    replies = [["7", ["k1", live]], ["0", ["k2", dead]], 1]
    link.reply = lambda command: replies.pop(0)
    out: list[object] = []
    s.records("ip_blocks").addBoth(out.append)
    assert out == [{"k1": (1.0, 500.0, "a")}]
    assert [c[:3] for c in link.commands] == [
        ("HSCAN", "gamed:shared:ip_blocks", "0"),
        ("HSCAN", "gamed:shared:ip_blocks", "7"),
        ("SCRIPT:shared_delete_if", "gamed:shared:ip_blocks", "k2"),
    ]
    assert link.commands[2][3] == dead  # deletes exactly what it read (if still there)


def test_shared_state_waits_for_the_nodes_link() -> None:
    """Plugins get the SharedState before the fork; the node makes its link after it."""

    class Node:
        link: FakeLink | None = None
        node_id = ""

    node = Node()
    clock = Clock()
    shared, service = node_shared_state(node, clock)
    assert not shared.available()
    failures: list[object] = []
    shared.stash("rate", "1", "{}", 5.0).addErrback(failures.append)
    shared.take("rate", "1").addErrback(failures.append)
    assert len(failures) == 2
    ready: list[int] = []
    shared.on_ready(lambda: ready.append(1))
    node.link, node.node_id = FakeLink(), "host:42"  # the node's startService
    service.startService()
    assert shared.available() and shared.node_id == "host:42"
    assert CHANNEL in node.link.handlers
    clock.advance(0)  # attached to a link already up: resync, notices may have been missed
    assert ready == [1]
