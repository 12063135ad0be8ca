"""Small helpers for HTTP resources; imports no server code, so plugins may use it."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import orjson
from twisted.web.server import Request

#: Digits accepted in a path id: enough for 2**64, far below ``int()``'s 4,300-digit limit.
PATH_ID_MAX_DIGITS = 20


def path_id(segment: bytes, lo: int, hi: int) -> int | None:
    """The integer a path segment names, if it is plain ASCII digits within ``lo..hi``; else None.

    Every id in a URL on the HTTP port goes through here, so a 5,000-digit id
    (over Python's int-from-string limit), ``+1``, `` 1``, ``1_0`` or a
    non-ASCII digit is a 400 from the caller, never an exception. Leading
    zeros are accepted (``007`` is 7).
    """
    if not 0 < len(segment) <= PATH_ID_MAX_DIGITS or not segment.isdigit():
        return None  # bytes.isdigit is ASCII-only
    value = int(segment)
    return value if lo <= value <= hi else None


def json_response(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def bearer_refusal(request: Request, expected: bytes) -> str | None:
    """Why ``request`` does not carry ``Authorization: Bearer <expected>``, or None.

    Compared in constant time.
    """
    header = request.getHeader(b"authorization") or b""
    scheme, _, given = header.partition(b" ")
    if scheme.lower() != b"bearer" or not given.strip():
        return "missing 'Authorization: Bearer <token>'"
    if not hmac.compare_digest(given.strip(), expected):
        return "wrong admin token"
    return None


class AdminGate:
    """The admin token as a check any plugin can make, without importing the one that reads it.

    The security plugin reads ``--admin-token-file`` (and re-reads it on
    reload) and hands the gate a function returning the token; gamed.tap gives
    every plugin the same gate in its PluginEnvironment. Plugins must not
    import each other, so this is the only way private data on the HTTP port
    learns whether, and which, token is required.
    """

    def __init__(self) -> None:
        self._token: Callable[[], bytes | None] = lambda: None

    def set_source(self, token: Callable[[], bytes | None]) -> None:
        self._token = token

    def token(self) -> bytes | None:
        return self._token()

    def refusal(self, request: Request) -> str | None:
        """Why ``request`` may not read admin-only data, or None.

        No token configured: None (the data is as open as the HTTP port,
        127.0.0.1 by default). A token configured: the request needs it.
        """
        expected = self._token()
        if expected is None:
            return None
        return bearer_refusal(request, expected)

    def refuse(self, request: Request, message: str) -> bytes:
        """A 401 with the Bearer challenge, as /admin/ answers."""
        request.setHeader(b"www-authenticate", b'Bearer realm="gamed-admin"')
        return json_response(request, 401, {"error": message})
