"""gamed.cluster.gamelease against a real redis-server: leases, fencing tokens, snapshots.

Two GameLeases on two links play two nodes; a "stalled" owner is one whose lease ran
out (or was taken from a declared-dead owner) while it was not looking.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from gamed.cluster.gamelease import (
    GameLeases,
    fence_key,
    game_key,
    snapshot_key,
)
from gamed.cluster.link import UP, RedisLink
from gamed.cluster.url import parse_redis_url
from tests.integration.helpers import RedisServer

ROOM = 42


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        yield sleep(0.02)


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Callable[..., GameLeases]]:
    """``nodes(node_id, ttl=...)``: GameLeases on a started link, stopped at teardown."""
    links: list[RedisLink] = []

    def make(node_id: str, **kw: Any) -> GameLeases:
        link = RedisLink(parse_redis_url(redis_server.url()), reactor, reactor, node_id)
        link.start()
        links.append(link)
        return GameLeases(link, node_id, **kw)

    yield make
    for link in links:
        pytest_twisted.blockon(link.stop())


@defer.inlineCallbacks
def up(*leases: GameLeases) -> Iterator[Any]:
    for lease in leases:
        yield until(lambda lease=lease: lease._link.state == UP, 10.0, "the link to be up")


@pytest_twisted.inlineCallbacks
def test_one_owner_tokens_grow_and_a_stale_owner_is_fenced(
    redis_server: RedisServer, nodes: Any
) -> Iterator[Any]:
    a, b = nodes("A", ttl=0.3), nodes("B", ttl=0.3)
    yield up(a, b)
    got = yield a.acquire(ROOM)
    assert (got.ok, got.owner, got.token, got.snapshot) == (True, "A", 1, None)
    # B cannot start or resume a game A holds; it learns the owner and its token.
    refused = yield b.acquire(ROOM)
    assert (refused.ok, refused.owner, refused.token) == (False, "A", 1)
    refused = yield b.acquire(ROOM, resume=True)
    assert (refused.ok, refused.owner) == (False, "A")
    blob = b"J" + b'{"seq": 3}'
    assert (yield a.write(ROOM, 1, blob, 3)) is True
    assert (yield a.renew(ROOM, 1)) is True
    assert redis_server.cli("HGET", game_key(ROOM), "seq") == "3"
    # Pipelined writes land in order; one that arrives older than the stored one is skipped.
    assert (yield a.write(ROOM, 1, b"J{}", 2)) is True
    assert redis_server.cli("GET", snapshot_key(ROOM)) == blob.decode()
    # A stalls past its TTL: B resumes from A's last snapshot under a larger token.
    yield sleep(0.5)
    took = yield b.acquire(ROOM, resume=True)
    assert (took.ok, took.owner, took.token, took.snapshot) == (True, "B", 2, blob)
    # A comes back: every write, renewal and release of its old token is refused.
    assert (yield a.write(ROOM, 1, b"J{}", 4)) is False
    assert (yield a.renew(ROOM, 1)) is False
    assert (yield a.release(ROOM, 1)) is False
    assert a.fenced == 3
    assert (yield b.owner(ROOM)) == ("B", 2)
    stored = yield b._link.execute("GET", snapshot_key(ROOM))
    assert stored.encode() == blob  # A's stale write did not land
    # The game ends on B: lease and snapshot go; the fence stays (tokens never repeat).
    assert (yield b.release(ROOM, 2)) is True
    assert (yield a.owner(ROOM)) is None
    assert redis_server.cli("EXISTS", snapshot_key(ROOM)) == 0
    again = yield a.acquire(ROOM)
    assert (again.ok, again.token) == (True, 3)
    # A's lease runs out with nobody taking the game: A takes it back ("again")...
    yield sleep(0.5)
    back = yield a.again(ROOM, 3)
    assert (back.ok, back.token) == (True, 4)
    # ...but not once another node held it since (the fence moved on).
    yield sleep(0.5)
    assert (yield b.acquire(ROOM, resume=True)).ok is False  # no snapshot: B takes nothing
    took = yield b.acquire(ROOM)
    assert took.ok and took.token == 5
    yield sleep(0.5)
    late = yield a.again(ROOM, 4)
    assert (late.ok, late.owner) == (False, "")
    ttl = int(redis_server.cli("PTTL", fence_key(ROOM)))
    assert 0 < ttl <= 86_400_000


@pytest_twisted.inlineCallbacks
def test_a_dead_owner_is_taken_over_at_once_and_resume_needs_a_snapshot(
    redis_server: RedisServer, nodes: Any
) -> Iterator[Any]:
    a, b, c = nodes("A"), nodes("B"), nodes("C")
    yield up(a, b, c)
    got = yield a.acquire(ROOM)
    assert got.ok
    # Nothing written yet: there is nothing to resume, even from a dead owner.
    empty = yield b.acquire(ROOM, resume=True, dead_owner="A")
    assert (empty.ok, empty.owner, empty.token) == (False, "", 0)
    # A compressed (binary) snapshot survives the round trip byte for byte.
    blob = b"Z" + zlib.compress(os.urandom(64) + b"x" * 4000)
    assert (yield a.write(ROOM, got.token, blob, 1)) is True
    # B declared A dead (the node sweep): B takes over before A's 5 s TTL ran out.
    took = yield b.acquire(ROOM, resume=True, dead_owner="A")
    assert took.ok and took.token == got.token + 1 and took.snapshot == blob
    # C, also seeing A dead, loses the race to B: B is alive.
    lost = yield c.acquire(ROOM, resume=True, dead_owner="A")
    assert (lost.ok, lost.owner, lost.token) == (False, "B", took.token)
    # The lease has B's TTL; the snapshot lives on after B's renewals.
    assert 0 < int(redis_server.cli("PTTL", game_key(ROOM))) <= 5000
    assert (yield b.renew(ROOM, took.token)) is True
    assert int(redis_server.cli("PTTL", snapshot_key(ROOM))) > 60_000


@pytest_twisted.inlineCallbacks
def test_start_replaces_a_leftover_snapshot_and_racing_starts_have_one_winner(
    redis_server: RedisServer, nodes: Any
) -> Iterator[Any]:
    a, b = nodes("A", ttl=0.2), nodes("B", ttl=0.2)
    yield up(a, b)
    got = yield a.acquire(ROOM)
    assert (yield a.write(ROOM, got.token, b"J{}", 1)) is True
    yield sleep(0.4)  # A died without releasing: its snapshot is left over
    results = yield defer.gatherResults([a.acquire(ROOM + 1), b.acquire(ROOM + 1)])
    assert sorted(r.ok for r in results) == [False, True]  # one winner per room
    fresh = yield b.acquire(ROOM)  # a new game, not a resume
    assert fresh.ok and fresh.snapshot is None
    assert redis_server.cli("EXISTS", snapshot_key(ROOM)) == 0
