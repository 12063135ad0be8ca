"""The cluster's state in Redis: every key, and the Lua scripts that change it (docs/cluster.md).

Each room script touches one room's keys (the ``{room:ID}`` hash tag) and the listing
zset ``gamed:rooms``; session scripts touch one user's key. Nothing here keeps state of
its own: the node (gamed.cluster.node) decides when to call what.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from twisted.internet import defer

from gamed.cluster.link import RedisLink, Script

PREFIX = "gamed:"
#: The node index: node id -> lease deadline (ms of Redis time); dead nodes are found here.
NODES = PREFIX + "nodes"
#: The room listing: room id -> cluster-wide member count (paged with ZREVRANGE).
ROOMS = PREFIX + "rooms"
#: How many dead nodes one sweep takes on.
SWEEP_BATCH = 16


def lease_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


def node_rooms_key(node: str) -> str:
    """Rooms where ``node`` may have members (a superset: cleanup reads it)."""
    return f"{PREFIX}node:{node}:rooms"


def node_sessions_key(node: str) -> str:
    """Users whose session ``node`` may hold (a superset: cleanup reads it)."""
    return f"{PREFIX}node:{node}:sessions"


def session_key(user_id: int) -> str:
    return f"{PREFIX}session:{user_id}"


def channel(node: str) -> str:
    """The node's own channel: room frames, membership counts, takeover kicks."""
    return f"{PREFIX}n:{node}"


def room_keys(room_id: int, node: str) -> list[str]:
    """KEYS of the room scripts: members, nodes, the node's members, the listing."""
    tag = f"{PREFIX}{{room:{room_id}}}"
    return [f"{tag}:members", f"{tag}:nodes", f"{tag}:on:{node}", ROOMS]


def on_prefix(room_id: int) -> str:
    return f"{PREFIX}{{room:{room_id}}}:on:"


