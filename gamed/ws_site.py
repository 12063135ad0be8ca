"""The WebSocket port's HTTP site: the socket at ``/ws``, the play page and ``gamed.js`` at ``/``.

One port for both, so a page served here talks to its own origin (the
default ``--ws-origins`` allows exactly that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from gamed.interfaces import IConnectionHandler
from gamed.websocket import GameWebSocketFactory

#: The play page, gamed.js and their assets, shipped in the package (setup.cfg package_data).
STATIC_DIR = Path(__file__).with_name("static")

#: Seconds an HTTP client may take to send its request (the WebSocket handshake included).
REQUEST_TIMEOUT = 30


class StaticFiles(File):
    """``File`` without directory listings, with explicit types and no sniffing."""

    contentTypes = {
        **File.contentTypes,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
        ".svg": "image/svg+xml",
        ".png": "image/png",
        ".ico": "image/x-icon",
        ".webmanifest": "application/manifest+json",
    }

    childNotFound = pages.notFound()  # type: ignore[assignment]  # escapes its HTML
    forbidden = pages.forbidden()  # type: ignore[assignment]

    def directoryListing(self) -> IResource:
        return pages.notFound()  # a directory without index.html is not a page

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        return super().render_GET(request)


class WebSocketSite(Site):
    """The WebSocket port's Site; its name is the log line tools read the bound port from
    ("WebSocketSite starting on N"). Logs only failed requests."""

    #: The WebSocket factory behind /ws (its counters feed the transport metrics).
    ws_factory: GameWebSocketFactory

    def stopFactory(self) -> None:
        self.ws_factory.idle.stop()
        self.ws_factory.turn.stop()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        if request.code >= 400:
            super().log(request)


def make_ws_site(
    handler: IConnectionHandler,
    clock: IReactorTime,
    static_dir: str | os.PathLike[str] = STATIC_DIR,
) -> WebSocketSite:
    """``/ws``: the WebSocket (autobahn); anything else: a file under ``static_dir``."""
    factory = GameWebSocketFactory(handler, clock)
    root: Resource = StaticFiles(os.fspath(static_dir), defaultType="application/octet-stream")
    root.putChild(b"ws", WebSocketResource(factory))
    site = WebSocketSite(root, reactor=clock)
    site.noisy = False
    site.displayTracebacks = False
    site.timeOut = REQUEST_TIMEOUT
    site.ws_factory = factory
    return site
