"""Bans and IP blocks across two `twistd -n gamed --redis` nodes and a real redis-server.

The bound these tests hold (docs/security.md, "In a cluster"): a change made on
one node's admin API reaches a connection on the other node over pub/sub, in
well under a second while Redis is up; BOUND leaves room for a loaded machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import (
    GamedProcess,
    RedisServer,
    WireClient,
    admin_call,
    heartbeat_ok,
    poll_until,
)

ADMIN = "admin-token-for-cluster-tests-0123"
#: Seconds within which a change on node A must show on node B (pub/sub; stated: < 1 s).
BOUND = 5.0


@pytest.fixture
def start_nodes(
    gamed: Callable[..., GamedProcess], redis_server: RedisServer, tmp_path: Path
) -> Callable[..., tuple[GamedProcess, GamedProcess]]:
    """Two nodes "a" and "b" on ``redis_server`` with the admin token, plus ``extra`` options;
    returned once both have merged their bans with Redis."""
    token = tmp_path / "admin.token"
    token.write_text(ADMIN + "\n")

    def start(*extra: str) -> tuple[GamedProcess, GamedProcess]:
        a, b = (
            gamed(
                "--redis",
                redis_server.url(),
                "--node-id",
                name,
                "--admin-token-file",
                str(token),
                *extra,
            )
            for name in ("a", "b")
        )
        for node in (a, b):
            poll_until(
                lambda node=node: cluster(node).get("resyncs", 0) >= 1,
                10.0,
                "the node's first resync",
                detail=node.log_tail,
            )
        return a, b

    return start


@pytest.fixture
def nodes(
    start_nodes: Callable[..., tuple[GamedProcess, GamedProcess]],
) -> tuple[GamedProcess, GamedProcess]:
    return start_nodes()


def cluster(node: GamedProcess) -> dict[str, object]:
    section = node.stats()["security"]["cluster"]
    assert section is not None, "the node runs without --redis"
    return dict(section)


def call(node: GamedProcess, path: str, body: object = None) -> tuple[int, object]:
    return admin_call(node, "POST", path, ADMIN, body)


def connect_error(node: GamedProcess, user_id: int) -> tuple[int, str] | None:
    """Connect as ``user_id``: the Error's (code, text) if refused, None if accepted."""
    c = WireClient(node.port)
    try:
        c.send({"Connect": {"room_id": 0, "user_id": user_id}})
        msg = c.recv()
        if "Error" in msg:
            return msg["Error"]["code"], str(msg["Error"]["message"])
        return None
    finally:
        c.close()


def refused(node: GamedProcess, user_id: int) -> str | None:
    """Connect as ``user_id``: the Error's text if refused with 403, None if accepted."""
    error = connect_error(node, user_id)
    if error is None:
        return None
    assert error[0] == 403, error
    return error[1]


def answers(node: GamedProcess) -> bool:
    """A new connection is accepted and answers a HeartBeat (False if refused)."""
    c = WireClient(node.port)
    try:
        return heartbeat_ok(c)
    except (EOFError, OSError, AssertionError):
        return False
    finally:
        c.close()


def test_a_ban_or_ip_block_on_node_a_kicks_and_refuses_on_node_b(
    nodes: tuple[GamedProcess, GamedProcess],
) -> None:
    a, b = nodes
    victim = b.client(7)
    status, body = call(a, "/admin/users/7/ban", {"reason": "cheating"})
    assert status == 200 and body == {  # type: ignore[comparison-overlap]
        "user_id": 7,
        "banned": True,
        "kicked": False,  # not on A
        "durable": True,
    }
    # B holds the connection: B kicks it.
    msg = victim.recv(BOUND)
    assert msg["Error"]["code"] == 403 and "cheating" in msg["Error"]["message"], msg
    victim.expect_closed()
    assert "banned" in (refused(b, 7) or "")
    assert call(a, "/admin/users/7/unblock")[0] == 200
    poll_until(lambda: refused(b, 7) is None, BOUND, "the unban on B")

    bystander = b.client(8)
    status, body = call(a, "/admin/ips/127.0.0.1/block", {"duration": 120})
    assert status == 200
    msg = bystander.recv(BOUND)
    assert msg["Error"]["code"] == 403 and "blocked" in msg["Error"]["message"], msg
    again = WireClient(b.port)
    assert "blocked" in again.recv_error(403)  # refused at accept on B
    assert call(b, "/admin/ips/127.0.0.1/unblock")[0] == 200  # and lifted from B
    poll_until(lambda: answers(a), BOUND, "the unblock on A")


def test_an_admin_kick_on_node_a_closes_the_session_on_node_b(
    nodes: tuple[GamedProcess, GamedProcess],
) -> None:
    a, b = nodes
    victim = b.client(11)
    assert call(a, "/admin/users/11/kick") == (200, {"user_id": 11, "kicked": True})
    msg = victim.recv(BOUND)
    assert msg == {"Error": {"code": 403, "message": "kicked by an administrator"}}, msg
    victim.expect_closed()
    # a kick is not a ban: the user may come back
    assert refused(b, 11) is None
    status, body = call(a, "/admin/users/12/kick")
    assert status == 404 and "not connected" in str(body), (status, body)


