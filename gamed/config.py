"""Settings: embedded defaults, overlaid by a TOML file, overlaid by the command line.

One frozen ``Settings`` object comes out; every validation error names the
option it is about, so ``twistd gamed`` can report it as a UsageError.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from twisted.internet.endpoints import serverFromString

#: Listen backlog added to TCP endpoints that do not set one.
LISTEN_BACKLOG = 1024


#: The PROXY protocol wrapper's prefix (gamed.proxy): ``haproxy:tcp:7000``.
PROXY_PREFIX = "haproxy:"


def with_backlog(description: str) -> str:
    """Twisted's default accept queue is 50: a reconnect storm after a restart
    overflows it and clients see resets. TCP endpoints get a deeper one unless
    the operator set ``backlog=`` themselves; under ``haproxy:`` too."""
    if description.startswith(PROXY_PREFIX):
        return PROXY_PREFIX + with_backlog(description[len(PROXY_PREFIX) :])
    if description.startswith(("tcp:", "tcp6:")) and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


class ConfigError(ValueError):
    """A bad setting; ``option`` is its command-line name (without dashes)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"--{option}: {message}")
        self.option = option
        self.message = message


class PluginConfigError(ConfigError):
    """A bad ``[middleware.NAME]`` table or key: the one error every plugin's validation raises.

    Its text is ``[middleware.NAME] key: message`` (no key: ``[middleware.NAME]: message``),
    so start (a usage error) and reload (a log line, the reload API) name the same place.
    """

    def __init__(self, table: str, key: str | None, message: str) -> None:
        where = f"[middleware.{table}] {key}" if key else f"[middleware.{table}]"
        ValueError.__init__(self, f"{where}: {message}")
        self.option = "config"
        self.message = message
        self.table = table
        self.key = key


@dataclass(frozen=True, slots=True)
class Settings:
    port: str = "tcp:7000"
    metrics_port: str | None = "tcp:9700:interface=127.0.0.1"
    #: The WebSocket port (and the play page); a player port like ``port``: all interfaces.
    ws_port: str | None = "tcp:7080"
    #: Allowed browser ``Origin``s; None: the page's own origin and localhost (gamed.websocket).
    ws_origins: tuple[str, ...] | None = None
    #: CIDRs whose X-Forwarded-For / Forwarded headers are believed.
    ws_trusted_proxies: tuple[str, ...] = ()
    data_dir: str = "./gamed-data"
    max_frame_bytes: int = 65536
    #: Bytes of partly received frames held across all connections (docs/protocol.md).
    max_partial_bytes: int = 32 * 1024 * 1024
    max_connections: int = 10000
    max_room_users: int = 100
    idle_timeout: float = 30.0
    #: None means "every available middleware"; () means none.
    middleware: tuple[str, ...] | None = None
    max_outgoing_bytes: int = 1024 * 1024
    shutdown_grace: float = 3.0
    # -- security plugin knobs (None: the plugin's config section or default decides)
    rate_limit: int | None = None
    flood_detection: str | None = None
    auth_secret_file: str | None = None
    admin_token_file: str | None = None
    # -- games
    round_limit: int = 10
    turn_timeout: float = 30.0
    reconnect_grace: float = 30.0
    # -- cluster (docs/cluster.md)
    #: ``--redis URL``; None: one process, no Redis (the embedded default).
    redis: str | None = None
    #: This node's name in the cluster; None: ``host:pid``, chosen in startService (after a fork).
    node_id: str | None = None
    #: Worker processes sharing the listening sockets; more than 1 needs ``redis``.
    workers: int = 1
    config_file: str | None = None
    #: Raw ``[middleware.NAME]`` tables from the config file, for the plugins.
    plugin_config: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def for_plugin(self, name: str) -> Mapping[str, Any]:
        return self.plugin_config.get(name, MappingProxyType({}))


# -- coercion ---------------------------------------------------------------------


def _int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def coerce(option: str, value: Any) -> int:
        if isinstance(value, bool):
            raise ConfigError(option, f"expected an integer, got {value!r}")
        try:
            n = int(str(value).strip().replace("_", ""))
        except ValueError:
            raise ConfigError(option, f"expected an integer, got {value!r}") from None
        if not lo <= n <= hi:
            raise ConfigError(option, f"must be between {lo} and {hi}, got {n}")
        return n

    return coerce


