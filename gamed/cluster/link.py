"""The node's two Redis connections: commands (and PUBLISH, in order) and the subscriber.

STUB: the API the rest of gamed.cluster is written against (issue 13). The
implementation replaces the bodies; the names and contracts stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from gamed.cluster.url import RedisAddress

#: Link states (``RedisLink.state``; /healthz and ``gamed_cluster_link_state``):
UP = "up"  # commands and subscriber connected, the last probe came back in time
DEGRADED = "degraded"  # commands work, the subscriber is down or silent: no cross-node delivery
DOWN = "down"  # no command connection: joins and Connects that need Redis fail fast (503)


class ClusterUnavailable(Exception):
    """Redis cannot answer now (down, or no reply within the timeout); the text says which."""


class Script:
    """A Lua script registered with ``RedisLink.script``: EVALSHA, EVAL on NOSCRIPT."""

    def run(self, keys: Sequence[str], args: Sequence[Any]) -> defer.Deferred[Any]:
        """Run it; fails with ClusterUnavailable like ``execute``."""
        raise NotImplementedError


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
    ) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Connect both links (in startService: after twistd's fork)."""

    def stop(self) -> defer.Deferred[None]:
        """Close both links; pending commands fail with ClusterUnavailable."""
        raise NotImplementedError

    def execute(self, *command: Any, timeout: float | None = None) -> defer.Deferred[Any]:
        """One command (``"HSET", key, f, v``); replies as str/bytes/list/int, never
        converted numbers. Fails at once with ClusterUnavailable while DOWN."""
        raise NotImplementedError

    def script(self, name: str, source: str) -> Script:
        """A script to run by SHA (loaded again after a Redis restart)."""
        raise NotImplementedError

    def publish(self, channel: str, payload: bytes) -> bool:
        """Queue a PUBLISH on the command connection, in call order; False (and counted
        as dropped) while DOWN. Never waits for the reply on the caller's behalf."""
        raise NotImplementedError

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Deliver every message of ``channel`` to ``handler``, in order; kept across
        reconnects (re-subscribed, one channel per SUBSCRIBE)."""

    def on_state(self, listener: Callable[[str, str], None]) -> None:
        """``listener(old, new)`` on every state change (the node re-registers on up)."""

    def health(self) -> dict[str, Any]:
        """For /healthz and /stats: state, each link, last RTT, pub/sub lag, reconnects."""
        raise NotImplementedError
