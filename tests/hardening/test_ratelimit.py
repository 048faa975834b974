"""Per-key limits: 429 with Retry-After and x-ratelimit-* headers; Redis shared, in-process when it is down."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from prometheus_client import CollectorRegistry

from gateway.errors import RateLimited
from gateway.security import RateLimiter, hash_key
from tests.hardening.conftest import GatewayFactory, RedisServer
from tests.media import b64, data_url, jpeg
from tests.servers import Sim

KEY_A, KEY_B = "hy_limited-a", "hy_limited-b"
KEYS = f"a:{hash_key(KEY_A)},b:{hash_key(KEY_B)}"


def body(seed: int) -> dict[str, object]:
    return {"image": b64(jpeg(128, 96, seed=seed)), "style": "curator"}


async def test_request_limit_refuses_past_the_limit_and_does_not_count_refusals() -> None:
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=0, redis_url=None)
    first = await limiter.admit("t")
    second = await limiter.admit("t")
    assert first.headers()["x-ratelimit-remaining-requests"] == "1"
    assert second.headers()["x-ratelimit-remaining-requests"] == "0"
    for _ in range(3):
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("t")
    err = refused.value
    assert err.status == 429 and err.code == "rate_limit_requests"
    assert int(err.headers["Retry-After"]) >= 1
    assert err.headers["x-ratelimit-limit-requests"] == "2"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"].endswith("s")
    assert (await limiter.admit("other")).used_requests == 1  # each key has its own window


async def test_token_limit_charges_answers_after_the_fact() -> None:
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=100, redis_url=None)
    await limiter.admit("t")
    await limiter.charge("t", 60)
    quota = await limiter.admit("t")
    assert quota.headers()["x-ratelimit-remaining-tokens"] == "40"
    await limiter.charge("t", 60)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("t")
    assert refused.value.code == "rate_limit_tokens"
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_redis_counts_are_shared_between_processes(own_redis: RedisServer) -> None:
    registry = CollectorRegistry()
    one = RateLimiter(
        requests_per_minute=3, tokens_per_minute=0, redis_url=own_redis.url, timeout_s=0.5, registry=registry
    )
    two = RateLimiter(requests_per_minute=3, tokens_per_minute=0, redis_url=own_redis.url, timeout_s=0.5)
    try:
        await one.admit("t")
        await two.admit("t")
        await one.admit("t")
        with pytest.raises(RateLimited):
            await two.admit("t")
        assert registry.get_sample_value("huayu_ratelimit_fallback_total") == 0
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_down_falls_back_to_counting_in_process(own_redis: RedisServer) -> None:
    own_redis.stop()
    registry = CollectorRegistry()
    limiter = RateLimiter(
        requests_per_minute=1, tokens_per_minute=0, redis_url=own_redis.url, timeout_s=0.05, registry=registry
    )
    try:
        await limiter.admit("t")
        with pytest.raises(RateLimited):
            await limiter.admit("t")
        assert (registry.get_sample_value("huayu_ratelimit_fallback_total") or 0) >= 1
    finally:
        await limiter.aclose()


def test_gateway_answers_with_ratelimit_headers_then_429(gateway: GatewayFactory) -> None:
    with gateway(api_keys=KEYS, rate_limit_requests_per_minute=2, rate_limit_backend="memory") as client:
        a, b = {"x-api-key": KEY_A}, {"x-api-key": KEY_B}
        remaining = []
        for seed in (1, 2):
            r = client.post("/v1/models/qwen-vl:predict", json=body(seed), headers=a)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "2"
            remaining.append(r.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["1", "0"]
        refused = client.post("/v1/models/qwen-vl:predict", json=body(3), headers=a)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert client.post("/v1/models/qwen-vl:predict", json=body(3), headers=b).status_code == 200
        listed = client.get("/v1/styles", headers=a)  # not a generation route: neither counted nor refused
        assert listed.status_code == 200 and "x-ratelimit-limit-requests" not in listed.headers


def test_gateway_token_limit_counts_usage(gateway: GatewayFactory) -> None:
    with gateway(rate_limit_tokens_per_minute=50, rate_limit_backend="memory") as client:
        first = client.post("/v1/models/qwen-vl:predict", json=body(4))
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "50"
        assert first.json()["usage"]["total_tokens"] > 50
        refused = client.post("/v1/models/qwen-vl:predict", json=body(5))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_tokens"


def test_a_stream_left_before_its_end_is_charged_what_it_cost(gateway: GatewayFactory, sim: Sim) -> None:
    limit = 1_000_000
    sim.configure(ttft_ms=10, itl_ms=30, tokens=200)  # a 6 s answer
    image = {"type": "image_url", "image_url": {"url": data_url(jpeg(256, 192, seed=9))}}
    chat = {"model": "qwen-vl", "messages": [{"role": "user", "content": [image]}], "stream": True, "cache": False}
    with gateway(rate_limit_tokens_per_minute=limit, rate_limit_backend="memory") as client:
        with client.stream("POST", "/v1/chat/completions", json=chat) as r:
            chunks = r.iter_lines()  # held: a dropped iterator would close the response at once
            seen = [line for line, _ in zip(chunks, range(20), strict=False) if line.startswith("data: ")]
            assert len(seen) >= 5
        # the caller has left, mid-answer: the prompt (256x192 pixels: 48 image tokens, and the
        # style's text) and the chunks generated so far are charged, not nothing
        deadline = time.monotonic() + 10
        while True:
            refused = client.post("/v1/models/qwen-vl:predict", json={})  # a 400: admitted, charged nothing
            left = int(refused.headers["x-ratelimit-remaining-tokens"])
            if left < limit or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert 48 + 5 < limit - left < 48 + 200 + 2000, left


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_run_fails_no_request(gateway: GatewayFactory, own_redis: RedisServer) -> None:
    settings = {"api_keys": KEYS, "rate_limit_requests_per_minute": 100_000, "cache_backend": "redis"}
    with gateway(redis_url=own_redis.url, **settings) as client:
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            seed = 100
            while not stop.is_set():
                seed += 1
                r = client.post("/v1/models/qwen-vl:predict", json=body(seed % 7), headers={"x-api-key": KEY_A})
                statuses.append(r.status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(1.0)
            own_redis.stop()
            time.sleep(1.5)
            during = len(statuses)
            own_redis.start()
            time.sleep(2.5)  # past the limiter's and the cache's back-off: Redis is used again
        finally:
            stop.set()
            worker.join(timeout=30)
        assert statuses and set(statuses) == {200}, statuses
        assert len(statuses) > during > 0
        with redis.Redis(port=own_redis.port) as direct:
            assert direct.keys("huayu:rl:*")  # counted in Redis again after the restart
        metrics = client.get("/metrics").text
        assert "huayu_ratelimit_fallback_total" in metrics
        fallback = next(line for line in metrics.splitlines() if line.startswith("huayu_ratelimit_fallback_total"))
        assert float(fallback.split()[-1]) >= 1
