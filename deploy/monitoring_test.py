"""deploy/: the Grafana dashboard, the Prometheus scrape configuration of the compose file and the
worker autoscaler's query use only metrics that exist (docs/operations.md lists every one of them),
and every Graflow process of the compose file serves /metrics where Prometheus scrapes it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).parent
OPERATIONS = DEPLOY.parent / "docs" / "operations.md"
DASHBOARD = DEPLOY / "grafana" / "graflow-dashboard.json"
GRAFLOW_SERVICES = ("scheduler", "coordinator", "result-store", "worker", "console")
# Samples of a histogram carry a suffix; the metric is documented without it.
_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    return {_SUFFIX.sub("", name) for name in re.findall(r"\bgraflow_[a-z_]+", expr)}


def documented() -> set[str]:
    return set(re.findall(r"`(graflow_[a-z_]+)`", OPERATIONS.read_text()))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_uses_only_documented_metrics_and_shows_each_family() -> None:
    exprs = dashboard_exprs()
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used, "the dashboard queries no graflow metric"
    assert used <= documented(), f"not in docs/operations.md: {sorted(used - documented())}"
    # Every documented metric is on the dashboard.
    assert documented() <= used, f"not on the dashboard: {sorted(documented() - used)}"


def test_the_worker_autoscaler_queries_documented_metrics() -> None:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "worker.yaml").read_text())
    [scaled] = [doc for doc in docs if doc and doc["kind"] == "ScaledObject"]
    names = metric_names(scaled["spec"]["triggers"][0]["metadata"]["query"])
    assert names == {"graflow_queue_lag", "graflow_queue_pending"}
    assert names <= documented()


def compose_services() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


def test_prometheus_scrapes_the_metrics_port_of_every_graflow_process_of_the_compose_file() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    } | {
        f"{name}:{sd['port']}" for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    services = compose_services()
    for service in GRAFLOW_SERVICES:
        prefix = f"GRAFLOW_{service.upper().replace('-', '_')}_"
        environment = services[service]["environment"]
        port = environment[f"{prefix}METRICS_PORT"]
        assert environment[f"{prefix}METRICS_ADDRESS"] == "0.0.0.0"
        assert f"{service}:{port}" in targets
    mount = "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in services["prometheus"]["volumes"]
