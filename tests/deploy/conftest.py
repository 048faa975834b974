"""A small production stack on loopback: the upstream simulator, two real gateways, and helpers to
run Debian's nginx and Prometheus binaries against the configs in deploy/."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from gateway.app import create_app
from loadtest.simulator import SimConfig
from loadtest.simulator import create_app as create_sim
from tests.e2e.conftest import vllm_server  # noqa: F401  (shared: one vLLM process per session)
from tests.servers import Sim, gateway_settings, serve


def require(binary: str) -> str:
    """The path of a Debian binary the deployment tests run; a clear failure when it is missing."""
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"`{binary}` is not installed. The deployment tests run Debian's nginx and prometheus for real: "
            "run `bash scripts/install-debs.sh` (make test does) and try again."
        )
    return path


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass(frozen=True)
class Stack:
    sim: Sim
    gateways: list[str]

    @property
    def gateway_hosts(self) -> list[str]:
        return [url.removeprefix("http://") for url in self.gateways]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The simulator standing in for vLLM and two gateway replicas in front of it, as in compose."""
    with ExitStack() as running:
        sim_url = running.enter_context(serve(create_sim(SimConfig(model="qwen-vl", tokens=12))))
        gateways = [
            running.enter_context(serve(create_app(gateway_settings(sim_url, tmp_path_factory.mktemp(f"gw{i}")))))
            for i in range(2)
        ]
        sim = Sim(sim_url)
        running.callback(sim.client.close)
        yield Stack(sim, gateways)


@pytest.fixture(scope="session")
def gateway_metrics_text(stack: Stack) -> str:
    return httpx.get(stack.gateways[0] + "/metrics", timeout=10).text