def _seconds(lo: float, hi: float) -> Callable[[str, Any], float]:
    def coerce(option: str, value: Any) -> float:
        if isinstance(value, bool):
            raise ConfigError(option, f"expected seconds, got {value!r}")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ConfigError(option, f"expected a number of seconds, got {value!r}") from None
        if not lo <= x <= hi:
            raise ConfigError(option, f"must be between {lo:g} and {hi:g} seconds, got {x:g}")
        return x

    return coerce


def _endpoint(
    default_interface: str | None, allow_none: bool = False
) -> Callable[[str, Any], str | None]:
    def coerce(option: str, value: Any) -> str | None:
        text = str(value).strip()
        if allow_none and text.lower() in ("none", "off", ""):
            return None
        if text.isdigit():
            number = int(text)
            if number > 65535:
                raise ConfigError(option, f"port {number} is out of range 0..65535")
            text = f"tcp:{number}"
            if default_interface:
                text += f":interface={default_interface}"
        try:
            # Parse only: the endpoint object is thrown away, nothing listens.
            endpoint = serverFromString(None, text)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(option, f"not a valid endpoint description {text!r}: {e}") from None
        except ImportError as e:  # ssl: without pyOpenSSL
            raise ConfigError(
                option, f"{text!r} needs TLS support ({e}): pip install 'twisted[tls]'"
            ) from None
        except OSError as e:  # ssl: reads its key and certificate files here
            raise ConfigError(option, f"{text!r}: cannot read {e.filename}: {e.strerror}") from None
        # haproxy: wraps the endpoint under it; check that one's port.
        endpoint = getattr(endpoint, "_wrappedEndpoint", endpoint)
        port = getattr(endpoint, "_port", None)
        if isinstance(port, int) and not 0 <= port <= 65535:
            raise ConfigError(option, f"port {port} is out of range 0..65535")
        return text

    return coerce


def _middleware(option: str, value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list | tuple):
        names = [str(v).strip() for v in value]
    else:
        text = str(value).strip()
        if text.lower() in ("all", "default"):
            return None
        if text.lower() == "none" or text == "":
            return ()
        names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise ConfigError(option, f"empty plugin name in {value!r}")
    if len(set(names)) != len(names):
        raise ConfigError(option, f"a plugin is listed twice in {value!r}")
    return tuple(names)


def _mode(option: str, value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("on", "off", "shadow"):
        raise ConfigError(option, f"expected on, off or shadow, got {value!r}")
    return text


def _origins(option: str, value: Any) -> tuple[str, ...] | None:
    """A comma list of origins (``scheme://host[:port]``, ``*`` wildcards, or ``*``);
    ``default`` (or nothing) is the page's own origin and localhost."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    origins = tuple(str(o).strip().lower().rstrip("/") for o in items if str(o).strip())
    if not origins or origins == ("default",):
        return None
    for origin in origins:
        if origin in ("*", "null"):
            continue
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ConfigError(
                option, f"expected origins like https://game.example.com or *, got {origin!r}"
            )
    return origins


def _networks(option: str, value: Any) -> tuple[str, ...]:
    """A comma list of addresses or CIDRs (``10.0.0.0/8, ::1``); empty: trust no proxy."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    networks = []
    for item in (str(i).strip() for i in items):
        if not item or item.lower() == "none":
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(option, f"expected an address or CIDR, got {item!r}") from None
    return tuple(networks)


def _path(option: str, value: Any) -> str:
    text = str(value)
    if not text.strip():
        raise ConfigError(option, "must not be empty")
    return os.path.expanduser(text)


def _redis(option: str, value: Any) -> str | None:
    from gamed.cluster.url import parse_redis_url

    text = str(value).strip()
    if text.lower() in ("", "none", "off"):
        return None
    try:
        address = parse_redis_url(text)
    except ValueError as e:
        raise ConfigError(option, str(e)) from None
    if address.ca_file is not None and not os.access(address.ca_file, os.R_OK):
        raise ConfigError(option, f"ca={address.ca_file}: cannot read the CA file")
    return text


#: What a node id may contain: it is part of Redis keys, channels and metric labels.
NODE_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


def _node_id(option: str, value: Any) -> str:
    text = str(value).strip()
    if not NODE_ID.fullmatch(text):
        raise ConfigError(
            option,
            f"expected 1-64 of letters, digits and _.:@- (it names Redis keys), got {text!r}",
        )
    return text


# Option name (as on the command line) -> (Settings field, coercer)
COERCERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "port": ("port", _endpoint(None)),
    "metrics-port": ("metrics_port", _endpoint("127.0.0.1", allow_none=True)),
    "ws-port": ("ws_port", _endpoint(None, allow_none=True)),
    "ws-origins": ("ws_origins", _origins),
    "ws-trusted-proxies": ("ws_trusted_proxies", _networks),
    "data-dir": ("data_dir", _path),
    "max-frame-bytes": ("max_frame_bytes", _int_range(64, 16 * 1024 * 1024)),
    "max-partial-bytes": ("max_partial_bytes", _int_range(64 * 1024, 64 * 1024**3)),
    "max-connections": ("max_connections", _int_range(1, 1_000_000)),
    "max-room-users": ("max_room_users", _int_range(1, 100_000)),
    "idle-timeout": ("idle_timeout", _seconds(0, 86400)),
    "middleware": ("middleware", _middleware),
    "max-outgoing-bytes": ("max_outgoing_bytes", _int_range(4096, 1024**3)),
    "shutdown-grace": ("shutdown_grace", _seconds(0, 300)),
    "rate-limit": ("rate_limit", _int_range(0, 1_000_000)),
    "flood-detection": ("flood_detection", _mode),
    "auth-secret-file": ("auth_secret_file", _path),
    "admin-token-file": ("admin_token_file", _path),
    "round-limit": ("round_limit", _int_range(1, 10_000)),
    "turn-timeout": ("turn_timeout", _seconds(0.1, 86400)),
    "reconnect-grace": ("reconnect_grace", _seconds(0, 86400)),
    "redis": ("redis", _redis),
    "node-id": ("node_id", _node_id),
    "workers": ("workers", _int_range(1, 256)),
}


