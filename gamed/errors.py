"""The one exception every handler uses to refuse a message with an error code."""

from __future__ import annotations


class Refusal(Exception):
    """A message refused with Error{code, message}; ``close`` also drops the connection."""

    def __init__(self, code: int, message: str, close: bool = False) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.close = close

    def __repr__(self) -> str:
        return f"Refusal({self.code}, {self.message!r})"


class SharedStateUnavailable(Exception):
    """The cluster's shared state (``ISharedState``) cannot answer now: Redis down or slow.

    Defined here, not in gamed.cluster, so plugins can catch it without importing the cluster.
    """
