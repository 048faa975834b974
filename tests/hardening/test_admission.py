"""Admission control and the body limit act before a body is read: raw sockets show what the server
answers while the client has sent only part of its request."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.app import create_app
from tests.hardening.conftest import GatewayFactory
from tests.media import b64, jpeg
from tests.servers import Sim, gateway_settings, running, until_closed


def _connect(client: httpx.Client) -> socket.socket:
    url = urlsplit(str(client.base_url))
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    return sock


def _head(path: str, extra: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{extra}\r\n".encode()


def _response(sock: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return int(head.split()[1]), head.lower()


def test_past_the_in_flight_bound_429_comes_before_the_body(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(max_in_flight=1) as client:
        sim.configure(fault="hang")
        body = {"image": b64(jpeg(96, 64)), "cache": False}
        held = threading.Thread(target=lambda: client.post("/v1/models/qwen-vl:predict", json=body))
        held.start()
        try:
            while not sim.requests():  # the first request is now in flight, held by the model server
                threading.Event().wait(0.02)
            with _connect(client) as sock:
                # a slow client: headers promise a body it never sends; the answer must not wait for it
                sock.sendall(_head("/v1/models/qwen-vl:predict", "content-length: 100000\r\n"))
                status, head = _response(sock)
            assert status == 429 and "retry-after: 1" in head
        finally:
            sim.reset()  # releases the held request
            held.join(timeout=15)


def test_a_declared_oversize_body_is_refused_before_it_is_sent(gateway: GatewayFactory) -> None:
    with gateway(max_body_bytes=4096) as client, _connect(client) as sock:
        sock.sendall(_head("/v1/models/qwen-vl:predict", "content-length: 10000000\r\n"))
        status, _ = _response(sock)
        assert status == 413


def test_a_chunked_body_is_cut_off_at_the_limit_while_it_is_read(gateway: GatewayFactory) -> None:
    with gateway(max_body_bytes=4096) as client, _connect(client) as sock:
        sock.sendall(_head("/v1/models/qwen-vl:predict", "transfer-encoding: chunked\r\n"))
        piece = b"x" * 2048
        for _ in range(3):  # 6 KiB of an endless body: past the limit, never finished
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, head = _response(sock)
        assert status == 413 and "application/json" in head


def test_a_huge_body_gets_413_with_a_clear_message(gateway: GatewayFactory) -> None:
    with gateway(max_body_bytes=1 << 20) as client:
        r = client.post("/v1/models/qwen-vl:predict", content=b"{" + b" " * (2 << 20) + b"}")
        assert r.status_code == 413
        assert "larger than the limit of 1048576 bytes" in r.json()["error"]["message"]


def _series(metrics: str, prefix: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("how", ["stalls", "leaves"])
def test_a_body_that_never_arrives_frees_its_place_without_an_error(
    sim_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A client that declares a body and stalls gets a 408 after the read timeout; one that leaves
    mid-body is simply gone. Either way the request gives back its in-flight place, and it counts as
    the caller's leaving (499), not as a gateway error with a traceback."""
    app = create_app(gateway_settings(sim_url, tmp_path, store_enabled=False))
    with running(app, read_timeout_s=1.0) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        with _connect(client) as sock:
            sock.sendall(_head("/v1/chat/completions", "content-length: 100000\r\n") + b'{"model": "qwen-vl"')
            if how == "stalls":
                answer = until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 1 s" in answer
            else:
                time.sleep(0.3)  # the app is reading the body by now
        deadline = time.monotonic() + 10
        while True:
            metrics = client.get("/metrics").text
            if _series(metrics, 'huayu_requests_total{route="/v1/chat/completions",status="499"'):
                break
            assert time.monotonic() < deadline, _series(metrics, "huayu_requests_total")
            time.sleep(0.05)
        assert _series(metrics, "huayu_requests_in_flight") == ["huayu_requests_in_flight 0.0"]
        assert _series(metrics, 'huayu_errors_total{code="client_disconnected"}') != []
        assert not _series(metrics, 'huayu_requests_total{route="/v1/chat/completions",status="500"')
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
