"""The listening sockets of ``--workers N``: bound once by the parent, adopted by every worker.

Every worker calls ``accept`` on the same socket (the kernel hands each new
connection to one of them), so one port serves N processes with no proxy in
between. Only TCP endpoints (``tcp:``, ``tcp6:``, either under ``haproxy:``) can
be shared this way; TLS is for the load balancer in front.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from gamed import proxy

#: The environment variable that makes a twistd gamed a worker: JSON ``{"index": K,
#: "fds": {"game": [fd, family], "ws": [fd, family]}, "parent": pid}``.
WORKER_ENV = "GAMED_WORKER"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where one shared listener binds (``tcp:7000:interface=...:backlog=...``, parsed)."""

    family: int
    interface: str
    port: int
    backlog: int


def listen_address(option: str, description: str) -> ListenAddress:
    """The address of a TCP endpoint description; ValueError (naming the option) for any other."""
    _, rest = proxy.split(description)
    endpoint = endpoints.serverFromString(None, rest)
    if not isinstance(endpoint, endpoints.TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint):
        raise ValueError(
            f"gamed: --workers shares only tcp: endpoints (for TLS, terminate it at the load "
            f"balancer); --{option} is {description!r}"
        )
    v6 = isinstance(endpoint, endpoints.TCP6ServerEndpoint) or ":" in endpoint._interface
    family = socket.AF_INET6 if v6 else socket.AF_INET
    interface = endpoint._interface or ("::" if v6 else "0.0.0.0")
    return ListenAddress(family, interface, endpoint._port, endpoint._backlog)


def bind(address: ListenAddress) -> socket.socket:
    """A listening, non-blocking socket the workers can inherit (OSError if the bind fails).

    Non-blocking is a property of the open file, shared by every worker's copy,
    which Twisted's ``adoptStreamPort`` requires.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.interface, address.port))
        sock.listen(address.backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def worker_env(index: int, fds: dict[str, tuple[int, int]], parent: int) -> str:
    """The value of WORKER_ENV for worker ``index``: which inherited fd is which listener."""
    return json.dumps({"index": index, "fds": fds, "parent": parent})


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker was told by its parent (WORKER_ENV)."""

    index: int
    fds: dict[str, tuple[int, int]]
    parent: int


def worker_spec(environ: Any = None) -> WorkerSpec | None:
    """This process's WorkerSpec, or None when it is not a worker of ``--workers N``."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV)
    if not raw:
        return None
    data = json.loads(raw)
    fds = {name: (int(fd), int(family)) for name, (fd, family) in data["fds"].items()}
    return WorkerSpec(int(data["index"]), fds, int(data["parent"]))


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """An endpoint whose ``listen`` adopts a socket the parent bound (``adoptStreamPort``)."""

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        return defer.execute(self._reactor.adoptStreamPort, self._fd, self._family, protocolFactory)
