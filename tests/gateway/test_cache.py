"""One behavioural suite for both cache backends (in-process and a real Redis), plus Redis
down or hanging, the near index against brute force, and the metrics."""

from __future__ import annotations

import asyncio
import io
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from gateway.cache import CacheMetrics, build_cache
from gateway.cache.index import NearIndex
from gateway.cache.memory import MemoryCache
from gateway.cache.redis_backend import RedisCache, scope_id
from gateway.config import Settings
from gateway.images import ImageOptions, PreparedImage, prepare_image
from tests.gateway.imageset import sk

REDIS_URL = "redis://127.0.0.1:6379/0"
OPTS = ImageOptions(max_bytes=10**8, max_pixels=10**8)


def _encode(a: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, PreparedImage]:
    cat = np.ascontiguousarray(sk("chelsea"))
    hsv = np.asarray(Image.fromarray(cat).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 90) % 256
    blue_cat = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return {
        "cat": prepare_image(_encode(cat), OPTS),
        "cat_jpeg70": prepare_image(_encode(cat, "JPEG", quality=70), OPTS),
        "blue_cat": prepare_image(_encode(blue_cat), OPTS),  # same drawing, other colours
        "coffee": prepare_image(_encode(np.ascontiguousarray(sk("coffee"))), OPTS),
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> CacheMetrics:
    return CacheMetrics(CollectorRegistry())


def _value(m: CacheMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    for metric in m.hits, m.misses, m.rejected, m.backend_errors:
        for s in next(iter(metric.collect())).samples:
            if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items())):
                return float(s.value)
    return 0.0


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, metrics: CacheMetrics) -> AsyncIterator[MemoryCache | RedisCache]:
    if request.param == "memory":
        c: MemoryCache | RedisCache = MemoryCache(max_entries=100, ttl_s=60, near_distance=10, metrics=metrics)
        yield c
        await c.aclose()
        return
    prefix = f"huayu-test:{uuid.uuid4().hex}:"
    c = RedisCache(REDIS_URL, ttl_s=60, near_distance=10, timeout_s=0.5, metrics=metrics, prefix=prefix)
    yield c
    keys = [k async for k in c.client.scan_iter(match=prefix + "*")]
    if keys:
        await c.client.delete(*keys)
    await c.aclose()


async def test_exact_hit_after_put(cache: MemoryCache | RedisCache, images: dict[str, PreparedImage]) -> None:
    assert await cache.get("scope-a", images["cat"]) is None
    await cache.put("scope-a", images["cat"], {"description": "一只猫", "n": 1})
    hit = await cache.get("scope-a", images["cat"])
    assert hit is not None and (hit.kind, hit.distance) == ("exact", 0)
    assert hit.value == {"description": "一只猫", "n": 1}


async def test_scope_separates_entries(cache: MemoryCache | RedisCache, images: dict[str, PreparedImage]) -> None:
    await cache.put("tenant-1|curator|zh", images["cat"], {"d": "x"})
    assert await cache.get("tenant-2|curator|zh", images["cat"]) is None
    assert await cache.get("tenant-1|curator|en", images["cat_jpeg70"]) is None


async def test_near_hit_for_a_recompressed_copy(
    cache: MemoryCache | RedisCache, images: dict[str, PreparedImage], metrics: CacheMetrics
) -> None:
    await cache.put("s", images["cat"], {"d": "cat"})
    copy = images["cat_jpeg70"]
    assert copy.digest != images["cat"].digest
    hit = await cache.get("s", copy)
    assert hit is not None and hit.kind == "near" and hit.value == {"d": "cat"}
    assert hit.distance == (copy.phash ^ images["cat"].phash).bit_count() <= 10
    assert _value(metrics, "huayu_cache_hits_total", {"kind": "near"}) == 1


async def test_lookalike_is_rejected_not_served(
    cache: MemoryCache | RedisCache, images: dict[str, PreparedImage], metrics: CacheMetrics
) -> None:
    await cache.put("s", images["cat"], {"d": "an orange cat"})
    blue = images["blue_cat"]
    assert (blue.phash ^ images["cat"].phash).bit_count() <= 10  # the pHash alone would serve it
    assert await cache.get("s", blue) is None
    assert _value(metrics, "huayu_cache_near_rejected_total") == 1
    assert _value(metrics, "huayu_cache_misses_total") == 1


async def test_unrelated_image_misses(cache: MemoryCache | RedisCache, images: dict[str, PreparedImage]) -> None:
    await cache.put("s", images["cat"], {"d": "cat"})
    assert await cache.get("s", images["coffee"]) is None


async def test_put_twice_keeps_one_entry(cache: MemoryCache | RedisCache, images: dict[str, PreparedImage]) -> None:
    await cache.put("s", images["cat"], {"v": 1})
    await cache.put("s", images["cat"], {"v": 2})
    hit = await cache.get("s", images["cat_jpeg70"])
    assert hit is not None and hit.value == {"v": 2}
    assert (await cache.ready())[0]


