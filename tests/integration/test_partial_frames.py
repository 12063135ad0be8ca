"""--max-partial-bytes on a real `twistd -n gamed` (issue 12 item 8): clients that stall
mid-frame share one budget; past it one of them gets Error 503 and is closed, the others
finish their frames."""

from __future__ import annotations

import struct
from typing import Any

FRAME = 65536
SENT = 60_000


def test_partial_frames_past_the_budget(gamed: Any) -> None:
    srv = gamed("--max-partial-bytes", str(2 * FRAME))
    clients = [srv.client(user_id=uid) for uid in (1, 2, 3)]
    for c in clients:  # 3 x 60,004 bytes held > 131,072: one must go
        c.send_raw(struct.pack(">I", FRAME) + b"x" * SENT)
    closed, alive = [], []
    for c in clients:
        try:
            msg = c.recv(timeout=1.0)
        except TimeoutError:
            alive.append(c)
            continue
        assert msg["Error"]["code"] == 503, msg
        assert "partly received frames" in msg["Error"]["message"]
        c.expect_closed()
        closed.append(c)
    assert len(closed) == 1 and len(alive) == 2
    for c in alive:  # the rest of the frame arrives: not JSON, but read (400, still open)
        c.send_raw(b"x" * (FRAME - SENT))
        assert c.recv_error(400)
        c.send("HeartBeat")
        assert "HeartBeatResponse" in c.recv()
    status, body = srv.http("/metrics")
    assert status == 200
    assert b'gamed_disconnects_total{reason="partial"} 1.0' in body
