"""The cluster benchmark (issue 13): what ``--redis`` and ``--workers`` cost.

``python -m gamed.bench.cluster [--quick] [--repeat N] [--out PATH]``

One run starts a private ``redis-server`` per cluster (127.0.0.1, a free port, no
persistence) and these targets, then loads each in turn with fan-out 50 rooms x 20
members, closed loop W=2 (the suite's ``fanout 50x20 w2``), in rounds ABCDE EDCBA ...:

- ``solo``: one gamed, no Redis (the single process);
- ``redis-1``: one gamed with ``--redis``: every room's members on that one node, so a
  chat costs no Redis round trip (docs/cluster.md) -- target >= 0.9x solo's deliveries/s;
- ``pair-2``: ``split-2``'s two nodes with every room whole on one of them: what a
  second process costs without any relay (reported);
- ``split-2``: two nodes on one Redis, each room's members half on each node (member *j*
  of a room on node *j* mod 2): every chat is published once to the other node --
  deliveries per CPU-second of both gamed processes plus redis-server, against solo's
  (its gamed CPU only): target >= 0.5x;
- ``workers-2``: ``--workers 2 --redis`` (the workers take connections from one shared
  accept queue, so some rooms straddle them) -- reported; the machine has 2 cores, shared
  with the load generator, so this measures cost, not scale.

CPU is read with psutil for every gamed process (a supervisor's children included) and from
redis-server's own ``INFO cpu``, over the measured window and over the whole run until every
chat sent has reached every member (relayed copies trail the closed loop, which waits only
for the sender's local copy); Redis' ``INFO commandstats`` gives the PUBLISH count, hence
Redis CPU per published message and the projection printed at the end (messages/s per
Redis, nodes per Redis). A sizing step then seats users in rooms across the two nodes and
reads Redis' ``MEMORY STATS`` dataset bytes, ``used_memory`` and the ``MEMORY USAGE`` of one
room's and one session's keys: bytes per room and per member.

The load generator is the one of ``gamed-bench`` (``gamed.bench.scenarios``): one process,
one event loop, its clients spread over the target's ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson

from gamed.bench.client import BenchClient, close_all
from gamed.bench.redisserver import redis_server_argv
from gamed.bench.scenarios import (
    BenchConfig,
    FanoutClient,
    Run,
    connect_all,
    finish,
    new_loop_factory,
    phase,
    raise_nofile_limit,
)
from gamed.bench.stats import (
    Counters,
    LatencyRecorder,
    format_table,
    human,
    latency_metrics,
    per_second,
    window,
)

TWISTD = str(Path(sys.executable).with_name("twistd"))
START_TIMEOUT = 30.0
STOP_GRACE = 5.0
#: issue 13's bounds: redis-1 vs solo deliveries/s; split-2 vs solo deliveries per CPU-second.
TARGET_REDIS_LOCAL = 0.9
TARGET_SPLIT_EFFICIENCY = 0.5
#: The share of one core a Redis instance is planned at in the projection.
REDIS_CORE_BUDGET = 0.8
#: Fewer PUBLISH calls in a window than this are the link's probes, not chats.
MIN_PUBLISHES = 1000


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 a moment ago (a start that loses the race is retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_cmd(port: int, *args: str, timeout: float = 5.0) -> Any:
    """One command on a short blocking connection to 127.0.0.1:``port``; the reply."""
    import hiredis

    reader = hiredis.Reader(encoding="utf-8")
    out = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(out)
        while True:
            reply = reader.gets()
            if reply is not False:
                if isinstance(reply, Exception):
                    raise reply
                return reply
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {port} did not answer {args[0]}")
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("redis-server closed the connection")
            reader.feed(data)


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` as a flat dict of strings."""
    text = redis_cmd(port, "INFO", section)
    pairs = (line.split(":", 1) for line in str(text).splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


def redis_cpu(port: int) -> float:
    """redis-server's own user + system CPU seconds (``INFO cpu``: getrusage, microseconds;
    psutil's clock ticks are too coarse for the few hundredths of a second it uses)."""
    got = info(port, "cpu")
    return float(got["used_cpu_user"]) + float(got["used_cpu_sys"])


def subscriber_backlog(port: int) -> int:
    """The largest output buffer (bytes) Redis holds for a subscriber right now: what a
    node has not read yet (``CLIENT LIST TYPE pubsub``, ``omem``)."""
    text = str(redis_cmd(port, "CLIENT", "LIST", "TYPE", "pubsub"))
    sizes = [int(f[5:]) for line in text.splitlines() for f in line.split() if f[:5] == "omem="]
    return max(sizes, default=0)


async def drained(
    counters: Counters, expected: int, timeout: float = 10.0, quiet: float = 2.0
) -> float:
    """Wait until ``expected`` deliveries arrived (every chat sent reached every member, the
    ones relayed through Redis included), or none came for ``quiet`` seconds, or
    ``timeout``; the seconds until the last one. What is missing then is counted lost."""
    loop = asyncio.get_running_loop()
    start = last_change = loop.time()
    seen = counters.deliveries
    while seen < expected and loop.time() - start < timeout:
        await asyncio.sleep(0.05)
        if counters.deliveries != seen:
            seen, last_change = counters.deliveries, loop.time()
        elif loop.time() - last_change >= quiet:
            break
    return last_change - start


def publish_calls(port: int) -> int:
    """PUBLISH calls Redis has served since it started (``INFO commandstats``)."""
    stat = info(port, "commandstats").get("cmdstat_publish", "")
    for part in stat.split(","):
        if part.startswith("calls="):
            return int(part[6:])
    return 0


@dataclass
class Proc:
    """A child process (gamed or redis-server) with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    #: gamed: its HTTP port (/healthz, /stats)
    http_port: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def spawn(self) -> None:
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C is ours: we stop the children ourselves
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 3) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(t.strip() for t in text[-lines:])

    def pids(self) -> list[int]:
        """The process and its descendants (a ``--workers`` supervisor's workers)."""
        if self.popen is None:
            return []
        import psutil

        try:
            p = psutil.Process(self.popen.pid)
            return [p.pid] + [c.pid for c in p.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self) -> None:
        p = self.popen
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: workers too
                p.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_until(check: Callable[[], bool], proc: Proc, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while {what}: {proc.tail()}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {what} not within {START_TIMEOUT:.0f}s: {proc.tail()}")


def pong(port: int) -> bool:
    return bool(redis_cmd(port, "PING", timeout=1) == "PONG")


def start_redis(workdir: Path, name: str) -> tuple[Proc, int]:
    """A private redis-server on a free 127.0.0.1 port, no persistence; (proc, port)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    for attempt in range(3):
        port = free_port()
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        proc = Proc(name, redis_server_argv(exe, port, d), d / f"redis.{attempt}.log")
        proc.spawn()
        try:
            wait_until(partial(pong, port), proc, "answering PING")
            return proc, port
        except RuntimeError:
            proc.stop()
            if "in use" not in proc.tail().lower():
                raise
    raise RuntimeError(f"{name}: no free port after 3 attempts")


def healthz(http_port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as r:
            body: dict[str, Any] = orjson.loads(r.read())
            return body
    except urllib.error.HTTPError as e:  # 503 while the link is not up yet
        out: dict[str, Any] = orjson.loads(e.read() or b"{}")
        return out


def start_gamed(workdir: Path, name: str, extra: Sequence[str], cluster: bool) -> tuple[Proc, int]:
    """``twistd -n gamed`` with the suite's load settings on free ports; (proc, game port).

    A cluster node is ready when its /healthz says ``cluster: up``.
    """
    d = workdir / name
    (d / "data").mkdir(parents=True, exist_ok=True)
    toml = d / "bench.toml"
    # As the suite: every security check runs, only the per-IP cap is raised (all the
    # clients come from 127.0.0.1) and the message rate limits are off by flag.
    toml.write_text("[middleware.security]\nallowlist = []\nip_max_connections = 1000000\n")
    for attempt in range(3):
        port, http = free_port(), free_port()
        argv = [
            TWISTD,
            "-n",
            "--pidfile=",
            "gamed",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--metrics-port",
            f"tcp:{http}:interface=127.0.0.1",
            "--ws-port",
            "none",
            "--rate-limit",
            "0",
            "--flood-detection",
            "off",
            "--config",
            str(toml),
            "--data-dir",
            str(d / "data"),
            *extra,
        ]
        proc = Proc(name, argv, d / f"gamed.{attempt}.log", http_port=http)
        proc.spawn()

        try:
            wait_until(
                partial(ready, port, http if cluster else 0),
                proc,
                "accepting" + (" with its cluster link up" if cluster else ""),
            )
            return proc, port
        except RuntimeError:
            proc.stop()
            if "in use" not in proc.tail(10).lower():
                raise
    raise RuntimeError(f"{name}: no free port after 3 attempts")


def ready(port: int, http: int) -> bool:
    """Accepting on ``port``; with ``http``, its /healthz says the cluster link is up."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        pass
    return not http or cluster_up(healthz(http))


def cluster_up(body: dict[str, Any]) -> bool:
    """/healthz says the cluster link is up: a node's own, or (``--workers``, the parent's
    merged answer) every worker's."""
    workers = body.get("workers")
    if isinstance(workers, dict):
        answers = list(workers.values())
        return bool(answers) and all(
            isinstance(w, dict) and w.get("cluster") == "up" for w in answers
        )
    return body.get("cluster") == "up"


def busiest_worker_share(http_port: int) -> float:
    """The share of a ``--workers`` parent's connections its busiest worker holds (the
    kernel hands connections to whichever worker accepts first: not an even split)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/stats", timeout=5) as r:
        body = orjson.loads(r.read())
    counts = [int((w.get("stats") or {}).get("connections") or 0) for w in body["workers"]]
    return round(max(counts) / sum(counts), 3) if sum(counts) else 0.0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (a process gone counts 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Target:
    """A configuration under load: its gamed processes, its Redis (if any), its ports."""

    name: str
    gamed: list[Proc]
    ports: list[int]
    redis: Proc | None = None
    redis_port: int = 0
    note: str = ""
    #: a ``--workers`` parent: its /stats lists each worker's connections
    supervised: bool = False
    #: over several ports: each room whole on one (``True``) or its members spread
    whole_rooms: bool = False

    def gamed_pids(self) -> list[int]:
        return [pid for p in self.gamed for pid in p.pids()]

    def sample(self) -> dict[str, float]:
        """CPU of gamed and Redis, and Redis' PUBLISH count, right now."""
        out = {"gamed_cpu_s": cpu_seconds(self.gamed_pids()), "redis_cpu_s": 0.0, "publishes": 0.0}
        if self.redis is not None and self.redis.popen is not None:
            out["redis_cpu_s"] = redis_cpu(self.redis_port)
            out["publishes"] = float(publish_calls(self.redis_port))
            out["sub_omem"] = float(subscriber_backlog(self.redis_port))
        if self.supervised:
            out["busiest_worker_share"] = busiest_worker_share(self.gamed[0].http_port)
        return out

    def alive(self) -> bool:
        return all(p.alive() for p in self.gamed) and (self.redis is None or self.redis.alive())


def start_targets(workdir: Path, want_workers: bool, started: list[Proc]) -> list[Target]:
    """Every target, its processes listed in ``started`` as each comes up (so that the
    caller stops them all, also when a later one fails to start)."""

    def keep(got: tuple[Proc, int]) -> tuple[Proc, int]:
        started.append(got[0])
        return got

    out = [Target("solo", *_one(keep(start_gamed(workdir, "solo", [], cluster=False))))]
    r1, r1_port = keep(start_redis(workdir, "redis-r1"))
    url = f"redis://127.0.0.1:{r1_port}/0"
    g, port = keep(start_gamed(workdir, "redis-1", ["--redis", url, "--node-id", "r1"], True))
    out.append(Target("redis-1", [g], [port], r1, r1_port))
    r2, r2_port = keep(start_redis(workdir, "redis-split"))
    url = f"redis://127.0.0.1:{r2_port}/0"
    a, pa = keep(start_gamed(workdir, "split-a", ["--redis", url, "--node-id", "a"], True))
    b, pb = keep(start_gamed(workdir, "split-b", ["--redis", url, "--node-id", "b"], True))
    out.append(Target("split-2", [a, b], [pa, pb], r2, r2_port))
    # The same two nodes with every room whole on one of them: two processes, no relay.
    out.append(Target("pair-2", [a, b], [pa, pb], r2, r2_port, whole_rooms=True))
    if want_workers:
        r3, r3_port = keep(start_redis(workdir, "redis-workers"))
        url = f"redis://127.0.0.1:{r3_port}/0"
        w, pw = keep(start_gamed(workdir, "workers-2", ["--redis", url, "--workers", "2"], True))
        t = Target("workers-2", [w], [pw], r3, r3_port, supervised=True)
        if len(w.pids()) < 3:
            t.note = "this gamed runs --workers 2 as one process (no worker processes)"
        out.append(t)
    return out


def _one(started: tuple[Proc, int]) -> tuple[list[Proc], list[int]]:
    return [started[0]], [started[1]]


# -- load -------------------------------------------------------------------------------


async def fanout_across(
    cfg: BenchConfig,
    ports: Sequence[int],
    sample: Callable[[], dict[str, float]],
    whole_rooms: bool = False,
) -> dict[str, Any]:
    """``scenarios.fanout`` with each room's members spread over ``ports`` (member j of a
    room on ``ports[j % len(ports)]``; with ``whole_rooms``, room r's members all on
    ``ports[r % len(ports)]``); ``sample()`` is read at both ends of the window."""
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    counters, latency = Counters(), LatencyRecorder(seed=cfg.seed)
    runs = [Run(replace(cfg, port=p), counters=counters, latency=latency) for p in ports]
    pairs: list[list[tuple[BenchClient, int | None]]] = [[] for _ in ports]
    clients: list[FanoutClient] = []
    for i in range(cfg.rooms * cfg.members):
        room, j = cfg.room_id_base + i // cfg.members, i % cfg.members
        k = (i // cfg.members if whole_rooms else j) % len(ports)
        c = FanoutClient(cfg.user_id_base + i, room, runs[k])
        clients.append(c)
        pairs[k].append((c, room))
    params = {
        "rooms": cfg.rooms,
        "members": cfg.members,
        "window": cfg.window,
        "ports": list(ports),
        "warmup": cfg.warmup,
        "duration": cfg.duration,
    }
    head = runs[0]
    try:
        outcomes = await asyncio.gather(
            *(connect_all(r, p) for r, p in zip(runs, pairs, strict=True))
        )
        setup_s = max(s for _, s in outcomes)
        live = [c for ok, _ in outcomes for c in ok if isinstance(c, FanoutClient)]
        for r in runs:
            head.notes.extend(n for n in r.notes if n not in head.notes)
        if not live:
            snap = counters.snapshot()
            return finish(head, {"clients": 0}, snap, 0.0, loop.time() - t_start, params)
        start = counters.snapshot()
        s_start = sample()
        for r in runs:
            r.sending = True
        for c in live:
            c.fill()
        await phase(head, cfg.warmup, "warmup")
        s0 = sample()
        before = counters.snapshot()
        for r in runs:
            r.recording = True
        m0, own0 = loop.time(), time.process_time()
        await phase(head, cfg.duration, "measure")
        after = counters.snapshot()
        measured = loop.time() - m0
        own = (time.process_time() - own0) / measured if measured > 0 else 0.0
        s1 = sample()
        for r in runs:
            r.recording = r.sending = False
        for c in live:
            c.stop()
        # Relayed chats may trail the closed loop (it waits only for the sender's own
        # copy, which is local): the whole run, until everything sent has arrived, is
        # the accounting that cannot flatter a backlog.
        in_flight = (after["sends"] - start["sends"]) * cfg.members - (
            after["deliveries"] - start["deliveries"]
        )
        expected = start["deliveries"] + (after["sends"] - start["sends"]) * cfg.members
        drain_s = await drained(counters, expected)
        s_end, end = sample(), counters.snapshot()
        whole = window(start, end)
        dw = {k: s_end[k] - s_start[k] for k in ("gamed_cpu_s", "redis_cpu_s", "publishes")}
        whole_cpu = dw["gamed_cpu_s"] + dw["redis_cpu_s"]
        win = window(before, after)
        d = {k: s1[k] - s0[k] for k in ("gamed_cpu_s", "redis_cpu_s", "publishes")}
        deliveries = win["deliveries"]
        cpu = d["gamed_cpu_s"] + d["redis_cpu_s"]
        metrics: dict[str, Any] = {
            "clients": len(live),
            "setup_s": round(setup_s, 2),
            "deliveries_per_s": per_second(deliveries, measured),
            "sends_per_s": per_second(win["sends"], measured),
            "fanout": round(deliveries / win["sends"], 2) if win["sends"] else None,
            "gamed_cpu_cores": round(d["gamed_cpu_s"] / measured, 3) if measured else None,
            "redis_cpu_cores": round(d["redis_cpu_s"] / measured, 3) if measured else None,
            "cpu_us_per_delivery": round(cpu / deliveries * 1e6, 3) if deliveries else None,
            "deliveries_per_cpu_s": round(deliveries / cpu, 1) if cpu > 0 else None,
            "publishes_per_s": per_second(d["publishes"], measured),
            # PUBLISH per chat: 1 when every room spans 2 nodes, 0 when rooms are local
            "publishes_per_send": (
                round(d["publishes"] / win["sends"], 2)
                if win["sends"] and d["publishes"] >= MIN_PUBLISHES
                else None
            ),
            # Only where chats are published: alone, a node publishes just its probes.
            "redis_cpu_us_per_publish": (
                round(d["redis_cpu_s"] / d["publishes"] * 1e6, 3)
                if d["publishes"] >= MIN_PUBLISHES
                else None
            ),
            "sends_per_gamed_cpu_s": (
                round(win["sends"] / d["gamed_cpu_s"], 1) if d["gamed_cpu_s"] else None
            ),
            "loadgen_cpu_cores": round(own, 2),
            # sent x members - delivered at the window's end: the closed loop's own window
            # (clients x W x members) plus whatever the relay path trails by
            "deliveries_in_flight": in_flight,
            "subscriber_backlog_bytes": s1.get("sub_omem"),
            "busiest_worker_share": s1.get("busiest_worker_share"),
            "drain_s": round(drain_s, 2),
            "lost_deliveries": whole["sends"] * cfg.members - whole["deliveries"],
            "cpu_us_per_delivery_whole": (
                round(whole_cpu / whole["deliveries"] * 1e6, 3) if whole["deliveries"] else None
            ),
            "deliveries_per_cpu_s_whole": (
                round(whole["deliveries"] / whole_cpu, 1) if whole_cpu > 0 else None
            ),
            "redis_cpu_us_per_publish_whole": (
                round(dw["redis_cpu_s"] / dw["publishes"] * 1e6, 3)
                if dw["publishes"] >= MIN_PUBLISHES
                else None
            ),
            "sends_per_gamed_cpu_s_whole": (
                round(whole["sends"] / dw["gamed_cpu_s"], 1) if dw["gamed_cpu_s"] else None
            ),
        }
        metrics.update(latency_metrics("echo", latency))
        return finish(head, metrics, win, measured, loop.time() - t_start, params)
    finally:
        for r in runs:
            r.sending = False
        await close_all(clients)


async def seat_and_measure(
    cfg: BenchConfig, ports: Sequence[int], measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Seat ``rooms`` x ``members`` users over ``ports`` (no chat), ``measure()``, close."""
    counters = Counters()
    runs = [Run(replace(cfg, port=p), counters=counters) for p in ports]
    pairs: list[list[tuple[BenchClient, int | None]]] = [[] for _ in ports]
    clients = []
    for i in range(cfg.rooms * cfg.members):
        room, k = cfg.room_id_base + i // cfg.members, (i % cfg.members) % len(ports)
        c = BenchClient(cfg.user_id_base + i, counters)
        clients.append(c)
        pairs[k].append((c, room))
    try:
        outcomes = await asyncio.gather(
            *(connect_all(r, p) for r, p in zip(runs, pairs, strict=True))
        )
        seated = sum(len(ok) for ok, _ in outcomes)
        await asyncio.sleep(0.5)  # the last joins' scripts and notices
        out = measure()
        out["seated"] = seated
        return out
    finally:
        await close_all(clients)


def on_loop(coro_fn: Callable[[], Any], bound: float) -> Any:
    """Run ``coro_fn()`` on a fresh loop (uvloop when installed), within ``bound`` seconds."""
    with asyncio.Runner(loop_factory=new_loop_factory(True)) as runner:
        return runner.run(asyncio.wait_for(coro_fn(), bound))


# -- sizing -----------------------------------------------------------------------------


def redis_used(port: int) -> tuple[int, int]:
    """(``used_memory``, ``MEMORY STATS`` dataset bytes): the second leaves out the client
    buffers and Redis' own overhead, so it moves only with the keys."""
    stats = redis_cmd(port, "MEMORY", "STATS")
    flat = dict(zip(stats[::2], stats[1::2], strict=True))
    return int(info(port, "memory")["used_memory"]), int(flat["dataset.bytes"])


def key_bytes(port: int, keys: Sequence[str]) -> int:
    total = 0
    for k in keys:
        n = redis_cmd(port, "MEMORY", "USAGE", k, "SAMPLES", "0")
        total += int(n or 0)
    return total


def wait_empty(port: int, timeout: float = 15.0) -> bool:
    """Until the cluster removed every room (the seats go as the clients close)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(redis_cmd(port, "ZCARD", "gamed:rooms")) == 0:
            return True
        time.sleep(0.2)
    return False


def memory_now(port: int, empty: tuple[int, int], cfg: BenchConfig) -> dict[str, Any]:
    """Redis memory over ``empty``, and MEMORY USAGE of the first room's and user's keys."""
    room = f"gamed:{{room:{cfg.room_id_base}}}"
    room_keys = [f"{room}:members", f"{room}:nodes", f"{room}:on:a", f"{room}:on:b"]
    node_sets = ["gamed:node:a:sessions", "gamed:node:b:sessions"]
    used, dataset = redis_used(port)
    return {
        "used_bytes": used - empty[0],
        "dataset_bytes": dataset - empty[1],
        "room_keys_bytes": key_bytes(port, room_keys),
        "session_key_bytes": key_bytes(port, [f"gamed:session:{cfg.user_id_base}"]),
        "node_sets_bytes": key_bytes(port, node_sets),
        "keys": int(redis_cmd(port, "DBSIZE")),
    }


def sizing(target: Target, users: int, base: tuple[int, int]) -> dict[str, Any]:
    """Redis memory for ``users`` seated in many small rooms, then in few big ones.

    used_memory grows by ``a * rooms + b * users`` over the empty cluster: two
    loads with the same users and different room counts give ``a`` and ``b``.
    """
    port = target.redis_port
    user_base, room_base = base
    loads = [(users // 2, 2), (users // 20, 20)]
    rows = []
    for n, (rooms, members) in enumerate(loads):
        if not wait_empty(port):
            raise RuntimeError("sizing: the cluster still has rooms 15 s after the last load")
        empty = redis_used(port)
        cfg = BenchConfig(
            scenario="fanout",
            rooms=rooms,
            members=members,
            user_id_base=user_base + n * users,
            room_id_base=room_base + n * users,
            connect_timeout=60.0,
        )
        measure = partial(memory_now, port, empty, cfg)
        got = on_loop(partial(seat_and_measure, cfg, target.ports, measure), 120.0)
        got.update(rooms=rooms, members=members)
        rows.append(got)
    out: dict[str, Any] = {"loads": rows}
    for key, prefix in (("dataset_bytes", ""), ("used_bytes", "used_")):
        (d1, r1), (d2, r2) = ((r[key], r["rooms"]) for r in rows)
        per_room = (d1 - d2) / (r1 - r2)
        out[f"{prefix}bytes_per_room"] = round(per_room)
        out[f"{prefix}bytes_per_member"] = round((d1 - per_room * r1) / users)
    wait_empty(port)
    return out


# -- the run ----------------------------------------------------------------------------


def spread(values: Sequence[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if values else None


def med(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    vals = [r["metrics"].get(key) for r in runs]
    nums = [float(v) for v in vals if isinstance(v, int | float)]
    return statistics.median(nums) if nums else None


def paired(
    runs: dict[str, list[dict[str, Any]]], a: str, b: str, key: str
) -> tuple[float | None, tuple[float, float] | None]:
    """Median and [min..max] over rounds of ``a``'s ``key`` / ``b``'s, round by round."""
    ratios = []
    for ra, rb in zip(runs.get(a, []), runs.get(b, []), strict=False):
        x, y = ra["metrics"].get(key), rb["metrics"].get(key)
        if isinstance(x, int | float) and isinstance(y, int | float) and y:
            ratios.append(x / y)
    return (statistics.median(ratios) if ratios else None), spread(ratios)


def cell(value: float | None, sp: tuple[float, float] | None, fmt: str = "{:.2f}x") -> str:
    if value is None:
        return "n/a"
    text = fmt.format(value)
    if sp is not None:
        text += f" [{fmt.format(sp[0])}..{fmt.format(sp[1])}]"
    return text


def verdict(value: float | None, bound: float | None) -> str:
    if value is None:
        return "n/a"
    if bound is None:
        return "report"
    return "met" if value >= bound else f"MISSED by {bound - value:.2f}x"


def summarize(targets: Sequence[Target], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The per-target table, the issue-13 goals and the Redis projection."""
    keys = [
        ("deliveries/s", "deliveries_per_s"),
        ("fan-out (deliveries per send, window)", "fanout"),
        ("CPU us/delivery (gamed+redis), window", "cpu_us_per_delivery"),
        ("CPU us/delivery, whole run to drained", "cpu_us_per_delivery_whole"),
        ("deliveries per CPU-second, whole run", "deliveries_per_cpu_s_whole"),
        ("gamed CPU (cores)", "gamed_cpu_cores"),
        ("redis CPU (cores)", "redis_cpu_cores"),
        ("PUBLISH/s", "publishes_per_s"),
        ("PUBLISH per chat", "publishes_per_send"),
        ("redis CPU us/PUBLISH, window", "redis_cpu_us_per_publish"),
        ("redis CPU us/PUBLISH, whole run", "redis_cpu_us_per_publish_whole"),
        ("deliveries in flight at the window's end", "deliveries_in_flight"),
        ("largest subscriber backlog in Redis (bytes)", "subscriber_backlog_bytes"),
        ("seconds to drain after the window", "drain_s"),
        ("deliveries lost (sent x members - received)", "lost_deliveries"),
        ("busiest worker's share of the connections", "busiest_worker_share"),
        ("echo p50 ms", "echo_p50_ms"),
        ("load generator CPU (cores)", "loadgen_cpu_cores"),
    ]
    names = [t.name for t in targets if runs.get(t.name)]
    rows: list[list[Any]] = []
    for label, key in keys:
        row: list[Any] = [label]
        for n in names:
            vals = [r["metrics"].get(key) for r in runs[n]]
            nums = [float(v) for v in vals if isinstance(v, int | float)]
            if not nums:
                row.append("-")
                continue
            m, sp = statistics.median(nums), spread(nums)
            row.append(
                human(m) + (f" [{human(sp[0])}..{human(sp[1])}]" if len(nums) > 1 and sp else "")
            )
        rows.append(row)
    errors = [sum(r["errors"] + r["connect_failures"] for r in runs[n]) for n in names]
    rows.append(["errors + connect failures", *errors])
    table = format_table(["fan-out 50x20 W=2 (median [min..max])", *names], rows)

    goals: list[list[Any]] = []
    a, a_sp = paired(runs, "redis-1", "solo", "deliveries_per_s")
    goals.append(
        [
            "(a) --redis, every room on one node, vs no Redis: deliveries/s",
            f">= {TARGET_REDIS_LOCAL}x",
            cell(a, a_sp),
            verdict(a, TARGET_REDIS_LOCAL),
        ]
    )
    a2, a2_sp = paired(runs, "redis-1", "solo", "cpu_us_per_delivery")
    goals.append(
        [
            "(a) the same: CPU per delivery (lower: cheaper)",
            "report",
            cell(a2, a2_sp),
            verdict(a2, None),
        ]
    )
    b, b_sp = paired(runs, "split-2", "solo", "deliveries_per_cpu_s_whole")
    goals.append(
        [
            "(b) rooms split over 2 nodes: deliveries per CPU-s (gamed+redis) vs solo",
            f">= {TARGET_SPLIT_EFFICIENCY}x",
            cell(b, b_sp),
            verdict(b, TARGET_SPLIT_EFFICIENCY),
        ]
    )
    b3, b3_sp = paired(runs, "split-2", "solo", "deliveries_per_cpu_s")
    goals.append(
        ["(b) the same, measured window only", "report", cell(b3, b3_sp), verdict(b3, None)]
    )
    b2, b2_sp = paired(runs, "split-2", "solo", "deliveries_per_s")
    goals.append(["(b) the same: deliveries/s", "report", cell(b2, b2_sp), verdict(b2, None)])
    b4, b4_sp = paired(runs, "pair-2", "solo", "deliveries_per_cpu_s_whole")
    goals.append(
        [
            "(b) 2 nodes, each room whole on one (no relay): deliveries per CPU-s vs solo",
            "report",
            cell(b4, b4_sp),
            verdict(b4, None),
        ]
    )
    note = next((t.note for t in targets if t.name == "workers-2" and t.note), "")
    for label, key in (
        ("deliveries/s", "deliveries_per_s"),
        ("deliveries per CPU-s", "deliveries_per_cpu_s_whole"),
    ):
        c, c_sp = paired(runs, "workers-2", "solo", key)
        text = cell(c, c_sp) + (f" ({note})" if note and c is not None else "")
        goals.append([f"(c) --workers 2 vs 1: {label}", "report", text, verdict(c, None)])
    goal_table = format_table(["issue 13 target", "target", "measured", "verdict"], goals)

    us = med(runs.get("split-2", []), "redis_cpu_us_per_publish_whole")
    sends = med(runs.get("split-2", []), "sends_per_gamed_cpu_s_whole")
    projection: dict[str, Any] = {}
    if us and sends:
        per_redis = REDIS_CORE_BUDGET * 1e6 / us
        # A node on one full core, every room on 2 nodes: each chat it accepts is one
        # PUBLISH (to the room's other node); sends_per_gamed_cpu_s counts the chats of both
        # nodes per CPU-second of both, i.e. per node-core.
        projection = {
            "redis_cpu_us_per_publish": us,
            "publishes_per_s_per_redis": round(per_redis),
            "chats_per_node_core_s": round(sends),
            "nodes_per_redis": round(per_redis / sends, 1),
            "redis_core_budget": REDIS_CORE_BUDGET,
        }
    return {"table": table, "goals": goals, "goal_table": goal_table, "projection": projection}


def describe_projection(p: dict[str, Any]) -> str:
    if not p:
        return "projection: n/a (no split-2 runs with PUBLISH counts)"
    return (
        f"projection: Redis spends {p['redis_cpu_us_per_publish']:.2f} us of CPU per PUBLISH "
        f"(one chat to one other node, subscriber write included): at "
        f"{p['redis_core_budget']:.0%} of a core, {p['publishes_per_s_per_redis']:,} "
        f"messages/s per Redis instance. A node on one core accepted "
        f"{p['chats_per_node_core_s']:,} chats/s (rooms of 20 split over 2 nodes: one PUBLISH "
        f"each), so one Redis carries ~{p['nodes_per_redis']} such nodes; a room over k "
        f"nodes costs k-1 PUBLISH per chat."
    )


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    raise_nofile_limit()  # children inherit it: 1000s of sockets on both sides
    out_path = Path(args.out).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="gamed-cbench-"))
    targets: list[Target] = []
    procs: list[Proc] = []
    ok = False
    try:
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)
        targets = start_targets(workdir, not args.no_workers, procs)
        for t in targets:
            pids = ",".join(str(p) for p in t.gamed_pids())
            print(
                f"started {t.name}: ports {t.ports}, gamed pids {pids}"
                + (f", redis on {t.redis_port}" if t.redis else "")
                + (f" ({t.note})" if t.note else ""),
                file=sys.stderr,
            )
        warm, dur = (0.5, 1.5) if args.quick else (1.0, 4.0)
        runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        slot = 0
        for rep in range(args.repeat):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for t in order:
                if not t.alive():
                    print(f"{t.name} is not running: skipped", file=sys.stderr)
                    continue
                cfg = BenchConfig(
                    scenario="fanout",
                    rooms=50,
                    members=20,
                    window=2,
                    warmup=warm,
                    duration=dur,
                    user_id_base=1_000_000 + slot * 2000,
                    room_id_base=1 + slot * 100,
                )
                slot += 1
                job = partial(fanout_across, cfg, t.ports, t.sample, t.whole_rooms)
                res = on_loop(job, cfg.hard_timeout())
                res["target_name"] = t.name
                runs[t.name].append(res)
                m = res["metrics"]
                print(
                    f"[{rep + 1}/{args.repeat}] {t.name}: "
                    f"{human(m.get('deliveries_per_s'))} deliveries/s, "
                    f"{human(m.get('cpu_us_per_delivery'))} us CPU/delivery, "
                    f"errors {res['errors']}",
                    file=sys.stderr,
                )
        summary = summarize(targets, runs)
        print(summary["table"])
        print()
        print(summary["goal_table"])
        print()
        print(describe_projection(summary["projection"]))
        size: dict[str, Any] = {}
        split = next((t for t in targets if t.name == "split-2" and t.alive()), None)
        if split is not None and not args.no_sizing:
            users = 1000 if args.quick else 4000
            try:
                size = sizing(split, users, (50_000_000, 500_000))
            except (RuntimeError, OSError, TimeoutError) as e:
                size = {"error": str(e)}
                print(f"sizing failed: {e}")
        if "bytes_per_room" in size:
            users = size["loads"][0]["rooms"] * 2
            print(
                f"sizing ({users} members over 2 nodes, in {users // 2} rooms of 2 and "
                f"{users // 20} of 20; Redis MEMORY STATS dataset bytes): "
                f"{size['bytes_per_member']} bytes per member (session included), "
                f"{size['bytes_per_room']} bytes per room (used_memory: "
                f"{size['used_bytes_per_member']} and {size['used_bytes_per_room']}); one room of 20 "
                f"(MEMORY USAGE of its keys): {size['loads'][1]['room_keys_bytes']} bytes, one "
                f"session key {size['loads'][1]['session_key_bytes']} bytes"
            )
        load_end = os.getloadavg()
        print(f"load average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
        doc = {
            "started": started,
            "command": [sys.executable, "-m", "gamed.bench.cluster", *args.argv],
            "load_average": {"start": load, "end": load_end},
            "targets": {
                t.name: {"argv": [p.argv for p in t.gamed], "note": t.note} for t in targets
            },
            "goals": summary["goals"],
            "projection": summary["projection"],
            "sizing": size,
            "runs": runs,
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        print(f"wrote {out_path} in {time.monotonic() - t0:.0f}s")
        ok = all(r["ok"] for rs in runs.values() for r in rs)
        return 0 if ok else 1
    finally:
        for p in reversed(procs):  # the nodes before their Redis
            p.stop()
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind through run's finally: the children stop too


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gamed.bench.cluster", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="short windows (< 2 minutes)")
    ap.add_argument("--repeat", type=int, default=None, help="rounds (default 5, --quick 3)")
    ap.add_argument(
        "--out", default="bench-cluster.json", help="results JSON (default %(default)s)"
    )
    ap.add_argument("--no-workers", action="store_true", help="leave out the --workers 2 target")
    ap.add_argument("--no-sizing", action="store_true", help="leave out the Redis memory step")
    ap.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    signal.signal(signal.SIGTERM, _terminate)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
