"""The cluster's Lua scripts (gamed/cluster/*.lua) on a real redis-server, one call each:
the cases the node tests reach only by timing (a seat moving between nodes, a claim
that lost to a newer session, a dead node's members taken out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gamed.cluster.directory import ROOMS, load_source, on_prefix, room_keys, session_key
from tests.integration.helpers import RedisServer


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path_factory.mktemp("scripts"))
    yield r
    r.stop()


@pytest.fixture
def redis(module_redis: RedisServer) -> RedisServer:
    module_redis.cli("FLUSHALL")
    return module_redis


def run(redis: RedisServer, name: str, keys: list[str], *args: Any) -> Any:
    return redis.cli("EVAL", load_source(name), str(len(keys)), *keys, *map(str, args))


def join(redis: RedisServer, room: int, uid: int, node: str, limit: int = 2) -> Any:
    keys = room_keys(room, node)
    return run(redis, "join", keys, uid, node, f"n{uid}", limit, room, on_prefix(room))


def test_join_admits_up_to_the_limit_and_lists_the_nodes(redis: RedisServer) -> None:
    assert join(redis, 5, 1, "a") == [1, 1, "a", "1"]
    assert join(redis, 5, 2, "b") == [1, 2, "a", "1", "b", "1"]
    assert join(redis, 5, 3, "a") == [0, 2]  # full
    assert join(redis, 5, 1, "a") == [1, 2, "a", "1", "b", "1"]  # already seated: no check
    assert redis.cli("ZSCORE", ROOMS, "5") == "2"


def test_a_seat_held_by_another_node_moves_without_a_capacity_check(redis: RedisServer) -> None:
    join(redis, 5, 1, "a")
    join(redis, 5, 2, "a")
    assert join(redis, 5, 1, "b") == [1, 2, "a", "1", "b", "1"]
    assert redis.cli("SMEMBERS", on_prefix(5) + "a") == ["2"]
    assert redis.cli("HGET", room_keys(5, "a")[0], "1") == "b\tn1"
    # the old node's leave of that user is now a no-op
    assert run(redis, "leave", room_keys(5, "a"), 1, "a", 5) == 2


def test_leave_empties_the_room_and_its_listing(redis: RedisServer) -> None:
    join(redis, 5, 1, "a")
    assert run(redis, "leave", room_keys(5, "a"), 1, "a", 5) == 0
    assert redis.cli("EXISTS", *room_keys(5, "a")[:3]) == 0
    assert redis.cli("ZSCORE", ROOMS, "5") is None


def test_sync_removes_a_dead_nodes_members_only(redis: RedisServer) -> None:
    join(redis, 5, 1, "a", limit=9)
    join(redis, 5, 2, "dead", limit=9)
    join(redis, 5, 3, "dead", limit=9)
    count, removed, nodes = run(redis, "sync", room_keys(5, "dead"), "dead", 5)
    assert (count, sorted(zip(removed[::2], removed[1::2], strict=True)), nodes) == (
        1,
        [("2", "n2"), ("3", "n3")],
        ["a", "1"],
    )
    assert redis.cli("ZSCORE", ROOMS, "5") == "1"


def test_sync_registers_a_nodes_members_again(redis: RedisServer) -> None:
    join(redis, 5, 9, "other", limit=9)
    count, removed, nodes = run(redis, "sync", room_keys(5, "a"), "a", 5, 1, "x", 2, "y")
    assert (count, removed) == (3, [])
    assert dict(zip(nodes[::2], nodes[1::2], strict=True)) == {"other": "1", "a": "2"}


def test_claim_names_the_previous_holder_and_epochs_grow(redis: RedisServer) -> None:
    first = run(redis, "claim", [session_key(7)], "a", "")
    second = run(redis, "claim", [session_key(7)], "b", "")
    assert first[0] == "" and second[0] == "a"
    assert int(second[1]) > int(first[1])
    # a re-registering node with the older session loses to the newer one
    assert run(redis, "claim", [session_key(7)], "a", first[1]) == ["lost", "b"]
    # release only by the holder (and its epoch)
    assert run(redis, "release", [session_key(7)], "a", "") == 0
    assert run(redis, "release", [session_key(7)], "b", first[1]) == 0
    assert run(redis, "release", [session_key(7)], "b", second[1]) == 1


def test_lease_and_sweep(redis: RedisServer) -> None:
    keys = ["gamed:node:a", "gamed:nodes"]
    assert run(redis, "lease", keys, "a", "t1", 3000) == "new"
    assert run(redis, "lease", keys, "a", "t1", 3000) == "kept"
    assert run(redis, "lease", keys, "a", "t2", 3000) == "other"
    assert run(redis, "sweep", ["gamed:nodes"], "gamed:node:", 16) == []  # alive
    redis.cli("DEL", "gamed:node:a")
    redis.cli("ZADD", "gamed:nodes", "0", "a")  # its deadline passed
    assert run(redis, "sweep", ["gamed:nodes"], "gamed:node:", 16) == ["a"]
    assert run(redis, "sweep", ["gamed:nodes"], "gamed:node:", 16) == []  # one survivor gets it
