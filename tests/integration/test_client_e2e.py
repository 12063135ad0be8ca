"""End to end: ``python -m gamed.client`` as a subprocess, against a small fake server
written in the test (so the client is checked without depending on the real one)."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.protocols.basic import Int32StringReceiver

from gamed import codec
from gamed import messages as m

ROOT = Path(__file__).resolve().parents[2]
BAD_TOKEN_USER = 666  # the fake server refuses this user, then closes
DEADLINE = 20.0  # seconds; every wait below is bounded by it


class FakeServer(Int32StringReceiver):
    """Just enough of gamed: ack Connect, confirm RoomJoin, echo ChatMessage."""

    def stringReceived(self, string: bytes) -> None:
        try:
            tag, body = codec.decode_any(string)
        except ValueError as e:
            self.transport.write(codec.frame(m.Error(400, str(e))))
            return
        if tag == "Connect":
            if body["user_id"] == BAD_TOKEN_USER:
                self.transport.write(codec.frame(m.Error(401, "bad token")))
                self.transport.loseConnection()
                return
            self.transport.write(codec.frame(m.ConnectionAck(body["user_id"])))
        elif tag == "RoomJoin":
            self.transport.write(codec.frame(m.RoomJoinSuccess(body["room_id"], 1)))
        elif tag == "ChatMessage":
            self.transport.write(codec.frame_payload(string))  # to the sender too, as gamed does
        elif tag == "HeartBeat":
            self.transport.write(codec.frame(m.HeartBeatResponse(0)))


class Collect(protocol.ProcessProtocol):
    """Gathers stdout/stderr; ``done`` fires with (stdout, stderr, exit code)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[tuple[str, str, int | None]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: object) -> None:
        code = getattr(getattr(reason, "value", None), "exitCode", None)
        self.done.callback((b"".join(self.out).decode(), b"".join(self.err).decode(), code))


@defer.inlineCallbacks
def run_client(*args: str) -> Generator[defer.Deferred, object, tuple[str, str, int | None]]:
    """Run the client to completion; killed (and the test failed) after DEADLINE seconds."""
    from twisted.internet import reactor

    proc = Collect()
    transport = reactor.spawnProcess(
        proc,
        sys.executable,
        [sys.executable, "-m", "gamed.client", *args],
        env=dict(os.environ),
        path=str(ROOT),
    )
    timer = reactor.callLater(DEADLINE, transport.signalProcess, "KILL")
    try:
        result = yield proc.done
    finally:
        if timer.active():
            timer.cancel()
    assert result[2] is not None, f"client killed after {DEADLINE} s: {result}"
    return result


@defer.inlineCallbacks
def listen() -> Generator[defer.Deferred, object, object]:
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(FakeServer)
    port = yield reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port


@defer.inlineCallbacks
def run_against_fake(*args: str) -> Generator[defer.Deferred, object, object]:
    """Run the client with ``args`` against a FakeServer on a free port."""
    port = yield listen()
    try:
        result = yield run_client("--port", str(port.getHost().port), *args)
    finally:
        yield port.stopListening()
    return result


@pytest_twisted.inlineCallbacks
def test_say_mode_shows_ack_join_and_echo():
    out, err, code = yield run_against_fake(
        "--user-id",
        "7",
        "--nickname",
        "neo",
        "--room",
        "5",
        "--say",
        "hello",
        "--say",
        "wörld",
        "--wait",
        "0.5",
    )
    assert code == 0, (out, err)
    assert out.splitlines() == [
        "* connected as user 7",
        "* joined room 5 (1 user)",
        "[room 5] neo(7): hello",
        "[room 5] neo(7): wörld",
    ]


@pytest_twisted.inlineCallbacks
def test_json_mode_prints_raw_frames():
    out, err, code = yield run_against_fake(
        "--user-id", "7", "--room", "5", "--json", "--say", "hi", "--wait", "0.3"
    )
    assert code == 0, (out, err)
    assert out.splitlines() == [
        '{"ConnectionAck":{"user_id":7}}',
        '{"RoomJoinSuccess":{"room_id":5,"user_count":1}}',
        '{"ChatMessage":{"user_id":7,"room_id":5,"message":"hi"}}',
    ]


@pytest_twisted.inlineCallbacks
def test_server_closing_with_error_exits_nonzero():
    out, err, code = yield run_against_fake(
        "--user-id", str(BAD_TOKEN_USER), "--room", "5", "--say", "hi"
    )
    assert code == 1
    assert "! Error 401: bad token" in out
    assert "gamed-client: server closed the connection: Error 401: bad token" in err


@pytest_twisted.inlineCallbacks
def test_cannot_connect_exits_nonzero():
    port = yield listen()
    free = port.getHost().port
    yield port.stopListening()  # nothing listens there now
    _out, err, code = yield run_client("--port", str(free), "--user-id", "7", "--room", "5")
    assert code == 1
    assert f"gamed-client: cannot connect to 127.0.0.1:{free}" in err


def test_client_against_real_server(server) -> None:
    """The CLI client against a real `twistd -n gamed`: ack, join, own chat echoed."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gamed.client",
            "--port",
            str(server.port),
            "--user-id",
            "5",
            "--nickname",
            "neo",
            "--room",
            "3",
            "--say",
            "hello real server",
            "--wait",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "hello real server" in r.stdout
    assert "room 3" in r.stdout
