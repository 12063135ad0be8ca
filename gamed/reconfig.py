"""One config contract for start and reload: validate every table, then apply all or nothing.

``validate_config`` is the only place a config is judged: ``Options.postOptions``
turns its ConfigError into a usage error at start, and ``Reloader`` runs it on a
re-read config before touching anything, so a config that a reload accepts
also starts (and the other way round).

A reload that validates is applied to the server and to every running plugin;
its result names the keys that changed, the ones applied live and the ones that
need a restart. Nothing is ignored silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from twisted.logger import Logger

from gamed.cache import CacheConfig
from gamed.config import (
    COERCERS,
    ConfigError,
    PluginConfigError,
    Settings,
    build_settings,
    read_config_file,
)
from gamed.middleware import registry

_log = Logger()

#: ``[server]`` keys (Settings fields as spelled in the TOML file) a reload compares.
SERVER_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(Settings) if f.name not in ("config_file", "plugin_config")
)

#: ``[server]`` keys a running server cannot change: its listeners, its data
#: directory and the plugin pipeline. Every other server key is applied live
#: (see ``apply_server`` in gamed.tap and the README's reload section).
RESTART_KEYS: frozenset[str] = frozenset(
    {"port", "metrics_port", "ws_port", "data_dir", "middleware", "redis", "node_id", "workers"}
)

_MISSING = object()


def validate_cache(table: Mapping[str, Any], settings: Settings) -> CacheConfig:
    """``[middleware.cache]`` (the game-state cache, a core table, not a plugin)."""
    known = {f.name: f.default for f in fields(CacheConfig)}
    for key, value in table.items():
        if key not in known:
            raise PluginConfigError("cache", key, f"unknown key; known: {', '.join(known)}")
        default = known[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise PluginConfigError("cache", key, f"expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, type(default) | int):
            raise PluginConfigError("cache", key, f"expected a number, got {value!r}")
    try:
        return CacheConfig.from_mapping(table)
    except (TypeError, ValueError) as e:
        raise PluginConfigError("cache", None, str(e)) from None


#: Tables under ``[middleware.*]`` the core reads itself (never reloaded live).
CORE_TABLES: dict[str, registry.Validator] = {"cache": validate_cache}


@dataclass(frozen=True)
class Validated:
    """A config that passed every check: the settings and each table's validated config."""

    settings: Settings
    #: Plugins in pipeline order.
    enabled: tuple[str, ...]
    #: name -> factory, for every plugin whose table was validated (enabled or with a table).
    factories: Mapping[str, registry.PluginFactory]
    #: name -> what its validate step returned (core tables included).
    configs: Mapping[str, Any]


def validate_config(settings: Settings, running: Sequence[str] = ()) -> Validated:
    """Check the plugin list and every ``[middleware.NAME]`` table; raises ConfigError.

    Unknown tables (no installed plugin, no core table of that name) are errors,
    and so is every unknown key (each plugin's validate step refuses them).
    Tables of installed plugins that are not enabled are validated too, so a
    typo does not wait for the day the plugin is switched on. ``running``: plugins
    a live server runs (a reload validates their tables even if the new
    ``middleware`` list, which needs a restart, drops them).
    """
    installed = registry.available()
    enabled = tuple(installed) if settings.middleware is None else settings.middleware
    for name in enabled:
        if name not in installed:
            raise ConfigError(
                "middleware",
                f"unknown plugin {name!r} (available: {', '.join(installed) or 'none'})",
            )
    for option, value in (
        ("auth-secret-file", settings.auth_secret_file),
        ("admin-token-file", settings.admin_token_file),
    ):
        if value and "security" not in enabled:
            # Both are served by the security plugin: running without it would
            # silently accept any user id or ignore the admin token.
            raise ConfigError(option, "needs the security middleware enabled")
    tables = settings.plugin_config
    for name in tables:
        if name not in installed and name not in CORE_TABLES:
            raise PluginConfigError(
                name,
                None,
                f"unknown table: no plugin {name!r} is installed "
                f"(plugins: {', '.join(installed) or 'none'}; core: {', '.join(CORE_TABLES)})",
            )
    configs: dict[str, Any] = {}
    for name, check in CORE_TABLES.items():
        if name in tables:
            configs[name] = check(tables[name], settings)
    factories: dict[str, registry.PluginFactory] = {}
    wanted = [*enabled, *running, *(n for n in tables if n in installed)]
    for name in dict.fromkeys(wanted):
        factory = registry.load(name)
        factories[name] = factory
        configs[name] = factory.check(name, settings.for_plugin(name), settings)
    return Validated(settings, enabled, MappingProxyType(factories), MappingProxyType(configs))


