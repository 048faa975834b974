"""deploy/nginx/huayu.conf run by Debian's nginx in front of two real gateways on loopback."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import Settings
from tests.deploy.conftest import Stack, require, stop, wait_for_port
from tests.deploy.render import DEPLOY, render_nginx
from tests.media import data_url, jpeg
from tests.servers import free_port

NGINX_404 = "No such route here"


@pytest.fixture(scope="module")
def nginx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require("nginx")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = render_nginx(prefix, port, stack.gateway_hosts)
    base = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "syntax is ok" in checked.stderr, checked.stderr
    proc = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _requests_served(gateway: str, route: str) -> float:
    text = httpx.get(gateway + "/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "huayu_requests_total" and sample.labels.get("route") == route:
                total += sample.value
    return total


def test_requests_reach_both_gateways(nginx: str, stack: Stack) -> None:
    before = [_requests_served(g, "/v1/styles") for g in stack.gateways]
    with httpx.Client(base_url=nginx, timeout=10) as client:
        for _ in range(10):
            assert client.get("/v1/styles").status_code == 200
    served = [_requests_served(g, "/v1/styles") - b for g, b in zip(stack.gateways, before, strict=True)]
    assert sum(served) == 10
    assert all(n >= 1 for n in served), f"requests per gateway: {served}"


def test_stream_arrives_chunk_by_chunk(nginx: str, stack: Stack) -> None:
    stack.sim.configure(itl_ms=30, tokens=40)
    try:
        body: dict[str, Any] = {
            "model": "qwen-vl",
            "stream": True,
            "cache": False,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(jpeg())}}]}],
        }
        arrivals: list[float] = []
        with (
            httpx.Client(base_url=nginx, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:") and '"content"' in line:
                    arrivals.append(time.monotonic())
    finally:
        stack.sim.configure(itl_ms=0, tokens=12)
    assert len(arrivals) >= 10, arrivals
    # 40 tokens 30 ms apart (the gateway's safety filter holds back a short window of text): a
    # buffering proxy would hand them over together at the end.
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.4, f"{len(arrivals)} content chunks arrived within {spread:.3f} s: the stream was buffered"


BLOCKED = [
    "/metrics",
    "/metrics/",
    "/v1/completions",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
    "/health",
    "/version",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/_sim/config",
    "/v1/styles/../../metrics",
    "/static/..%2F..%2Fmetrics",
    "/v1/describe/../../metrics",
]


@pytest.mark.parametrize("path", BLOCKED)
def test_internal_routes_are_not_reachable(nginx: str, stack: Stack, path: str) -> None:
    for method in ("GET", "POST"):
        r = httpx.request(method, nginx + path, timeout=10)
        # 400: nginx refuses a path that climbs above the root.
        assert r.status_code in (400, 403, 404), (method, path, r.status_code)
        assert "huayu_requests" not in r.text and "vllm:" not in r.text


def test_metrics_are_blocked_by_nginx_not_missing(nginx: str, stack: Stack) -> None:
    assert httpx.get(stack.gateways[0] + "/metrics", timeout=10).status_code == 200
    r = httpx.get(nginx + "/metrics", timeout=10)
    assert r.status_code == 404 and NGINX_404 in r.json()["error"]["message"]


def _public_paths() -> list[tuple[str, str]]:
    """Every API route the gateway documents except /metrics, as (method, path)."""
    paths = create_app(Settings.model_validate({})).openapi()["paths"]
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "qwen-vl", path))
        for path, methods in paths.items()
        if path != "/metrics"
        for method in methods
    ]


def test_every_public_route_of_the_gateway_passes(nginx: str) -> None:
    paths = _public_paths()
    assert ("POST", "/v1/chat/completions") in paths
    with httpx.Client(base_url=nginx, timeout=20) as client:
        for method, path in paths:
            r = client.request(method, path, json={} if method == "POST" else None)
            assert NGINX_404 not in r.text, f"nginx does not pass {method} {path} to the gateways"


def test_body_limit_is_enforced_by_nginx(nginx: str) -> None:
    conf = (DEPLOY / "nginx" / "huayu.conf").read_text()
    match = re.search(r"client_max_body_size (\d+)m;", conf)
    assert match is not None
    limit = int(match.group(1)) * 1024 * 1024
    assert limit == Settings.model_validate({}).max_body_bytes, (
        "nginx's body limit must equal the gateway's HUAYU_MAX_BODY_BYTES"
    )
    port = int(nginx.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (
            f"POST /v1/describe HTTP/1.1\r\nHost: huayu\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n"
        )
        s.sendall(head.encode() + b"{")
        reply = s.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"code":"payload_too_large"' in reply


def test_nginx_liveness_endpoint(nginx: str) -> None:
    r = httpx.get(nginx + "/_nginx/health", timeout=10)
    assert r.status_code == 200 and r.text == "ok\n"


def test_gateway_down_answers_json_503(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """With no gateway answering, the client still gets the API's error shape."""
    binary = require("nginx")
    prefix = tmp_path_factory.mktemp("nginx-down")
    port = free_port()
    conf = render_nginx(prefix, port, [f"127.0.0.1:{free_port()}"])
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "nginx")
        r = httpx.get(f"http://127.0.0.1:{port}/v1/styles", timeout=10)
    finally:
        stop(proc)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "gateway_unavailable"


def test_render_keeps_the_production_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    prefix = tmp_path_factory.mktemp("nginx-render")
    render_nginx(prefix, 1234, ["127.0.0.1:1", "127.0.0.1:2"])
    rendered = (prefix / "huayu.conf").read_text()
    for directive in ("least_conn;", "proxy_buffering off;", "proxy_read_timeout 300s;", "client_max_body_size 42m;"):
        assert directive in rendered
    assert "gateway-1" not in rendered and rendered.count("server 127.0.0.1:") == 2
