"""A user's rate window follows their session to another node (docs/security.md).

A user has one session cluster-wide, so the node that holds it enforces the
per-user limits alone, from memory: no Redis round trip per message. What
must not happen is a reset by moving: disconnect from node A, Connect on
node B, and get a fresh minute and clean scores. So when a user's last
connection on a node closes, the node stashes the user's window (start,
count), flood bucket and scores in Redis with a TTL (as long as any of it
still matters, at most ``MAX_TTL``); the node where the user next connects
takes it (GETDEL) and merges it. A takeover (Connect on B while the session
on A is still open) closes A's session only after B's Connect, so B reads
again ``RETRY_SECONDS`` later if the first read found nothing.

At most three Redis commands per session (a read at Connect, a second read
if the first found nothing, a write at the end), none per message; a
failure costs only the carry-over (the limits still hold per node). The
Connect does not wait for the read: what the user sends in that round trip
counts on the new node's window, and the stash is added when it arrives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from gamed.middleware.security.middleware import SecurityMiddleware, UserState

#: The stash table: keys ``gamed:shared:rate:{user_id}``.
TABLE = "rate"
#: Seconds after a Connect to read again when the first read found nothing (a takeover:
#: the old node stashes when it closes the replaced session, after this Connect).
RETRY_SECONDS = 1.0
#: The longest a stash is kept, whatever its scores.
MAX_TTL = 3600.0


class RateHandover:
    """Stash a user's window when their session ends here; merge it where it starts."""

    def __init__(
        self, mw: SecurityMiddleware, shared: Any, clock: IReactorTime, window: float
    ) -> None:
        self.mw = mw
        self.shared = shared
        self.clock = clock
        self.window = window
        self.stashed = 0
        self.merged = 0
        self.failures = 0

    def left(self, user_id: int, user: UserState) -> None:
        """The user's last connection here closed: stash what still matters."""
        if not self.shared.available():
            return
        now = self.clock.seconds()
        self.mw.decay(user, now)
        p = self.mw.policy
        ttl = 0.0
        if user.count and user.window_start + self.window > now:
            ttl = user.window_start + self.window - now
        if user.flood_at > now:
            ttl = max(ttl, user.flood_at - now)
        for score, per_minute in (
            (user.suspicion, p.suspicion_decay_per_minute),
            (user.violations, p.violation_decay_per_minute),
        ):
            if score:
                ttl = max(ttl, 60.0 * score / per_minute if per_minute > 0 else MAX_TTL)
        if ttl <= 0:
            return
        value = orjson.dumps(
            {
                "n": self.shared.node_id,
                "w": user.window_start,
                "c": user.count,
                "f": user.flood_at,
                "s": user.suspicion,
                "v": user.violations,
            }
        ).decode()
        d = self.shared.stash(TABLE, str(user_id), value, min(ttl, MAX_TTL))
        d.addCallbacks(self._stashed, self._failed)

    def _stashed(self, _: None) -> None:
        self.stashed += 1

    def arrived(self, user_id: int, user: UserState, fresh: bool, retry: bool = True) -> None:
        """The user's session started here (after Connect): take a stash and merge it.
        ``fresh``: the state was made just now (add counts), else it is this node's
        older state (take the larger of each)."""
        if not self.shared.available():
            return
        d = self.shared.take(TABLE, str(user_id))

        def got(value: str | None) -> None:
            if value is None:
                if retry and user.conns > 0:
                    self.clock.callLater(RETRY_SECONDS, self._again, user_id, user, fresh)
                return
            self._merge(user, value, fresh)

        d.addCallbacks(got, self._failed)

    def _again(self, user_id: int, user: UserState, fresh: bool) -> None:
        if user.conns > 0 and self.mw.users.get(user_id) is user:
            self.arrived(user_id, user, fresh, retry=False)

    def _merge(self, user: UserState, value: str, fresh: bool) -> None:
        try:
            v = orjson.loads(value)
            node = str(v["n"])
            start, count = float(v["w"]), int(v["c"])
            flood_at, suspicion, violations = float(v["f"]), float(v["s"]), float(v["v"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if node == self.shared.node_id or not all(
            math.isfinite(x) for x in (start, flood_at, suspicion, violations)
        ):
            return  # our own: this node's state already holds it
        now = self.clock.seconds()
        if start + self.window > now and count > 0:
            if fresh:
                user.count += count
                user.window_start = min(user.window_start, start)
            elif user.window_start + self.window <= now:
                user.window_start, user.count = start, count
            else:
                user.count = max(user.count, count)
        user.flood_at = max(user.flood_at, flood_at)
        self.mw.decay(user, now)
        user.suspicion = max(user.suspicion, suspicion)
        user.violations = max(user.violations, violations)
        self.merged += 1

    def _failed(self, f: Failure) -> None:
        self.failures += 1

    def stats(self) -> dict[str, int]:
        return {"stashed": self.stashed, "merged": self.merged, "failures": self.failures}
