"""The side HTTP port under abuse, on a real `twistd -n gamed` (issue 12 item 6): request
bodies are capped (413 before anything is buffered or spooled to disk)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

MAX_REQUEST_BODY = 64 * 1024  # gamed.web.MAX_REQUEST_BODY


def _spool_files(pid: int, tmpdir: Path) -> list[str]:
    """Open files of ``pid`` under ``tmpdir`` (twisted.web spools bodies with TemporaryFile)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmpdir)):
            out.append(target)
    return out


def _reply_or_spool(sock: socket.socket, pid: int, tmpdir: Path) -> tuple[bytes, list[str]]:
    """Read the reply until the server closes; meanwhile watch for a spooled body."""
    sock.settimeout(0.1)
    data = b""
    spooled: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spooled = spooled or _spool_files(pid, tmpdir)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, spooled


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:100]
    return int(reply.split(b" ", 2)[1])


def _server(gamed: Any, tmp_path: Path, monkeypatch: Any) -> Any:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # inherited by twistd: its spool files go here
    return gamed(), tmpdir


def test_a_huge_declared_body_gets_413_before_the_401(
    gamed: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    srv, tmpdir = _server(gamed, tmp_path, monkeypatch)
    with socket.create_connection(("127.0.0.1", srv.http_port)) as s:
        s.sendall(
            b"POST /admin/users/1/ban HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 314572800\r\n\r\n"
        )
        s.sendall(b"x" * 256 * 1024)  # a start of the 300 MiB, as an attacker would send
        reply, spooled = _reply_or_spool(s, srv.pid, tmpdir)
    assert spooled == []
    assert _status(reply) == 413, reply[:300]
    assert b"314572800" in reply and str(MAX_REQUEST_BODY).encode() in reply
    assert os.listdir(tmpdir) == []


def test_a_chunked_body_over_the_cap_gets_413(gamed: Any, tmp_path: Path, monkeypatch: Any) -> None:
    srv, tmpdir = _server(gamed, tmp_path, monkeypatch)
    chunk = b"y" * 16384
    with socket.create_connection(("127.0.0.1", srv.http_port)) as s:
        s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(MAX_REQUEST_BODY // len(chunk) + 8):  # past the cap, never ended
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on us mid-body, as it should
        reply, spooled = _reply_or_spool(s, srv.pid, tmpdir)
    assert spooled == []
    assert _status(reply) == 413, reply[:300]
    assert os.listdir(tmpdir) == []
    # The port keeps serving, and a small body is still read.
    assert srv.http("/healthz")[0] == 200
    with socket.create_connection(("127.0.0.1", srv.http_port)) as s:
        s.sendall(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        reply, _ = _reply_or_spool(s, srv.pid, tmpdir)
    assert _status(reply) == 405  # /healthz is GET only: the body was read, then refused
