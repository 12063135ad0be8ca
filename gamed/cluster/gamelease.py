"""Who runs a room's game in a cluster: a lease with a fencing token, and the snapshot.

One node owns a room's game. It holds ``gamed:{room:ID}:game`` (a hash: ``owner``,
``token``, ``seq``; PX ``ttl``, renewed by the owner) and writes the game's snapshot to
``gamed:{room:ID}:snapshot`` after every turn. Every token comes from ``INCR
gamed:{room:ID}:fence``, so a later owner always has a larger token; renewals, snapshot
writes and the release are checked against the current owner *and* token inside one
script, so an owner that stalled (GC pause, SIGSTOP, a partition) and comes back after
another node took the game over is refused: it must stop its game (``Games.abandon``).

All three keys share the ``{room:ID}`` hash tag: every script touches one slot (Redis
Cluster-ready). Whether the previous owner is dead is not read here (that is another
slot, ``gamed:node:{id}``): the caller passes ``dead_owner`` when the cluster's node sweep
has declared it dead; otherwise a lease is free only once its TTL ran out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

#: Lease TTL: a dead owner's game is taken over at most this long after its last renewal.
LEASE_TTL = 5.0
#: The owner renews every LEASE_TTL / RENEW_DIVISOR seconds (and with every snapshot write).
RENEW_DIVISOR = 3
#: A snapshot lives this long after the owner's last renewal or write: time to resume.
SNAPSHOT_TTL = 120.0
#: The fencing counter outlives games (tokens never repeat in a room) but not forever.
FENCE_TTL = 86400.0


def game_key(room_id: int) -> str:
    return f"gamed:{{room:{room_id}}}:game"


def snapshot_key(room_id: int) -> str:
    return f"gamed:{{room:{room_id}}}:snapshot"


def fence_key(room_id: int) -> str:
    return f"gamed:{{room:{room_id}}}:fence"


# KEYS: game, snapshot, fence. ARGV: node, mode ("start" | "resume" | "again"), ttl ms,
# dead owner ("" = none), fence ttl ms, the token held before ("again" only).
# Returns {1, node, token, snapshot-or-false} when this node now owns the game;
# {0, owner, token, false} when another live node holds it; {0, "", 0, false} when
# "resume" finds no snapshot (the game is gone: nothing to resume) or "again" finds
# that another node held the game since (the fence moved past the old token).
ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] and owner ~= ARGV[4] then
  return {0, owner, tonumber(redis.call('HGET', KEYS[1], 'token')), false}
end
local snap = false
if ARGV[2] == 'again' then
  if tonumber(redis.call('GET', KEYS[3]) or '0') ~= tonumber(ARGV[6]) then
    return {0, '', 0, false}
  end
elseif ARGV[2] == 'resume' then
  snap = redis.call('GET', KEYS[2])
  if not snap then
    return {0, '', 0, false}
  end
else
  redis.call('DEL', KEYS[2])
end
local token = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'seq', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, ARGV[1], token, snap}
"""

# How every script of an owner begins: KEYS[1] (the game) must still name ARGV[1] (this
# node) with ARGV[2] (its token), else the script answers 0 (fenced) and changes nothing.
FENCED = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]
    or redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then
  return 0
end"""

# KEYS: game, snapshot. ARGV: node, token, ttl ms, snapshot ttl ms. 1 = renewed, 0 = fenced.
RENEW = f"""{FENCED}
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: game, snapshot. ARGV: node, token, blob, ttl ms, snapshot ttl ms, seq.
# 1 = written (and the lease renewed; a snapshot older than the stored one is skipped),
# 0 = fenced (nothing written).
WRITE = f"""{FENCED}
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1') > tonumber(ARGV[6]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('HSET', KEYS[1], 'seq', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: game, snapshot. ARGV: node, token. 1 = released (both keys gone), 0 = fenced.
RELEASE = f"""{FENCED}
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Acquired:
    """What ``acquire`` found: ``ok`` (this node owns it now, under ``token``), else who does.

    ``owner`` is "" when a resume found no snapshot; ``snapshot`` is the blob to resume from.
    """

    ok: bool
    owner: str
    token: int
    snapshot: bytes | None