def _table_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(
        key for key in set(old) | set(new) if old.get(key, _MISSING) != new.get(key, _MISSING)
    )


class Reloader:
    """Re-read the config, validate all of it, then apply all of it (or nothing).

    ``apply_server(settings)`` applies the live ``[server]`` keys to the core;
    ``parts`` are the running plugins. Restart-only keys keep their running
    values in the settings handed on, so every later reload reports them again
    until the server is restarted.
    """

    def __init__(
        self,
        cli: Mapping[str, Any],
        current: Validated,
        parts: Sequence[tuple[str, registry.PluginParts]],
        apply_server: Callable[[Settings], None],
    ) -> None:
        self.cli = dict(cli)
        self.current = current
        self.parts = list(parts)
        self.apply_server = apply_server

    def __call__(self) -> dict[str, Any]:
        """The reload: raises ConfigError (nothing applied) or returns what changed."""
        old = self.current
        settings = build_settings(self.cli, old.settings.config_file)
        # Every table, before anything is applied: the same code as at start.
        new = validate_config(settings, [name for name, _ in self.parts])

        changed: list[str] = []
        applied: list[str] = []
        restart: list[str] = []
        kept: dict[str, Any] = {}
        for key in SERVER_KEYS:
            if getattr(old.settings, key) != getattr(settings, key):
                changed.append(f"server.{key}")
                if key in RESTART_KEYS:
                    restart.append(f"server.{key}")
                    kept[key] = getattr(old.settings, key)
                else:
                    applied.append(f"server.{key}")

        live = {name: p for name, p in self.parts if p.reload is not None}
        effective_tables: dict[str, Mapping[str, Any]] = {}
        for table in sorted(set(old.settings.plugin_config) | set(settings.plugin_config)):
            before, after = old.settings.for_plugin(table), settings.for_plugin(table)
            factory = new.factories.get(table)
            restart_keys = factory.restart_keys if factory is not None else frozenset()
            effective = dict(after)
            for key in _table_changes(before, after):
                name = f"middleware.{table}.{key}"
                changed.append(name)
                if table in live and key not in restart_keys:
                    applied.append(name)
                    continue
                restart.append(name)
                # Not applied: the running value stays, so the next reload reports it again.
                if key in before:
                    effective[key] = before[key]
                else:
                    effective.pop(key, None)
            if effective:
                effective_tables[table] = MappingProxyType(effective)

        # [server] keys the file sets but the command line overrides (it always wins).
        overridden: list[str] = []
        if settings.config_file and any(v is not None for v in self.cli.values()):
            in_file = read_config_file(settings.config_file).get("server", {})
            from_file = build_settings({}, settings.config_file)
            overridden = [
                f"server.{field}"
                for option, (field, _) in COERCERS.items()
                if field in in_file
                and self.cli.get(option) is not None
                and getattr(from_file, field) != getattr(settings, field)
            ]

        running = dataclasses.replace(
            settings, **kept, plugin_config=MappingProxyType(effective_tables)
        )
        self.apply_server(running)
        reloaded: list[str] = []
        failed: dict[str, str] = {}
        for name, hook in ((n, p.reload) for n, p in self.parts if p.reload is not None):
            assert hook is not None
            try:
                hook(running, new.configs[name])
            except Exception as e:  # a plugin bug: its table validated, so say it loudly
                _log.failure("config reload: plugin {name} failed to apply its section", name=name)
                failed[name] = f"{type(e).__name__}: {e}"
            else:
                reloaded.append(name)
        self.current = Validated(running, old.enabled, new.factories, new.configs)
        result: dict[str, Any] = {
            "config_file": settings.config_file,
            "changed": changed,
            "applied": applied,
            "restart_required": restart,
            "overridden_by_command_line": overridden,
            "reloaded": reloaded,
        }
        if failed:
            result["failed"] = failed
        return result


def describe(result: Mapping[str, Any]) -> str:
    """A reload result as one log line."""

    def names(key: str) -> str:
        return ", ".join(result.get(key) or []) or "none"

    text = (
        f"changed: {names('changed')}; applied: {names('applied')}; "
        f"needs a restart: {names('restart_required')}; plugins reloaded: {names('reloaded')}"
    )
    if result.get("overridden_by_command_line"):
        text += f"; set in the file but overridden by the command line: {names('overridden_by_command_line')}"
    if result.get("failed"):
        text += f"; FAILED to apply: {dict(result['failed'])}"
    return text