async def test_memory_lru_and_ttl(images: dict[str, PreparedImage]) -> None:
    clock = Clock()
    c = MemoryCache(max_entries=2, ttl_s=10, near_distance=10, clock=clock)
    await c.put("s", images["cat"], {"d": "cat"})
    await c.put("s", images["coffee"], {"d": "coffee"})
    assert await c.get("s", images["cat"]) is not None  # cat is now the most recently used
    await c.put("s", images["blue_cat"], {"d": "blue"})
    assert len(c) == 2
    assert await c.get("s", images["coffee"]) is None  # evicted
    assert await c.get("s", images["cat_jpeg70"]) is not None
    clock.now += 5
    await c.put("s", images["coffee"], {"d": "coffee"})  # evicts blue_cat, the least recently used
    clock.now += 6  # cat is 11 s old now, coffee 6 s
    assert await c.get("s", images["cat"]) is None and len(c) == 1
    assert await c.get("s", images["coffee"]) is not None


async def test_redis_entries_expire_and_stale_records_are_pruned(images: dict[str, PreparedImage]) -> None:
    prefix = f"huayu-test:{uuid.uuid4().hex}:"
    c = RedisCache(REDIS_URL, ttl_s=30, near_distance=10, timeout_s=0.5, prefix=prefix)
    try:
        await c.put("s", images["cat"], {"d": "cat"})
        sid = scope_id("s")
        entry = c.entry_key(sid, images["cat"].phash)
        assert 0 < await c.client.ttl(entry) <= 30
        assert await c.client.xlen(c.stream_key) == 1 and len(c.mirror) == 1
        await c.client.delete(entry)  # as if it had expired
        assert await c.get("s", images["cat_jpeg70"]) is None
        assert len(c.mirror) == 0  # the lookup that met it dropped its record
    finally:
        keys = [k async for k in c.client.scan_iter(match=prefix + "*")]
        if keys:
            await c.client.delete(*keys)
        await c.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_goes_on_uncached(images: dict[str, PreparedImage], metrics: CacheMetrics) -> None:
    c = RedisCache(f"redis://127.0.0.1:{_closed_port()}/0", ttl_s=60, near_distance=10, timeout_s=0.05, metrics=metrics)
    try:
        async with asyncio.timeout(2):  # a bound on hanging, not a benchmark
            await c.put("s", images["cat"], {"d": "cat"})
            assert await c.get("s", images["cat"]) is None
            assert await c.get("s", images["cat"]) is None
            ok, reason = await c.ready()
        assert not ok and reason.startswith("degraded:")
        assert _value(metrics, "huayu_cache_backend_errors_total", {"op": "put", "reason": "error"}) == 1
        assert _value(metrics, "huayu_cache_backend_errors_total", {"op": "get", "reason": "skipped"}) == 2
        assert _value(metrics, "huayu_cache_misses_total") == 2
    finally:
        await c.aclose()