def _blob(value: Any) -> bytes | None:
    """A bulk reply back to bytes: the link decodes UTF-8 with surrogateescape."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


class GameLeases:
    """The four scripts for one node. Every call fails with ClusterUnavailable (the
    link's) when Redis cannot answer: the caller decides what that means for its game."""

    def __init__(
        self,
        link: Any,
        node_id: str,
        *,
        ttl: float = LEASE_TTL,
        snapshot_ttl: float = SNAPSHOT_TTL,
        fence_ttl: float = FENCE_TTL,
    ) -> None:
        self.node_id = node_id
        self.ttl = ttl
        self._ttl_ms = int(ttl * 1000)
        self._snap_ms = int(snapshot_ttl * 1000)
        self._fence_ms = int(fence_ttl * 1000)
        self._acquire = link.script("game_acquire", ACQUIRE)
        self._renew = link.script("game_renew", RENEW)
        self._write = link.script("game_write", WRITE)
        self._release = link.script("game_release", RELEASE)
        self._link = link
        self.fenced = 0  # renewals/writes/releases refused: this node was not the owner any more

    @property
    def renew_interval(self) -> float:
        return self.ttl / RENEW_DIVISOR

    @defer.inlineCallbacks
    def acquire(
        self, room_id: int, *, resume: bool = False, dead_owner: str = ""
    ) -> Any:  # Deferred[Acquired]
        """Take the room's game: a new game (``resume=False``: an old snapshot is
        deleted) or a resume from the snapshot (only if there is one). A live other
        owner keeps it, unless it is ``dead_owner``."""
        return (yield self._run_acquire(room_id, "resume" if resume else "start", dead_owner, 0))

    @defer.inlineCallbacks
    def again(self, room_id: int, token: int) -> Any:  # Deferred[Acquired]
        """This node's lease ran out (Redis was away longer than the TTL): take it back
        with a new token, only if no other node held the game since ``token``."""
        return (yield self._run_acquire(room_id, "again", "", token))

    @defer.inlineCallbacks
    def _run_acquire(self, room_id: int, mode: str, dead_owner: str, token: int) -> Any:
        reply = yield self._acquire.run(
            [game_key(room_id), snapshot_key(room_id), fence_key(room_id)],
            [self.node_id, mode, self._ttl_ms, dead_owner, self._fence_ms, token],
        )
        ok, owner, new, snap = reply
        return Acquired(bool(int(ok)), str(owner or ""), int(new), _blob(snap))

    @defer.inlineCallbacks
    def renew(self, room_id: int, token: int) -> Any:  # Deferred[bool]
        """Extend the lease (and the snapshot's life); False: fenced out."""
        reply = yield self._renew.run(
            [game_key(room_id), snapshot_key(room_id)],
            [self.node_id, token, self._ttl_ms, self._snap_ms],
        )
        return self._check(reply)

    @defer.inlineCallbacks
    def write(self, room_id: int, token: int, blob: bytes, seq: int) -> Any:  # Deferred[bool]
        """Store the snapshot (and renew the lease); False: fenced out, nothing written."""
        reply = yield self._write.run(
            [game_key(room_id), snapshot_key(room_id)],
            [self.node_id, token, blob, self._ttl_ms, self._snap_ms, seq],
        )
        return self._check(reply)

    @defer.inlineCallbacks
    def release(self, room_id: int, token: int) -> Any:  # Deferred[bool]
        """The game ended: delete lease and snapshot; False: fenced out (nothing deleted)."""
        reply = yield self._release.run(
            [game_key(room_id), snapshot_key(room_id)], [self.node_id, token]
        )
        return self._check(reply)

    @defer.inlineCallbacks
    def owner(self, room_id: int) -> Any:  # Deferred[tuple[str, int] | None]
        """(owner, token) of the room's game lease, None when there is none."""
        reply = yield self._link.execute("HMGET", game_key(room_id), "owner", "token")
        owner, token = reply
        if not owner or token is None:
            return None
        return str(owner), int(token)

    def _check(self, reply: Any) -> bool:
        ok = int(reply) == 1
        if not ok:
            self.fenced += 1
        return ok