def test_redis_down_refuses_changes_and_keeps_enforcing(
    nodes: tuple[GamedProcess, GamedProcess], redis_server: RedisServer
) -> None:
    a, b = nodes
    assert call(a, "/admin/users/9/ban")[0] == 200
    poll_until(lambda: refused(b, 9), BOUND, "the ban on B")
    redis_server.stop()

    ids = iter(range(100, 400))
    last = [0]

    def refused_503() -> bool:
        last[0] = next(ids)
        status, body = call(a, f"/admin/users/{last[0]}/ban")
        assert status in (200, 503), body
        return status == 503

    poll_until(refused_503, 15.0, "a ban refused with 503 while Redis is down")
    status, body = call(b, "/admin/users/9/unblock")
    assert status == 503 and "cluster unavailable" in body["error"]  # type: ignore[index]
    # What is in force stays enforced on both nodes (the security plugin answers before the
    # cluster does); the refused ban was made nowhere: that user gets the cluster's own 503
    # (a session cannot be registered while Redis is down), not a ban.
    for node in (a, b):
        assert "banned" in (refused(node, 9) or "")
        code, text = connect_error(node, last[0]) or (0, "")
        assert code == 503 and "cluster unavailable" in text, (code, text)


def test_a_users_rate_window_follows_them_to_the_other_node(
    start_nodes: Callable[..., tuple[GamedProcess, GamedProcess]],
) -> None:
    a, b = start_nodes("--rate-limit", "10")
    first = a.client(31)
    assert first.join(5)  # the Connect and the join: 2 of the minute's 10
    for i in range(6):
        first.chat(5, f"m{i}")
    assert len(first.replies(6)) >= 6  # 8 counted on A
    first.close()
    poll_until(lambda: cluster(a)["rate_handover"]["stashed"] >= 1, BOUND, "the stash on A")  # type: ignore[index]
    second = b.client(31)  # 9
    # The Connect does not wait for Redis: the stash is merged one round trip later.
    poll_until(lambda: cluster(b)["rate_handover"]["merged"] >= 1, BOUND, "the merge on B")  # type: ignore[index]
    assert second.join(5)  # 10
    second.chat(5, "eleventh")
    error, before = second.until("Error")  # after the warning (a SystemMessage)
    assert error["code"] == 429, (error, before)  # though only the third message on B


def test_a_redis_restarted_empty_gets_the_bans_back_and_changes_flow_again(
    nodes: tuple[GamedProcess, GamedProcess], redis_server: RedisServer
) -> None:
    a, b = nodes
    assert call(a, "/admin/users/61/ban")[0] == 200
    assert call(a, "/admin/ips/10.61.61.61/block", {"duration": 600})[0] == 200
    redis_server.restart()  # no persistence: Redis comes back empty
    poll_until(
        lambda: (
            redis_server.cli("HEXISTS", "gamed:shared:user_blocks", "61") == 1
            and redis_server.cli("HEXISTS", "gamed:shared:ip_blocks", "10.61.61.61") == 1
        ),
        15.0,
        "the nodes to write their bans back to Redis",
    )
    # The notice subscription is back too: a new ban on A reaches B's connection.
    victim = b.client(62)

    def banned() -> bool:
        status, _ = call(a, "/admin/users/62/ban")
        return status == 200

    poll_until(banned, 15.0, "a ban accepted once Redis is back")
    msg = victim.recv(BOUND)
    assert msg["Error"]["code"] == 403, msg
    assert refused(b, 61) and refused(b, 62)


def test_with_workers_a_ban_through_one_worker_kicks_on_every_worker(
    gamed: Callable[..., GamedProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    token = tmp_path / "admin.token"
    token.write_text(ADMIN + "\n")
    p = gamed("--workers", "2", "--redis", redis_server.url(), "--admin-token-file", str(token))

    def ready() -> list[dict[str, object]]:
        workers: list[dict[str, object]] = p.stats()["workers"]
        return workers if all(w["ready"] and w["http_port"] for w in workers) else []

    first = poll_until(ready, 30, "both workers ready", detail=p.log_tail)[0]
    clients: list[WireClient] = []

    def both_hold_some() -> bool:  # the kernel picks the worker: connect until both have some
        for _ in range(4):
            clients.append(p.client(100 + len(clients)))
        assert len(clients) <= 200, p.stats()
        return all(w["stats"]["connections"] > 0 for w in p.stats()["workers"])

    poll_until(both_hold_some, 30, "connections on both workers")
    port = first["http_port"]
    assert isinstance(port, int)
    for c in clients:  # every ban through worker 1; each kick where the user's connection is
        assert admin_call(port, "POST", f"/admin/users/{c.user_id}/ban", ADMIN)[0] == 200
    for c in clients:
        msg = c.recv(BOUND)
        assert msg["Error"]["code"] == 403 and "banned" in msg["Error"]["message"], msg
