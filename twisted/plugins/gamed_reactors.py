"""twistd reactor plugin: `twistd --reactor uvloop gamed` (asyncio reactor on uvloop)."""

from twisted.application.reactors import Reactor

uvloop = Reactor(
    "uvloop",
    "gamed.uvloop_reactor",
    "Twisted's asyncio reactor running on a uvloop event loop (needs uvloop)",
)
