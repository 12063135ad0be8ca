"""Find middleware plugins by name.

Built-in plugins are listed here (module path and factory, imported only when
enabled); third-party ones register an entry point in the ``gamed.middleware``
group. A factory takes a ``PluginEnvironment`` and returns ``PluginParts``.
"""

from __future__ import annotations

import importlib
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

#: name -> "module:factory", in default pipeline order.
BUILTIN: dict[str, str] = {}


@dataclass
class PluginEnvironment:
    """Everything a plugin may use; it sees the server only through these."""

    settings: Settings
    config: Mapping[str, Any]  # the plugin's [middleware.NAME] table
    clock: IReactorTime
    events: EventBus
    registry: CollectorRegistry
    rooms: Any  # read-only use: IRoomService
    router: Any = None  # for plugins that add server-side rules (auth); None in unit tests


@dataclass
class PluginParts:
    middleware: IMiddleware
    service: IService | None = None
    resources: dict[bytes, Resource] = field(default_factory=dict)
    stats: Callable[[], Any] | None = None


Factory = Callable[[PluginEnvironment], PluginParts]


def _third_party() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def available() -> list[str]:
    """Every known plugin name, built-ins first in their default order."""
    return [*BUILTIN, *sorted(_third_party())]


def load(name: str) -> Factory:
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    ep = _third_party().get(name)
    if ep is None:
        raise KeyError(name)
    return ep.load()
