"""Grafana's provisioning files and dashboards, and every metric name they and the alert rules use.

Gateway names are read off a running gateway's /metrics. vLLM names are checked twice: against the
installed vLLM's source (its metric definitions; no server needed), and against the /metrics of a
real vLLM server (CPU, tiny Qwen3-VL) in the e2e tier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.render import (
    DEPLOY,
    SYNTHETIC,
    VLLM_SOURCE,
    dashboard_expressions,
    exposition_names,
    promql_metric_names,
    recorded_names,
    rule_expressions,
    vllm_source_names,
)
from tests.e2e.conftest import VllmServer

GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _all_expressions() -> dict[str, str]:
    out = {f"alerts.yml {name}": expr for name, expr in rule_expressions(DEPLOY / "prometheus" / "alerts.yml").items()}
    for path in DASHBOARDS:
        out |= {f"{path.name} {where}": expr for where, expr in dashboard_expressions(_load(path)).items()}
    return out


def test_datasource_points_at_the_compose_prometheus() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]
    for path in DASHBOARDS:
        for panel in _load(path)["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, (path.name, panel["title"])


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "huayu.yml").read_text())["providers"][0]
    mounts = dict(v.rsplit(":", 2)[:2] for v in _compose()["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert len(DASHBOARDS) >= 2


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    board = _load(path)
    assert board["uid"] and board["title"] and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    assert len({_load(p)["uid"] for p in DASHBOARDS}) == len(DASHBOARDS)


def test_dashboards_show_what_the_issue_asks_for() -> None:
    used: set[str] = set()
    exprs = " ".join(_all_expressions().values())
    for expr in _all_expressions().values():
        used |= promql_metric_names(expr)
    wanted = {
        "huayu_request_latency_seconds_bucket",  # gateway latency percentiles
        "huayu_time_to_first_token_seconds_bucket",  # time to first token percentiles
        "huayu_requests_total",  # by style and status
        "huayu_safety_hits_total",  # filter hits
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",  # tokens/s
    }
    assert wanted <= used, sorted(wanted - used)
    assert "sum by (style)" in exprs and "sum by (status)" in exprs
    assert any(name.startswith("huayu_cache_") for name in used), "no cache hit ratio panel"


def test_every_metric_used_exists(gateway_metrics_text: str) -> None:
    gateway = exposition_names(gateway_metrics_text)
    assert "huayu_requests_total" in gateway
    assert VLLM_SOURCE.is_dir(), "the serving venv (vLLM) is not installed: make serving-venv"
    vllm = vllm_source_names()
    assert "vllm:num_requests_waiting" in vllm and "vllm:generation_tokens_total" in vllm
    known = gateway | vllm | SYNTHETIC | recorded_names(DEPLOY / "prometheus" / "alerts.yml")
    missing = {
        where: sorted(promql_metric_names(expr) - known)
        for where, expr in _all_expressions().items()
        if promql_metric_names(expr) - known
    }
    assert not missing, f"metrics that neither the gateway nor vLLM exports: {missing}"


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, style) (rate(huayu_ttft_bucket{style!="", route=~"/v1/.+"}[5m])))'
        " > 0.5 and on() sum(rate(vllm:x_total[$__rate_interval] offset 1d)) / 1e3"
    )
    assert promql_metric_names(expr) == {"huayu_ttft_bucket", "vllm:x_total"}
    text = "# HELP a_total A.\n# TYPE a_total counter\n# TYPE h histogram\n# TYPE g gauge\ng 1.0\n"
    assert exposition_names(text) >= {"a_total", "h_bucket", "h_count", "h_sum", "g"}


@pytest.mark.e2e
@pytest.mark.slow
def test_every_vllm_metric_used_exists_in_a_real_vllm_server(vllm_server: VllmServer) -> None:
    text = httpx.get(vllm_server.url + "/metrics", timeout=30).text
    served = exposition_names(text)
    assert "vllm:num_requests_running" in served
    used = {
        name for expr in _all_expressions().values() for name in promql_metric_names(expr) if name.startswith("vllm:")
    }
    assert used and not used - served, f"not in the real vLLM's /metrics: {sorted(used - served)}"
