"""``/cluster`` on the HTTP port: this node, the cluster's nodes and a page of its rooms.

The room listing reads one page of the ``gamed:rooms`` zset (ZREVRANGE): never the
whole of anything, however many rooms the cluster has.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gamed.httputil import json_response

#: Rows per page of /cluster's room listing: the default and the largest ``limit``.
PAGE_DEFAULT, PAGE_MAX = 50, 500


def _int_arg(request: Request, name: bytes, default: int, hi: int) -> int:
    values = (request.args or {}).get(name)
    if not values:
        return default
    text = values[0].decode("ascii", "replace")
    if not text.isdigit() or int(text) > hi:
        raise ValueError(f"{name.decode()} must be an integer 0..{hi}")
    return int(text)


class ClusterPage(Resource):
    """``/cluster?offset=0&limit=50``: rooms largest first, cluster-wide counts."""

    isLeaf = True

    def __init__(self, node: Any) -> None:
        super().__init__()
        self._node = node

    def render_GET(self, request: Request) -> Any:
        try:
            offset = _int_arg(request, b"offset", 0, 1_000_000)
            limit = max(1, _int_arg(request, b"limit", PAGE_DEFAULT, PAGE_MAX))
        except ValueError as e:
            return json_response(request, 400, {"error": str(e)})
        node = self._node
        body: dict[str, Any] = {"node": node.health()}
        directory = node.directory
        if directory is None or node.state == "down":
            body["error"] = "cluster unavailable: no connection to Redis"
            return json_response(request, 503, body)

        def answer(results: list[Any]) -> None:
            nodes, rooms = results
            body["nodes"] = [{"node": n, "lease_deadline_ms": t} for n, t in nodes]
            body["rooms"] = {
                "offset": offset,
                "limit": limit,
                "rooms": [{"room_id": r, "user_count": c} for r, c in rooms],
            }
            finish(200)

        def failed(failure: Any) -> None:
            body["error"] = f"cluster unavailable: {failure.getErrorMessage()}"
            finish(503)

        def finish(status: int) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(json_response(request, status, body))
                request.finish()

        d = defer.gatherResults(
            [directory.nodes(), directory.listing(offset, limit)], consumeErrors=True
        )
        d.addCallbacks(answer, failed)
        return NOT_DONE_YET
