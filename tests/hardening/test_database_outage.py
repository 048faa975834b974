"""The results database stopped under a running gateway: descriptions are still served, and what could
not be written is retried and finally present. The outage is a TCP forwarder in front of the shared
PostgreSQL that the test pauses (the server itself is never stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from gateway.app import create_app
from gateway.errors import HuayuError
from gateway.store import open_store
from tests.gateway.test_store import create_database, drop_database
from tests.gateway.test_store_outage import SERVERS, Forwarder
from tests.media import b64, jpeg
from tests.servers import gateway_settings, serve


async def _present(url: str, ids: list[str], timeout: float) -> dict[str, str]:
    async with open_store(url) as store:
        deadline = time.monotonic() + timeout
        found: dict[str, str] = {}
        while len(found) < len(ids) and time.monotonic() < deadline:
            for i in ids:
                if i not in found:
                    with contextlib.suppress(HuayuError):
                        found[i] = str((await store.get_description(i))["text"])
            await asyncio.sleep(0.2)
        return found


async def _write_failures(client: httpx.AsyncClient, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while True:
        text = (await client.get("/metrics")).text
        lines = [line for line in text.splitlines() if line.startswith("huayu_store_write_failures_total")]
        value = float(lines[0].split()[-1]) if lines else 0.0
        if value >= 1 or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_descriptions_are_served_through_an_outage_and_written_after_it(sim_url: str, tmp_path: Path) -> None:
    name = f"huayu_test_{uuid.uuid4().hex[:12]}"
    direct = await create_database("postgresql", name)
    fw = Forwarder(SERVERS["postgresql"])
    await fw.resume()
    through = make_url(direct).set(port=fw.port).render_as_string(hide_password=False)
    settings = gateway_settings(sim_url, tmp_path, database_url=through, cache_backend="off")
    server = serve(create_app(settings))
    # the gateway runs in its own thread; this loop keeps running the forwarder meanwhile
    base = await asyncio.to_thread(server.__enter__)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def describe(seed: int) -> dict[str, str]:
                r = await client.post("/v1/models/qwen-vl:predict", json={"image": b64(jpeg(96, 64, seed=seed))})
                assert r.status_code == 200, r.text
                body: dict[str, str] = r.json()
                return body

            before = await describe(1)
            await fw.pause()
            during = [await describe(seed) for seed in (2, 3, 4)]
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "degraded" and "store" in ready["reason"]
            assert await _write_failures(client) >= 1  # the writer tried, failed, and holds the records
            await fw.resume()
        answers = {d["id"]: d["description"] for d in [before, *during]}
        stored = await _present(direct, list(answers), timeout=40)
        assert stored == answers
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)
        await fw.pause()
        await drop_database("postgresql", name)
