"""What the end-to-end tests share: a blocking wire client, a gamed process with
HTTP helpers, ``poll_until``, and the moves of a two-player game.

Every wait here is bounded: a test that waits for something that never comes
fails with what it saw instead of hanging. The fixtures that start servers are
in conftest.py.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import portforward

from gamed.bench.redisserver import redis_server_argv
from gamed.bench.server import TWISTD, GamedServer

T = TypeVar("T")


def poll_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str = "",
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds, naming ``what`` and the last value
    (or ``detail()``, e.g. the end of a log, when given).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = detail() if detail is not None else f"last: {value!r}"
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate!r}; {seen}"
            )
        time.sleep(interval)


def until(c: Any, tag: str, timeout: float = 5.0) -> tuple[Any, list[Any]]:
    """Read (any client with ``recv(timeout)``: TCP or WebSocket) until a message tagged
    ``tag``; its body and the messages skipped on the way."""
    skipped: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {tag} within {timeout}s; got {skipped}"
        msg = c.recv(left)
        if isinstance(msg, dict) and tag in msg:
            return msg[tag], skipped
        skipped.append(msg)


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

    def until(self, tag: str, timeout: float = 5.0) -> tuple[Any, list[Any]]:
        """Read frames until one tagged ``tag``; returns its body and what came before it."""
        return until(self, tag, timeout)

    def replies(self, n: int, timeout: float = 5.0) -> list[Any]:
        """Read until ``n`` replies to our own frames (an Error, or our own chat
        echoed back) have come; returns every frame read, notices included."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout

        def is_reply(msg: Any) -> bool:
            if not isinstance(msg, dict):
                return False
            chat = msg.get("ChatMessage")
            return "Error" in msg or (chat is not None and chat["user_id"] == self.user_id)

        while sum(map(is_reply, got)) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"{n} replies not in within {timeout}s; got {got}"
            got.append(self.recv(left))
        return got

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
    c.until("HeartBeatResponse", timeout)
    return True


def flood_until_dropped(talker: Any, room: int, text: str, rounds: int = 6000) -> bool:
    """Chat ``text`` into ``room`` until a UserLeftRoom shows the silent peer was dropped.

    ``talker`` is any client with ``chat(room, text)`` and ``recv(timeout)``; its own
    copies are read every 50 messages. True once the drop is seen, False if never.
    The bound is above what the kernel itself holds for the silent peer before gamed
    sees a byte of backlog: on loopback (a 64 KiB MSS) the server's socket starts with
    a send buffer of ~2.6-3.9 MB (``tcp_wmem``'s maximum, 4 MiB here).
    """
    for i in range(rounds):
        talker.chat(room, text)
        if i % 50 == 49:
            dropped = False
            while True:  # read our own copies (and, eventually, the UserLeftRoom)
                try:
                    msg = talker.recv(0.05)
                except TimeoutError:
                    break
                if "UserLeftRoom" in msg:
                    dropped = True
            if dropped:
                return True
    return False


def gamed_subcommand(data_dir: Path, *args: str) -> list[str]:
    """twistd's ``gamed`` subcommand: every listener on a free loopback port, data in ``data_dir``."""
    port = "tcp:0:interface=127.0.0.1"
    ports = ["--port", port, "--metrics-port", port, "--ws-port", port]
    return ["gamed", *ports, "--data-dir", str(data_dir), *args]


def free_port() -> int:
    """A loopback port free right now (for a server that must come back on the same port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, up to 10 s to exit, then SIGKILL: a helper process never outlives its test."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def haproxy_binary() -> str:
    """The Debian package's haproxy (installed by .ci/install-deps.sh; never skipped)."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert path, "haproxy is not installed: run .ci/install-deps.sh (Debian package haproxy)"
    return path


