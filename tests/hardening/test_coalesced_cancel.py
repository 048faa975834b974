"""Requests that joined an identical one in flight, when that one's client leaves before its answer."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.hardening.conftest import GatewayFactory
from tests.media import data_url, jpeg
from tests.servers import Sim


def _chat(stream: bool) -> dict[str, Any]:
    image = {"type": "image_url", "image_url": {"url": data_url(jpeg(120, 96, seed=77))}}
    return {"model": "qwen-vl", "messages": [{"role": "user", "content": [image]}], "stream": stream}


def _coalesced(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("huayu_coalesced_requests_total "):
            return float(line.split()[1])
    return 0.0


def test_those_who_joined_a_stream_whose_client_left_get_a_retryable_503(gateway: GatewayFactory, sim: Sim) -> None:
    sim.configure(ttft_ms=20, itl_ms=50, tokens=80)  # a 4 s answer
    with gateway() as client:
        answers: dict[str, httpx.Response | BaseException] = {}

        def join(name: str, stream: bool) -> None:
            try:
                r = client.post("/v1/chat/completions", json=_chat(stream), timeout=20)
                answers[name] = r
            except BaseException as e:  # a dropped connection is what this test guards against
                answers[name] = e

        with (
            httpx.Client(base_url=str(client.base_url), timeout=20) as own,
            own.stream("POST", "/v1/chat/completions", json=_chat(True)) as leader,
        ):
            assert leader.status_code == 200
            chunks = leader.iter_bytes()  # held: a dropped iterator would close the response now
            next(chunks)  # its answer is streaming
            joiners = [threading.Thread(target=join, args=(n, n == "stream")) for n in ("stream", "plain")]
            for t in joiners:
                t.start()
            deadline = time.monotonic() + 10
            while _coalesced(client) < 2:  # both have joined the leader's flight
                assert time.monotonic() < deadline, "the identical requests did not join the one in flight"
                time.sleep(0.02)
            # the leader's client has gone, mid-answer
        for t in joiners:
            t.join(20)
        for name in ("stream", "plain"):
            r = answers[name]
            assert isinstance(r, httpx.Response), f"{name}: {r!r}"
            assert r.status_code == 503 and r.headers["retry-after"] == "0", r.text
            assert r.json()["error"]["code"] == "joined_request_cancelled"
        # and sent again, the request is answered (it leads a flight of its own)
        assert client.post("/v1/chat/completions", json=_chat(False), timeout=20).status_code == 200
