"""Bans and blocks across a ``--redis`` cluster, through ISharedState (docs/security.md).

Two shared tables, ``user_blocks`` and ``ip_blocks`` (Redis hashes
``gamed:shared:user_blocks`` and ``gamed:shared:ip_blocks``). A record's version
is the change's time (``Block.since``); its value is JSON ``{"until", "reason",
"kick"}`` for a block (``until`` null: a ban) or ``{"lifted": true}`` for an
unblock (a tombstone, kept ``TOMBSTONE_SECONDS``, so a node that missed the
unblock does not push the old block back). Last writer wins, on every node and
in Redis.

- An admin change is written to Redis first; only once Redis stored it is it
  applied here (and written to SQLite), and every other node applies it when
  the notice on ``gamed:shared`` arrives (kicking the user or address if it is
  connected there). Redis unreachable: the change is refused (503), nothing
  changes anywhere, and what is in force stays enforced.
- An automatic block (rate_user, suspicion, rate_ip) is enforced here at once
  and pushed to Redis without waiting; if Redis is unreachable it is pushed at
  the next resync.
- Resync (at start, whenever Redis becomes reachable again, and every
  ``RESYNC_SECONDS``): read both tables, and merge with what this node has
  (its SQLite copy): for each key the newer record wins; a record only in
  Redis is applied here, a block only here is pushed to Redis (a Redis that
  lost its data gets it back from the nodes). Expired records are dropped.

Nothing here runs per message.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gamed.errors import SharedStateUnavailable

if TYPE_CHECKING:
    from gamed.middleware.security.middleware import Block, SecurityMiddleware

_log = Logger()

#: Shared table per block kind.
TABLES = {"user": "user_blocks", "ip": "ip_blocks"}
#: Seconds between two full reads of the shared tables (the bound for a change a
#: node missed while its subscriber was down but its command link was not).
RESYNC_SECONDS = 30.0
#: How long an unblock is remembered in Redis: a node away longer than this may
#: push an old block back (it is then lifted again by hand).
TOMBSTONE_SECONDS = 30 * 86400.0
#: Reasons the rules give their own blocks: these do not kick on other nodes
#: (the rule that made them does not kick either; messages are refused).
AUTOMATIC = frozenset({"rate_user", "suspicion", "rate_ip"})


def _decode(value: str) -> tuple[float, str, bool] | None:
    """(until, reason, kick) for a block; None for a tombstone. ValueError if neither."""
    v = orjson.loads(value)
    if not isinstance(v, dict):
        raise ValueError("not an object")
    if v.get("lifted"):
        return None
    until = v.get("until")
    reason = v.get("reason")
    if not isinstance(reason, str) or not (until is None or isinstance(until, int | float)):
        raise ValueError("bad block record")
    return (math.inf if until is None else float(until)), reason[:200], bool(v.get("kick"))


class BlockSync:
    """One node's side of the shared bans and blocks (see the module's docstring)."""

    def __init__(self, mw: SecurityMiddleware, shared: Any, clock: IReactorTime) -> None:
        self.mw = mw
        self.shared = shared
        self.clock = clock
        #: False until the SQLite copy is loaded: notices and resyncs wait for it.
        self.started = False
        self._resyncing: defer.Deferred[None] | None = None
        self._again = False
        self._loop: LoopingCall | None = None
        self.resyncs = 0
        self.last_resync: float | None = None
        self.applied = 0  # changes from other nodes applied here
        self.pushed = 0  # records this node wrote
        self.failures = 0
        self.last_error: str | None = None
        for kind, table in TABLES.items():
            shared.watch(table, self._watcher(kind))
        shared.on_ready(self.resync)

    # -- lifecycle (SecurityService) ------------------------------------------------------

    def start(self) -> None:
        """After the SQLite copy is loaded: resync now and every RESYNC_SECONDS."""
        self.started = True
        self._loop = LoopingCall(self.resync)
        self._loop.clock = self.clock
        self._loop.start(RESYNC_SECONDS, now=True)

    def stop(self) -> None:
        self.started = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- writing ---------------------------------------------------------------------------

    def publish(
        self,
        kind: str,
        key: object,
        until: float | None,
        reason: str,
        version: float,
        kick: bool,
    ) -> defer.Deferred[bool]:
        """Write a change to Redis (``until`` None: an unblock; inf: a ban) and tell every
        node; fires True once stored, False if Redis holds a newer change of the key, or
        fails with SharedStateUnavailable. The caller applies it here only after that."""
        if until is None:
            expires: float | None = version + TOMBSTONE_SECONDS
            value = '{"lifted":true}'
        else:
            expires = None if math.isinf(until) else until
            value = orjson.dumps(
                {"until": None if math.isinf(until) else until, "reason": reason, "kick": kick}
            ).decode()
        d: defer.Deferred[bool] = self.shared.put(TABLES[kind], str(key), value, version, expires)

        def stored(ok: bool) -> bool:
            self.pushed += 1
            return ok

        d.addCallback(stored)
        return d

    def push(self, kind: str, key: object, block: Block) -> None:
        """An automatic block: write it without waiting; a failure waits for the resync."""
        if not self.shared.available():
            return  # the resync after the reconnect pushes it
        d = self.publish(kind, key, block.until, block.reason, block.since, kick=False)
        d.addErrback(self._failed, "push")

    def _failed(self, f: Failure, what: str) -> None:
        self.failures += 1
        cause = str(f.value) if f.check(SharedStateUnavailable) else repr(f.value)
        if cause != self.last_error:
            _log.warn(
                "security: shared bans/blocks: {what} failed: {cause}", what=what, cause=cause
            )
        self.last_error = cause

    # -- reading ---------------------------------------------------------------------------

    def _watcher(self, kind: str) -> Any:
        def handler(key: str, version: float, _expires: float | None, value: str) -> None:
            if self.started:
                self._apply(kind, key, version, value, notice=True)

        return handler

    def _apply(self, kind: str, key: str, version: float, value: str, notice: bool) -> str:
        """Apply one record from another node (a notice or a resync) if it is newer than
        ours: ``"applied"``, ``"older"`` (ours is newer: push it) or ``"same"``."""
        mw = self.mw
        try:
            decoded = _decode(value)
            k: Any = int(key) if kind == "user" else key
        except (ValueError, orjson.JSONDecodeError):
            _log.warn("security: ignored a bad shared {kind} record {key!r}", kind=kind, key=key)
            return "same"
        blocks: dict[Any, Block] = mw.user_blocks if kind == "user" else mw.ip_blocks
        mine = blocks.get(k)
        now = self.clock.seconds()
        if mine is not None and mine.until <= now:
            mine = None
        if decoded is None:  # an unblock
            if mine is None:
                return "same"
            if mine.since > version:
                return "older"
            if kind == "user":
                mw.unblock_user(k, rule="cluster")
            else:
                mw.unblock_ip(k, rule="cluster")
            self.applied += 1
            return "applied"
        until, reason, kick = decoded
        if until <= now:
            return "same"
        if mine is not None:
            if mine.since > version:
                return "older"
            if mine.since == version and mine.until == until:
                return "same"
        if kind == "user":
            mw.block_user(k, until - version, reason, now=version, share=False)
            if kick and mw.control is not None:
                mw.control.kick_user(k, 403, mw.block_text(k, kind))
        else:
            mw.block_ip(k, until - version, reason, kick=False, now=version, share=False)
            if kick:
                mw.kick_address(k, f"your address is blocked ({reason})")  # as on the first node
        mw.cluster_decision(kind, key, "notice" if notice else "resync")
        self.applied += 1
        return "applied"

    def resync(self) -> defer.Deferred[None] | None:
        """Merge Redis and this node (see the module's docstring); one at a time."""
        if not self.started or not self.shared.available():
            return None
        if self._resyncing is not None:
            self._again = True
            return self._resyncing
        d = self._resync()
        self._resyncing = d

        def done(result: object) -> None:
            self._resyncing = None
            if isinstance(result, Failure):
                self._failed(result, "resync")
            if self._again:
                self._again = False
                self.resync()

        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def _resync(self) -> Any:
        mw = self.mw
        for kind, table in TABLES.items():
            remote = yield self.shared.records(table)
            blocks: dict[Any, Block] = mw.user_blocks if kind == "user" else mw.ip_blocks
            now = self.clock.seconds()
            push: list[tuple[Any, Block]] = []
            seen: set[str] = set()
            for key, (version, _expires, value) in remote.items():
                seen.add(key)
                if self._apply(kind, key, version, value, notice=False) == "older":
                    k: Any = int(key) if kind == "user" else key
                    push.append((k, blocks[k]))
            for k, b in list(blocks.items()):
                if str(k) not in seen and b.until > now:
                    push.append((k, b))
            for k, b in push:
                kick = b.reason not in AUTOMATIC
                yield self.publish(kind, k, b.until, b.reason, b.since, kick)
        self.resyncs += 1
        self.last_resync = self.clock.seconds()
        self.last_error = None

    def stats(self) -> dict[str, Any]:
        """The ``cluster`` part of the security section of /stats."""
        return {
            "shared": True,
            "available": bool(self.shared.available()),
            "resyncs": self.resyncs,
            "last_resync": self.last_resync,
            "applied_from_other_nodes": self.applied,
            "pushed": self.pushed,
            "failures": self.failures,
            "last_error": self.last_error,
        }
