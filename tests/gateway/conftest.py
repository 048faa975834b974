from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import Settings
from loadtest.simulator import SimConfig
from loadtest.simulator import create_app as create_sim
from tests.servers import serve


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


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    with serve(create_sim(SimConfig(model="qwen-vl", tokens=24))) as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> Iterator[Sim]:
    s = Sim(sim_url)
    s.reset()
    yield s
    s.reset()
    s.client.close()


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


@pytest.fixture(scope="session")
def gateway_url(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = gateway_settings(sim_url, tmp_path_factory.mktemp("gw"))
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as c:
        yield c


@pytest.fixture
def sdk(gateway_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c
