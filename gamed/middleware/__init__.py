"""Middleware plugins shipped with gamed, found by name (see registry.py)."""
