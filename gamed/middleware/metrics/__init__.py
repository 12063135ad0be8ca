"""The metrics plugin: see docs/metrics.md."""

from gamed.middleware.metrics.middleware import make_plugin

__all__ = ["make_plugin"]
