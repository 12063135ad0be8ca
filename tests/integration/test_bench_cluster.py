"""The cluster benchmark's load path (gamed/bench/cluster.py) against real processes: its
own redis-server and two ``twistd -n gamed --redis`` nodes, a tiny fan-out with each
room split over both. Counts are asserted, never speeds."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from gamed.bench import cluster
from gamed.bench.scenarios import BenchConfig


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Target]:
    workdir = tmp_path_factory.mktemp("cbench")
    started: list[cluster.Proc] = []
    try:
        redis, port = cluster.start_redis(workdir, "redis")
        started.append(redis)
        url = f"redis://127.0.0.1:{port}/0"
        nodes, ports = [], []
        for name in ("a", "b"):
            proc, p = cluster.start_gamed(
                workdir, name, ["--redis", url, "--node-id", name], cluster=True
            )
            started.append(proc)
            nodes.append(proc)
            ports.append(p)
        yield cluster.Target("split-2", nodes, ports, redis, port)
    finally:
        for proc in reversed(started):
            proc.stop()


def test_split_fanout_relays_every_chat_and_counts_redis(split: cluster.Target) -> None:
    cfg = BenchConfig(scenario="fanout", rooms=2, members=4, window=2, warmup=0.2, duration=0.8)
    res = cluster.on_loop(partial(cluster.fanout_across, cfg, split.ports, split.sample), 30.0)
    m = res["metrics"]
    assert res["ok"] and res["errors"] == 0 and m["clients"] == 8
    assert m["deliveries_per_s"] > 0 and m["publishes_per_s"] > 0
    # every chat reached all 4 members, the 2 on the other node through Redis
    assert m["lost_deliveries"] == 0
    assert m["cpu_us_per_delivery_whole"] > 0
    assert len(split.gamed_pids()) == 2


def test_sizing_reads_redis_memory_for_rooms_and_members(split: cluster.Target) -> None:
    size = cluster.sizing(split, 40, (9_000_000, 90_000))
    small, big = size["loads"]
    assert (small["rooms"], small["members"], small["seated"]) == (20, 2, 40)
    assert (big["rooms"], big["members"], big["seated"]) == (2, 20, 40)
    assert big["room_keys_bytes"] > small["room_keys_bytes"] > 0
    assert big["session_key_bytes"] > 0
    assert cluster.wait_empty(split.redis_port)  # the cluster cleaned up after the clients


def test_a_redis_command_error_is_raised(split: cluster.Target) -> None:
    with pytest.raises(Exception, match="unknown command"):
        cluster.redis_cmd(split.redis_port, "NOSUCHCOMMAND")
    assert cluster.redis_cmd(split.redis_port, "PING") == "PONG"


def test_whole_rooms_on_each_node_publish_nothing_per_chat(split: cluster.Target) -> None:
    cfg = BenchConfig(
        scenario="fanout", rooms=2, members=4, window=2, warmup=0.2, duration=0.8,
        user_id_base=2_000_000, room_id_base=200,
    )  # fmt: skip
    job = partial(cluster.fanout_across, cfg, split.ports, split.sample, True)
    m = cluster.on_loop(job, 30.0)["metrics"]
    assert m["clients"] == 8 and m["lost_deliveries"] == 0 and m["sends_per_s"] > 0
    # only the links' probes (one a second per node) reach Redis: no chat crosses nodes
    assert m["publishes_per_s"] < 10
