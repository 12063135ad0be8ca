"""The parent's HTTP port under ``--workers N``: one /metrics, /healthz and /stats for all workers.

Each worker serves its full HTTP site on a loopback port of its own (the
kernel's pick, told to the parent when the worker is ready). The parent's
``/metrics`` scrapes every ready worker and merges the families, each sample
labelled ``worker="K"``, plus its own ``gamed_supervisor_*`` series;
``/healthz`` is 200 while at least one worker answers 200; ``/stats`` lists
the workers (pid, node id, HTTP port, restarts) with each one's own /stats.
Everything else (the admin API, analytics, the console) is on each worker's
port, listed in ``/stats``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gamed.httputil import json_response
from gamed.web import QuietSite

if TYPE_CHECKING:
    from gamed.workers.supervisor import Supervisor

_log = Logger()

#: Seconds a worker has to answer the parent's scrape.
SCRAPE_TIMEOUT = 2.0
#: Bytes of one worker's answer the parent reads at most.
MAX_ANSWER = 16 * 1024 * 1024


class _Fetch(Protocol):
    """One ``GET path HTTP/1.0`` on loopback: the whole answer is read until the worker closes.

    Twisted's Agent logs two lines per request ("Starting factory ..."): every
    scrape would be news in the log.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.data = b""
        self.done: defer.Deferred[tuple[int, bytes]] = defer.Deferred()

    def connectionMade(self) -> None:
        request = f"GET {self.path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        self.transport.write(request.encode("ascii"))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_ANSWER:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        head, sep, body = self.data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        if not sep or len(parts) < 2 or not parts[1].isdigit() or len(self.data) > MAX_ANSWER:
            self.done.errback(ValueError(f"no complete HTTP answer ({len(self.data)} bytes)"))
        else:
            self.done.callback((int(parts[1]), body))


class _QuietFactory(Factory):
    noisy = False  # "Starting factory" twice per scrape is not news


class Scraper:
    """GETs a path from every ready worker's loopback HTTP port, with a timeout."""

    def __init__(self, supervisor: Supervisor, reactor: Any) -> None:
        self.supervisor = supervisor
        self._reactor = reactor
        self.errors = 0

    def get(self, port: int, path: str) -> defer.Deferred[tuple[int, bytes]]:
        endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
        fetch = _Fetch(path)
        connected = endpoint.connect(_QuietFactory.forProtocol(lambda: fetch))

        def answer(_: object) -> defer.Deferred[tuple[int, bytes]]:
            def too_slow(result: Any, timeout: float) -> None:
                if fetch.transport is not None:
                    fetch.transport.abortConnection()  # type: ignore[attr-defined]

            fetch.done.addTimeout(SCRAPE_TIMEOUT, self._reactor, onTimeoutCancel=too_slow)
            return fetch.done

        return connected.addCallback(answer)

    def all(self, path: str) -> defer.Deferred[dict[int, tuple[int, bytes] | None]]:
        """Every ready worker's answer (None for one that failed or timed out), by index."""
        targets = [
            (w["worker"], w["http_port"])
            for w in self.supervisor.describe()
            if w["ready"] and w["http_port"]
        ]

        def one(index: int, port: int) -> defer.Deferred[tuple[int, tuple[int, bytes] | None]]:
            def failed(f: Any) -> None:
                self.errors += 1
                _log.debug("worker {w}: {path} failed: {f}", w=index, path=path, f=f.value)
                return None

            d = self.get(port, path)
            d.addErrback(failed)
            return d.addCallback(lambda r: (index, r))

        ds = [one(i, p) for i, p in targets]
        return defer.gatherResults(ds).addCallback(dict)


def merge(expositions: dict[int, str]) -> list[Metric]:
    """The families of every worker's exposition, each sample labelled with its worker."""
    families: dict[str, Metric] = {}
    for index, text in sorted(expositions.items()):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            _log.warn("worker {w}: /metrics could not be parsed", w=index)
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            label = str(index)
            for s in family.samples:
                merged.samples.append(s._replace(labels={**s.labels, "worker": label}))
    return list(families.values())


