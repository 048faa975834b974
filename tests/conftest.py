"""Fixtures shared by every test folder: the upstream simulator on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.simulator import SimConfig
from loadtest.simulator import create_app as create_sim
from tests.servers import Sim, serve


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
