"""The moment between an answer and its cache write: asking again then is answered with that answer,
never sent to the model a second time (Redis's writes held with ``CLIENT PAUSE ... WRITE``)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import redis

from tests.hardening.conftest import GatewayFactory, RedisServer
from tests.media import b64, data_url, jpeg
from tests.servers import Sim

PAUSE_S = 10.0  # ended by CLIENT UNPAUSE once the repeats are in; long, so a slow host cannot outlast it


def _chat(client: httpx.Client, image: bytes, stream: bool) -> dict[str, Any]:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}]}
    body = {"model": "qwen-vl", "messages": [message], "stream": stream}
    if not stream:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    last: dict[str, Any] = events[-1]
    return last


def test_a_repeat_while_the_cache_write_is_held_gets_the_answer_just_given(
    gateway: GatewayFactory, own_redis: RedisServer, sim: Sim
) -> None:
    body = {"image": b64(jpeg(200, 160, seed=41)), "style": "curator"}
    painting = jpeg(180, 140, seed=42)
    settings = {"cache_backend": "redis", "redis_url": own_redis.url, "redis_timeout_s": 2 * PAUSE_S}
    with redis.Redis(port=own_redis.port) as direct, gateway(**settings) as client:
        assert client.get("/readyz").status_code == 200
        held_at = time.monotonic()
        direct.execute_command("CLIENT", "PAUSE", int(PAUSE_S * 1000), "WRITE")  # reads still answered
        first = client.post("/v1/models/qwen-vl:predict", json=body).json()
        again = client.post("/v1/models/qwen-vl:predict", json=body).json()
        chat_first = _chat(client, painting, stream=False)
        chat_again = _chat(client, painting, stream=True)  # the streamed way asks the same
        assert time.monotonic() - held_at < PAUSE_S, "the requests outlasted the pause"
        assert first["cached"] is False
        assert again["cached"] is True and again["cache"]["kind"] == "coalesced"
        assert again["description"] == first["description"] and again["id"] == first["id"]
        assert chat_first["huayu"]["cached"] is False and chat_again["huayu"]["cached"] is True
        assert len(sim.requests()) == 2  # one generation per image
        assert "huayu_coalesced_requests_total 2.0" in client.get("/metrics").text

        # the writes go through when the pause ends; from then on the cache itself answers
        direct.execute_command("CLIENT", "UNPAUSE")
        deadline = time.monotonic() + 10
        while (later := client.post("/v1/models/qwen-vl:predict", json=body).json())["cache"]["kind"] != "exact":
            assert later["cached"] is True and time.monotonic() < deadline
            time.sleep(0.05)
        assert later["description"] == first["description"]
        assert len(sim.requests()) == 2