def text(value: Any) -> str:
    """A reply item as str (the link may hand bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pairs(flat: Any) -> list[tuple[str, str]]:
    items = [text(x) for x in flat or ()]
    return list(zip(items[::2], items[1::2], strict=True))


@dataclass(frozen=True, slots=True)
class Seat:
    """A seat the join script gave: the room's cluster count and its nodes' counts."""

    count: int
    nodes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Full:
    """The join script found the room full."""

    count: int


@dataclass(frozen=True, slots=True)
class Synced:
    """What sync.lua did: the count after it, who it removed, the nodes left."""

    count: int
    removed: list[tuple[int, str]]
    nodes: dict[str, int]


SCRIPTS = ("join", "leave", "sync", "claim", "release", "lease", "sweep")


def load_source(name: str) -> str:
    return resources.files("gamed.cluster").joinpath(f"{name}.lua").read_text()


class Directory:
    """Typed calls of the cluster's scripts over one link."""

    def __init__(self, link: RedisLink, node: str) -> None:
        self.link = link
        self.node = node
        self._scripts: dict[str, Script] = {n: link.script(n, load_source(n)) for n in SCRIPTS}

    def _run(self, name: str, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        return self._scripts[name].run(keys, args)

    # -- rooms ---------------------------------------------------------------------------

    def join(
        self, room_id: int, user_id: int, nickname: str, max_users: int
    ) -> defer.Deferred[Seat | Full]:
        node = self.node
        # the node's room set first (same connection, so before the seat): cleanup finds it
        self.link.execute("SADD", node_rooms_key(node), room_id).addErrback(lambda _: None)
        args = [user_id, node, nickname, max_users, room_id, on_prefix(room_id)]
        d = self._run("join", room_keys(room_id, node), args)

        def parse(reply: list[Any]) -> Seat | Full:
            if int(reply[0]) != 1:
                return Full(int(reply[1]))
            nodes = {n: int(c) for n, c in pairs(reply[2:])}
            return Seat(int(reply[1]), nodes)

        return d.addCallback(parse)

    def leave(self, room_id: int, user_id: int) -> defer.Deferred[int]:
        d = self._run("leave", room_keys(room_id, self.node), [user_id, self.node, room_id])
        return d.addCallback(int)

    def sync(
        self, room_id: int, members: list[tuple[int, str]], node: str | None = None
    ) -> defer.Deferred[Synced]:
        """Make ``node``'s (default: ours) members of the room exactly ``members``."""
        node = node or self.node
        args: list[Any] = [node, room_id]
        for uid, nick in members:
            args += [uid, nick]
        d = self._run("sync", room_keys(room_id, node), args)

        def parse(reply: list[Any]) -> Synced:
            removed = [(int(u), n) for u, n in pairs(reply[1])]
            return Synced(int(reply[0]), removed, {n: int(c) for n, c in pairs(reply[2])})

        return d.addCallback(parse)

    def forget_room(self, room_id: int, node: str | None = None) -> defer.Deferred[Any]:
        """Take a room off the node's room set (its members there are gone)."""
        return self.link.execute("SREM", node_rooms_key(node or self.node), room_id)

    def node_rooms(self, node: str) -> defer.Deferred[list[int]]:
        d = self.link.execute("SMEMBERS", node_rooms_key(node))
        return d.addCallback(lambda ids: sorted(int(text(i)) for i in ids or ()))

    def listing(self, offset: int, limit: int) -> defer.Deferred[list[tuple[int, int]]]:
        """A page of the room listing, largest first: (room id, cluster count)."""
        d = self.link.execute("ZREVRANGE", ROOMS, offset, offset + limit - 1, "WITHSCORES")
        return d.addCallback(lambda flat: [(int(r), int(float(c))) for r, c in pairs(flat)])

    # -- sessions ------------------------------------------------------------------------

    def claim(self, user_id: int, epoch: str = "") -> defer.Deferred[tuple[str, str]]:
        """A new session (``epoch`` ""): (previous node or "", epoch). Re-registering one
        (its ``epoch``): ("kept", epoch) or ("lost", the newer holder)."""
        self.link.execute("SADD", node_sessions_key(self.node), user_id).addErrback(lambda _: None)
        d = self._run("claim", [session_key(user_id)], [self.node, epoch])
        return d.addCallback(lambda reply: (text(reply[0]), text(reply[1])))

    def release(
        self, user_id: int, epoch: str = "", node: str | None = None
    ) -> defer.Deferred[Any]:
        node = node or self.node
        d = self._run("release", [session_key(user_id)], [node, epoch])
        return d

    def session_node(self, user_id: int) -> defer.Deferred[str | None]:
        """The node holding the user's session now, or None."""

        def node_of(value: str | None) -> str | None:
            return value.split(" ", 1)[0] if value else None

        return self.link.execute("GET", session_key(user_id)).addCallback(node_of)

    def forget_session(self, user_id: int) -> defer.Deferred[Any]:
        return self.link.execute("SREM", node_sessions_key(self.node), user_id)

    def node_sessions(self, node: str) -> defer.Deferred[list[int]]:
        d = self.link.execute("SMEMBERS", node_sessions_key(node))
        return d.addCallback(lambda ids: [int(text(i)) for i in ids or ()])

    # -- nodes ---------------------------------------------------------------------------

    def lease(self, token: str, ttl_ms: int) -> defer.Deferred[str]:
        d = self._run("lease", [lease_key(self.node), NODES], [self.node, token, ttl_ms])
        return d.addCallback(text)

    def sweep(self) -> defer.Deferred[list[str]]:
        d = self._run("sweep", [NODES], [PREFIX + "node:", SWEEP_BATCH])
        return d.addCallback(lambda reply: [text(n) for n in reply or ()])

    def mourn(self, node: str) -> defer.Deferred[Any]:
        """Put a node back on the index as dead (a cleanup that failed is retried)."""
        return self.link.execute("ZADD", NODES, 0, node)

    def drop_node(self, node: str) -> defer.Deferred[Any]:
        """The node's own keys, once its rooms and sessions are clean."""
        return self.link.execute(
            "DEL", node_rooms_key(node), node_sessions_key(node), lease_key(node)
        )

    def leave_index(self) -> defer.Deferred[Any]:
        return self.link.execute("ZREM", NODES, self.node)

    def nodes(self) -> defer.Deferred[list[tuple[str, int]]]:
        """Every node on the index and its lease deadline (ms): a few entries, one per node."""
        d = self.link.execute("ZRANGE", NODES, 0, -1, "WITHSCORES")
        return d.addCallback(lambda flat: [(n, int(float(s))) for n, s in pairs(flat)])
