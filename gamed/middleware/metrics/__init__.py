"""The metrics plugin: see docs/metrics.md."""

from gamed.middleware.metrics.middleware import make_plugin, plugin, validate

__all__ = ["make_plugin", "plugin", "validate"]
