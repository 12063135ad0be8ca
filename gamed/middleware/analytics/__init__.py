"""The analytics plugin: see docs/analytics.md."""

from gamed.middleware.analytics.middleware import make_plugin

__all__ = ["make_plugin"]
