"""deploy/prometheus checked by Debian's promtool and a real Prometheus scraping real gateways."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import Stack, require, stop, wait_for_port
from tests.deploy.render import DEPLOY, dashboard_expressions, render_prometheus, rule_expressions
from tests.servers import free_port

PROM = DEPLOY / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=PROM)


def test_promtool_check_config() -> None:
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests() -> None:
    done = _promtool("test", "rules", "tests/alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_has_a_unit_test_and_the_issue_s_alerts_exist() -> None:
    alerts = {name for name in rule_expressions(PROM / "alerts.yml") if ":" not in name}  # not the recorded series
    assert {
        "HuayuHighErrorRate",
        "HuayuTimeToFirstTokenSlow",
        "HuayuUpstreamDown",
        "HuayuCacheHitRatioCollapse",
    } <= alerts
    tests: dict[str, Any] = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())
    fired = {
        case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts never shown firing in a unit test: {sorted(alerts - fired)}"


def test_scrape_config_matches_compose() -> None:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    config: dict[str, Any] = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateways = sorted(f"{name}:8080" for name in compose["services"] if name.startswith("gateway-"))
    assert sorted(jobs["gateway"]["static_configs"][0]["targets"]) == gateways
    assert jobs["vllm"]["static_configs"][0]["targets"] == ["vllm:8000"]


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = render_prometheus(work, stack.gateway_hosts, [stack.sim.url.removeprefix("http://")])
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "prometheus")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _query(prom: str, expr: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    return body


def _wait_for_series(prom: str, expr: str, timeout: float = 30, count: int = 1) -> list[dict[str, Any]]:
    """The series of ``expr`` once there are at least ``count`` of them (targets are scraped one by one)."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        body = _query(prom, expr)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        if len(result) >= count:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{len(result)} series for {expr} within {timeout} s, wanted {count}: {result}")


def test_prometheus_scrapes_the_gateways(prometheus: str, stack: Stack) -> None:
    for gateway in stack.gateways:
        assert httpx.get(gateway + "/v1/styles", timeout=10).status_code == 200
    expr = 'huayu_requests_total{job="gateway",route="/v1/styles"}'
    result = _wait_for_series(prometheus, expr, count=len(stack.gateway_hosts))
    assert {r["metric"]["instance"] for r in result} == set(stack.gateway_hosts)
    up = _wait_for_series(prometheus, "up == 1", count=len(stack.gateway_hosts) + 1)
    assert {r["metric"]["job"] for r in up} == {"gateway", "vllm"}


def test_prometheus_loaded_the_alert_rules(prometheus: str) -> None:
    groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
    assert set(loaded) == set(rule_expressions(PROM / "alerts.yml"))
    deadline = time.monotonic() + 15
    while "unknown" in loaded.values() and time.monotonic() < deadline:
        time.sleep(0.5)
        groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
    assert set(loaded.values()) == {"ok"}, loaded


def test_dashboard_queries_parse_in_prometheus(prometheus: str) -> None:
    """Grafana sends these expressions to Prometheus as they are (its variables substituted)."""
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for where, expr in dashboard_expressions(json.loads(path.read_text())).items():
            concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            body = _query(prometheus, concrete)
            assert body["status"] == "success", f"{path.name} {where}: {body.get('error')}"
