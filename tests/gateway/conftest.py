from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.app import create_app
from tests.servers import gateway_settings, serve


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
