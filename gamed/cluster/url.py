"""``--redis URL``: where the cluster's Redis is, parsed once at start.

Forms (docs/cluster.md):

- ``redis://[[user]:password@]host[:port][/db]``     plain TCP
- ``rediss://[[user]:password@]host[:port][/db][?ca=/path/ca.pem]``  TLS (pyOpenSSL): the
  server's certificate checked against the system's CAs, or the PEM file ``ca`` names
- ``redis+sentinel://[:password@]host:port[,host:port...]/master[/db]``  Sentinel

Imports nothing heavy: gamed.config calls it while parsing options.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False
    #: Sentinel form: the sentinels to ask and the master's name (host/port unused).
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    #: rediss://: a PEM file with the CA to trust instead of the system's (``?ca=PATH``).
    ca_file: str | None = None

    def display(self) -> str:
        """The URL without its password, for logs, /healthz and metrics."""
        auth = "***@" if self.password else ""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"redis+sentinel://{auth}{hosts}/{self.master}/{self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"


def _host_port(text: str, default: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep:
        host, port = text, ""
    host = host.strip("[]")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port:
        return host, default
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"bad port {port!r}")
    return host, int(port)


def parse_redis_url(url: str) -> RedisAddress:
    """The address of ``url``; ValueError with a reason for anything else."""
    text = url.strip()
    text, _, query = text.partition("?")
    ca_file: str | None = None
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name != "ca" or not value:
            raise ValueError(f"unknown URL parameter {item!r} (only ca=/path/ca.pem)")
        ca_file = unquote(value)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+sentinel"):
        raise ValueError(
            f"expected redis://host[:port][/db], rediss://... or redis+sentinel://..., got {url!r}"
        )
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        if colon:
            username, password = (unquote(user) or None), unquote(secret)
        else:
            password = unquote(user)
    hosts, _, path = hostpart.partition("/")
    parts = [p for p in path.split("/") if p]
    if scheme == "redis+sentinel":
        if not parts:
            raise ValueError(f"no master name in {url!r} (redis+sentinel://host:port/master)")
        master, parts = parts[0], parts[1:]
        sentinels = tuple(_host_port(h, DEFAULT_SENTINEL_PORT) for h in hosts.split(",") if h)
        if not sentinels:
            raise ValueError(f"no sentinel host in {url!r}")
    else:
        master, sentinels = None, ()
        if "," in hosts:
            raise ValueError(f"several hosts need redis+sentinel://, got {url!r}")
    db = 0
    if parts:
        if len(parts) > 1 or not parts[0].isdigit():
            raise ValueError(f"the database must be a number, got {'/'.join(parts)!r}")
        db = int(parts[0])
    host, port = ("", 0) if sentinels else _host_port(hosts, DEFAULT_PORT)
    # urlsplit only to reject what it cannot parse at all (spaces, bad brackets)
    urlsplit(text)
    if ca_file is not None and scheme != "rediss":
        raise ValueError("ca= is for rediss:// (TLS) URLs")
    return RedisAddress(
        host=host,
        port=port,
        db=db,
        password=password,
        username=username,
        tls=scheme == "rediss",
        sentinels=sentinels,
        master=master,
        ca_file=ca_file,
    )
