"""The security plugin: see docs/security.md."""

from gamed.middleware.security.middleware import make_plugin

__all__ = ["make_plugin"]
