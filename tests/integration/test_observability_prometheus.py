"""Prometheus itself as the client: promtool on the shipped rules and configs, the dashboard's
queries, and a real Prometheus server scraping a running daemon."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from propagator.observability.metrics import Metrics
from propagator.observability.webhook_metrics import WebhookMetrics
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import (
    install_triggers,
    observed_settings,
    running_daemon,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "propagator.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not on PATH (install the Debian package 'prometheus')")
    return path


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_alert_rules_pass_promtool_check() -> None:
    """promtool check rules accepts alerts.yml."""
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass() -> None:
    """promtool test rules: each alert fires on its scenario and stays quiet otherwise."""
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_for_severity_summary_description_and_runbook() -> None:
    """Each rule waits (for:), carries a severity and the annotations an on-call person needs."""
    rules = [
        rule
        for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    runbook = (PROMETHEUS_DIR / "RUNBOOK.md").read_text().lower()
    names = {rule["alert"] for rule in rules}
    for wanted in (
        "PropagatorAbsent",
        "PropagatorTargetDown",
        "PropagatorNoLeader",
        "PropagatorLagHigh",
        "PropagatorReconcileFailing",
        "PropagatorDriftRepeated",
        "PropagatorMalformedNotifications",
        "PropagatorNotificationQueueFilling",
        "PropagatorListenerHeartbeatStale",
        "PropagatorDatabaseDisconnected",
        "PropagatorSlotRetainingWal",
        "PropagatorSlotRetainingWalCritical",
        "PropagatorSlotMissing",
        "PropagatorSlotRecreated",
        "PropagatorWebhookFailing",
        "PropagatorWebhookLagging",
    ):
        assert wanted in names, wanted
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        anchor = annotations["runbook"].split("#", 1)[1].split(":", 1)[0]
        assert f"## {anchor}" in runbook, f"{rule['alert']}: no RUNBOOK.md section {anchor}"


def test_alert_rules_only_use_exported_metrics() -> None:
    """Every propagator_* series an alert reads is one the daemon exports."""
    exported = exported_series()
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    used = set(re.findall(r"\bpropagator_[a-z_]+", text))
    assert used
    assert used <= exported, used - exported


def test_static_scrape_config_passes_promtool() -> None:
    """promtool check config accepts prometheus.yml (and the rule file it loads)."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_config_passes_promtool() -> None:
    """promtool check config accepts the Kubernetes pod-discovery example."""
    result = promtool("check", "config", "prometheus-kubernetes.yml")
    output = result.stdout + result.stderr
    if "kubernetes_sd_configs not found" in output:
        pytest.skip("this promtool was built without Kubernetes discovery (Debian's is)")
    assert result.returncode == 0, output


def test_kubernetes_scrape_config_matches_the_manifests() -> None:
    """Pod discovery keeps the label and annotations deploy/kubernetes puts on the pods."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "propagator"
    relabel = job["relabel_configs"]
    keep = {tuple(r["source_labels"]): r["regex"] for r in relabel if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == "propagator"
    assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    kustomization = (ROOT / "deploy" / "kubernetes" / "base" / "kustomization.yaml").read_text()
    deployment = (ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text()
    assert "app.kubernetes.io/name: propagator" in kustomization
    assert 'prometheus.io/scrape: "true"' in deployment


def exported_series() -> set[str]:
    """Every sample name a daemon's /metrics can carry (the webhook ones with [[webhooks]])."""
    from prometheus_client.parser import text_string_to_metric_families

    metrics = Metrics()
    WebhookMetrics(metrics.registry, ["hook"])
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    """The dashboard JSON has unique ids, a datasource variable every panel uses, no overlap."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_covers_the_agreed_views_on_exported_metrics() -> None:
    """In-sync, lag, throughput, reconcile, errors, connections and leader panels exist."""
    titles = " | ".join(panel["title"].lower() for panel in dashboard_panels())
    for topic in ("in sync", "lag", "rows applied", "reconcile", "rejected", "malformed"):
        assert topic in titles, topic
    for topic in ("retries", "connections", "writer", "heartbeat", "queue", "slot", "webhook"):
        assert topic in titles, topic
    used = {
        name for expr in dashboard_queries() for name in re.findall(r"propagator_[a-z_]+", expr)
    }
    assert used <= exported_series(), used - exported_series()


# A real Prometheus server.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """A throwaway Prometheus on a loopback port with its own config and storage."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        self.workdir = workdir
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", workdir / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": "propagator",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.console.templates=",
                "--web.console.libraries=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
            return json.loads(response.read())

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.output()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/-/ready", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def output(self) -> str:
        self.log.flush()
        return (self.workdir / "prometheus.log").read_text()[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)
        self.log.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[list[PrometheusServer]]:
    tool("prometheus")
    started: list[PrometheusServer] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.slow  # starts a real Prometheus server and waits for its scrapes
def test_prometheus_scrapes_the_daemon_and_sees_rows_applied(
    databases: DatabasePair, tmp_path: Path, prometheus_factory: list[PrometheusServer]
) -> None:
    """Real Prometheus: up == 1, rows_applied moves, dashboard and rules evaluate, none fires."""
    settings = observed_settings(databases)
    install_triggers(databases, settings)
    databases.production.insert_jobs((job, "A", job) for job in range(1, 21))
    databases.sandbox.insert_jobs((job, "A", job) for job in range(1, 21))
    with running_daemon(settings) as daemon:
        wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=30, what="/readyz 200")
        prometheus = PrometheusServer(tmp_path, daemon.port)
        prometheus_factory.append(prometheus)
        wait_until(prometheus.ready, timeout=60, what="prometheus ready")
        wait_until(
            lambda: prometheus.scalar('up{job="propagator"}') == 1,
            timeout=30,
            what="up == 1 in prometheus",
        )
        databases.production.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job <= 5")
        wait_until(
            lambda: (
                (prometheus.scalar('sum(propagator_rows_applied_total{job="propagator"})') or 0)
                >= 5
            ),
            timeout=30,
            what="propagator_rows_applied_total >= 5 in prometheus",
        )
        assert prometheus.scalar('propagator_rows_applied_total{source="event"}') == 5
        assert prometheus.scalar("propagator_leader") == 1
        assert prometheus.scalar("propagator_build_info") == 1

        for expr in dashboard_queries():
            concrete = (
                expr.replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$mapping", ".*")
                .replace("$__rate_interval", "1m")
            )
            prometheus.query(concrete)  # asserts the query parses and evaluates

        def rules_evaluated() -> list[dict[str, Any]] | None:
            groups = prometheus.api("/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            evaluated = rules and all(
                rule.get("lastEvaluation", "0001").startswith("20") for rule in rules
            )
            return rules if evaluated else None

        rules = wait_until(rules_evaluated, timeout=30, what="every rule evaluated")
        assert all(rule["health"] == "ok" for rule in rules), [
            (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
        ]
        active = [
            (rule["name"], rule["state"]) for rule in rules if rule.get("state") != "inactive"
        ]
        assert active == [], active
