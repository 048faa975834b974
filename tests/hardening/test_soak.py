"""A bounded soak: `huayu serve` in a process of its own against the simulator, driven by a few clients
for a fixed number of requests. Pass: zero errors, and the gateway process's RSS grows by less than
50 MB between the end of the warm-up and the end of the run (the figures are printed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from loadtest.simulator import RunningSim, SimConfig, run_in_subprocess
from tests.media import b64, data_url, jpeg
from tests.servers import free_port

WARMUP, REQUESTS, CLIENTS = 100, 2000, 4
IMAGES = [jpeg(256, 192, seed=s) for s in range(40)]


@pytest.fixture
def soak_sim() -> Iterator[RunningSim]:
    with run_in_subprocess(SimConfig(model="qwen-vl", tokens=32)) as sim:
        yield sim


@pytest.fixture
def gateway_process(soak_sim: RunningSim, tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = os.environ | {
        "HUAYU_UPSTREAM_URL": soak_sim.base_url,
        "HUAYU_UPSTREAM_MODEL": "qwen-vl",
        "HUAYU_PORT": str(port),
        "HUAYU_IMAGE_WORKERS": "1",
        "HUAYU_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'soak.db'}",
        "HUAYU_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the gateway did not start")
        time.sleep(0.1)
    try:
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _one(client: httpx.Client, i: int) -> int:
    image = IMAGES[i % len(IMAGES)]
    if i % 3 == 0:  # streamed chat
        part = {"type": "image_url", "image_url": {"url": data_url(image)}}
        body = {"model": "qwen-vl", "stream": True, "messages": [{"role": "user", "content": [part]}]}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            text = "".join(r.iter_text())
            return r.status_code if '"error"' not in text else 599
    body2 = {"image": b64(image), "style": ("curator", "kids_guide", "academic")[i % 3], "cache": i % 4 != 0}
    return client.post("/v1/models/qwen-vl:predict", json=body2).status_code


def _drive(url: str, start: int, n: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda i: _one(client, i), range(start, start + n)))


@pytest.mark.slow
def test_soak_keeps_memory_flat_and_fails_nothing(gateway_process: tuple[str, psutil.Process]) -> None:
    url, proc = gateway_process
    warm = _drive(url, 0, WARMUP)
    assert set(warm) == {200}
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    statuses = _drive(url, WARMUP, REQUESTS)
    seconds = time.perf_counter() - t0
    after = proc.memory_info().rss
    growth_mb = (after - before) / 2**20
    print(
        f"\nsoak: {REQUESTS} requests in {seconds:.1f} s ({REQUESTS / seconds:.0f} req/s, {CLIENTS} clients); "
        f"gateway RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MB ({growth_mb:+.1f} MB)"
    )
    errors = [s for s in statuses if s != 200]
    assert not errors, f"{len(errors)} failed requests: {sorted(set(errors))}"
    assert growth_mb < 50
