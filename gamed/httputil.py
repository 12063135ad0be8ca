"""Small helpers for HTTP resources; imports no server code, so plugins may use it."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.web.server import Request


def json_response(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
