"""The security plugin: see docs/security.md."""

from gamed.middleware.security.middleware import make_plugin, plugin, validate

__all__ = ["make_plugin", "plugin", "validate"]