def read_config_file(path: str) -> dict[str, Any]:
    """Parse the TOML file; errors name --config."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML (not UTF-8): {e}") from None


def build_settings(cli: Mapping[str, Any], config_path: str | None = None) -> Settings:
    """Defaults < the config file's ``[server]`` table < the command line.

    ``cli`` maps option names (``max-frame-bytes``) to raw values; options that
    were not given must be absent (or None).
    """
    values: dict[str, Any] = {}
    plugin_config: dict[str, Mapping[str, Any]] = {}
    if config_path:
        doc = read_config_file(config_path)
        unknown = set(doc) - {"server", "middleware"}
        if unknown:
            raise ConfigError("config", f"unknown table(s) {sorted(unknown)} in {config_path}")
        server = doc.get("server", {})
        if not isinstance(server, dict):
            raise ConfigError("config", f"[server] must be a table in {config_path}")
        middleware = doc.get("middleware", {})
        if not isinstance(middleware, dict):
            raise ConfigError("config", f"[middleware] must be a table in {config_path}")
        for key, raw in server.items():
            option = key.replace("_", "-")
            if option not in COERCERS:
                raise ConfigError(
                    "config", f"unknown key [server].{key} in {config_path} (see etc/gamed.toml)"
                )
            name, coerce = COERCERS[option]
            values[name] = coerce(option, raw)
        for name, table in middleware.items():
            if not isinstance(table, dict):
                raise ConfigError("config", f"[middleware.{name}] must be a table")
            plugin_config[name] = MappingProxyType(dict(table))
    for option, raw in cli.items():
        if raw is None:
            continue
        name, coerce = COERCERS[option]
        values[name] = coerce(option, raw)
    values["config_file"] = config_path
    values["plugin_config"] = MappingProxyType(plugin_config)
    known = {f.name for f in fields(Settings)}
    assert set(values) <= known, set(values) - known
    if values.get("workers", 1) > 1 and not values.get("redis"):
        raise ConfigError(
            "workers", "more than 1 worker needs --redis (the workers form a cluster)"
        )
    return Settings(**values)


# -- for plugins: checking a [middleware.NAME] table ------------------------------


def check_plugin_keys(table: str, config: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    """Refuse any key of ``[middleware.table]`` that is not one of ``known``'s."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise PluginConfigError(
            table, ", ".join(unknown), f"unknown key; known: {', '.join(known)}"
        )


def plugin_number(
    table: str, key: str, value: Any, lo: float, hi: float, *, integer: bool = False
) -> Any:
    """``value`` of ``[middleware.table] key``, refused unless a number (not a bool) in
    ``lo..hi``, and with ``integer`` a whole one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PluginConfigError(table, key, f"expected a number, got {value!r}")
    if integer and value != int(value):
        raise PluginConfigError(table, key, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise PluginConfigError(table, key, f"must be {lo:g}..{hi:g}, got {value}")
    return value
