"""twistd plugin wiring: options in, a service tree out. The only module that knows every part."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from gamed import __version__, proxy
from gamed.config import COERCERS, ConfigError, Settings, build_settings, with_backlog
from gamed.events import EventBus
from gamed.games import Games
from gamed.httputil import AdminGate
from gamed.middleware import registry
from gamed.pipeline import Pipeline
from gamed.protocol import GameFactory
from gamed.reconfig import Reloader, validate_config
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.service import (
    GameService,
    ServerRoot,
    cannot_use,
    preflight_start,
    twistd_options,
)
from gamed.store import StoreError
from gamed.telemetry import (
    SendCounts,
    ServerMetrics,
    TrafficCollector,
    TransportCollector,
)
from gamed.web import make_site
from gamed.workers.listen import worker_spec
from gamed.workers.worker import adopt
from gamed.ws_site import make_ws_site

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
        [
            "ws-port",
            None,
            None,
            f"WebSocket endpoint: the socket at /ws, the play page at /; a bare port binds "
            f"every interface like --port; 'none' disables it [default: {_d.ws_port}]",
        ],
        [
            "ws-origins",
            None,
            None,
            "Comma list of browser Origins allowed to open a WebSocket (wildcards like "
            "https://*.example.com; '*' for any) [default: the page's own origin and "
            "http://localhost:*, http://127.0.0.1:*]",
        ],
        [
            "ws-trusted-proxies",
            None,
            None,
            "Comma list of proxy addresses/CIDRs whose X-Forwarded-For or Forwarded header "
            "names the WebSocket client's address [default: none]",
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
            "max-partial-bytes",
            None,
            None,
            f"Bytes of partly received frames held across all connections; past it the "
            f"oldest partial frames get Error 503 and a close [default: {_d.max_partial_bytes}]",
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
            f"Seconds clients get to leave on SIGTERM before the rest are closed "
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
            "redis",
            None,
            None,
            "Redis URL of the cluster (redis://[:password@]host[:port][/db], rediss://...[?ca="
            "PEM] for TLS, redis+sentinel://host:port[,...]/master[/db]); unset: one process",
        ],
        [
            "node-id",
            None,
            None,
            "This node's name in the cluster (Redis keys, metrics) [default: host:pid]",
        ],
        [
            "workers",
            None,
            None,
            f"Worker processes sharing the listening sockets; more than 1 needs --redis "
            f"[default: {_d.workers}]",
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

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd, a usage error is one line (and a hint), not the option list.

        twistd prints its whole usage (our 40-odd options) and only then the
        error; exiting here puts the line that matters first, on stderr, with
        twistd's exit status 1. Called directly (tests, tools), the
        UsageError propagates as usual.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            parent = self.parent
            if parent is None:
                raise
            prog = f"twistd {parent.subCommand or 'gamed'}"
            raise SystemExit(f"{prog}: {e}\n{prog}: '{prog} --help' lists the options") from None

    def postOptions(self) -> None:
        """Build the settings and validate every plugin table: any bad value is a usage error.

        The same ``validate_config`` runs on every reload, so what starts also reloads.
        """
        cli = {option: self[option] for option in COERCERS}
        try:
            settings = build_settings(cli, self["config"])
            self.validated = validate_config(settings)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self.settings = settings
        self.cli = cli


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings: Settings = options.settings if isinstance(options, Options) else options["settings"]
    if settings.workers > 1:  # the parent of --workers N: sockets, workers, merged HTTP
        from gamed.workers.supervisor import make_supervisor

        return make_supervisor(options, settings, reactor)
    preflight_start(options, settings, reactor)

    metrics = ServerMetrics()
    events = EventBus()
    rooms = RoomService(reactor, settings.max_room_users, events)
    games = Games(reactor, rooms, events, settings, metrics.registry)
    router = Router(settings, reactor, rooms, Pipeline(), metrics, events, games)
    cluster = None
    if settings.redis is not None:
        # Only with --redis: one process never imports the cluster (nor a Redis client).
        from gamed.cluster.node import ClusterNode

        cluster = ClusterNode(settings, reactor, rooms, metrics.registry)
        router.cluster = cluster
        from gamed.cluster.games import ClusterGames, ClusterGamesCollector, NodeGames

        # Games across nodes: the router's game service decides where each game runs.
        cluster_games = ClusterGames(games, rooms, reactor)
        router.games = cluster_games
        metrics.registry.register(ClusterGamesCollector(cluster_games))
    metrics.registry.register(TrafficCollector(router))

    validated = getattr(options, "validated", None) or validate_config(settings)
    names = validated.enabled
    parts: list[tuple[str, registry.PluginParts]] = []
    admin = AdminGate()  # one for all: security sets the token, analytics checks it
    shared, shared_service = None, None
    if cluster is not None:  # what plugins share cluster-wide, on the node's link
        from gamed.cluster.shared import node_shared_state

        shared, shared_service = node_shared_state(cluster, reactor)
    for name in names:
        env = registry.PluginEnvironment(
            settings=settings,
            config=validated.configs[name],
            clock=reactor,
            events=events,
            registry=metrics.registry,
            rooms=rooms,
            control=router,
            admin=admin,
            shared=shared,
        )
        parts.append((name, validated.factories[name].make(env)))
    router.set_pipeline(Pipeline([p.middleware for _, p in parts]))
    for _, p in parts:
        # A database that cannot be used stops the start here, read-only and before
        # twistd forks, so the line reaches the terminal whole; startService checks
        # again as the --uid user (a failure then goes through twistd's status pipe).
        preflight = getattr(p.service, "preflight", None)
        if preflight is not None:
            try:
                preflight()
            except StoreError as e:
                raise SystemExit(cannot_use(e)) from None

    cli = getattr(options, "cli", None) or {}

    def apply_server(new: Settings) -> None:
        """The live [server] keys (reconfig.RESTART_KEYS are kept at their running values):
        connections opened from now on read router.settings (frame and backlog caps,
        idle timeout, max connections, drain grace); games started or turns begun
        from now on use the new round limit, turn timeout and reconnect grace."""
        router.settings = new
        rooms.max_room_users = new.max_room_users
        games.round_limit = new.round_limit
        games.turn_timeout = new.turn_timeout
        games.reconnect_grace = new.reconnect_grace

    reloader = Reloader(cli, validated, parts, apply_server)
    top = ServerRoot(reactor, reloader)
    top.launcher = twistd_options(options)
    top.data_dir = settings.data_dir
    router.reloader = top.reload  # the admin API's reload: logged like a SIGHUP
    games.service.setServiceParent(top)
    if cluster is not None:
        # Before "game": stopped after the drain, so the node's last leaves reach Redis
        # before it takes its registration down.
        cluster.setServiceParent(top)
        NodeGames(cluster, cluster_games).setServiceParent(top)  # binds once the link exists
    if shared_service is not None:
        shared_service.setServiceParent(top)
    for name, p in parts:
        if p.service is not None:
            p.service.setName(f"middleware-{name}")
            p.service.setServiceParent(top)

    game = GameService(router)
    game.setName("game")
    # ``haproxy:`` (the PROXY protocol): the game protocol starts once the header named the client.
    tcp_factory = GameFactory(router, reactor)
    game_endpoint, game_factory = proxy.listen_args(
        with_backlog(settings.port), tcp_factory, reactor
    )
    listener = strports.service(game_endpoint, game_factory, reactor=reactor)
    listener.setName("game-listener")
    listener.setServiceParent(game)
    ws_factory = None
    if settings.ws_port is not None:
        # Under "game": open through the drain like the game port, WebSocket
        # clients are IConnections in the same router and drained with the rest.
        ws_site = make_ws_site(router, reactor)
        ws_factory = ws_site.ws_factory
        ws = strports.service(with_backlog(settings.ws_port), ws_site, reactor=reactor)
        ws.setName("ws-listener")
        ws.setServiceParent(game)
    writers: dict[str, SendCounts] = {"tcp": tcp_factory.turn}
    if ws_factory is not None:
        writers["ws"] = ws_factory.turn
    metrics.registry.register(TransportCollector(router, ws_factory, writers))
    game.setServiceParent(top)

    if settings.metrics_port is not None:
        cluster_pages: dict[bytes, Any] = {}
        if cluster is not None:
            from gamed.cluster.pages import ClusterPage

            cluster_pages[b"cluster"] = ClusterPage(cluster)
        site = make_site(
            router,
            metrics.registry,
            stats_sections={
                "cache": games.cache_stats,
                "games": games.stats,
                **({"cluster_games": cluster_games.stats} if cluster is not None else {}),
                **({"cluster": cluster.health} if cluster is not None else {}),
                **{n: p.stats for n, p in parts if p.stats is not None},
            },
            room_sections={n: p.room_stats for n, p in parts if p.room_stats is not None},
            extra={
                **{k: v for _, p in parts for k, v in p.resources.items()},
                **cluster_pages,
            },
            admin=admin,
        )
        web = strports.service(with_backlog(settings.metrics_port), site, reactor=reactor)
        web.setName("http-listener")
        web.setServiceParent(top)

    _log.info(
        "gamed {version}: game on {port}, WebSocket on {ws}, HTTP on {http}, middleware: {mw}",
        version=__version__,
        port=settings.port,
        ws=settings.ws_port,
        http=settings.metrics_port,
        mw=", ".join(names) or "none",
    )
    top.router = router  # for tests and tools: the live state behind the services
    worker = worker_spec()
    if worker is not None:  # a worker of --workers N: the parent's sockets, not a bind
        adopt(top, worker, reactor)
    return top
