"""Find middleware plugins by name.

Built-in plugins are listed here (module path and factory, imported only when
enabled); third-party ones register an entry point in the ``gamed.middleware``
group. A factory takes a ``PluginEnvironment`` and returns ``PluginParts``.
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

from gamed.config import Settings
from gamed.events import EventBus
from gamed.interfaces import IMiddleware

ENTRY_POINT_GROUP = "gamed.middleware"

#: name -> "module:factory", in default pipeline order: security first so a
#: refused message costs the other plugins nothing.
BUILTIN: dict[str, str] = {
    "security": "gamed.middleware.security:make_plugin",
    "metrics": "gamed.middleware.metrics:make_plugin",
    "analytics": "gamed.middleware.analytics:make_plugin",
}


@dataclass
class PluginEnvironment:
    """Everything a plugin may use; it sees the server only through these."""

    settings: Settings
    config: Mapping[str, Any]  # the plugin's [middleware.NAME] table
    clock: IReactorTime
    events: EventBus
    registry: CollectorRegistry
    rooms: Any  # read-only use: IRoomService
    control: Any = None  # IServerControl: kick, auth hook, reload; None in some unit tests


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
    #: Called with the new Settings on SIGHUP or an admin reload.
    reload: Callable[[Settings], None] | None = None


Factory = Callable[[PluginEnvironment], PluginParts]


def _third_party() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def _importable(spec: str) -> bool:
    return importlib.util.find_spec(spec.partition(":")[0]) is not None


def available() -> list[str]:
    """Every installed plugin name, built-ins first in their default order."""
    return [*(n for n, spec in BUILTIN.items() if _importable(spec)), *sorted(_third_party())]


def load(name: str) -> Factory:
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    ep = _third_party().get(name)
    if ep is None:
        raise KeyError(name)
    return ep.load()
