"""The observability kit, checked for real: promtool on etc/*.yml, the Grafana
dashboard's queries, and a real Prometheus scraping a running gamed.

Never skipped: without prometheus/promtool these tests fail and say to run
.ci/install-deps.sh. The Prometheus started here is our own (free port on
127.0.0.1, temporary config and TSDB), never a system one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import free_port, heartbeat_ok, stop_process

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"
PROM_START_TIMEOUT = 30.0
SCRAPE_WAIT = 30.0

#: Every metric name the kit may reference (without _total/_bucket/... suffixes).
KNOWN_METRICS = {
    # cluster (gamed/cluster/link.py)
    "gamed_cluster_link_state",
    "gamed_cluster_publish_dropped_total",
    "gamed_cluster_pubsub_lag_seconds",
    "gamed_cluster_redis_rtt_seconds",
    "gamed_cluster_messages_total",
    "gamed_cluster_deliveries_in_total",
    # core (gamed/telemetry.py)
    "gamed_connections",
    "gamed_rooms",
    "gamed_sessions",
    "gamed_build_info",
    "gamed_messages_received_total",
    "gamed_errors_sent_total",
    "gamed_message_processing_seconds",
    "gamed_connections_refused_total",
    "gamed_disconnects_total",
    "gamed_middleware_failures_total",
    "gamed_chat_deliveries_total",
    "gamed_received_bytes_total",
    "gamed_sent_bytes_total",
    "gamed_frames_refused_total",
    # the metrics plugin
    "gamed_memory_rss_bytes",
    "gamed_cpu_usage_ratio",
    "gamed_max_connections",
    "gamed_middleware_duration_seconds",
    "gamed_middleware_vetoes_total",
    "gamed_room_members",
    "gamed_room_messages_per_second",
    # the security plugin
    "gamed_security_decisions_total",
    "gamed_security_store_failing",
    # Prometheus itself and the default process collector
    "up",
    "process_cpu_seconds_total",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run .ci/install-deps.sh (installs Debian's "
            f"prometheus package, which provides prometheus and promtool)",
            pytrace=False,
        )
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    keywords, label names or label values; without _bucket/_sum/_count."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    names -= {"and", "or", "unless", "offset", "bool", "inf", "nan"}
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


# -- promtool on the kit ------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    r = promtool("check", "config", str(ETC / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(ETC / "gamed-alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_alert_rules_cover_the_required_cases_and_known_metrics() -> None:
    text = (ETC / "gamed-alerts.yml").read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    for required in (
        "GamedDown",
        "GamedHighErrorRate",
        "GamedHighP99Latency",
        "GamedConnectionsNearCap",
        "GamedMemoryGrowth",
        "GamedSecurityBlocksSpike",
    ):
        assert required in alerts
    exprs = re.findall(r"expr: \|\n((?:\s{10}.*\n)+)|expr: (.+)", text)
    for block, line in exprs:
        unknown = metric_names(block or line) - KNOWN_METRICS
        assert not unknown, f"alert rules reference unknown metrics {unknown}"


RULE_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="gamed", instance="a"}}'
        values: '1 1 0 0 0 0'
      - series: 'gamed_connections{{job="gamed", instance="a"}}'
        values: '9500x10'
      - series: 'gamed_max_connections{{job="gamed", instance="a"}}'
        values: '10000x10'
      - series: 'gamed_messages_received_total{{job="gamed", instance="a", type="ChatMessage"}}'
        values: '0+600x30'
      - series: 'gamed_errors_sent_total{{job="gamed", instance="a", code="429"}}'
        values: '0+60x30'
      - series: 'gamed_cluster_link_state{{job="gamed", instance="a"}}'
        values: '2 2 1 1 1 0 0 0 2x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: GamedClusterDegraded
        exp_alerts:
          - exp_labels: {{severity: critical, job: gamed, instance: a}}
            exp_annotations:
              summary: "gamed a: cluster subscriber link down or silent"
              description: "Members on this node miss chat and game events from other nodes while this lasts. See /stats cluster.link (pubsub lag, reconnects)."
      - eval_time: 7m
        alertname: GamedClusterLinkDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: gamed, instance: a}}
            exp_annotations:
              summary: "gamed a: no connection to the cluster's Redis"
              description: "Joins and Connects on this node are refused (503) until Redis answers again. See /stats cluster.link and docs/cluster.md (Failure modes)."
      - eval_time: 10m
        alertname: GamedClusterLinkDown
        exp_alerts: []
      - eval_time: 5m
        alertname: GamedDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: gamed, instance: a}}
            exp_annotations:
              summary: "gamed a is down"
              description: "Prometheus could not scrape gamed's /metrics for a minute."
      - eval_time: 1m
        alertname: GamedDown
        exp_alerts: []
      - eval_time: 8m
        alertname: GamedConnectionsNearCap
        exp_alerts:
          - exp_labels: {{severity: warning, job: gamed, instance: a}}
            exp_annotations:
              summary: "gamed a is at 95% of its connection cap"
              description: "New connections get Error 503 at the cap (--max-connections)."
      - eval_time: 20m
        alertname: GamedHighErrorRate
        exp_alerts:
          - exp_labels: {{severity: warning, job: gamed, instance: a}}
            exp_annotations:
              summary: "gamed a: 10% of messages get an Error"
              description: "More than 5% of client messages were refused for 10 minutes (see gamed_errors_sent_total by code)."
"""


