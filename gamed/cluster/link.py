"""The node's two Redis connections: commands (and PUBLISH, in order) and the subscriber.

A small RESP2 client on a plain Twisted ``Protocol`` with ``hiredis.Reader`` parsing
(txredisapi was tried first: see docs/cluster.md "The link" for why it is not used).
Each connection reconnects on its own with a capped backoff on the given clock; every
command has a reply timeout; a probe published every second on the command connection
must come back on the subscriber connection, or the subscriber is declared silent and
reconnected. Nothing here blocks or spins: every retry is a ``callLater``.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from hashlib import sha1
from typing import Any

import hiredis
from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gamed.cluster.url import RedisAddress

#: Link states (``RedisLink.state``; /healthz and ``gamed_cluster_link_state``):
UP = "up"  # commands and subscriber connected, the last probe came back in time
DEGRADED = "degraded"  # commands work, the subscriber is down or silent: no cross-node delivery
DOWN = "down"  # no command connection: joins and Connects that need Redis fail fast (503)

#: ``gamed_cluster_link_state`` value of each state.
STATE_VALUES = {DOWN: 0, DEGRADED: 1, UP: 2}

PROBE_PREFIX = "gamed:probe:"
#: Reconnect backoff: first retry after BACKOFF_MIN s, doubled up to BACKOFF_MAX s.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
#: PUBLISHes and commands waiting for replies on the command connection before publish()
#: refuses (counted as dropped): Redis stalled, the probe will reconnect within seconds.
MAX_PENDING = 100_000
#: Buckets of gamed_cluster_redis_rtt_seconds.
RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

log = Logger(namespace="gamed.cluster.link")


class ClusterUnavailable(Exception):
    """Redis cannot answer now (down, or no reply within the timeout); the text says which."""


class RedisError(Exception):
    """Redis answered with an error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a Redis argument must be str, bytes, int or float, not {value!r}")
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def encode_command(args: Sequence[Any]) -> bytes:
    """One command in RESP (``*N`` then a bulk string per argument)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Pending:
    """One command waiting for its reply (FIFO on its connection), with its timer."""

    __slots__ = ("d", "timer")

    def __init__(self, d: defer.Deferred[Any], timer: IDelayedCall | None) -> None:
        self.d = d
        self.timer = timer


class _Probe:
    """The probe's PUBLISH in the reply queue: its reply time is the sampled RTT."""

    __slots__ = ("sent",)

    def __init__(self, sent: float) -> None:
        self.sent = sent


#: A reply-queue entry: None is a PUBLISH whose reply is only counted.
_Entry = _Pending | _Probe | None


