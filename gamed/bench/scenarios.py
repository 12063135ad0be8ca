"""The load scenarios (fanout, idle, games, churn, users) and the library entry point ``run``.

Each scenario is an ``async`` function ``(Run) -> dict`` returning a result in the shape
of ``stats.make_result``. ``run_async`` wraps it in one hard timeout
(warm-up + duration + connect timeout + teardown slack) and every step inside has its
own, so a run always ends: a silent server becomes counted errors, never a hang.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gamed.bench import wire
from gamed.bench.client import BenchClient, Closed, ServerError, close_all, open_client
from gamed.bench.stats import (
    Counters,
    LatencyRecorder,
    latency_metrics,
    make_result,
    per_second,
    window,
)

#: Seconds allowed for closing connections after the measured window, plus margin.
TEARDOWN_SLACK = 10.0
SCENARIO_NAMES = ("fanout", "idle", "games", "churn", "users")


@dataclass
class BenchConfig:
    """Everything one run needs; the CLI flags map 1:1 onto these fields."""

    scenario: str = "fanout"
    host: str = "127.0.0.1"
    port: int = 7000
    #: ``tcp`` (length-prefixed frames) or ``ws`` (text messages on ``/ws`` at ``port``).
    transport: str = "tcp"
    warmup: float = 1.0
    duration: float = 5.0
    #: Bound on the whole connect+join phase (and on each handshake step in it).
    connect_timeout: float = 30.0
    connect_concurrency: int = 200
    user_id_base: int = 1_000_000
    room_id_base: int = 1
    # fanout
    rooms: int = 50
    members: int = 20
    window: int = 2
    #: > 0: open loop, messages/s per client; 0: closed loop with ``window`` in flight.
    rate: float = 0.0
    message_size: int = 64
    # idle
    connections: int = 1000
    server_pid: int | None = None
    heartbeat_interval: float = 10.0
    # games
    games: int = 200
    # churn, users
    workers: int = 20
    # users: distinct users through the server, after a warm-up pass of users // 5
    users: int = 100_000
    #: users: seconds to wait before each RSS reading (covers analytics' 5 s flush).
    settle: float = 6.0
    # running
    progress: bool = False
    use_uvloop: bool = True
    seed: int = 1

    def hard_timeout(self) -> float:
        """The whole run never takes longer than this (seconds)."""
        if self.scenario == "users":
            passes = pass_bound(self.users // 5) + pass_bound(self.users) + 2 * self.settle
            return passes + self.connect_timeout + TEARDOWN_SLACK
        return self.warmup + self.duration + self.connect_timeout + TEARDOWN_SLACK

    def target(self) -> str:
        if self.transport == "ws":
            return f"ws://{self.host}:{self.port}/ws"
        return f"{self.host}:{self.port}"

    def id_span(self) -> int:
        """How many user ids from ``user_id_base`` on this run uses (to keep runs apart)."""
        return {
            "fanout": self.rooms * self.members,
            "idle": self.connections,
            "games": 2 * self.games,
            "churn": max(1, self.workers) * 16,
            "users": self.users + self.users // 5,
        }.get(self.scenario, 0)


def pass_bound(users: int) -> float:
    """Seconds a pass of ``users`` sign-ons may take: far above any server's pace (200/s)."""
    return 30.0 + users / 200


