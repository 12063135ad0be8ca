"""Real `twistd -n gamed` subprocesses on 127.0.0.1, and a blocking test client."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gamed.bench.server import TWISTD, GamedServer


class GamedProcess(GamedServer):
    """One running server (gamed.bench.server), plus what the tests ask of it."""

    def __init__(self, workdir: Path, *args: str) -> None:
        super().__init__(workdir, args)

    def client(self, user_id: int | None = None, **kw: Any) -> WireClient:
        c = WireClient(self.port)
        if user_id is not None:
            c.connect(user_id, **kw)
        return c

    def http(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        status, body = self.http("/stats")
        assert status == 200
        return orjson.loads(body)


@pytest.fixture
def gamed(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``gamed("--max-room-users", "2")`` starts a server, stopped at teardown."""
    started: list[GamedProcess] = []

    def start(*args: str) -> GamedProcess:
        d = tmp_path / f"server{len(started)}"
        d.mkdir()
        p = GamedProcess(d, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def server(gamed: Any) -> GamedProcess:
    """A server with the embedded defaults (test ports, temp data dir)."""
    return gamed()


class WireClient:
    """A blocking gamed client for tests: every wait is bounded."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._buf = b""
        self.user_id: int | None = None

    # -- sending ---------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_payload(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send(self, obj: Any) -> None:
        self.send_payload(orjson.dumps(obj))

    def connect(self, user_id: int, **extra: Any) -> None:
        self.send({"Connect": {"room_id": 0, "user_id": user_id, **extra}})
        assert self.recv() == {"ConnectionAck": {"user_id": user_id}}
        self.user_id = user_id

    def join(self, room_id: int, nickname: str | None = None) -> Any:
        self.send(
            {
                "RoomJoin": {
                    "user_id": self.user_id,
                    "room_id": room_id,
                    "nickname": nickname or f"u{self.user_id}",
                }
            }
        )
        return self.recv()

    def chat(self, room_id: int, text: str) -> None:
        self.send({"ChatMessage": {"user_id": self.user_id, "room_id": room_id, "message": text}})

    # -- receiving ---------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Any:
        """The next frame, decoded; raises TimeoutError, or EOFError when closed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    payload, self._buf = self._buf[4 : 4 + n], self._buf[4 + n :]
                    return orjson.loads(payload)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the server")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no frame from the server") from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError("server closed the connection")
            self._buf += data

    def recv_error(self, code: int) -> str:
        msg = self.recv()
        assert "Error" in msg, msg
        assert msg["Error"]["code"] == code, msg
        return msg["Error"]["message"]

    def expect_closed(self, timeout: float = 5.0) -> list[Any]:
        """Read until EOF; returns what came before it."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.recv(deadline - time.monotonic()))
            except EOFError:
                return got
        raise AssertionError(f"connection still open after {timeout}s; got {got}")

    def expect_silence(self, seconds: float = 0.3) -> None:
        try:
            msg = self.recv(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {msg}")

    def close(self) -> None:
        self.sock.close()


def heartbeat_ok(c: WireClient, timeout: float = 5.0) -> bool:
    """The connection still answers: a HeartBeatResponse arrives (other frames skipped)."""
    c.send("HeartBeat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "HeartBeatResponse" in c.recv(deadline - time.monotonic()):
            return True
    return False


__all__ = ["TWISTD", "GamedProcess", "WireClient", "heartbeat_ok"]
