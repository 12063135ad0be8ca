"""twistd plugin wiring: options in, a service tree out. The only module that knows every part."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from gamed import __version__
from gamed.config import COERCERS, ConfigError, Settings, build_settings, with_backlog
from gamed.events import EventBus
from gamed.games import Games
from gamed.middleware import registry
from gamed.pipeline import Pipeline
from gamed.protocol import GameFactory
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.service import GameService, ServerRoot
from gamed.telemetry import ServerMetrics, TrafficCollector
from gamed.web import make_site

_log = Logger()

_d = Settings()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the gamed game and chat room server. Settings come from the embedded "
        "defaults, then the --config TOML file, then these options (later wins). "
        "Endpoints are Twisted endpoint descriptions; a bare number means a TCP port."
    )
    optParameters = [
        ["port", "p", None, f"Game listener endpoint or port [default: {_d.port}]"],
        [
            "metrics-port",
            None,
            None,
            f"HTTP endpoint for /metrics, /healthz, /stats; a bare port binds 127.0.0.1; "
            f"'none' disables it [default: {_d.metrics_port}]",
        ],
        ["config", "c", None, "TOML config file (see etc/gamed.toml)"],
        ["data-dir", "d", None, f"Directory for persistent data [default: {_d.data_dir}]"],
        [
            "max-frame-bytes",
            None,
            None,
            f"Largest client frame accepted; larger gets Error 413 and a close "
            f"[default: {_d.max_frame_bytes}]",
        ],
        [
            "max-connections",
            None,
            None,
            f"Open connections before new ones get Error 503 [default: {_d.max_connections}]",
        ],
        ["max-room-users", None, None, f"Members per room [default: {_d.max_room_users}]"],
        [
            "idle-timeout",
            None,
            None,
            f"Seconds without a frame before a client is closed; 0 = never "
            f"[default: {_d.idle_timeout:g}]",
        ],
        [
            "max-outgoing-bytes",
            None,
            None,
            f"Bytes queued for a client that is not reading before it is dropped "
            f"[default: {_d.max_outgoing_bytes}]",
        ],
        [
            "shutdown-grace",
            None,
            None,
            f"Seconds clients get to close on SIGTERM before they are aborted "
            f"[default: {_d.shutdown_grace:g}]",
        ],
        [
            "rate-limit",
            None,
            None,
            "Security: chat/game messages per user per minute; 0 turns the limit off "
            "[default: 60, or [middleware.security] rate_limit_per_minute]",
        ],
        [
            "flood-detection",
            None,
            None,
            "Security: on, off or shadow (log and count, refuse nothing) [default: on]",
        ],
        [
            "auth-secret-file",
            None,
            None,
            "File holding the HMAC secret; when set, Connect needs a token (see gamed-token)",
        ],
        [
            "admin-token-file",
            None,
            None,
            "File holding the bearer token for /admin/ on the HTTP port; unset: admin API off",
        ],
        ["round-limit", None, None, f"Rounds per game [default: {_d.round_limit}]"],
        [
            "turn-timeout",
            None,
            None,
            f"Seconds a player has to act before the turn passes [default: {_d.turn_timeout:g}]",
        ],
        [
            "reconnect-grace",
            None,
            None,
            f"Seconds a dropped player keeps a seat in a running game "
            f"[default: {_d.reconnect_grace:g}]",
        ],
        [
            "middleware",
            "m",
            None,
            "Comma list of middleware plugins to run, in order; 'none' for none "
            "[default: all available: "
            + (", ".join(registry.available()) or "none installed")
            + "]",
        ],
    ]

    def postOptions(self) -> None:
        cli = {option: self[option] for option in COERCERS}
        try:
            settings = build_settings(cli, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        enabled = registry.available() if settings.middleware is None else settings.middleware
        for option, value in (
            ("auth-secret-file", settings.auth_secret_file),
            ("admin-token-file", settings.admin_token_file),
        ):
            if value and "security" not in enabled:
                # Both are served by the security plugin: running without it
                # would silently accept any user id or ignore the admin token.
                raise usage.UsageError(f"--{option} needs the security middleware enabled")
        if settings.middleware is not None:
            known = registry.available()
            for name in settings.middleware:
                if name not in known:
                    raise usage.UsageError(
                        f"--middleware: unknown plugin {name!r} (available: "
                        f"{', '.join(known) or 'none'})"
                    )
        self.settings = settings
        self.cli = cli


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings: Settings = options.settings if isinstance(options, Options) else options["settings"]
    os.makedirs(settings.data_dir, exist_ok=True)

    metrics = ServerMetrics()
    events = EventBus()
    rooms = RoomService(reactor, settings.max_room_users, events)
    games = Games(reactor, rooms, events, settings, metrics.registry)
    router = Router(settings, reactor, rooms, Pipeline(), metrics, events, games)
    metrics.registry.register(TrafficCollector(router))

    names = settings.middleware if settings.middleware is not None else registry.available()
    parts: list[tuple[str, registry.PluginParts]] = []
    for name in names:
        env = registry.PluginEnvironment(
            settings=settings,
            config=settings.for_plugin(name),
            clock=reactor,
            events=events,
            registry=metrics.registry,
            rooms=rooms,
            control=router,
        )
        parts.append((name, registry.load(name)(env)))
    router.set_pipeline(Pipeline([p.middleware for _, p in parts]))

    cli = getattr(options, "cli", None) or {}

    def reload() -> dict[str, Any]:
        new = build_settings(cli, settings.config_file)
        reloaded = []
        for name, p in parts:
            if p.reload is not None:
                p.reload(new)
                reloaded.append(name)
        return {"reloaded": reloaded, "config_file": settings.config_file}

    router.reloader = reload
    top = ServerRoot(reactor, reload)
    games.service.setServiceParent(top)
    for name, p in parts:
        if p.service is not None:
            p.service.setName(f"middleware-{name}")
            p.service.setServiceParent(top)

    game = GameService(router)
    game.setName("game")
    listener = strports.service(
        with_backlog(settings.port), GameFactory(router, reactor), reactor=reactor
    )
    listener.setName("game-listener")
    listener.setServiceParent(game)
    game.setServiceParent(top)

    if settings.metrics_port is not None:
        site = make_site(
            router,
            metrics.registry,
            stats_sections={
                "cache": games.cache_stats,
                "games": games.stats,
                **{n: p.stats for n, p in parts if p.stats is not None},
            },
            room_sections={n: p.room_stats for n, p in parts if p.room_stats is not None},
            extra={k: v for _, p in parts for k, v in p.resources.items()},
        )
        web = strports.service(with_backlog(settings.metrics_port), site, reactor=reactor)
        web.setName("http-listener")
        web.setServiceParent(top)

    _log.info(
        "gamed {version}: game on {port}, HTTP on {http}, middleware: {mw}",
        version=__version__,
        port=settings.port,
        http=settings.metrics_port,
        mw=", ".join(names) or "none",
    )
    top.router = router  # for tests and tools: the live state behind the services
    return top
