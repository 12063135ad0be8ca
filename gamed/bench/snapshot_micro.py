#!/usr/bin/env python
"""Cluster game snapshots: their size with and without the cache's compression, and the
CPU per ``Games.snapshot_blob`` (what a game's owner writes to Redis after every change).

    .venv/bin/python -m gamed.bench.snapshot_micro [--players 2,4,8,16,50,100] [--calls 2000]

Each game is built on a real ``Games`` (a Clock, no sockets): every player in one room,
StartGame, all ready, one round of Moves (positions set). Sizes are exact; times are
``time.process_time`` over ``--calls`` calls (noisy on a shared host: compare within one
run). The table in docs/cluster.md and docs/performance.md comes from this.
"""

from __future__ import annotations

import argparse
import time

from twisted.internet.task import Clock
from zope.interface import implementer

from gamed import messages as m
from gamed.cache import CacheConfig
from gamed.config import Settings
from gamed.events import EventBus
from gamed.games import Games
from gamed.interfaces import IRoomClient
from gamed.rooms import RoomService

ROOM = 9


@implementer(IRoomClient)
class _Player:
    """A member that drops what it is sent."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.nickname = f"player-{user_id}"

    def send_frame(self, frame: bytes) -> None:
        pass


def game(players: int, compression: bool) -> Games:
    """A Games with one InProgress game of ``players`` players, one round played."""
    clock = Clock()
    clock.advance(1_767_225_600)
    rooms = RoomService(clock, 100_000, EventBus())
    config = CacheConfig(enable_compression=compression)
    games = Games(clock, rooms, EventBus(), Settings(round_limit=10), cache_config=config)
    members = [_Player(uid) for uid in range(1, players + 1)]
    for p in members:
        rooms.join(p, ROOM)
    games.handle(members[0], m.StartGame(ROOM))
    for p in members[1:]:
        games.handle(p, m.ToggleReady(ROOM))
    for p in members:
        games.handle(p, m.PlayerAction(ROOM, m.Move(12.5 + p.user_id, -3.25, 1.5707963)))
    return games


def measure(players: int, calls: int) -> dict[str, float]:
    row: dict[str, float] = {"players": players}
    for compression in (False, True):
        games = game(players, compression)
        blob = games.snapshot_blob(ROOM)
        assert blob is not None
        start = time.process_time()
        for _ in range(calls):
            games.snapshot_blob(ROOM)
        took = (time.process_time() - start) / calls
        key = "on" if compression else "off"
        row[f"bytes_{key}"] = len(blob)
        row[f"us_{key}"] = round(took * 1e6, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", default="2,4,8,16,50,100")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    print("players  raw (off)  stored (on)  ratio  us/snapshot on/off")
    for n in (int(x) for x in args.players.split(",")):
        r = measure(n, args.calls)
        ratio = r["bytes_off"] / r["bytes_on"]
        print(
            f"{n:7d}  {r['bytes_off']:7.0f} B  {r['bytes_on']:9.0f} B  {ratio:5.1f}"
            f"  {r['us_on']:6.1f} / {r['us_off']:.1f}"
        )


if __name__ == "__main__":
    main()