class RespProtocol(Protocol):
    """One Redis connection: commands pipelined, replies matched in order.

    Push messages (pub/sub ``message``/``subscribe``) go to ``on_push``; everything
    else answers the oldest entry of ``queue``.
    """

    def __init__(self, owner: _Conn, encoding: str | None) -> None:
        self.owner = owner
        if encoding:
            self.reader = hiredis.Reader(
                encoding=encoding, errors="surrogateescape", replyError=RedisError
            )
        else:
            self.reader = hiredis.Reader(replyError=RedisError)
        self.queue: deque[_Entry] = deque()
        self.pubsub = False
        self.closed: list[defer.Deferred[None]] = []
        self.refused = False  # Redis refused AUTH/SELECT (the reason is kept, not the abort)

    def connectionMade(self) -> None:
        self.owner.connected(self)

    def dataReceived(self, data: bytes) -> None:
        # The hot loop of both connections (a relayed chat is one PUBLISH reply on the
        # sender, one push on the receiver): locals, no call per counted PUBLISH reply.
        reader = self.reader
        reader.feed(data)
        owner = self.owner
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                log.warn("redis protocol error: {e}", e=e)
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if reply is False:
                return
            if self.pubsub and type(reply) is list and reply and reply[0] in _PUSH_KINDS:
                owner.link._pushed(reply)
                continue
            queue = self.queue  # (a new one once the connection is lost)
            if not queue:
                log.warn("redis reply with no command waiting: {r!r}", r=reply)
                continue
            entry = queue.popleft()
            if entry is None and type(reply) is int:
                continue  # a PUBLISH's receiver count: nothing to do
            owner.replied(entry, reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        queue, self.queue = self.queue, deque()
        self.owner.lost(self, queue, reason)
        for d in self.closed:
            d.callback(None)

    def send(self, data: bytes, entry: _Entry) -> None:
        self.queue.append(entry)
        self.transport.write(data)  # type: ignore[union-attr]


_PUSH_KINDS = frozenset((b"message", b"subscribe", b"unsubscribe"))


class _Factory(Factory):
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def buildProtocol(self, addr: Any) -> RespProtocol:
        return RespProtocol(self.conn, self.conn.encoding)


class _Conn:
    """One of the two connections: connects, says AUTH/SELECT, reconnects with backoff."""

    def __init__(self, link: RedisLink, name: str, encoding: str | None) -> None:
        self.link = link
        self.name = name
        self.encoding = encoding
        self.proto: RespProtocol | None = None  # connected at TCP level
        self.ready = False  # handshake done: commands may go
        self.stopped = True
        self.backoff = BACKOFF_MIN
        self.retry: IDelayedCall | None = None
        self.attempt: defer.Deferred[Any] | None = None
        self.reconnects = 0
        self.ever_ready = False
        self.last_error = ""

    # -- connecting ------------------------------------------------------------
    def start(self) -> None:
        self.stopped = False
        self._connect()

    def _connect(self) -> None:
        self.retry = None
        if self.stopped:
            return
        d = defer.ensureDeferred(self.link._endpoint())
        d.addCallback(lambda ep: ep.connect(_Factory(self)))
        self.attempt = d
        d.addCallbacks(self._attempt_done, self._failed)

    def _attempt_done(self, proto: RespProtocol) -> None:
        self.attempt = None

    def _failed(self, f: Failure) -> None:
        self.attempt = None
        if f.check(defer.CancelledError):
            return
        self.last_error = f.getErrorMessage()
        self._schedule()

    def _schedule(self) -> None:
        if self.stopped or self.retry is not None:
            return
        delay, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX)
        self.retry = self.link.clock.callLater(delay, self._connect)

    def connected(self, proto: RespProtocol) -> None:
        if self.stopped:
            proto.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.proto = proto
        addr = self.link.address
        handshake: list[list[Any]] = []
        if addr.password is not None:
            auth: list[Any] = ["AUTH", addr.password]
            if addr.username:
                auth.insert(1, addr.username)
            handshake.append(auth)
        if addr.db:
            handshake.append(["SELECT", addr.db])
        if addr.sentinels:
            # what the sentinels said may be stale (a failover under way): a replica is refused
            handshake.append(["ROLE"])
        ds = [self.send(cmd, self.link.reply_timeout) for cmd in handshake]
        dl = defer.gatherResults(ds, consumeErrors=True)
        dl.addCallbacks(
            lambda replies: self._handshaken(proto, replies),
            lambda f: self._handshake_failed(proto, f),
        )

    def _handshaken(self, proto: RespProtocol, replies: list[Any]) -> None:
        if proto is not self.proto:
            return
        if self.link.address.sentinels:
            role = replies[-1]
            if not (isinstance(role, list) and role and role[0] in ("master", b"master")):
                self._handshake_failed(
                    proto, Failure(ClusterUnavailable(f"not the master (ROLE says {role!r})"))
                )
                return
        self.ready = True
        self.backoff = BACKOFF_MIN
        if self.ever_ready:
            self.reconnects += 1
        self.ever_ready = True
        self.link._conn_ready(self)

    def _handshake_failed(self, proto: RespProtocol, f: Failure) -> None:
        err = f.value.subFailure.value if isinstance(f.value, defer.FirstError) else f.value
        if proto.refused:
            return
        proto.refused = True
        self.last_error = str(err)
        log.warn("redis {name} link: handshake failed: {e}", name=self.name, e=err)
        if proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]

    def lost(self, proto: RespProtocol, queue: deque[_Entry], reason: Failure | None) -> None:
        was_ready = self.ready and proto is self.proto
        if proto is self.proto:
            self.proto = None
            self.ready = False
        why = "closed" if reason is None or reason.check(ConnectionDone) else str(reason.value)
        err = ClusterUnavailable(f"redis {self.name} connection lost ({why})")
        if not was_ready and why != "closed" and not proto.refused:  # e.g. TLS verify failed
            self.last_error = str(err)
        for entry in queue:
            if type(entry) is _Pending:
                if entry.timer is not None and entry.timer.active():
                    entry.timer.cancel()
                if not entry.d.called:
                    entry.d.errback(err)
        self.link._probes_lost(self)
        if was_ready:
            self.link._conn_lost(self)
        if self.proto is None:  # not an old connection's late goodbye
            self._schedule()

    def drop(self) -> None:
        """Abort the connection now (silent, stuck): ``lost`` follows and reconnects."""
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abortConnection()  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.stopped = True
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.attempt is not None:
            self.attempt.cancel()
        self.drop()

    # -- commands --------------------------------------------------------------
    def send(self, command: Sequence[Any], timeout: float | None) -> defer.Deferred[Any]:
        proto = self.proto
        if proto is None:
            return defer.fail(ClusterUnavailable(f"redis {self.name} link is down"))
        if not command:
            raise TypeError("execute() needs a command")
        data = encode_command(command)  # TypeError before anything is queued
        d: defer.Deferred[Any] = defer.Deferred()
        timer = None
        if timeout:
            timer = self.link.clock.callLater(timeout, self._timed_out, d, command[0], timeout)
        proto.send(data, _Pending(d, timer))
        return d

    def _timed_out(self, d: defer.Deferred[Any], name: Any, timeout: float) -> None:
        if not d.called:
            self.link.command_timeouts += 1
            d.errback(ClusterUnavailable(f"redis: no reply to {name} within {timeout:g}s"))

    def replied(self, entry: _Entry, reply: Any) -> None:
        if entry is None:  # a counted PUBLISH
            if type(reply) is RedisError:
                self.link.publish_errors += 1
                if self.link.publish_errors & (self.link.publish_errors - 1) == 0:  # 1, 2, 4...
                    log.warn(
                        "redis PUBLISH failed ({n} so far): {e}",
                        n=self.link.publish_errors,
                        e=reply,
                    )
            return
        if type(entry) is _Probe:
            self.link._probe_replied(entry)
            return
        assert type(entry) is _Pending
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        if entry.d.called:  # timed out already
            return
        if type(reply) is RedisError:
            if str(reply).startswith("READONLY"):
                # a failover made our master a replica: find the new one
                log.warn("redis {name} link: {e}; reconnecting", name=self.name, e=reply)
                self.drop()
            entry.d.errback(reply)
        else:
            entry.d.callback(reply)


