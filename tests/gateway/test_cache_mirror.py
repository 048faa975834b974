"""The Redis cache's local mirror of the pHashes in Redis: gateway processes sharing one real Redis
see each other's entries, a new process loads the stream, records age out."""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from PIL import Image

from gateway.cache.mirror import CHUNK, Mirror, stream_record
from gateway.cache.redis_backend import RedisCache, scope_id
from gateway.images import ImageOptions, PreparedImage, prepare_image
from tests.gateway.imageset import sk

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def images() -> dict[str, PreparedImage]:
    def encode(a: np.ndarray, fmt: str, **kw: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt, **kw)
        return buf.getvalue()

    opts = ImageOptions(max_bytes=10**8, max_pixels=10**8)
    cat, coffee = np.ascontiguousarray(sk("chelsea")), np.ascontiguousarray(sk("coffee"))
    return {
        "cat": prepare_image(encode(cat, "PNG"), opts),
        "cat_jpeg70": prepare_image(encode(cat, "JPEG", quality=70), opts),
        "coffee": prepare_image(encode(coffee, "PNG"), opts),
        "coffee_jpeg70": prepare_image(encode(coffee, "JPEG", quality=70), opts),
    }


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[[], RedisCache]]:
    """Makes gateway processes' caches, all on one prefix of the real Redis."""
    prefix = f"huayu-test:{uuid.uuid4().hex}:"
    made: list[RedisCache] = []

    def make() -> RedisCache:
        made.append(RedisCache(REDIS_URL, ttl_s=60, near_distance=10, timeout_s=0.5, prefix=prefix))
        return made[-1]

    yield make
    keys = [k async for k in made[0].client.scan_iter(match=prefix + "*")]
    if keys:
        await made[0].client.delete(*keys)
    for c in made:
        await c.aclose()


async def _eventually(c: RedisCache, scope: str, image: PreparedImage) -> object:
    """The first hit within a second: another process's put arrives through the stream."""
    async with asyncio.timeout(1):
        while (hit := await c.get(scope, image)) is None:
            await asyncio.sleep(0.005)
    return hit


async def test_two_processes_see_each_others_entries(
    gateways: Callable[[], RedisCache], images: dict[str, PreparedImage]
) -> None:
    a, b = gateways(), gateways()
    assert (await a.ready())[0] and (await b.ready())[0]
    await asyncio.wait_for(b.follower.loaded.wait(), 1)
    await a.put("s", images["cat"], {"d": "cat"})
    exact = await b.get("s", images["cat"])  # exact hits need no stream at all
    assert exact is not None and exact.kind == "exact" and exact.value == {"d": "cat"}
    near = await _eventually(b, "s", images["cat_jpeg70"])
    assert near is not None and getattr(near, "kind", None) == "near"
    await b.put("s", images["coffee"], {"d": "coffee"})
    near = await _eventually(a, "s", images["coffee_jpeg70"])
    assert getattr(near, "value", None) == {"d": "coffee"}
    assert await a.get("other scope", images["coffee_jpeg70"]) is None
    # a process started later loads what is there
    c = gateways()
    await c.ready()
    await asyncio.wait_for(c.follower.loaded.wait(), 2)
    hit = await c.get("s", images["cat_jpeg70"])
    assert hit is not None and hit.kind == "near"
    # each put is one record in each mirror: its own puts come back through the stream too
    await asyncio.sleep(0.05)
    assert len(a.mirror) == len(b.mirror) == len(c.mirror) == 2


async def test_a_new_process_loads_a_long_stream(gateways: Callable[[], RedisCache]) -> None:
    a = gateways()
    rng = random.Random(7)
    n = 2 * CHUNK + 123  # a few XRANGE chunks
    hashes = [rng.getrandbits(64) for _ in range(n)]
    sids = [scope_id("s1"), scope_id("s2")]
    pipe = a.client.pipeline(transaction=False)
    for i, h in enumerate(hashes):
        pipe.xadd(a.stream_key, {b"r": stream_record(sids[i % 2], h)})
        if i == CHUNK:  # records it cannot read are passed over
            pipe.xadd(a.stream_key, {b"r": b"short"})
            pipe.xadd(a.stream_key, {b"x": stream_record(sids[0], h)})
    await pipe.execute()
    await a.ready()
    await asyncio.wait_for(a.follower.loaded.wait(), 10)
    assert len(a.mirror) == n
    for i in (0, 1, n // 2, n - 1):
        q = hashes[i] ^ 0b1011
        found = a.mirror.query(sids[i % 2], q)
        assert (3, hashes[i]) in [(c.distance, c.phash) for c in found]
        assert hashes[i] not in [c.phash for c in a.mirror.query(sids[1 - i % 2], q)]
    # and follows it from there
    await a.client.xadd(a.stream_key, {b"r": stream_record(sids[0], 12345)})
    async with asyncio.timeout(1):
        while not a.mirror.query(sids[0], 12345):
            await asyncio.sleep(0.005)


def test_mirror_drops_records_past_their_ttl_and_beyond_its_bound() -> None:
    m = Mirror(10, ttl_s=10, max_records=3)
    now = 1_000_000
    m.add("a", np.array([1, 2, 3], dtype=np.uint64), np.array([now - 11_000, now - 5000, now - 1000]))
    m.add("b", np.array([1 << 40, 1 << 41], dtype=np.uint64), np.array([now - 3000, now - 2000]))
    m.sweep(now)  # 1 is past its TTL; of the other four, 2 is the oldest
    assert len(m) == 3
    assert [c.phash for c in m.query("a", 0)] == [3]
    assert sorted(c.phash for c in m.query("b", 0)) == [1 << 40, 1 << 41]
    m.add("a", np.array([3], dtype=np.uint64), np.array([now]))  # put again: a second record
    (cand,) = m.query("a", 3)
    assert (cand.distance, cand.phash, len(cand.slots)) == (0, 3, 2)
    m.drop("a", cand.slots)
    assert m.query("a", 3) == []


async def test_follower_stops_with_the_cache(images: dict[str, PreparedImage]) -> None:
    c = RedisCache(REDIS_URL, ttl_s=60, near_distance=10, timeout_s=0.5, prefix=f"huayu-test:{uuid.uuid4().hex}:")
    assert await c.get("s", images["cat"]) is None
    await asyncio.wait_for(c.follower.loaded.wait(), 1)
    task = c.follower._task
    assert task is not None and not task.done()  # blocked in XREAD
    await c.aclose()
    assert task.done() and c.follower._task is None