class _Merged:
    """A collector that yields what was merged for one scrape, and the supervisor's own series."""

    def __init__(self, supervisor: Supervisor, families: list[Metric], errors: int) -> None:
        self.supervisor = supervisor
        self.families = families
        self.errors = errors

    def collect(self) -> Iterator[Metric]:
        yield from self.families
        up = GaugeMetricFamily(
            "gamed_supervisor_worker_up",
            "1 while the worker runs and said it is ready",
            labels=["worker"],
        )
        restarts = GaugeMetricFamily(
            "gamed_supervisor_worker_restarts",
            "Times the supervisor restarted the worker since it started",
            labels=["worker"],
        )
        for w in self.supervisor.describe():
            up.add_metric([str(w["worker"])], 1.0 if w["ready"] else 0.0)
            restarts.add_metric([str(w["worker"])], float(w["restarts"]))
        yield up
        yield restarts
        yield GaugeMetricFamily(
            "gamed_supervisor_scrape_errors",
            "Worker scrapes (any path) that failed or timed out since the start",
            value=float(self.errors),
        )


_Answers = dict[int, tuple[int, bytes] | None]


class _MergedPage(Resource):
    """A page the parent answers by asking every worker for ``path`` and merging the answers.

    ``merged`` builds the body (and sets the headers); a failure anywhere is a 500 (``_failed``).
    """

    isLeaf = True
    path = ""

    def __init__(self, supervisor: Supervisor, scraper: Scraper) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.scraper = scraper

    def render_GET(self, request: Request) -> Any:
        def done(answers: _Answers) -> None:
            request.write(self.merged(request, answers))
            request.finish()

        self.scraper.all(self.path).addCallback(done).addErrback(_failed, request)
        return NOT_DONE_YET

    def merged(self, request: Request, answers: _Answers) -> bytes:
        raise NotImplementedError


class MetricsPage(_MergedPage):
    path = "/metrics"

    def merged(self, request: Request, answers: _Answers) -> bytes:
        texts = {
            i: a[1].decode("utf-8", "replace")
            for i, a in answers.items()
            if a is not None and a[0] == 200
        }
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.supervisor, merge(texts), self.scraper.errors))
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return generate_latest(registry)


class HealthPage(_MergedPage):
    path = "/healthz"

    def render_GET(self, request: Request) -> Any:
        if self.supervisor.stopping:
            return json_response(request, 503, {"status": "draining"})
        return super().render_GET(request)

    def merged(self, request: Request, answers: _Answers) -> bytes:
        workers = {str(w["worker"]): {"status": "down"} for w in self.supervisor.describe()}
        up = 0
        for index, answer in answers.items():
            if answer is None:
                workers[str(index)] = {"status": "no answer"}
                continue
            body = _json(answer[1])
            workers[str(index)] = body if isinstance(body, dict) else {"status": "?"}
            up += answer[0] == 200
        total = len(self.supervisor.slots)
        status = "serving" if up == total else "degraded" if up else "down"
        body = {"status": status, "workers_up": up, "workers": workers}
        return json_response(request, 200 if up else 503, body)


class StatsPage(_MergedPage):
    path = "/stats"

    def merged(self, request: Request, answers: _Answers) -> bytes:
        workers = self.supervisor.describe()
        connections = 0
        for w in workers:
            answer = answers.get(w["worker"])
            stats = _json(answer[1]) if answer is not None and answer[0] == 200 else None
            w["stats"] = stats
            if isinstance(stats, dict):
                connections += int(stats.get("connections") or 0)
        body = {
            "workers": workers,
            "connections": connections,
            "restart_seconds": [round(t, 3) for t in self.supervisor.restart_times],
        }
        return json_response(request, 200, body)


def _json(body: bytes) -> Any:
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _failed(failure: Any, request: Request) -> None:
    _log.failure("merged HTTP page failed", failure)
    if not request.finished:
        request.setResponseCode(500)
        request.finish()


def make_supervisor_site(supervisor: Supervisor, reactor: Any) -> QuietSite:
    """The parent's Site: /metrics, /healthz, /stats (merged), nothing else."""
    scraper = Scraper(supervisor, reactor)
    root = Resource()
    root.putChild(b"metrics", MetricsPage(supervisor, scraper))
    root.putChild(b"healthz", HealthPage(supervisor, scraper))
    root.putChild(b"stats", StatsPage(supervisor, scraper))
    site = QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