class Script:
    """A Lua script registered with ``RedisLink.script``: EVALSHA, EVAL on NOSCRIPT."""

    def __init__(self, link: RedisLink, name: str, source: str) -> None:
        self.link = link
        self.name = name
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()

    def run(self, keys: Sequence[str], args: Sequence[Any]) -> defer.Deferred[Any]:
        """Run it; fails with ClusterUnavailable like ``execute``."""
        return defer.ensureDeferred(self._run(list(keys), list(args)))

    async def _run(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.link.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        # Redis restarted (or SCRIPT FLUSH): EVAL loads it again and runs it, once.
        self.link.script_reloads += 1
        return await self.link.execute("EVAL", self.source, len(keys), *keys, *args)


class RedisLink:
    """One command connection (ordered: PUBLISH order = call order) and one subscriber
    connection per node, each reconnecting on its own; every command has a reply timeout."""

    state: str = DOWN

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        clock: IReactorTime,
        node_id: str,
        registry: Any = None,
        *,
        reply_timeout: float = 2.0,
        probe_interval: float = 1.0,
        probe_timeout: float = 3.0,
        connect_timeout: float = 2.0,
        tls_ca_file: str | None = None,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.clock = clock
        self.node_id = node_id
        self.reply_timeout = reply_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.connect_timeout = connect_timeout
        #: rediss://: a PEM file of the CA to trust instead of the system's (private CAs, tests)
        self.tls_ca_file = tls_ca_file or address.ca_file
        self.probe_channel = PROBE_PREFIX + node_id
        self._probe_channel_b = self.probe_channel.encode()
        self.command = _Conn(self, "command", "utf-8")
        self.subscriber = _Conn(self, "subscriber", None)
        self.state = DOWN
        self._listeners: list[Callable[[str, str], None]] = []
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._scripts: dict[str, Script] = {}
        self._publish_heads: dict[str, bytes] = {}
        # subscriber: a probe came back on the current connection (and so every
        # SUBSCRIBE sent before the probe channel's is in place)
        self._probe_ok = False
        # when Redis first acknowledged a probe PUBLISH that has not come back yet
        self._undelivered_since: float | None = None
        self._probes_out: deque[float] = deque()  # send times of unanswered probe PUBLISHes
        self._probe_call: IDelayedCall | None = None
        self._running = False
        # plain counters, exported by LinkCollector at scrape time (cheap on the hot path)
        self.published = 0
        self.dropped = 0
        self.received = 0
        self.command_timeouts = 0
        self.script_reloads = 0
        self.publish_errors = 0
        self.silent = 0
        self.rtt: float | None = None
        self.lag: float | None = None
        self.rtt_hist: Any = None
        if registry is not None:
            from gamed.telemetry import FastHistogram

            self.rtt_hist = FastHistogram(RTT_BUCKETS)
            registry.register(LinkCollector(self))

    # -- life ------------------------------------------------------------------
    def start(self) -> None:
        """Connect both links (in startService: after twistd's fork).

        Raises RuntimeError (one line) when rediss:// is asked for without pyOpenSSL."""
        if self.address.tls:
            try:
                import OpenSSL  # noqa: F401
            except ImportError:
                raise RuntimeError(
                    "rediss:// needs pyOpenSSL: pip install 'twisted[tls]'"
                ) from None
        self._running = True
        self.command.start()
        self.subscriber.start()
        self._probe_call = self.clock.callLater(self.probe_interval, self._probe_tick)

    def stop(self) -> defer.Deferred[None]:
        """Close both links; pending commands fail with ClusterUnavailable."""
        self._running = False
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        waits = []
        for conn in (self.command, self.subscriber):
            if conn.proto is not None:
                d: defer.Deferred[None] = defer.Deferred()
                conn.proto.closed.append(d)
                waits.append(d)
            conn.stop()

        async def closed() -> None:
            for d in waits:
                await d

        return defer.ensureDeferred(closed())

    # -- commands --------------------------------------------------------------
    def execute(self, *command: Any, timeout: float | None = None) -> defer.Deferred[Any]:
        """One command (``"HSET", key, f, v``); bulk replies are str (UTF-8; non-UTF-8
        bytes kept as surrogates), integers int, arrays list, nil None; an error reply
        fails with RedisError. Fails at once with ClusterUnavailable while DOWN, and
        with ClusterUnavailable after ``timeout`` (default ``reply_timeout``) seconds."""
        if not self.command.ready:
            return defer.fail(ClusterUnavailable("redis is down: " + self._why(self.command)))
        return self.command.send(command, self.reply_timeout if timeout is None else timeout)

    def script(self, name: str, source: str) -> Script:
        """A script to run by SHA (loaded again after a Redis restart)."""
        s = self._scripts.get(name)
        if s is None or s.source != source:
            s = self._scripts[name] = Script(self, name, source)
        return s

    def publish(self, channel: str, payload: bytes) -> bool:
        """Queue a PUBLISH on the command connection, in call order; False (and counted
        as dropped) while DOWN. Never waits for the reply on the caller's behalf."""
        proto = self.command.proto
        if proto is None or not self.command.ready or len(proto.queue) >= MAX_PENDING:
            self.dropped += 1
            return False
        head = self._publish_heads.get(channel)
        if head is None:
            head = self._publish_head(channel)
        proto.queue.append(None)
        proto.transport.write(  # type: ignore[union-attr]
            b"%s$%d\r\n%s\r\n" % (head, len(payload), payload)
        )
        self.published += 1
        return True

    def _publish_head(self, channel: str) -> bytes:
        """``PUBLISH channel`` in RESP up to the payload, kept per channel (node channels
        are few; the cache is emptied if restarted nodes' ids ever pile up)."""
        if len(self._publish_heads) >= 1024:
            self._publish_heads.clear()
        ch = channel.encode()
        head = self._publish_heads[channel] = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (
            len(ch),
            ch,
        )
        return head

    # -- subscriber ------------------------------------------------------------
    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Deliver every message of ``channel`` to ``handler``, in order; kept across
        reconnects (re-subscribed, one channel per SUBSCRIBE)."""
        ch = channel.encode()
        new = ch not in self._handlers
        self._handlers[ch] = handler
        if new and self.subscriber.ready:
            self._send_subscribe(ch)

    def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` (no handler called for it from now on)."""
        ch = channel.encode()
        if self._handlers.pop(ch, None) is not None and self.subscriber.ready:
            self._send_subscribe(ch, b"UNSUBSCRIBE")

    def _send_subscribe(self, ch: bytes, verb: bytes = b"SUBSCRIBE") -> None:
        proto = self.subscriber.proto
        if proto is not None:
            proto.transport.write(encode_command((verb, ch)))  # type: ignore[union-attr]

    def _pushed(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"message":
            ch, data = reply[1], reply[2]
            if ch == self._probe_channel_b:
                self._probe_back(data)
                return
            self.received += 1
            handler = self._handlers.get(ch)
            if handler is not None:
                try:
                    handler(data)
                except Exception:
                    log.failure("cluster message handler for {ch!r} failed", ch=ch)
        elif kind == b"subscribe" and reply[1] == self._probe_channel_b:
            # the probe channel is subscribed last: probe now rather than in a second
            self._undelivered_since = None
            self._send_probe()

    # -- probe -----------------------------------------------------------------
    def _probe_tick(self) -> None:
        self._probe_call = self.clock.callLater(self.probe_interval, self._probe_tick)
        now = self.clock.seconds()
        if self._probes_out and now - self._probes_out[0] >= self.probe_timeout:
            log.warn(
                "redis command link: no PUBLISH reply in {t}s, reconnecting", t=self.probe_timeout
            )
            self.command.drop()
            return
        since = self._undelivered_since
        if self.subscriber.ready and since is not None and now - since >= self.probe_timeout:
            self.silent += 1
            log.warn(
                "redis subscriber link silent (no probe back in {t}s): reconnecting",
                t=self.probe_timeout,
            )
            self._probe_ok = False
            self._update()
            self.subscriber.drop()
            return
        self._send_probe()

    def _send_probe(self) -> None:
        proto = self.command.proto
        if proto is None or not self.command.ready:
            return
        now = self.clock.seconds()
        self._probes_out.append(now)
        proto.send(
            encode_command((b"PUBLISH", self._probe_channel_b, repr(now).encode())), _Probe(now)
        )

    def _probe_replied(self, probe: _Probe) -> None:
        if self._probes_out:
            self._probes_out.popleft()
        now = self.clock.seconds()
        self.rtt = now - probe.sent
        if self._undelivered_since is None and self.subscriber.ready:
            self._undelivered_since = now
        if self.rtt_hist is not None:
            self.rtt_hist.observe(self.rtt)

    def _probe_back(self, data: bytes) -> None:
        now = self.clock.seconds()
        self._undelivered_since = None
        try:
            self.lag = max(0.0, now - float(data))
        except ValueError:
            pass
        if not self._probe_ok:
            self._probe_ok = True
            self._update()

    def _probes_lost(self, conn: _Conn) -> None:
        if conn is self.command:
            self._probes_out.clear()

    # -- state -----------------------------------------------------------------
    def _conn_ready(self, conn: _Conn) -> None:
        log.info("redis {name} link up ({addr})", name=conn.name, addr=self.address.display())
        if conn is self.subscriber:
            proto = conn.proto
            assert proto is not None
            proto.pubsub = True
            self._probe_ok = False
            self._undelivered_since = None
            for ch in self._handlers:  # one channel per SUBSCRIBE
                self._send_subscribe(ch)
            self._send_subscribe(self._probe_channel_b)
        elif self.subscriber.ready:
            self._send_probe()  # UP again as soon as it comes back, not in a second
        self._update()

    def _conn_lost(self, conn: _Conn) -> None:
        log.warn("redis {name} link lost", name=conn.name)
        if conn is self.subscriber:
            self._probe_ok = False
            self._undelivered_since = None
        self._update()

    def _update(self) -> None:
        if not self.command.ready:
            new = DOWN
        elif self.subscriber.ready and self._probe_ok:
            new = UP
        else:
            new = DEGRADED
        old = self.state
        if new == old:
            return
        self.state = new
        log.info("redis link {old} -> {new}", old=old, new=new)
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:
                log.failure("cluster link state listener failed")

    def on_state(self, listener: Callable[[str, str], None]) -> None:
        """``listener(old, new)`` on every state change (the node re-registers on up)."""
        self._listeners.append(listener)

    def _why(self, conn: _Conn) -> str:
        return conn.last_error or f"not connected to {self.address.display()}"

    def health(self) -> dict[str, Any]:
        """For /healthz and /stats: state, each link, last RTT, pub/sub lag, reconnects."""
        return {
            "state": self.state,
            "redis": self.address.display(),
            "command": self.command.ready,
            "subscriber": self.subscriber.ready,
            "rtt_seconds": self.rtt,
            "pubsub_lag_seconds": self.lag,
            "reconnects": {
                "command": self.command.reconnects,
                "subscriber": self.subscriber.reconnects,
            },
            "published": self.published,
            "publish_dropped": self.dropped,
            "publish_errors": self.publish_errors,
            "received": self.received,
            "command_timeouts": self.command_timeouts,
            "silent": self.silent,
        }

    # -- where to connect ------------------------------------------------------
    async def _endpoint(self) -> IStreamClientEndpoint:
        addr = self.address
        if addr.sentinels:
            host, port = await self._ask_sentinels()
        else:
            host, port = addr.host, addr.port
        ep = self._tcp(host, port)
        if addr.tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import Certificate, optionsForClientTLS

            trust = None
            if self.tls_ca_file:
                with open(self.tls_ca_file, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            ep = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), ep)
        return ep

    def _tcp(self, host: str, port: int) -> IStreamClientEndpoint:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        if ip.version == 6:
            return TCP6ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        return TCP4ClientEndpoint(self.reactor, host, port, timeout=self.connect_timeout)

    async def _ask_sentinels(self) -> tuple[str, int]:
        """The master's address from the first sentinel that knows it."""
        errors = []
        for host, port in self.address.sentinels:
            try:
                return await ask_sentinel(
                    self._tcp(host, port), self.address.master or "", self.clock, self.reply_timeout
                )
            except Exception as e:
                errors.append(f"{host}:{port}: {e}")
        raise ClusterUnavailable("no sentinel knows the master: " + "; ".join(errors))


class _OneShot(Protocol):
    """Sends one command, waits for one reply, hangs up (for the sentinels)."""

    def __init__(self, command: bytes) -> None:
        self.command = command
        self.reader = hiredis.Reader(encoding="utf-8", replyError=RedisError)
        self.reply: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.command)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            reply = self.reader.gets()
        except hiredis.ProtocolError as e:
            reply = RedisError(f"protocol error: {e}")
        if reply is False or self.reply.called:
            return
        self.transport.loseConnection()  # type: ignore[union-attr]
        self.reply.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.reply.called:
            self.reply.errback(ClusterUnavailable("sentinel closed the connection"))


