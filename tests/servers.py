"""Real servers on loopback for the tests: an ASGI app under huayu's server in a thread, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvloop

from gateway.config import Settings
from gateway.server import Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def until_closed(sock: socket.socket, timeout_s: float = 10) -> bytes:
    """Everything ``sock`` receives until the other side closes it."""
    sock.settimeout(timeout_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@contextmanager
def running(app: Any, port: int | None = None, **options: Any) -> Iterator[Server]:
    """Runs ``app`` on 127.0.0.1 under huayu's own server (``gateway.server``, what ``huayu serve``
    runs) in a thread with its own loop until the block ends; yields the started ``Server``."""
    server = Server(app, "127.0.0.1", port or free_port(), **options)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            uvloop.run(server.serve())
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server did not start: {errors[:1]}")
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the test server did not stop"


@contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """``running(app)``, yielding its base URL."""
    with running(app, port, graceful_s=5) as server:
        yield f"http://127.0.0.1:{server.port}"


class Sim:
    """Controls a running simulator through its own HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10)

    def configure(self, **patch: Any) -> None:
        self.client.post("/_sim/config", json=patch).raise_for_status()

    def reset(self) -> None:
        self.client.post("/_sim/reset").raise_for_status()

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.client.get("/_sim/requests", params={"limit": limit}).json()["data"]
        return data


def gateway_settings(upstream: str, tmp: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "upstream_url": upstream + "/v1",
        "upstream_model": "qwen-vl",
        "database_url": f"sqlite+aiosqlite:///{tmp / 'huayu.db'}",
        "cache_backend": "memory",
        "image_workers": 1,
        "first_byte_timeout_s": 5.0,
        "read_timeout_s": 5.0,
    }
    base.update(overrides)
    return Settings(**base)
