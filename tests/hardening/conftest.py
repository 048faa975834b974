"""Fixtures of the hardening tier: a simulator, gateways with chosen settings, an image server."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.servers import free_port, gateway_settings, serve

GatewayFactory = Callable[..., AbstractContextManager[httpx.Client]]


@pytest.fixture
def gateway(sim_url: str, tmp_path: Path) -> GatewayFactory:
    """``with gateway(**settings) as client:`` a real gateway over the simulator, on loopback."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[httpx.Client]:
        overrides.setdefault("store_enabled", False)
        settings = gateway_settings(sim_url, tmp_path, **overrides)
        with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client

    return start


class RedisServer:
    """A redis-server of the test's own on a free port (the machine's shared Redis is never stopped)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*cmd, "--dir", str(self.tmp)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