class HAProxy:
    """A real ``haproxy -db`` running ``config`` (already moved to 127.0.0.1 ports) from
    ``workdir``, ready once ``front`` accepts; ``stats()`` reads its admin socket."""

    def __init__(self, workdir: Path, config: str, front: int) -> None:
        self.workdir = workdir
        self.socket_path = workdir / "haproxy.sock"
        config = config.replace(
            "\nglobal\n", f"\nglobal\n    stats socket {self.socket_path} mode 600 level admin\n", 1
        )
        self.path = workdir / "haproxy.cfg"
        self.path.write_text(config)
        self.log_path = workdir / "haproxy.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def accepting() -> bool:
            assert self.proc.poll() is None, self.log_tail()
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                return True
            except OSError:
                return False

        try:
            poll_until(accepting, 10.0, f"haproxy on {front}", detail=self.log_tail)
        except BaseException:
            self.stop()
            raise

    def log_tail(self) -> str:
        return "haproxy.log ends:\n" + self.log_path.read_text(errors="replace")[-2000:]

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as one dict per proxy/server row (pxname, svname, status, ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def server_status(self, backend: str, server: str) -> str:
        """``UP``, ``DOWN``, ``UP 1/2``... of one server of ``backend``."""
        for row in self.stats():
            if row.get("pxname") == backend and row.get("svname") == server:
                return row.get("status", "")
        raise AssertionError(f"no server {backend}/{server} in haproxy's stats")

    def stop(self) -> None:
        stop_process(self.proc)


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 (no persistence), in its own directory.

    ``restart()`` comes back on the same port (and forgets everything: no persistence);
    ``cli()`` runs one command over a short blocking connection (CLIENT KILL, CONFIG...).
    """

    def __init__(self, workdir: Path, password: str | None = None, tls: bool = False) -> None:
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        #: with ``tls``: a TLS port too, its self-signed certificate (CN/SAN 127.0.0.1) in ``ca``
        self.tls_port = free_port() if tls else 0
        self.ca = workdir / "redis-cert.pem"
        if tls:
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-keyout",
                    str(workdir / "redis-key.pem"),
                    "-out",
                    str(self.ca),
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, db: int = 0, tls: bool = False) -> str:
        auth = f":{self.password}@" if self.password else ""
        if tls:
            return f"rediss://{auth}127.0.0.1:{self.tls_port}/{db}"
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (.ci/install-deps.sh installs it)"
        args = redis_server_argv(exe, self.port, self.workdir)
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls_port:
            args += [
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(self.ca),
                "--tls-key-file",
                str(self.workdir / "redis-key.pem"),
                "--tls-auth-clients",
                "no",
            ]
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        poll_until(
            self._answers, 10.0, f"redis-server on {self.port} to answer PING", detail=self.log_tail
        )

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        try:
            return self.cli("PING") == "PONG"
        except OSError:
            return False

    def log_tail(self) -> str:
        path = self.workdir / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "redis.log ends:\n" + text[-2000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str, timeout: float = 5.0) -> Any:
        """One command on a fresh blocking connection; the reply (str, int, list, None)."""
        import hiredis

        reader = hiredis.Reader(encoding="utf-8")
        cmds: list[tuple[str, ...]] = [("AUTH", self.password)] if self.password else []
        cmds.append(args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            out = b""
            for cmd in cmds:
                out += b"*%d\r\n" % len(cmd) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in cmd
                )
            sock.sendall(out)
            replies: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(replies) < len(cmds):
                reply = reader.gets()
                if reply is not False:
                    replies.append(reply)
                    continue
                assert time.monotonic() < deadline, "redis-server did not answer"
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("redis-server closed the connection")
                reader.feed(data)
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        return replies[-1]


class _Silenceable(portforward.ProxyClient):
    """Redis -> client half: swallows what Redis sends once its client is silenced."""

    def dataReceived(self, data: bytes) -> None:
        server = self.peer
        if isinstance(server, _Watched) and server.silenced:
            return
        super().dataReceived(data)


class _SilenceableFactory(portforward.ProxyClientFactory):
    protocol = _Silenceable


class _Watched(portforward.ProxyServer):
    """Client -> Redis half: notes whether the client has sent SUBSCRIBE."""

    clientProtocolFactory = _SilenceableFactory
    subscriber = False
    silenced = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.conns.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if b"SUBSCRIBE" in data.upper():
            self.subscriber = True
        super().dataReceived(data)


class SilencingProxy(portforward.ProxyFactory):
    """A TCP proxy to a Redis server, on the test's reactor (127.0.0.1, port 0).

    ``silence_subscribers()`` makes every connection that has subscribed hear nothing
    more while staying connected: the "link up but silent" case, real and deterministic.
    """

    protocol = _Watched

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        from twisted.internet import reactor

        self.conns: list[_Watched] = []
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        # (self.port is the upstream's: ProxyServer connects to factory.host/port)
        self.listen_port: int = self.listening.getHost().port

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.listen_port}/{db}"

    def silence_subscribers(self) -> int:
        """Silence the subscribed connections open now; how many there were."""
        n = 0
        for c in self.conns:
            if c.subscriber and c.connected and not c.silenced:
                c.silenced = True
                n += 1
        return n

    def close(self) -> None:
        self.listening.stopListening()
        for c in self.conns:
            if c.transport is not None:
                c.transport.abortConnection()


class _SentinelAnswer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        factory: FakeSentinel = self.factory  # type: ignore[attr-defined]
        factory.asked += 1
        host, port = factory.master
        h, p = host.encode(), str(port).encode()
        self.transport.write(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(h), h, len(p), p))  # type: ignore[union-attr]


class FakeSentinel(Factory):
    """Answers every ``SENTINEL get-master-addr-by-name`` with ``master`` (settable: a
    failover), on the test's reactor (127.0.0.1, port 0)."""

    protocol = _SentinelAnswer

    def __init__(self, master: tuple[str, int]) -> None:
        from twisted.internet import reactor

        self.master = master
        self.asked = 0
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.port: int = self.listening.getHost().port

    def close(self) -> None:
        self.listening.stopListening()


class GamedProcess(GamedServer):
    """One running `twistd -n gamed` (gamed.bench.server), plus what the tests ask of it."""

    def __init__(self, workdir: Path, *args: str, twistd_args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, args, twistd_args)
        self.clients: list[WireClient] = []

    def client(self, user_id: int | None = None, **kw: Any) -> WireClient:
        """A new connection (Connect-ed as ``user_id`` if given); closed by the fixture."""
        c = WireClient(self.port)
        self.clients.append(c)
        if user_id is not None:
            c.connect(user_id, **kw)
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()

    def http(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.http(path)
        return status, orjson.loads(body)

    def stats(self) -> dict[str, Any]:
        status, body = self.http("/stats")
        assert status == 200
        return orjson.loads(body)

    def wait_json(self, path: str, ready: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Poll ``path`` until ``ready(body)`` (the server aggregates in batches); the body."""

        def check() -> Any:
            status, body = self.get_json(path)
            return body if status == 200 and ready(body) else None

        return poll_until(check, timeout, f"{path} to be ready")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        poll_until(
            lambda: text in self.log(), timeout, f"{text!r} in the log", detail=self.log_tail
        )

    def log_tail(self) -> str:
        return "the log ends:\n" + self.log()[-3000:]

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the server has no connection and no room (after its clients closed)."""

        def idle() -> bool:
            stats = self.stats()
            return stats["connections"] == 0 and stats["rooms"]["count"] == 0

        poll_until(idle, timeout, "no connections and no rooms")


def cluster_node(workdir: Path, redis: RedisServer, name: str, *extra: str) -> GamedProcess:
    """``twistd -n gamed --redis ... --node-id name --middleware none`` plus ``extra`` in
    ``workdir/name``, returned once its /healthz says ``cluster: up`` (stopped if it never does)."""
    p = GamedProcess(
        workdir / name,
        "--redis",
        redis.url(),
        "--node-id",
        name,
        "--middleware",
        "none",
        *extra,
    )
    try:
        p.wait_json("/healthz", lambda body: body.get("cluster") == "up")
    except BaseException:
        p.stop()
        raise
    return p


@contextmanager
def cluster_nodes(
    workdir: Path, redis: RedisServer, names: Sequence[str], *extra: str
) -> Iterator[tuple[GamedProcess, ...]]:
    """One ``cluster_node`` per name (``extra`` for each), in order; when the block ends (or a
    start fails) each started node's clients are closed (a plain leave), then it stops."""
    started: list[GamedProcess] = []
    try:
        for name in names:
            started.append(cluster_node(workdir, redis, name, *extra))
        yield tuple(started)
    finally:
        for p in started:
            p.close_clients()
            p.stop()


def two_in_room(
    server: GamedProcess, room: int, uid_a: int = 1, uid_b: int = 2
) -> tuple[WireClient, WireClient]:
    """Users A and B in ``room``, A having been told that B joined; nothing left unread."""
    a, b = server.client(uid_a), server.client(uid_b)
    assert "RoomJoinSuccess" in a.join(room)
    assert "RoomJoinSuccess" in b.join(room)
    assert a.recv()["UserJoinedRoom"]["user_id"] == uid_b
    return a, b


# -- a two-player game ------------------------------------------------------------------------

GAME_ROOM = 42


def act(c: WireClient, action: dict[str, Any], room: int = GAME_ROOM) -> None:
    c.send({"PlayerAction": {"room_id": room, "action": action}})


def move(c: WireClient, x: float = 1.0) -> None:
    act(c, {"Move": {"x": x, "y": 2.0, "direction": 0.0}})


def attack(c: WireClient, target: int, damage: int) -> None:
    act(c, {"Attack": {"target_id": target, "damage": damage}})


def live_game(
    server: GamedProcess, uid_a: int = 1, uid_b: int = 2
) -> tuple[WireClient, WireClient]:
    """Two players in GAME_ROOM with a game InProgress, A to play."""
    a, b = server.client(uid_a), server.client(uid_b)
    assert "RoomJoinSuccess" in a.join(GAME_ROOM)
    assert "RoomJoinSuccess" in b.join(GAME_ROOM)
    a.until("UserJoinedRoom")
    a.send({"StartGame": {"room_id": GAME_ROOM}})
    a.until("GameStarted")
    b.until("GameStarted")
    b.send({"ToggleReady": {"room_id": GAME_ROOM}})
    for c in (a, b):
        body, _ = c.until("GameInProgress")
        assert body == {"room_id": GAME_ROOM, "current_turn": uid_a, "round": 1}
    return a, b


def admin_call(
    srv: GamedProcess | int, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    """One /admin/ call with ``Authorization: Bearer token`` to a server (or an HTTP port:
    a worker's); (status, decoded JSON)."""
    port = srv if isinstance(srv, int) else srv.http_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        conn.request(
            method, path, body=orjson.dumps(body) if body is not None else None, headers=headers
        )
        r = conn.getresponse()
        return r.status, orjson.loads(r.read())
    finally:
        conn.close()


__all__ = [
    "GAME_ROOM",
    "TWISTD",
    "FakeSentinel",
    "GamedProcess",
    "RedisServer",
    "SilencingProxy",
    "WireClient",
    "act",
    "admin_call",
    "attack",
    "free_port",
    "heartbeat_ok",
    "live_game",
    "move",
    "poll_until",
    "two_in_room",
]