async def ask_sentinel(
    endpoint: IStreamClientEndpoint, master: str, clock: IReactorTime, timeout: float
) -> tuple[str, int]:
    """``SENTINEL get-master-addr-by-name master`` on one sentinel: (host, port)."""
    proto = _OneShot(encode_command(("SENTINEL", "get-master-addr-by-name", master)))
    await endpoint.connect(Factory.forProtocol(lambda: proto))
    d = proto.reply
    d.addTimeout(timeout, clock)
    try:
        reply = await d
    finally:
        if proto.transport is not None:
            proto.transport.loseConnection()
    if isinstance(reply, RedisError):
        raise reply
    if not (isinstance(reply, list) and len(reply) == 2 and str(reply[1]).isdigit()):
        raise ClusterUnavailable(f"sentinel does not know master {master!r} (said {reply!r})")
    return str(reply[0]), int(reply[1])


class LinkCollector:
    """Exports RedisLink's plain counters (Prometheus collector protocol)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        link = self.link
        yield GaugeMetricFamily(
            "gamed_cluster_link_state",
            "Redis link state: 0 down, 1 degraded, 2 up",
            value=STATE_VALUES[link.state],
        )
        up = GaugeMetricFamily(
            "gamed_cluster_link_up", "1 when the connection is ready", labels=["link"]
        )
        up.add_metric(["command"], int(link.command.ready))
        up.add_metric(["subscriber"], int(link.subscriber.ready))
        yield up
        if link.rtt_hist is not None:
            h = HistogramMetricFamily(
                "gamed_cluster_redis_rtt_seconds",
                "Redis round trip, sampled: the probe PUBLISH's reply time",
            )
            h.add_metric([], link.rtt_hist.cumulative(), sum_value=link.rtt_hist.sum)
            yield h
        yield GaugeMetricFamily(
            "gamed_cluster_pubsub_lag_seconds",
            "The last probe's trip: PUBLISH on the command link to delivery on the subscriber",
            value=link.lag if link.lag is not None else float("nan"),
        )
        for name, doc, value in (
            ("published", "PUBLISHes sent (probes not counted)", link.published),
            (
                "publish_dropped",
                "PUBLISHes refused: link down or Redis not answering",
                link.dropped,
            ),
            ("publish_errors", "PUBLISHes Redis answered with an error", link.publish_errors),
            (
                "received",
                "Messages delivered by the subscriber (probes not counted)",
                link.received,
            ),
            (
                "command_timeouts",
                "Commands that got no reply within their timeout",
                link.command_timeouts,
            ),
            (
                "subscriber_silent",
                "Times the subscriber was found silent and reconnected",
                link.silent,
            ),
            (
                "script_reloads",
                "Scripts run with EVAL after EVALSHA said NOSCRIPT",
                link.script_reloads,
            ),
        ):
            yield CounterMetricFamily(f"gamed_cluster_{name}", doc, value=value)
        rc = CounterMetricFamily(
            "gamed_cluster_reconnects", "Reconnections after a lost connection", labels=["link"]
        )
        rc.add_metric(["command"], link.command.reconnects)
        rc.add_metric(["subscriber"], link.subscriber.reconnects)
        yield rc

    def describe(self) -> list[Any]:
        return []
