"""The analytics plugin: see docs/analytics.md."""

from gamed.middleware.analytics.middleware import make_plugin, plugin, validate

__all__ = ["make_plugin", "plugin", "validate"]