@dataclass
class Run:
    """State shared by all clients of one run: counters, latencies and phase flags."""

    cfg: BenchConfig
    counters: Counters = field(default_factory=Counters)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    #: Latency samples and scenario-specific counts are kept only while True.
    recording: bool = False
    #: Load is generated only while True (cleared before teardown).
    sending: bool = False
    notes: list[str] = field(default_factory=list)
    progress: Progress | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# -- small helpers --------------------------------------------------------------------


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, so 1000s of sockets fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def read_rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``/proc``; psutil elsewhere); None if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        import psutil  # optional, only off Linux

        return int(psutil.Process(pid).memory_info().rss // 1024)
    except Exception:
        return None


def read_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far; None if unknown.

    Server CPU per unit of work depends less on how the shared machine scheduled the
    load generator than throughput does: it is what the plugin cost scripts reported.
    """
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
    except Exception:
        return None
    return float(t.user + t.system)


class Progress:
    """A one-line progress bar on stderr; only ever created when stderr is a TTY."""

    WIDTH = 24

    def __init__(self, label: str) -> None:
        self.label = label

    def show(self, phase: str, frac: float, extra: str = "") -> None:
        filled = int(self.WIDTH * min(1.0, max(0.0, frac)))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r\x1b[K{self.label} {phase:<8} [{bar}] {extra}")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


async def phase(run: Run, seconds: float, name: str) -> None:
    """Sleep ``seconds``, redrawing the progress bar (with a live delivery rate) if any."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + max(0.0, seconds)
    if run.progress is None:
        await asyncio.sleep(max(0.0, seconds))
        return
    last_t, last_d = start, run.counters.deliveries
    while True:
        now = loop.time()
        if now >= end:
            break
        await asyncio.sleep(min(0.25, end - now))
        now = loop.time()
        d = run.counters.deliveries
        rate = (d - last_d) / (now - last_t) if now > last_t else 0.0
        last_t, last_d = now, d
        frac = (now - start) / seconds if seconds else 1.0
        run.progress.show(name, frac, f"{rate:,.0f} deliveries/s  errors {run.counters.errors}")


async def connect_all(
    run: Run, clients: list[tuple[BenchClient, int | None]], *, sequential_pairs: bool = False
) -> tuple[list[BenchClient], float]:
    """Connect and join every client, ``connect_concurrency`` at a time, within the timeout.

    Returns the clients that made it and the seconds the phase took. A client that
    fails is counted in ``connect_failures`` and closed; the first reason is noted.
    """
    cfg = run.cfg
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(max(1, cfg.connect_concurrency))
    start = loop.time()
    deadline = start + cfg.connect_timeout
    done = 0

    async def one(c: BenchClient, room: int | None) -> None:
        nonlocal done
        async with sem:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("connect phase timed out")
            await open_client(c, cfg.host, cfg.port, left, cfg.transport)
            await c.handshake(max(0.001, deadline - loop.time()), room)
            done += 1
            if run.progress is not None and done % 50 == 0:
                run.progress.show("connect", done / len(clients), f"{done}/{len(clients)}")

    async def pair(group: list[tuple[BenchClient, int | None]]) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for c, room in group:
            try:
                await one(c, room)
                out.append(None)
            except (OSError, TimeoutError, Closed, ServerError) as e:
                out.append(e)
        return out

    if sequential_pairs:
        groups = [clients[i : i + 2] for i in range(0, len(clients), 2)]
        nested = await asyncio.gather(*(pair(g) for g in groups))
        outcomes: list[BaseException | None] = [e for g in nested for e in g]
    else:
        raw = await asyncio.gather(*(one(c, r) for c, r in clients), return_exceptions=True)
        outcomes = [e if isinstance(e, BaseException) else None for e in raw]
    ok: list[BenchClient] = []
    for (c, _), exc in zip(clients, outcomes, strict=True):
        if exc is None:
            ok.append(c)
            continue
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        run.counters.connect_failures += 1
        run.note(f"connect/join failed: {describe(exc)}")
        c.abort()
    return ok, loop.time() - start


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def finish(
    run: Run,
    metrics: dict[str, Any],
    window_counts: dict[str, Any],
    measured_s: float,
    elapsed_s: float,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Build the result: errors are Error frames, local failures and lost connections."""
    codes = dict(window_counts.get("error_codes", {}))
    disconnects = window_counts.get("disconnects", 0)
    if disconnects:
        codes["disconnect"] = codes.get("disconnect", 0) + disconnects
    errors = window_counts.get("errors", 0) + disconnects
    connect_failures = run.counters.connect_failures
    return make_result(
        run.cfg.scenario,
        run.cfg.target(),
        params,
        ok=connect_failures == 0,
        elapsed_s=elapsed_s,
        measured_s=measured_s,
        metrics=metrics,
        errors=errors,
        error_codes=codes,
        connect_failures=connect_failures,
        notes=run.notes,
    )


# -- fanout -----------------------------------------------------------------------------


class FanoutClient(BenchClient):
    """Sends probe chats to its room, closed loop (``window`` in flight) or open loop."""

    def __init__(self, user_id: int, room_id: int, run: Run) -> None:
        super().__init__(user_id, run.counters, track_echoes=True)
        self.run = run
        self.tpl = wire.ChatTemplate(user_id, room_id, run.cfg.message_size)
        self.seq = 0
        self.inflight = 0
        self.next_ns = 0
        self.interval_ns = 0
        self.timer: asyncio.TimerHandle | None = None

    def send_chat(self, sent_ns: int) -> None:
        self.seq += 1
        self.send(self.tpl.build(self.seq, sent_ns))
        self.counters.sends += 1

    # closed loop
    def fill(self) -> None:
        """Top the window up to ``window`` messages in flight."""
        while self.run.sending and self.inflight < self.run.cfg.window:
            self.inflight += 1
            self.send_chat(time.monotonic_ns())

    def on_echo(self, seq: int, sent_ns: int) -> None:
        run = self.run
        if run.recording:
            run.latency.add((time.monotonic_ns() - sent_ns) / 1e6)
        if run.cfg.rate <= 0:
            self.inflight -= 1
            if run.sending:
                self.inflight += 1
                self.send_chat(time.monotonic_ns())

    def on_error(self, code: Any, message: str) -> None:
        # A refused chat will never echo: give its window slot back, after a pause so a
        # rate limiter is not hammered in a tight loop.
        if self.run.cfg.rate <= 0 and self.inflight > 0:
            self.inflight -= 1
            asyncio.get_running_loop().call_later(0.05, self.fill)

    # open loop
    def start_open(self, first_ns: int, interval_ns: int) -> None:
        self.next_ns = first_ns
        self.interval_ns = interval_ns
        self._schedule()

    def _schedule(self) -> None:
        delay = (self.next_ns - time.monotonic_ns()) / 1e9
        self.timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        if not self.run.sending or self.closing:
            return
        now = time.monotonic_ns()
        # From the real send time, unless we fell > 2 ms behind schedule: then from the
        # scheduled time, so a stalled generator cannot hide latency (coordinated omission).
        self.send_chat(now if now - self.next_ns < 2_000_000 else self.next_ns)
        self.next_ns += self.interval_ns
        self._schedule()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def fanout(run: Run) -> dict[str, Any]:
    """R rooms x M members chatting; deliveries/s, sends/s and own-echo latency."""
    cfg = run.cfg
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    n = cfg.rooms * cfg.members
    clients = [
        FanoutClient(cfg.user_id_base + i, cfg.room_id_base + i // cfg.members, run)
        for i in range(n)
    ]
    pairs: list[tuple[BenchClient, int | None]] = [
        (c, cfg.room_id_base + i // cfg.members) for i, c in enumerate(clients)
    ]
    params = {
        "rooms": cfg.rooms,
        "members": cfg.members,
        "mode": "open" if cfg.rate > 0 else "closed",
        "window": cfg.window if cfg.rate <= 0 else None,
        "rate": cfg.rate if cfg.rate > 0 else None,
        "message_size": cfg.message_size,
        "warmup": cfg.warmup,
        "duration": cfg.duration,
    }
    ok: list[BenchClient] = []
    try:
        ok, setup_s = await connect_all(run, pairs)
        if not ok:
            return finish(
                run, {"clients": 0}, run.counters.snapshot(), 0.0, loop.time() - t_start, params
            )
        live = [c for c in ok if isinstance(c, FanoutClient)]
        run.sending = True
        if cfg.rate > 0:
            interval = int(1e9 / cfg.rate)
            rng = random.Random(cfg.seed)
            now = time.monotonic_ns()
            for c in live:
                c.start_open(now + rng.randrange(max(1, interval)), interval)
        else:
            for c in live:
                c.fill()
        await phase(run, cfg.warmup, "warmup")
        pid = cfg.server_pid
        cpu0 = read_cpu_s(pid) if pid else None
        before = run.counters.snapshot()
        run.recording = True
        m0 = loop.time()
        own0 = time.process_time()
        await phase(run, cfg.duration, "measure")
        after = run.counters.snapshot()
        measured = loop.time() - m0
        # The load generator's own CPU (cores busy): near 1.0 it, not the server, is the limit.
        own_cores = round((time.process_time() - own0) / measured, 2) if measured > 0 else None
        cpu1 = read_cpu_s(pid) if pid else None
        run.recording = False
        run.sending = False
        for c in live:
            c.stop()
        win = window(before, after)
        cpu_per_delivery = None
        if cpu0 is not None and cpu1 is not None and win["deliveries"]:
            cpu_per_delivery = round((cpu1 - cpu0) / win["deliveries"] * 1e6, 3)
        metrics: dict[str, Any] = {
            "clients": len(live),
            "setup_s": round(setup_s, 2),
            "deliveries_per_s": per_second(win["deliveries"], measured),
            "sends_per_s": per_second(win["sends"], measured),
            "fanout": round(win["deliveries"] / win["sends"], 2) if win["sends"] else None,
            "server_cpu_us_per_delivery": cpu_per_delivery,
            "loadgen_cpu_cores": own_cores,
        }
        metrics.update(latency_metrics("echo", run.latency))
        return finish(run, metrics, win, measured, loop.time() - t_start, params)
    finally:
        run.sending = False
        await close_all(clients)


# -- idle -------------------------------------------------------------------------------


async def idle(run: Run) -> dict[str, Any]:
    """N joined connections that only heartbeat; server RSS per connection."""
    cfg = run.cfg
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    rng = random.Random(cfg.seed)
    rooms = max(0, cfg.rooms)
    clients = [BenchClient(cfg.user_id_base + i, run.counters) for i in range(cfg.connections)]
    pairs: list[tuple[BenchClient, int | None]] = [
        (c, cfg.room_id_base + i % rooms if rooms else None) for i, c in enumerate(clients)
    ]
    params = {
        "connections": cfg.connections,
        "rooms": rooms,
        "duration": cfg.duration,
        "server_pid": cfg.server_pid,
    }
    timers: list[asyncio.TimerHandle] = []

    def beat(c: BenchClient) -> None:
        if run.sending and not c.closing:
            c.send(wire.HEARTBEAT)
            run.counters.sends += 1
            timers.append(loop.call_later(cfg.heartbeat_interval, beat, c))

    try:
        pid = cfg.server_pid
        rss_before = read_rss_kib(pid) if pid else None
        if pid and rss_before is None:
            run.note(f"cannot read RSS of pid {pid}")
        ok, setup_s = await connect_all(run, pairs)
        await asyncio.sleep(0.2)  # let the server finish the last joins' notices
        rss_after = read_rss_kib(pid) if pid else None
        before = run.counters.snapshot()
        run.sending = True
        for c in ok:
            timers.append(loop.call_later(rng.uniform(0, cfg.heartbeat_interval), beat, c))
        m0 = loop.time()
        await phase(run, cfg.duration, "idle")
        measured = loop.time() - m0
        rss_end = read_rss_kib(pid) if pid else None
        after = run.counters.snapshot()
        run.sending = False
        per_conn = None
        if rss_before is not None and rss_after is not None and ok:
            per_conn = round((rss_after - rss_before) / len(ok), 2)
        win = window(before, after)
        # join errors count here too: the connections are the whole point
        win["error_codes"], win["errors"] = after["error_codes"], after["errors"]
        metrics = {
            "connections": len(ok),
            "setup_s": round(setup_s, 2),
            "connects_per_s": per_second(len(ok), setup_s),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_end_kib": rss_end,
            "rss_per_conn_kib": per_conn,
            "heartbeats": win["sends"],
        }
        return finish(run, metrics, win, measured, loop.time() - t_start, params)
    finally:
        run.sending = False
        for t in timers:
            t.cancel()
        await close_all(clients)


# -- games ------------------------------------------------------------------------------


class GamePair:
    """Two players in one room; ``done`` resolves when the game ended or failed."""

    def __init__(self, room_id: int) -> None:
        self.room_id = room_id
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.ended_at = 0.0
        self.ended = 0

    def player_ended(self) -> None:
        self.ended += 1
        if self.ended >= 2 and not self.done.done():
            self.ended_at = time.monotonic()
            self.done.set_result(True)

    def fail(self) -> None:
        if not self.done.done():
            self.done.set_result(False)


class GamePlayer(BenchClient):
    """Plays Move on its turn until GameEnded; the starter is ready already."""

    def __init__(self, user_id: int, pair: GamePair, run: Run, *, starter: bool) -> None:
        super().__init__(user_id, run.counters)
        self.pair = pair
        self.run = run
        self.starter = starter
        self.pending_ns = 0
        self.actions = 0

    def act(self) -> None:
        if self.pending_ns or self.pair.done.done():
            return
        self.actions += 1
        self.pending_ns = time.monotonic_ns()
        self.counters.sends += 1
        self.send(wire.move(self.pair.room_id, float(self.actions), 1.0, 0.5))

    def on_message(self, tag: str, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if tag == "GameStarted":
            if not self.starter:
                self.send(wire.toggle_ready(self.pair.room_id))
        elif tag == "GameInProgress":
            if body.get("current_turn") == self.user_id:
                self.act()
        elif tag == "ActionResult":
            if body.get("user_id") == self.user_id and self.pending_ns:
                self.run.latency.add((time.monotonic_ns() - self.pending_ns) / 1e6)
                self.pending_ns = 0
            state = body.get("game_state") or {}
            if state.get("status") == "InProgress" and state.get("current_turn") == self.user_id:
                self.act()
        elif tag == "GameEnded":
            self.pending_ns = 0
            self.pair.player_ended()

    def on_error(self, code: Any, message: str) -> None:
        self.run.note(f"game error {code}: {message}")
        self.pair.fail()

    def on_lost(self) -> None:
        self.pair.fail()


async def games(run: Run) -> dict[str, Any]:
    """G concurrent 2-player games played to the end; games/s and action latency.

    ``duration`` bounds the play time (there is no warm-up: a game is one unit of work).
    """
    cfg = run.cfg
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    game_pairs = [GamePair(cfg.room_id_base + g) for g in range(cfg.games)]
    players: list[GamePlayer] = []
    for g, p in enumerate(game_pairs):
        players.append(GamePlayer(cfg.user_id_base + 2 * g, p, run, starter=True))
        players.append(GamePlayer(cfg.user_id_base + 2 * g + 1, p, run, starter=False))
    params = {"games": cfg.games, "duration": cfg.duration, "server_pid": cfg.server_pid}
    pid = cfg.server_pid
    try:
        rss_before = read_rss_kib(pid) if pid else None
        ok, setup_s = await connect_all(
            run, [(c, c.pair.room_id) for c in players], sequential_pairs=True
        )
        rss_connected = read_rss_kib(pid) if pid else None
        ok_ids = {id(c) for c in ok}
        live = [
            p
            for g, p in enumerate(game_pairs)
            if {id(players[2 * g]), id(players[2 * g + 1])} <= ok_ids
        ]
        for p in game_pairs:
            if p not in live:
                p.fail()
        before = run.counters.snapshot()
        run.recording = True
        run.sending = True
        t0 = time.monotonic()
        for g, p in enumerate(game_pairs):
            if p in live:
                players[2 * g].send(wire.start_game(p.room_id))
        waiting = [p.done for p in live]
        timed_out = 0
        if waiting:
            prog = asyncio.ensure_future(_games_progress(run, live)) if run.progress else None
            _, pending = await asyncio.wait(waiting, timeout=cfg.duration)
            if prog is not None:
                prog.cancel()
            timed_out = len(pending)
            for p in live:
                p.fail()
        after = run.counters.snapshot()
        run.recording = False
        completed = [p for p in live if p.ended_at]
        span = (max(p.ended_at for p in completed) - t0) if completed else time.monotonic() - t0
        if timed_out:
            run.counters.error("timeout")
            run.note(f"{timed_out} games not finished within {cfg.duration}s")
            after = run.counters.snapshot()
        win = window(before, after)
        win["error_codes"], win["errors"] = after["error_codes"], after["errors"]
        metrics: dict[str, Any] = {
            "games_started": len(live),
            "games_completed": len(completed),
            "setup_s": round(setup_s, 2),
            "games_per_s": per_second(len(completed), span),
            "actions_per_s": per_second(win["sends"], span),
            "rss_before_kib": rss_before,
            "rss_connected_kib": rss_connected,
            "rss_end_kib": read_rss_kib(pid) if pid else None,
        }
        metrics.update(latency_metrics("action", run.latency))
        return finish(run, metrics, win, span, loop.time() - t_start, params)
    finally:
        run.sending = False
        await close_all(players)


async def _games_progress(run: Run, live: list[GamePair]) -> None:
    assert run.progress is not None
    while True:
        await asyncio.sleep(0.25)
        n = sum(1 for p in live if p.done.done())
        run.progress.show("games", n / max(1, len(live)), f"{n}/{len(live)} done")


# -- churn ------------------------------------------------------------------------------


async def churn(run: Run) -> dict[str, Any]:
    """C workers looping connect -> join -> leave -> disconnect; cycles/s and cycle latency."""
    cfg = run.cfg
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    step = min(5.0, cfg.connect_timeout)
    rooms = max(1, cfg.rooms)
    cycles = 0
    leftovers: list[BenchClient] = []
    params = {
        "workers": cfg.workers,
        "rooms": rooms,
        "warmup": cfg.warmup,
        "duration": cfg.duration,
    }

    async def worker(w: int) -> None:
        nonlocal cycles
        n = 0
        room = cfg.room_id_base + w % rooms
        while run.sending:
            # rotate ids so a new Connect never races the server's cleanup of the old one
            uid = cfg.user_id_base + w * 16 + n % 16
            n += 1
            c = BenchClient(uid, run.counters)
            leftovers.append(c)
            t = time.monotonic_ns()
            try:
                await open_client(c, cfg.host, cfg.port, step, cfg.transport)
                await c.handshake(step, room)
                await c.request(wire.room_leave(uid, room), "RoomLeaveSuccess", step)
                c.close()
                if run.recording:
                    cycles += 1
                    run.latency.add((time.monotonic_ns() - t) / 1e6)
            except ServerError:
                c.abort()  # already counted as an Error frame
                await asyncio.sleep(0.01)
            except (OSError, TimeoutError, Closed) as e:
                c.abort()
                run.counters.connect_failures += 1
                run.note(f"churn cycle failed: {describe(e)}")
                await asyncio.sleep(0.05)
            if len(leftovers) > 64:
                leftovers[:] = [x for x in leftovers if not x.closed.done()]

    run.sending = True
    tasks = [asyncio.ensure_future(worker(w)) for w in range(max(1, cfg.workers))]
    try:
        await phase(run, cfg.warmup, "warmup")
        before = run.counters.snapshot()
        run.recording = True
        m0 = loop.time()
        await phase(run, cfg.duration, "measure")
        measured = loop.time() - m0
        run.recording = False
        done_cycles = cycles
        after = run.counters.snapshot()
        run.sending = False
        _, pending = await asyncio.wait(tasks, timeout=step * 3 + 1)
        for t in pending:
            t.cancel()
        win = window(before, after)
        win["disconnects"] = 0  # every churned connection is closed by design
        metrics: dict[str, Any] = {
            "workers": cfg.workers,
            "cycles": done_cycles,
            "cycles_per_s": per_second(done_cycles, measured),
        }
        metrics.update(latency_metrics("cycle", run.latency))
        return finish(run, metrics, win, measured, loop.time() - t_start, params)
    finally:
        run.sending = False
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(leftovers, timeout=2.0)


# -- users ------------------------------------------------------------------------------


async def _sign_on(run: Run, first_uid: int, count: int, deadline: float) -> int:
    """``count`` distinct users, ``workers`` at a time: connect, Connect, ack, close.

    Stops at ``deadline`` (loop time); returns how many users got their ack.
    """
    cfg = run.cfg
    loop = asyncio.get_running_loop()
    step = min(5.0, cfg.connect_timeout)
    next_uid, end_uid, done = first_uid, first_uid + count, 0

    async def worker() -> None:
        nonlocal next_uid, done
        while next_uid < end_uid and loop.time() < deadline:
            uid = next_uid
            next_uid += 1
            c = BenchClient(uid, run.counters)
            try:
                await open_client(c, cfg.host, cfg.port, step)
                await c.handshake(step)
                done += 1
            except ServerError:
                await asyncio.sleep(0.01)  # already counted as an Error frame
            except (OSError, TimeoutError, Closed) as e:
                run.counters.connect_failures += 1
                run.note(f"user failed: {describe(e)}")
                await asyncio.sleep(0.05)
            finally:
                c.close()
            if c.transport is not None:  # wait until the loop saw it go: fds stay bounded
                await asyncio.wait({c.closed}, timeout=step)
            if run.progress is not None and uid % 1000 == 0:
                run.progress.show("users", (uid - first_uid) / max(1, count), f"{done}")

    await asyncio.gather(*(worker() for _ in range(max(1, cfg.workers))))
    return done


async def users_together(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """N distinct users sign on and leave, per server; each server's RSS growth across them.

    A warm-up pass of N/5 users first (allocator arenas, caches, first database pages),
    ``settle`` seconds, RSS; then the N users, ``settle`` seconds, RSS: a server that
    keeps per-user state it should have dropped grows with N. The passes are counted,
    not timed (``warmup`` and ``duration`` do not apply); ``pass_bound`` bounds each.

    Several servers (one ``Run`` each, all on one host) share the two settle waits:
    every warm-up pass, one wait, every RSS; every measured pass, one wait, every RSS.
    A server idles while the others are loaded, and the suite saves a minute per run.
    """
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    for run in runs:
        cfg = run.cfg
        warm = cfg.users // 5
        await _sign_on(run, cfg.user_id_base + cfg.users, warm, loop.time() + pass_bound(warm))
    settle = max(run.cfg.settle for run in runs)
    await phase(runs[0], settle, "settle")
    rss_before = [_rss(run) for run in runs]
    passes: list[tuple[int, float, dict[str, Any], dict[str, Any]]] = []
    for run in runs:
        cfg = run.cfg
        before = run.counters.snapshot()
        m0 = loop.time()
        bound = pass_bound(cfg.users)
        done = await _sign_on(run, cfg.user_id_base, cfg.users, m0 + bound)
        passes.append((done, loop.time() - m0, before, run.counters.snapshot()))
        if done < cfg.users:
            run.note(f"{done} of {cfg.users} users signed on (bound {bound:.0f}s)")
    await phase(runs[0], settle, "settle")
    results = []
    for run, rss0, (done, measured, before, after) in zip(runs, rss_before, passes, strict=True):
        cfg = run.cfg
        rss1 = _rss(run)
        growth = rss1 - rss0 if rss0 is not None and rss1 is not None else None
        win = window(before, after)
        win["disconnects"] = 0  # every connection is closed by design
        metrics: dict[str, Any] = {
            "users": done,
            "users_per_s": per_second(done, measured),
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "rss_growth_kib": growth,
            "rss_growth_mib": round(growth / 1024, 1) if growth is not None else None,
        }
        params = {
            "users": cfg.users,
            "workers": cfg.workers,
            "settle": settle,
            "server_pid": cfg.server_pid,
            "servers_together": len(runs),
        }
        results.append(finish(run, metrics, win, measured, loop.time() - t_start, params))
    return results


def _rss(run: Run) -> int | None:
    pid = run.cfg.server_pid
    if not pid:
        return None
    rss = read_rss_kib(pid)
    if rss is None:
        run.note(f"cannot read RSS of pid {pid}")
    return rss


async def users(run: Run) -> dict[str, Any]:
    """``users_together`` for one server."""
    return (await users_together([run]))[0]


# -- entry points -------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]] = {
    "fanout": fanout,
    "idle": idle,
    "games": games,
    "churn": churn,
    "users": users,
}


async def run_async(cfg: BenchConfig) -> dict[str, Any]:
    """Run one scenario on the current loop, bounded by ``cfg.hard_timeout()``."""
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r} (one of {', '.join(SCENARIOS)})")
    run = Run(cfg, latency=LatencyRecorder(seed=cfg.seed))
    if cfg.progress:
        run.progress = Progress(f"{cfg.scenario} {cfg.target()}")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        return await asyncio.wait_for(SCENARIOS[cfg.scenario](run), cfg.hard_timeout())
    except TimeoutError:
        run.note(f"hard timeout after {cfg.hard_timeout():.0f}s")
        snap = run.counters.snapshot()
        res = finish(run, {}, snap, 0.0, loop.time() - t0, asdict(cfg))
        res["ok"] = False
        return res
    finally:
        if run.progress is not None:
            run.progress.clear()


def new_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when wanted and installed, else None (asyncio's default loop)."""
    if not use_uvloop:
        return None
    try:
        import uvloop  # optional extra
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run one scenario to completion on a fresh event loop (uvloop when available)."""
    raise_nofile_limit()
    factory = new_loop_factory(cfg.use_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run_async(cfg))
    result["params"]["loop"] = "uvloop" if factory is not None else "asyncio"
    return result


async def run_users_async(cfgs: Sequence[BenchConfig]) -> list[dict[str, Any]]:
    """``users_together`` on the current loop, bounded by the sum of the runs' bounds."""
    runs = [Run(cfg, latency=LatencyRecorder(seed=cfg.seed)) for cfg in cfgs]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    bound = sum(cfg.hard_timeout() for cfg in cfgs)
    try:
        return await asyncio.wait_for(users_together(runs), bound)
    except TimeoutError:
        out = []
        for run in runs:
            run.note(f"hard timeout after {bound:.0f}s")
            res = finish(run, {}, run.counters.snapshot(), 0.0, loop.time() - t0, asdict(run.cfg))
            res["ok"] = False
            out.append(res)
        return out


def run_users(cfgs: Sequence[BenchConfig]) -> list[dict[str, Any]]:
    """The ``users`` scenario against several servers at once (shared settle waits)."""
    if not cfgs or any(cfg.scenario != "users" for cfg in cfgs):
        raise ValueError("run_users takes one or more users configurations")
    raise_nofile_limit()
    factory = new_loop_factory(cfgs[0].use_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(run_users_async(cfgs))
    for result in results:
        result["params"]["loop"] = "uvloop" if factory is not None else "asyncio"
    return results
