"""ISharedState over the node's Redis link: what plugins share with every node (bans, blocks).

A table is the hash ``gamed:shared:{table}``: field = key, value = JSON
``[version, expires_at, value]``. ``put`` is one Lua script that keeps the newer
version (last writer wins, by the writer's clock) and, when it stored, PUBLISHes
the record on ``gamed:shared`` in the same step: a stored record is always
announced. ``records`` reads a table in HSCAN pages and deletes expired records
on the way (each with a compare-and-delete script, so a newer put is never
deleted). Stashes are plain keys ``gamed:shared:{table}:{key}`` with a TTL
(SET PX, GETDEL). Notices are ``shared `` + JSON on a channel of their own,
``gamed:shared`` (not ``gamed:all``: the link has one handler per channel, and
``gamed:all`` is the cluster node's); anything else there is ignored.

docs/cluster.md lists the keys and the channel; docs/security.md what the
security plugin keeps here and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gamed.cluster.link import DEGRADED, DOWN, UP, ClusterUnavailable, RedisError, RedisLink
from gamed.errors import SharedStateUnavailable
from gamed.interfaces import ISharedState

_log = Logger()

CHANNEL = "gamed:shared"
PREFIX = b"shared "
#: HSCAN page size: a table is never read in one reply.
PAGE = 500
#: Pages read per ``records`` call at most (PAGE x this records): a bound, not a goal.
MAX_PAGES = 2000

Record = tuple[float, float | None, str]
Watcher = Callable[[str, float, float | None, str], None]

#: KEYS[1] hash; ARGV: field, version, encoded record, channel, notice. Newer (or equal) wins.
PUT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old[1]) and tonumber(old[1]) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

#: KEYS[1] hash; ARGV: field, the value read. Deletes only what was read (expired).
DELETE_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def table_key(table: str) -> str:
    return f"gamed:shared:{table}"


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def decode_record(raw: Any) -> Record | None:
    """``[version, expires_at, value]``, or None for anything else (never raises)."""
    try:
        version, expires, value = orjson.loads(raw)
        return float(version), None if expires is None else float(expires), str(value)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None


def _unavailable(f: Failure) -> Failure:
    """Redis down, slow, or refusing (an error reply: OOM, READONLY...): the caller
    hears SharedStateUnavailable, so a change it cannot make is refused, never half made."""
    if f.check(ClusterUnavailable):
        return Failure(SharedStateUnavailable(f"cluster unavailable: {f.value}"))
    if f.check(RedisError):
        return Failure(SharedStateUnavailable(f"cluster unavailable: redis refused: {f.value}"))
    return f


@implementer(ISharedState)
class SharedState:
    """ISharedState on the node's RedisLink (docs/cluster.md).

    Plugins get it when they are built, before twistd's fork; the cluster node makes
    its link only in startService, after the fork. So the link comes later, through
    ``attach`` (``node_shared_state``); until then nothing is available.
    """

    def __init__(self, link: RedisLink | None, node_id: str, clock: Any) -> None:
        self.link: RedisLink | None = None
        self.node_id = node_id
        self.clock = clock
        self._watchers: dict[str, list[Watcher]] = {}
        self._ready: list[Callable[[], None]] = []
        if link is not None:
            self.attach(link, node_id)

    def attach(self, link: RedisLink, node_id: str) -> None:
        """Use ``link`` (the node's, once it made it) from now on."""
        self.link = link
        self.node_id = node_id
        self._put = link.script("shared_put", PUT)
        self._delete_if = link.script("shared_delete_if", DELETE_IF)
        link.subscribe(CHANNEL, self._notice)
        link.on_state(self._state)
        if link.state != DOWN:  # already connected: read now what may have been missed
            self.clock.callLater(0, self._state, DOWN, link.state)

    def available(self) -> bool:
        return self.link is not None and self.link.state != DOWN

    def _link(self) -> RedisLink:
        if self.link is None:
            raise SharedStateUnavailable("cluster unavailable: the node has not started")
        return self.link

    def _state(self, old: str, new: str) -> None:
        # Commands work again, or the subscriber is back: notices may have been missed.
        if (old == DOWN and new != DOWN) or (old == DEGRADED and new == UP):
            for callback in list(self._ready):
                try:
                    callback()
                except Exception:
                    _log.failure("shared state: a ready callback failed")

    def on_ready(self, callback: Callable[[], None]) -> None:
        self._ready.append(callback)

    def watch(self, table: str, handler: Watcher) -> None:
        self._watchers.setdefault(table, []).append(handler)

    def _notice(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        if not payload.startswith(PREFIX):
            return  # a node notice, not ours
        try:
            n = orjson.loads(payload[len(PREFIX) :])
            node, table, key = str(n["n"]), str(n["t"]), str(n["k"])
            record = decode_record(n["r"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            record = None
        if record is None:
            _log.warn("shared state: ignored a malformed notice on {ch}", ch=CHANNEL)
            return
        if node == self.node_id:
            return  # our own put: applied before it was sent
        for handler in self._watchers.get(table, ()):
            try:
                handler(key, *record)
            except Exception:
                _log.failure("shared state: a watcher of {table} failed", table=table)

    def put(
        self, table: str, key: str, value: str, version: float, expires_at: float | None
    ) -> defer.Deferred[bool]:
        if not self.available():
            return defer.fail(SharedStateUnavailable(f"cluster unavailable: Redis is {DOWN}"))
        raw = orjson.dumps([version, expires_at, value]).decode()
        notice = (
            PREFIX + orjson.dumps({"n": self.node_id, "t": table, "k": key, "r": raw})
        ).decode()
        d = self._put.run([table_key(table)], [key, repr(version), raw, CHANNEL, notice])
        d.addCallback(lambda stored: int(stored) == 1)
        d.addErrback(_unavailable)
        return d

    @defer.inlineCallbacks
    def _records(self, table: str) -> Any:
        key = table_key(table)
        now = self.clock.seconds()
        out: dict[str, Record] = {}
        cursor = "0"
        for _page in range(MAX_PAGES):
            reply = yield self._link().execute("HSCAN", key, cursor, "COUNT", PAGE)
            cursor, flat = _text(reply[0]), reply[1]
            for i in range(0, len(flat) - 1, 2):
                field, raw = _text(flat[i]), _text(flat[i + 1])
                record = decode_record(raw)
                if record is None or (record[1] is not None and record[1] <= now):
                    # Expired (or not ours to read): delete exactly what was read.
                    yield self._delete_if.run([key], [field, raw])
                    continue
                out[field] = record
            if cursor == "0":
                break
        return out

    def records(self, table: str) -> defer.Deferred[dict[str, Record]]:
        if not self.available():
            return defer.fail(SharedStateUnavailable(f"cluster unavailable: Redis is {DOWN}"))
        d: defer.Deferred[dict[str, Record]] = self._records(table)
        d.addErrback(_unavailable)
        return d

    def stash(self, table: str, key: str, value: str, ttl: float) -> defer.Deferred[None]:
        ms = max(1, int(ttl * 1000))
        if self.link is None:
            return defer.fail(SharedStateUnavailable("cluster unavailable: not started"))
        d = self.link.execute("SET", f"{table_key(table)}:{key}", value, "PX", ms)
        d.addCallback(lambda _: None)
        d.addErrback(_unavailable)
        return d

    def take(self, table: str, key: str) -> defer.Deferred[str | None]:
        if self.link is None:
            return defer.fail(SharedStateUnavailable("cluster unavailable: not started"))
        d = self.link.execute("GETDEL", f"{table_key(table)}:{key}")
        d.addCallback(lambda v: None if v is None else _text(v))
        d.addErrback(_unavailable)
        return d


class AttachService(Service):
    """Hands the cluster node's link to the plugins' SharedState once the node made it.

    In the service tree right after the node (gamed.tap): started after it (the link
    exists then), stopped before it (the node closes the link)."""

    def __init__(self, shared: SharedState, node: Any) -> None:
        self.shared = shared
        self.node = node

    def startService(self) -> None:
        super().startService()
        assert self.node.link is not None, "the cluster node starts before its shared state"
        self.shared.attach(self.node.link, self.node.node_id)


def node_shared_state(node: Any, reactor: Any) -> tuple[SharedState, Service]:
    """The plugins' SharedState (PluginEnvironment.shared) on the cluster node's one link,
    and the service that attaches it: put that service in the tree after the node."""
    shared = SharedState(None, node.node_id, reactor)
    service = AttachService(shared, node)
    service.setName("cluster-shared-state")
    return shared, service
