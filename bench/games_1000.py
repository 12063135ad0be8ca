"""1,000 concurrent 2-player games against a real ``twistd -n gamed``, played to GameEnded.

Starts the server as a subprocess on free 127.0.0.1 ports (``tcp:0``; the ports
are read back from twistd's log), connects 2 x GAMES players with asyncio, starts
every game at once and plays Move on each turn until every game has ended.
Prints errors, games/s, the cache section of /stats and the server's RSS.

    .venv/bin/python bench/games_1000.py [--games 1000] [--round-limit 3] [-- server args]

Exit status 0 when every game ended correctly with no error, else 1. Nothing but
127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from gamed.bench.server import GamedServer

ROOT = Path(__file__).resolve().parent.parent
_PREFIX = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    payload = orjson.dumps(obj)
    return _PREFIX.pack(len(payload)) + payload


class Server(GamedServer):
    """A twistd gamed subprocess (gamed.bench.server) with the figures this script reports."""

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


class Player:
    """One connection: connect, join, then play Move on every turn until GameEnded."""

    def __init__(self, uid: int, room: int, starter: bool, run: Run) -> None:
        self.uid, self.room, self.starter, self.run = uid, room, starter, run
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ended: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self.results = 0
        self.waiting: dict[str, asyncio.Future[Any]] = {}

    def send(self, obj: Any) -> None:
        assert self.writer is not None
        self.writer.write(frame(obj))

    async def recv(self) -> Any:
        assert self.reader is not None
        (n,) = _PREFIX.unpack(await self.reader.readexactly(4))
        return orjson.loads(await self.reader.readexactly(n))

    async def expect(self, tag: str, timeout: float) -> Any:
        while True:
            msg = await asyncio.wait_for(self.recv(), timeout)
            if isinstance(msg, dict) and tag in msg:
                return msg[tag]
            if isinstance(msg, dict) and "Error" in msg:
                raise RuntimeError(f"user {self.uid}: {msg['Error']}")

    async def setup(self, port: int, timeout: float) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout
        )
        self.send({"Connect": {"room_id": 0, "user_id": self.uid}})
        await self.expect("ConnectionAck", timeout)
        self.send(
            {"RoomJoin": {"user_id": self.uid, "room_id": self.room, "nickname": f"p{self.uid}"}}
        )
        await self.expect("RoomJoinSuccess", timeout)

    def move(self) -> None:
        self.send(
            {
                "PlayerAction": {
                    "room_id": self.room,
                    "action": {"Move": {"x": 1.0, "y": 2.0, "direction": 0.5}},
                }
            }
        )

    async def play(self) -> None:
        """React to the game until GameEnded; any Error or close is a failure."""
        try:
            while True:
                msg = await self.recv()
                if not isinstance(msg, dict):
                    continue
                ((tag, body),) = msg.items()
                if tag == "GameStarted" and not self.starter:
                    self.send({"ToggleReady": {"room_id": self.room}})
                elif tag == "GameInProgress" and body["current_turn"] == self.uid:
                    self.move()
                elif tag == "ActionResult":
                    self.results += 1
                    state = body["game_state"]
                    if state["status"] == "InProgress" and state["current_turn"] == self.uid:
                        self.move()
                elif tag == "GameEnded":
                    self.ended.set_result(body)
                    return
                elif tag == "Error":
                    raise RuntimeError(f"user {self.uid}: {body}")
        except Exception as e:  # an Error frame, a close, a decode problem
            if not self.ended.done():
                self.ended.set_exception(e)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Run:
    def __init__(self) -> None:
        self.errors: list[str] = []


async def bench(server: Server, games: int, round_limit: int, timeout: float) -> dict[str, Any]:
    run = Run()
    players: list[Player] = []
    for g in range(games):
        room = 1 + g
        players.append(Player(100_000 + 2 * g, room, True, run))
        players.append(Player(100_001 + 2 * g, room, False, run))
    sem = asyncio.Semaphore(200)

    async def setup_pair(a: Player, b: Player) -> None:
        async with sem:
            await a.setup(server.port, timeout)
            await b.setup(server.port, timeout)
            await a.expect("UserJoinedRoom", timeout)

    t0 = time.monotonic()
    outcomes = await asyncio.gather(
        *(setup_pair(players[i], players[i + 1]) for i in range(0, len(players), 2)),
        return_exceptions=True,
    )
    setup_s = time.monotonic() - t0
    run.errors += [f"setup: {o!r}" for o in outcomes if isinstance(o, BaseException)]
    rss_connected = server.rss_mib()
    tasks = [asyncio.ensure_future(p.play()) for p in players if p.writer is not None]
    t1 = time.monotonic()
    for p in players[0::2]:
        if p.writer is not None:
            p.send({"StartGame": {"room_id": p.room}})
    done, _ = await asyncio.wait([p.ended for p in players], timeout=timeout)
    play_s = time.monotonic() - t1
    rss_end = server.rss_mib()
    ended_ok = 0
    for a, b in zip(players[0::2], players[1::2], strict=True):
        try:
            ea, eb = a.ended.result(), b.ended.result()
        except (asyncio.InvalidStateError, Exception) as e:
            run.errors.append(f"room {a.room}: {e!r}")
            continue
        expected = [[a.uid, 0], [b.uid, 0]]
        if ea != eb or ea["final_scores"] != expected or ea["winner"] is not None:
            run.errors.append(f"room {a.room}: unexpected end {ea} / {eb}")
        elif a.results != 2 * round_limit or b.results != 2 * round_limit:
            run.errors.append(f"room {a.room}: {a.results}/{b.results} ActionResults")
        else:
            ended_ok += 1
    for t in tasks:
        t.cancel()
    stats = server.stats()
    for p in players:
        p.close()
    return {
        "games": games,
        "players": 2 * games,
        "round_limit": round_limit,
        "games_ended_ok": ended_ok,
        "errors": len(run.errors),
        "error_samples": run.errors[:5],
        "setup_seconds": round(setup_s, 2),
        "play_seconds": round(play_s, 3),
        "games_per_second": round(ended_ok / play_s, 1) if play_s else 0.0,
        "actions_per_second": round(ended_ok * 2 * round_limit / play_s, 1) if play_s else 0.0,
        "server_rss_mib": {
            "idle": None,
            "connected": round(rss_connected, 1),
            "after_games": round(rss_end, 1),
        },
        "middleware": stats.get("middleware"),
        "cache": stats.get("cache"),
        "games_stats": stats.get("games"),
        "unfinished": len(players) - len(done),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--games", type=int, default=1000)
    ap.add_argument("--round-limit", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0, help="bound on each phase (s)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    ap.add_argument("server_args", nargs="*", help="extra twistd gamed options (after --)")
    opts = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * opts.games + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the server
    with tempfile.TemporaryDirectory(prefix="games1000-") as tmp:
        server = Server(Path(tmp), ["--round-limit", str(opts.round_limit), *opts.server_args])
        try:
            idle = server.rss_mib()
            result = asyncio.run(bench(server, opts.games, opts.round_limit, opts.timeout))
            result["server_rss_mib"]["idle"] = round(idle, 1)
        finally:
            server.stop()
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        c = result["cache"] or {}
        rss = result["server_rss_mib"]
        lines = [
            f"games:           {result['games_ended_ok']}/{result['games']} ended correctly "
            f"({result['players']} players, round limit {result['round_limit']})",
            f"errors:          {result['errors']} {result['error_samples'] or ''}",
            f"middleware:      {', '.join(result['middleware'] or []) or 'none'}",
            f"setup:           {result['setup_seconds']} s (connect + join, 200 at a time)",
            f"play:            {result['play_seconds']} s -> {result['games_per_second']} games/s, "
            f"{result['actions_per_second']} actions/s",
            f"cache:           hit rate {c.get('hit_rate')}% (L1 hits {c.get('l1_hits')}, "
            f"L2 hits {c.get('l2_hits')}, misses {c.get('misses')}; promotions "
            f"{c.get('promotions')}, demotions {c.get('demotions')}, evictions {c.get('evictions')})",
            f"server RSS:      idle {rss['idle']} MiB, {result['players']} connected "
            f"{rss['connected']} MiB, after the games {rss['after_games']} MiB",
        ]
        print("\n".join(lines))
    return 0 if result["errors"] == 0 and result["games_ended_ok"] == result["games"] else 1


if __name__ == "__main__":
    sys.exit(main())
