"""Scenario clients driven through fake transports: window accounting and game play.

No sockets and no sleeping: frames the clients write are read back by a tiny referee in
the test, and its answers are fed straight into ``data_received``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gamed.bench import wire
from gamed.bench.client import BenchClient
from gamed.bench.scenarios import BenchConfig, FanoutClient, GamePair, GamePlayer, Run


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def take(self) -> list[tuple[str, Any]]:
        """Decode and clear everything written so far."""
        reader = wire.FrameReader()
        out = []
        for data in self.written:
            batch = reader.feed(data)
            out += [("ChatMessage", None)] * batch.chats
            out += [wire.decode(p) for p in batch.others]
        self.written.clear()
        return out


def attach(client: BenchClient) -> FakeTransport:
    t = FakeTransport()
    client.connection_made(t)  # type: ignore[arg-type]
    return t


def send_to(client: BenchClient, obj: Any) -> None:
    client.data_received(wire.frame(orjson.dumps(obj)))


def test_closed_loop_keeps_window_in_flight_and_survives_errors() -> None:
    async def scenario() -> None:
        run = Run(BenchConfig(window=3, message_size=0))
        c = FanoutClient(11, 5, run)
        t = attach(c)
        run.sending = True
        c.fill()
        sent = t.written[:]
        t.written.clear()
        assert len(sent) == 3 and c.inflight == 3
        run.recording = True
        # our first chat comes back (and a stranger's chat): exactly one new send
        c.data_received(sent[0] + wire.chat(12, 5, "other"))
        assert run.counters.deliveries == 2
        assert len(run.latency) == 1
        assert len(t.written) == 1 and c.inflight == 3
        # a refused chat frees its slot (refilled later by a timer, not in a tight loop)
        send_to(c, {"Error": {"code": 429, "message": "rate limited"}})
        assert c.inflight == 2
        assert run.counters.error_codes == {"429": 1}
        run.sending = False
        c.data_received(sent[1])
        assert c.inflight == 1 and len(t.written) == 1  # no new sends once stopped

    asyncio.run(scenario())


def test_handshake_request_resolves_on_reply_and_fails_on_error() -> None:
    async def scenario() -> None:
        run = Run(BenchConfig())
        c = BenchClient(5, run.counters)
        t = attach(c)
        fut = asyncio.ensure_future(c.request(wire.connect(5), "ConnectionAck", timeout=5))
        await asyncio.sleep(0)
        assert t.take() == [("Connect", {"room_id": 0, "user_id": 5})]
        send_to(c, {"ConnectionAck": {"user_id": 5}})
        assert await fut == {"user_id": 5}
        fut = asyncio.ensure_future(c.request(wire.room_join(5, 1, "u5"), "RoomJoinSuccess", 5))
        await asyncio.sleep(0)
        send_to(c, {"Error": {"code": 409, "message": "room full"}})
        try:
            await fut
        except Exception as e:
            assert getattr(e, "code", None) == 409
        else:
            raise AssertionError("an Error frame must fail the waiting step")
        c.connection_lost(None)
        assert run.counters.disconnects == 1

    asyncio.run(scenario())


def play(players: list[GamePlayer], rounds: int) -> int:
    """A referee following protocol.md's game rules; returns the number of actions."""
    transports = [attach(p) for p in players]
    by_id = {p.user_id: p for p in players}
    order = [p.user_id for p in players]
    room = players[0].pair.room_id
    state: dict[str, Any] = {"round": 0, "turn": 0, "ready": set()}
    actions = 0

    def to_all(obj: Any) -> None:
        for p in players:
            send_to(p, obj)

    def game_state(status: str) -> dict[str, Any]:
        return {
            "room_id": room,
            "status": status,
            "players": [],
            "current_turn": order[state["turn"]],
            "round": state["round"],
            "started_at": 0,
        }

    players[0].send(wire.start_game(room))
    for _ in range(1000):  # bounded: a correct game needs ~2 * rounds * len(players) steps
        moved = False
        for uid, t in zip(order, transports, strict=True):
            for tag, body in t.take():
                moved = True
                if tag == "StartGame":
                    state["ready"] = {uid}
                    to_all({"GameStarted": {"room_id": room, "players": []}})
                elif tag == "ToggleReady":
                    state["ready"].add(uid)
                    if state["ready"] == set(order):
                        state["round"] = 1
                        to_all(
                            {
                                "GameInProgress": {
                                    "room_id": room,
                                    "current_turn": order[0],
                                    "round": 1,
                                }
                            }
                        )
                elif tag == "PlayerAction":
                    assert uid == order[state["turn"]], "acted out of turn"
                    actions += 1
                    state["turn"] = (state["turn"] + 1) % len(order)
                    if state["turn"] == 0:
                        state["round"] += 1
                    over = state["round"] > rounds
                    to_all(
                        {
                            "ActionResult": {
                                "room_id": room,
                                "user_id": uid,
                                "action": body["action"],
                                "game_state": game_state("Finished" if over else "InProgress"),
                            }
                        }
                    )
                    if over:
                        to_all({"GameEnded": {"room_id": room, "winner": None, "final_scores": []}})
        if not moved:
            break
    assert all(p.pair is by_id[order[0]].pair for p in players)
    return actions


def test_game_players_take_turns_to_the_end() -> None:
    async def scenario() -> None:
        run = Run(BenchConfig(scenario="games"))
        pair = GamePair(room_id=77)
        a = GamePlayer(100, pair, run, starter=True)
        b = GamePlayer(101, pair, run, starter=False)
        actions = play([a, b], rounds=3)
        assert actions == 6
        assert a.actions == 3 and b.actions == 3
        assert pair.done.done() and pair.done.result() is True
        assert len(run.latency) == 6  # one per own ActionResult
        assert run.counters.errors == 0

    asyncio.run(scenario())


def test_game_error_ends_the_pair_instead_of_hanging() -> None:
    async def scenario() -> None:
        run = Run(BenchConfig(scenario="games"))
        pair = GamePair(room_id=78)
        a = GamePlayer(200, pair, run, starter=True)
        attach(a)
        send_to(a, {"Error": {"code": 404, "message": "games are not enabled"}})
        assert pair.done.done() and pair.done.result() is False
        assert run.counters.error_codes == {"404": 1}

    asyncio.run(scenario())
