"""Hostile and heavy clients: the server answers or drops them and keeps serving everyone else."""

from __future__ import annotations

import asyncio
import random
import resource
import socket
import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.helpers import (
    GamedProcess,
    WireClient,
    flood_until_dropped,
    heartbeat_ok,
    two_in_room,
)


def _bad_traffic(rng: random.Random, kind: int) -> bytes:
    """One burst of garbage of a given kind."""
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randint(1, 4096))
    if kind == 1:  # random frames with plausible lengths
        return b"".join(
            struct.pack(">I", n) + rng.randbytes(n)
            for n in (rng.randint(0, 300) for _ in range(20))
        )
    if kind == 2:  # truncated frame: promises more than it sends
        return struct.pack(">I", 5000) + b'{"ChatMessage":'
    if kind == 3:  # JSON of the wrong shape
        bodies = [
            b"[]",
            b"{}",
            b'{"Connect": 5}',
            b'{"RoomJoin": {"user_id": "x"}}',
            b"null",
            b"1e999",
        ]
        return b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    return struct.pack(">I", 1024 * 1024 * 1024)  # a 1 GB length prefix


def test_storm_of_bad_clients_leaves_a_good_room_unaffected(server: GamedProcess) -> None:
    alice, bob = two_in_room(server, 77)
    rng = random.Random(1234)
    bad: list[socket.socket] = []
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        bad.append(s)
        if i % 10 == 9:  # some claim an identity first, then misbehave in a room
            p = orjson.dumps({"Connect": {"room_id": 0, "user_id": 1000 + i}})
            j = orjson.dumps({"RoomJoin": {"user_id": 1000 + i, "room_id": 77, "nickname": "x"}})
            s.sendall(struct.pack(">I", len(p)) + p + struct.pack(">I", len(j)) + j)
    for round_ in range(5):
        for i, s in enumerate(bad):
            try:
                s.sendall(_bad_traffic(rng, (i + round_) % 5))
            except OSError:
                pass  # the server already dropped this one: that is allowed
        alice.chat(77, f"still here {round_}")
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 1 and time.monotonic() < deadline:
            msg = bob.recv()
            if "ChatMessage" in msg and msg["ChatMessage"]["user_id"] == 1:
                got.append(msg)
        assert got[0]["ChatMessage"]["message"] == f"still here {round_}"
    for s in bad:
        s.close()
    assert heartbeat_ok(alice) and heartbeat_ok(bob)
    assert heartbeat_ok(server.client())
    assert "Unhandled" not in server.log()


def test_client_that_never_reads_is_dropped(gamed) -> None:
    # 3,000 chats from one user: over every message-rate limit, which is not under test.
    srv = gamed("--max-outgoing-bytes", "65536", "--rate-limit", "0", "--flood-detection", "off")
    talker = srv.client(1)
    sink = WireClient(srv.port)
    sink.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.connect(2)
    talker.join(5)
    sink.join(5)
    talker.recv()
    text = "z" * 900
    # at most ~5.5 MB towards the sink: more than the kernel's buffer and ours
    dropped = flood_until_dropped(talker, 5, text)
    assert dropped, "a client that never reads must be disconnected, not buffered forever"
    assert heartbeat_ok(talker)
    _status, body = srv.http("/metrics")
    assert 'gamed_disconnects_total{reason="slow"} 1.0' in body.decode()


async def _member(
    port: int, uid: int, room: int, members: int, results: dict, gate: asyncio.Semaphore
) -> None:
    async with gate:  # connect in bounded batches, as a real client fleet ramps up
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

    def send(obj: object) -> None:
        p = orjson.dumps(obj)
        writer.write(struct.pack(">I", len(p)) + p)

    async def recv() -> object:
        n = struct.unpack(">I", await reader.readexactly(4))[0]
        return orjson.loads(await reader.readexactly(n))

    send({"Connect": {"room_id": 0, "user_id": uid}})
    send({"RoomJoin": {"user_id": uid, "room_id": room, "nickname": f"u{uid}"}})
    assert "ConnectionAck" in await recv()
    assert "RoomJoinSuccess" in await recv()
    results["joined"] += 1
    await results["all_joined"].wait()
    send({"ChatMessage": {"user_id": uid, "room_id": room, "message": f"hello from {uid}"}})
    chats = 0
    while chats < members:
        msg = await recv()
        if "ChatMessage" in msg:
            chats += 1
    results["chats"] += chats
    writer.close()


async def _crowd(port: int, rooms: int, members: int) -> dict:
    results: dict = {"joined": 0, "chats": 0, "all_joined": asyncio.Event()}
    total = rooms * members
    gate = asyncio.Semaphore(200)
    tasks = [
        asyncio.create_task(_member(port, 10_000 + i, 1 + i % rooms, members, results, gate))
        for i in range(total)
    ]
    deadline = time.monotonic() + 60
    while results["joined"] < total and time.monotonic() < deadline:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise failed[0].exception()
        await asyncio.sleep(0.05)
    results["all_joined"].set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return results


@pytest.mark.slow
def test_2000_connections_in_100_rooms_chat_and_nothing_is_dropped(
    gamed: Any, tmp_path: Path
) -> None:
    # 2,000 clients from 127.0.0.1: over the per-address connection cap (256) and rate.
    cfg = tmp_path / "crowd.toml"
    cfg.write_text("[middleware.security]\nip_max_connections = 4000\n")
    server = gamed("--config", str(cfg), "--rate-limit", "0")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    results = asyncio.run(_crowd(server.port, rooms=100, members=20))
    assert results["joined"] == 2000
    assert results["chats"] == 2000 * 20  # every member saw every chat of its room
    _status, body = server.http("/metrics")
    assert "gamed_chat_deliveries_total 40000.0" in body.decode()
