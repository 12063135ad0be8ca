"""Find middleware plugins by name, and the contract each one keeps with the server.

Built-in plugins are listed here (module path and ``PluginFactory``, imported
only when enabled); third-party ones register an entry point in the
``gamed.middleware`` group. A ``PluginFactory`` has two steps:

* ``validate(table, settings) -> config``: checks the plugin's
  ``[middleware.NAME]`` table (unknown keys are errors) and raises
  ``gamed.config.PluginConfigError`` naming the key. Start (``Options.postOptions``)
  and every reload run it on every table before anything is built or applied.
* ``make(env) -> PluginParts``: builds the plugin from ``env.config``, the
  validated config; it never re-parses the table. ``PluginParts.reload(settings,
  config)`` applies a new validated config and must not fail.

An entry point that loads a bare callable (a factory without a validate step)
keeps working: its table is passed through as-is in ``env.config`` and its
reload hook, if any, is called with the new ``Settings`` only.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from gamed.config import ConfigError, PluginConfigError, Settings
from gamed.events import EventBus
from gamed.httputil import AdminGate
from gamed.interfaces import IMiddleware

ENTRY_POINT_GROUP = "gamed.middleware"

#: name -> "module:factory", in default pipeline order: security first so a
#: refused message costs the other plugins nothing.
BUILTIN: dict[str, str] = {
    "security": "gamed.middleware.security:plugin",
    "metrics": "gamed.middleware.metrics:plugin",
    "analytics": "gamed.middleware.analytics:plugin",
}


@dataclass
class PluginEnvironment:
    """Everything a plugin may use; it sees the server only through these."""

    settings: Settings
    #: What the factory's validate step returned for the plugin's [middleware.NAME]
    #: table; the raw table (a Mapping) for a factory without a validate step.
    config: Any
    clock: IReactorTime
    events: EventBus
    registry: CollectorRegistry
    rooms: Any  # read-only use: IRoomService
    control: Any = None  # IServerControl: kick, auth hook, reload; None in some unit tests
    #: The admin token check, shared: the security plugin sets its source, others use it.
    admin: AdminGate = field(default_factory=AdminGate)
    #: ISharedState: tables every node of a --redis cluster sees (bans, blocks); None
    #: without --redis. Plugins share through this, never by importing gamed.cluster.
    shared: Any = None


@dataclass
class PluginParts:
    middleware: IMiddleware
    service: IService | None = None
    #: Mounted at the root of the HTTP port, e.g. {b"admin": AdminResource(...)}.
    resources: dict[bytes, Resource] = field(default_factory=dict)
    #: A JSON-able section of /stats, under the plugin's name.
    stats: Callable[[], Any] | None = None
    #: Extra fields for /stats/rooms/{id}; None for an unknown room.
    room_stats: Callable[[int], Any] | None = None
    #: Called with the new Settings and the plugin's newly validated config on
    #: SIGHUP or an admin reload, after every table validated; must not raise.
    reload: Callable[[Settings, Any], None] | None = None


Factory = Callable[[PluginEnvironment], PluginParts]
#: ``validate(table, settings) -> config``; raises PluginConfigError (or ConfigError
#: naming a command-line option) and has no side effects.
Validator = Callable[[Mapping[str, Any], Settings], Any]


@dataclass(frozen=True)
class PluginFactory:
    """A plugin's contract: how its table is checked and how it is built."""

    make: Factory
    validate: Validator | None = None
    #: Keys of the table a reload cannot apply live: reported as needing a restart.
    restart_keys: frozenset[str] = frozenset()

    def check(self, name: str, table: Mapping[str, Any], settings: Settings) -> Any:
        """The validated config for ``table``; every failure is a ConfigError.

        A validate step that raises ValueError/TypeError (a third-party plugin
        not using PluginConfigError) is reported as a PluginConfigError for its table.
        """
        if self.validate is None:
            return table
        try:
            return self.validate(table, settings)
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise PluginConfigError(name, None, str(e)) from None


def _legacy(make: Factory) -> PluginFactory:
    """A bare factory callable: no validate step, a reload hook taking only Settings."""

    def adapted(env: PluginEnvironment) -> PluginParts:
        parts = make(env)
        hook: Any = parts.reload  # the older signature: hook(settings)
        if hook is not None:

            def reload(settings: Settings, _config: Any) -> None:
                hook(settings)

            parts.reload = reload
        return parts

    return PluginFactory(make=adapted)


def _third_party() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def _importable(spec: str) -> bool:
    return importlib.util.find_spec(spec.partition(":")[0]) is not None


def available() -> list[str]:
    """Every installed plugin name, built-ins first in their default order."""
    return [*(n for n, spec in BUILTIN.items() if _importable(spec)), *sorted(_third_party())]


def load(name: str) -> PluginFactory:
    """The plugin's factory; a bare callable (older third-party plugins) is wrapped."""
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        obj = getattr(importlib.import_module(module), attr)
    else:
        ep = _third_party().get(name)
        if ep is None:
            raise KeyError(name)
        obj = ep.load()
    if isinstance(obj, PluginFactory):
        return obj
    if callable(obj):
        return _legacy(obj)
    raise TypeError(f"plugin {name!r}: {obj!r} is neither a PluginFactory nor a factory callable")
