"""The two-phase preparation through the gateway (real worker processes, the simulator upstream, the
SQLite store): a cache hit never has the JPEG made; a miss sends, and stores, the very JPEG that
``prepare_image`` makes."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.images import ImageOptions, ImageWorker, prepare_image
from tests.media import b64, data_url, encode, painting
from tests.servers import Sim, gateway_settings, serve

ART = painting(1024, 768, seed=77)
ORIGINAL = encode(ART, "JPEG", quality=90)


class Gateway:
    def __init__(self, client: httpx.Client, settings: Settings, images: ImageWorker) -> None:
        self.client = client
        self.options = ImageOptions.from_settings(settings)
        self.images = images

    def predict(self, image: bytes, **body: Any) -> dict[str, Any]:
        r = self.client.post("/v1/models/qwen-vl:predict", json={"image": b64(image), **body})
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def counts(self) -> dict[str, int]:
        return dict(self.images.counts)

    def stored(self, description_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while (r := self.client.get(f"/v1/descriptions/{description_id}")).status_code == 404:
            assert time.monotonic() < deadline, f"{description_id} was never stored"
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
def gateway(sim_url: str, tmp_path: Path) -> Iterator[Gateway]:
    settings = gateway_settings(sim_url, tmp_path)
    app = create_app(settings)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Gateway(client, settings, app.state.services.images)


def _sent_image(request: dict[str, Any]) -> str:
    url: str = request["messages"][1]["content"][0]["image_url"]["url"]
    return url


def test_a_near_hit_makes_no_jpeg_and_a_miss_sends_and_stores_the_right_one(gateway: Gateway, sim: Sim) -> None:
    want = prepare_image(ORIGINAL, gateway.options)
    miss = gateway.predict(ORIGINAL, style="curator")
    assert miss["cached"] is False
    assert gateway.counts() == {"staged": 1, "finished": 1}
    [sent] = sim.requests()
    assert _sent_image(sent) == want.data_url()
    stored = gateway.stored(miss["id"])
    artwork = stored["artwork_id"]
    assert artwork == "art_" + want.artwork_digest[:16]  # the model image's pixels, not the cache's key
    assert gateway.client.get(f"/v1/artworks/{artwork}/image").content == want.jpeg
    assert gateway.client.get(f"/v1/artworks/{artwork}/thumbnail").content == want.thumbnail

    # other copies of the artwork: decoded and fingerprinted, then found; no JPEG is made
    time.sleep(0.2)  # the cache's put is asynchronous
    copy = encode(ART, "JPEG", quality=70)
    near = gateway.predict(copy, style="curator")
    assert near["cached"] is True and near["cache"]["kind"] == "near"
    assert near["description"] == miss["description"]
    assert gateway.counts() == {"staged": 2, "finished": 1, "dropped": 1}
    png = encode(ART.resize((800, 600)), "PNG")  # a PNG would always need encoding
    events = _stream(gateway.client, png, style="curator")
    assert events[-1]["huayu"]["cached"] is True
    assert gateway.counts() == {"staged": 3, "finished": 1, "dropped": 2}
    assert len(sim.requests()) == 1
    metrics = gateway.client.get("/metrics").text
    assert 'huayu_image_tasks_total{kind="dropped"} 2.0' in metrics
    assert 'huayu_image_tasks_total{kind="finished"} 1.0' in metrics

    # the copy again: the memo has its keys, the worker is not asked at all
    again = gateway.predict(copy, style="curator")
    assert again["cached"] is True
    assert gateway.counts() == {"staged": 3, "finished": 1, "dropped": 2}
    # ... and in a style not described yet: prepared in full from the upload the memo knew only the keys of
    other = gateway.predict(copy, style="academic")
    assert other["cached"] is False
    assert gateway.counts() == {"staged": 3, "finished": 1, "dropped": 2, "full": 1}
    assert _sent_image(sim.requests(1)[0]) == prepare_image(copy, gateway.options).data_url()
    # a third style: the memo now has the image itself
    assert gateway.predict(copy, style="kids_guide")["cached"] is False
    assert gateway.counts() == {"staged": 3, "finished": 1, "dropped": 2, "full": 1}
    assert _sent_image(sim.requests(1)[0]) == prepare_image(copy, gateway.options).data_url()


def test_with_redis_a_near_hits_round_trip_starts_from_the_early_keys(
    sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the worker tells the digest and the pHash before the signature: the cache's one round trip is
    # under way by the time the keys come, and the lookup takes what it brought
    from gateway.cache.redis_backend import RedisCache

    calls = {"prefetch": 0, "fetch": 0}
    prefetch, fetch = RedisCache.prefetch, RedisCache._fetch

    def counted_prefetch(self: RedisCache, *args: Any) -> Any:
        calls["prefetch"] += 1
        return prefetch(self, *args)

    async def counted_fetch(self: RedisCache, *args: Any) -> Any:
        calls["fetch"] += 1
        return await fetch(self, *args)

    monkeypatch.setattr(RedisCache, "prefetch", counted_prefetch)
    monkeypatch.setattr(RedisCache, "_fetch", counted_fetch)
    prefix = f"huayu-test:{uuid.uuid4().hex}:"
    settings = gateway_settings(sim_url, tmp_path, cache_backend="redis", redis_cache_prefix=prefix)
    app = create_app(settings)
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            gateway = Gateway(client, settings, app.state.services.images)
            assert gateway.predict(ORIGINAL, style="curator")["cached"] is False
            assert calls == {"prefetch": 1, "fetch": 1}  # the miss looked up early too
            copy = encode(ART, "JPEG", quality=70)
            deadline = time.monotonic() + 10
            while (near := gateway.predict(copy, style="curator"))["cached"] is False:  # the put and the record land
                assert time.monotonic() < deadline, "the near entry never became visible"
                time.sleep(0.1)
                copy = encode(ART, "JPEG", quality=70 + int(time.monotonic() * 10) % 20)  # not the memo's
            assert near["cache"]["kind"] == "near"
            assert calls["prefetch"] == calls["fetch"]  # every lookup's one round trip was the early one
            assert gateway.predict(ORIGINAL, style="curator")["cache"]["kind"] == "exact"  # from the memo's keys
            assert calls["fetch"] == calls["prefetch"] + 1  # no worker, so no early keys: fetched then
    finally:
        import redis

        r = redis.Redis.from_url(settings.redis_url)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
        r.close()


def test_a_request_that_skips_the_cache_is_prepared_in_one_go(gateway: Gateway, sim: Sim) -> None:
    image = encode(painting(700, 500, seed=78), "PNG")
    assert gateway.predict(image, cache=False)["cached"] is False
    assert gateway.counts() == {"full": 1}
    assert _sent_image(sim.requests(1)[0]) == prepare_image(image, gateway.options).data_url()


def test_the_memo_tells_apart_uploads_of_one_length_that_differ_between_its_key_characters(gateway: Gateway) -> None:
    # two uploads of the same length that differ only inside a JPEG comment, between the few characters
    # a small upload's memo key is made of: the second must go to a worker, not take the first's entry
    first = encode(painting(640, 480, seed=80), "JPEG", quality=85, comment=b"a" * 600)
    at = first.index(b"a" * 600) + 300
    second = first[:at] + b"b" + first[at + 1 :]
    assert len(second) == len(first) and b64(second)[:4] == b64(first)[:4] and b64(second) != b64(first)
    assert gateway.predict(first, cache=False)["cached"] is False
    assert gateway.counts() == {"full": 1}
    gateway.predict(first, cache=False)
    assert gateway.counts() == {"full": 1}  # the same upload again: from the memo
    gateway.predict(second, cache=False)
    assert gateway.counts() == {"full": 2}
    gateway.predict(second, cache=False)
    assert gateway.counts() == {"full": 2}


def test_joined_flights_and_failures_leave_no_worker_held(gateway: Gateway, sim: Sim) -> None:
    # identical uploads at once: one is finished and goes upstream, the others drop theirs and join it
    sim.configure(ttft_ms=300)
    image = encode(painting(640, 480, seed=79), "JPEG", quality=85)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: gateway.predict(image), range(6)))
    assert len({a["description"] for a in answers}) == 1 and len(sim.requests()) == 1
    counts = gateway.counts()
    assert counts["finished"] == 1 and counts["staged"] == 1 + counts.get("dropped", 0)

    # a miss whose upstream fails: its image was finished; the one worker serves on
    sim.configure(ttft_ms=0, fault="503")
    r = gateway.client.post("/v1/models/qwen-vl:predict", json={"image": b64(encode(painting(640, 480, seed=80)))})
    assert r.status_code >= 500
    sim.configure(fault="none")
    assert gateway.predict(encode(painting(640, 480, seed=81), "PNG"))["cached"] is False
    counts = gateway.counts()
    assert counts["staged"] == counts["finished"] + counts.get("dropped", 0)


def _stream(client: httpx.Client, image: bytes, **extra: Any) -> list[dict[str, Any]]:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image, "image/png")}}]}
    body = {"model": "qwen-vl", "messages": [message], "stream": True, **extra}
    events: list[dict[str, Any]] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert events
    return events