def test_alert_rules_fire_on_synthetic_series(tmp_path: Path) -> None:
    """promtool test rules: GamedDown, the error rate (10%) and the cap alert really fire."""
    tests = tmp_path / "gamed-alerts.test.yml"
    tests.write_text(RULE_TESTS.format(rules=ETC / "gamed-alerts.yml"))
    r = promtool("test", "rules", str(tests))
    assert r.returncode == 0, r.stdout + r.stderr


# -- the Grafana dashboard --------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads((ETC / "grafana-dashboard.json").read_text())


def test_dashboard_is_valid_json_with_the_required_panels() -> None:
    dash = dashboard()
    assert dash["title"] == "gamed"
    assert any(i["name"] == "DS_PROMETHEUS" for i in dash["__inputs"])
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in panels)
    for word in (
        "connections",
        "messages per second",
        "latency",
        "error rate",
        "rooms",
        "middleware cost",
        "memory",
        "cpu",
    ):
        assert word in titles, f"no panel about {word}"
    for p in panels:
        assert p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys()
        for t in p["targets"]:
            unknown = metric_names(t["expr"]) - KNOWN_METRICS
            assert not unknown, f"panel {p['title']!r} uses unknown metrics {unknown}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, passes promtool as a rule."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for p in dashboard()["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            lines.append(f"      - record: dashboard:panel{p['id']}:{t['refId']}")
            lines.append(f"        expr: {json.dumps(expr)}")
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    r = promtool("check", "rules", str(rules))
    assert r.returncode == 0, r.stdout + r.stderr


# -- a real Prometheus scraping a real gamed ------------------------------------------------------


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: gamed\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 900ms\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + PROM_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {PROM_START_TIMEOUT}s:\n{self.log()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, want: float, timeout: float = SCRAPE_WAIT) -> list[Any]:
        deadline = time.monotonic() + timeout
        result: list[Any] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result and float(result[0]["value"][1]) == want:
                return result
            time.sleep(0.25)
        raise AssertionError(
            f"{promql} never became {want} in {timeout}s (last: {result})\n{self.log()}"
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target_port: int) -> Prometheus:
        d = tmp_path / f"prometheus{len(started)}"
        d.mkdir()
        started.append(Prometheus(d, target_port))
        return started[-1]

    tool("prometheus")
    yield start
    for p in started:
        p.stop()


def test_real_prometheus_scrapes_gamed(gamed: Any, prometheus_for: Any) -> None:
    server = gamed()
    clients = [server.client(user_id) for user_id in (1, 2, 3)]
    for c in clients:
        c.join(5)
    clients[0].chat(5, "hello")
    for _ in range(32):  # plugin calls are timed for one message in 16
        assert heartbeat_ok(clients[1])
    prom = prometheus_for(server.http_port)
    try:
        result = prom.wait_for("gamed_connections", 3)
        assert result[0]["metric"]["job"] == "gamed"
        prom.wait_for('up{job="gamed"}', 1)
        # The plugin's own series arrive through the same scrape.
        prom.wait_for('count(gamed_middleware_duration_seconds_count{plugin="metrics"}) > 0', 2)
        assert prom.query("gamed_memory_rss_bytes")[0]["value"][1] != "0"
        prom.wait_for('gamed_room_members{room="5"}', 3)  # after a collection (5 s)
        # Connections closing show up too.
        clients.pop().close()
        prom.wait_for("gamed_connections", 2)
    finally:
        for c in clients:
            c.close()
