"""gamed: a multiplayer game and chat room server on Twisted."""

__version__ = "0.1.0"