async def test_a_prefetch_is_the_lookups_round_trip(
    images: dict[str, PreparedImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"huayu-test:{uuid.uuid4().hex}:"
    c = RedisCache(REDIS_URL, ttl_s=60, near_distance=10, timeout_s=0.5, prefix=prefix)
    fetches: list[str] = []
    fetch = c._fetch

    async def counted(sid: str, digest: str, phash: int) -> Any:
        fetches.append(digest)
        return await fetch(sid, digest, phash)

    monkeypatch.setattr(c, "_fetch", counted)
    try:
        await c.put("s", images["cat"], {"d": "cat"})
        await asyncio.wait_for(c.follower.loaded.wait(), 5)
        copy = images["cat_jpeg70"]
        early = c.prefetch("s", copy.digest, copy.phash)
        assert early is not None and c.prefetches
        hit = await c.get("s", copy, early)
        assert hit is not None and hit.kind == "near" and fetches == [copy.digest]  # one round trip, started early
        # a prefetch for other keys is not taken for these
        other = c.prefetch("s", images["coffee"].digest, images["coffee"].phash)
        assert other is not None
        hit = await c.get("s", copy, other)
        await other.task
        assert hit is not None and sorted(fetches) == sorted([copy.digest, images["coffee"].digest, copy.digest])
        # one that is never used is called off, quietly
        unused = c.prefetch("s", copy.digest, copy.phash)
        assert unused is not None
        unused.cancel()
        await asyncio.sleep(0)
        assert unused.task.cancelled() or unused.task.done()
    finally:
        keys = [k async for k in c.client.scan_iter(match=prefix + "*")]
        if keys:
            await c.client.delete(*keys)
        await c.aclose()


async def test_a_failed_prefetch_is_counted_as_the_lookups_failure(
    images: dict[str, PreparedImage], metrics: CacheMetrics
) -> None:
    c = RedisCache(f"redis://127.0.0.1:{_closed_port()}/0", ttl_s=60, near_distance=10, timeout_s=0.05, metrics=metrics)
    try:
        async with asyncio.timeout(2):
            early = c.prefetch("s", images["cat"].digest, images["cat"].phash)
            assert early is not None
            assert await c.get("s", images["cat"], early) is None
            # Redis is then skipped for a while: no prefetch is started, get() counts the skip
            assert c.prefetch("s", images["cat"].digest, images["cat"].phash) is None
            assert await c.get("s", images["cat"], None) is None
        assert _value(metrics, "huayu_cache_backend_errors_total", {"op": "get", "reason": "error"}) == 1
        assert _value(metrics, "huayu_cache_backend_errors_total", {"op": "get", "reason": "skipped"}) == 1
        assert _value(metrics, "huayu_cache_misses_total") == 2
    finally:
        await c.aclose()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP peer that accepts connections and never answers: a Redis that hangs."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield int(srv.getsockname()[1])
    srv.close()


async def test_redis_hanging_is_bounded(
    images: dict[str, PreparedImage], metrics: CacheMetrics, silent_server: int
) -> None:
    c = RedisCache(f"redis://127.0.0.1:{silent_server}/0", ttl_s=60, near_distance=10, timeout_s=0.05, metrics=metrics)
    try:
        async with asyncio.timeout(2):
            assert await c.get("s", images["cat"]) is None
        assert _value(metrics, "huayu_cache_backend_errors_total", {"op": "get", "reason": "timeout"}) == 1
    finally:
        await c.aclose()


@pytest.mark.parametrize("distance", [0, 1, 4, 7, 10, 13])
def test_near_index_agrees_with_brute_force(distance: int) -> None:
    rng = random.Random(distance)
    base = [rng.getrandbits(64) for _ in range(40)]
    hashes = []
    for b in base:  # clusters around each base, so many pairs fall within the radius
        for _ in range(250):  # 10,000 in all: past the first merge into the flat arrays
            h = b
            for bit in rng.sample(range(64), rng.randint(0, distance + 4)):
                h ^= 1 << bit
            hashes.append(h)
    index = NearIndex(max_distance=distance)
    live = {index.add(h): h for h in hashes[:9000]}
    live.update(zip(index.add_many(np.array(hashes[9000:], dtype=np.uint64)).tolist(), hashes[9000:], strict=True))
    assert len(live) == len(hashes)
    for slot in list(live)[::3]:  # removal keeps the rest findable
        index.remove(slot)
        del live[slot]
    for _ in range(9000):  # freed slots handed out again, for other hashes, across a merge
        h = rng.getrandbits(64) if rng.random() < 0.5 else rng.choice(base) ^ (1 << rng.randrange(64))
        slot = index.add(h)
        assert slot not in live
        live[slot] = h
    assert len(index) == len(live) and max(live) < len(hashes) + 8000  # some were handed out again
    for q in base + hashes[:30] + [rng.getrandbits(64) for _ in range(10)]:
        got = index.query(q)
        want = sorted(((h ^ q).bit_count(), s) for s, h in live.items() if (h ^ q).bit_count() <= distance)
        assert sorted(got) == want
        assert [d for d, _ in got] == sorted(d for d, _ in got)
        assert index.query(q, 0) == [(0, s) for s, h in sorted(live.items()) if h == q]


def test_build_cache_follows_settings() -> None:
    assert build_cache(Settings(cache_backend="off")) is None
    assert isinstance(build_cache(Settings(cache_backend="memory")), MemoryCache)
    c = build_cache(Settings(cache_backend="redis", redis_url=REDIS_URL))
    assert isinstance(c, RedisCache) and c.prefix == "huayu:cache:"
    asyncio.run(c.aclose())
    c = build_cache(Settings(cache_backend="redis", redis_url=REDIS_URL, redis_cache_prefix="staging:huayu:"))
    assert isinstance(c, RedisCache) and c.prefix == "staging:huayu:" and c.stream_key == "staging:huayu:log"
    asyncio.run(c.aclose())


async def test_redis_real_server_is_ready() -> None:
    c = RedisCache(REDIS_URL, ttl_s=60, near_distance=10, timeout_s=0.5)
    try:
        assert await c.ready() == (True, "redis cache at 127.0.0.1:6379")
    finally:
        await c.aclose()


async def test_a_gateway_connects_to_its_redis_cache_at_start() -> None:
    """The first request must not pay the connection (nor start the stream's follower) within its
    50 ms bound: a slow first connection would leave the cache skipped for a second."""
    from gateway.app import create_app

    prefix = f"huayu-test:{uuid.uuid4().hex}:"
    settings = Settings(
        cache_backend="redis", redis_url=REDIS_URL, redis_cache_prefix=prefix, store_enabled=False, image_workers=1
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        cache = app.state.services.cache
        assert isinstance(cache, RedisCache)
        pool = cache.client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) == 1  # connected before any request
        await asyncio.wait_for(cache.follower.loaded.wait(), 5)  # the stream followed from the start
