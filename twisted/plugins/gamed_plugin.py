"""twistd plugin: `twistd gamed --help`. Kept tiny; twistd imports every plugin module."""

from twisted.application.service import ServiceMaker

gamed = ServiceMaker(
    "gamed",
    "gamed.tap",
    "Multiplayer game and chat room server (length-prefixed JSON over TCP)",
    "gamed",
)
