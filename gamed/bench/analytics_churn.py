"""Analytics under room churn against a real `twistd -n gamed` (issue 12 item 12).

Each client connects once, then joins and leaves fresh rooms as fast as the server answers
(pipelined in windows): every join/leave pair makes six analytics items (RoomCreated,
RoomJoined, RoomLeft, RoomDeleted and the two messages). Reports the analytics events
aggregated per second and the drops by reason, read from the server's /metrics.

    .venv/bin/python -m gamed.bench.analytics_churn [--clients 2] [--seconds 20] [--window 200]
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gamed.bench import wire
from gamed.bench.server import GamedServer


def scrape(http_port: int) -> tuple[float, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    events = 0.0
    dropped: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "gamed_analytics_events_total":
                events += s.value
            elif s.name == "gamed_analytics_events_dropped_total":
                dropped[s.labels["reason"]] = s.value
    return events, dropped


def read_frames(sock: socket.socket, buf: bytearray, n: int) -> bytearray:
    """Read until ``n`` whole frames are in; returns the rest."""
    while True:
        i = count = 0
        while i + 4 <= len(buf):
            (size,) = struct.unpack_from(">I", buf, i)
            if i + 4 + size > len(buf):
                break
            i += 4 + size
            count += 1
            if count == n:
                return buf[i:]
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed")
        buf += chunk


def client(
    port: int, uid: int, first_room: int, span: int, window: int, stop: float, out: list[int]
) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(wire.connect(uid))
    buf = read_frames(s, bytearray(), 1)
    room, pairs = first_room, 0
    while time.monotonic() < stop:
        batch = []
        for _ in range(window):
            batch.append(wire.room_join(uid, room, f"u{uid}"))
            batch.append(wire.room_leave(uid, room))
            room = first_room + (room - first_room + 1) % span
        s.sendall(b"".join(batch))
        buf = read_frames(s, buf, 2 * window)
        pairs += window
    s.close()
    out.append(pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        srv = GamedServer(Path(d), ["--rate-limit", "0", "--flood-detection", "off", *args.extra])
        try:
            e0, d0 = scrape(srv.http_port)  # type: ignore[arg-type]
            t0 = time.monotonic()
            stop = t0 + args.seconds
            out: list[int] = []
            span = 1_000_000 // args.clients  # room ids 1..1,000,000, apart per client
            threads = [
                threading.Thread(
                    target=client,
                    args=(srv.port, 1000 + i, 1 + i * span, span, args.window, stop, out),
                )
                for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            # Let the last batches be aggregated (bounded wait on the queue gauge).
            deadline = time.monotonic() + 10
            e1, d1 = scrape(srv.http_port)  # type: ignore[arg-type]
            while time.monotonic() < deadline:
                time.sleep(0.5)
                e2, d1 = scrape(srv.http_port)  # type: ignore[arg-type]
                if e2 == e1:
                    break
                e1 = e2
            pairs = sum(out)
            events = e1 - e0
            drops = {k: v - d0.get(k, 0.0) for k, v in d1.items()}
            print(
                f"{args.clients} clients, {elapsed:.1f} s: {pairs} join/leave pairs "
                f"({pairs / elapsed:,.0f}/s), analytics events {events:,.0f} "
                f"({events / elapsed:,.0f}/s), dropped {drops}"
            )
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
