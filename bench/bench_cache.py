"""Near-duplicate lookup among N cached hashes (default 1 million), with baselines measured in
the same run: a linear scan (numpy) and a BK-tree (pybktree).

    python -m bench.bench_cache [--n 1000000] [--queries 2000] [--redis redis://127.0.0.1:6379/0]

Hashes are uniform random 64-bit values; each query is a planted hash flipped in 0..D bits (a
hit) or a fresh random hash (a miss). Also timed: the in-process cache's whole lookup (index,
verification of the candidate, LRU), the Redis cache's (local index of the pHashes in Redis, loaded
from its stream, then one round trip), each also with the time spent verifying taken out, and
signature verification alone.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import time
from collections.abc import Callable

import numpy as np
import pybktree
from PIL import Image
from skimage import data as skdata

from gateway.cache import memory, redis_backend
from gateway.cache.fingerprint import compare, same_artwork
from gateway.cache.memory import MemoryCache
from gateway.cache.mirror import stream_record
from gateway.cache.redis_backend import RedisCache, pack_entry, scope_id
from gateway.images import ImageOptions, prepare_image

D = 10


def sk(name: str) -> np.ndarray:
    """A scikit-image sample photograph by name (its loaders are untyped)."""
    return np.asarray(getattr(skdata, name)())


def pct(ms: list[float]) -> str:
    a = np.array(ms)
    return f"p50 {np.median(a):8.3f} ms  p99 {np.percentile(a, 99):8.3f} ms"


def flip(h: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), rng.randint(0, D)):
        h ^= 1 << bit
    return h


def timed(fn: Callable[[int], object], queries: list[int]) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        out.append((time.perf_counter() - t) * 1000)
    return out


class Verification:
    """Stands in for same_artwork in the caches' modules to time it, so that a lookup's figure can
    be given without it too (it costs the same whichever way the candidate was found)."""

    def __init__(self) -> None:
        self.ms = 0.0

    def __call__(self, a: bytes, b: bytes) -> bool:
        t = time.perf_counter()
        try:
            return same_artwork(a, b)
        finally:
            self.ms += (time.perf_counter() - t) * 1000

    def install(self) -> None:
        for module in memory, redis_backend:
            vars(module)["same_artwork"] = self


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--bktree-queries", type=int, default=20)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    rng = random.Random(1)
    hashes = [rng.getrandbits(64) for _ in range(args.n)]
    planted = rng.sample(range(args.n), args.queries // 2)
    queries = [flip(hashes[i], rng) for i in planted] + [rng.getrandbits(64) for _ in range(args.queries // 2)]
    rng.shuffle(queries)

    # one real signature, shared by every entry: the lookup path is real, the memory stays small
    img = prepare_image(_png(), ImageOptions(max_bytes=10**8, max_pixels=10**8))
    sig = img.signature
    print(f"{args.n} hashes, {len(queries)} queries (half hits within D={D}, half misses)")

    arr = np.array(hashes, dtype=np.uint64)
    lin = timed(lambda q: np.flatnonzero(np.bitwise_count(arr ^ np.uint64(q)) <= D), queries[:200])
    print(f"  baseline: linear scan (numpy)        {pct(lin)}")

    t = time.perf_counter()
    tree = pybktree.BKTree(lambda a, b: (a ^ b).bit_count(), hashes)
    print(f"  (BK-tree built in {time.perf_counter() - t:.1f} s)")
    bk = timed(lambda q: tree.find(q, D), queries[: args.bktree_queries])
    print(f"  baseline: BK-tree (pybktree)         {pct(bk)}")

    mem = MemoryCache(max_entries=args.n, ttl_s=3600, near_distance=D)
    t = time.perf_counter()
    for i, h in enumerate(hashes):
        mem.store("scope", f"{i:032x}", h, sig, {"d": i})
    print(f"  (in-process cache filled in {time.perf_counter() - t:.1f} s)")
    idx = mem._near["scope"].index
    ours = timed(lambda q: idx.query(q, D), queries)
    speedup = np.median(lin) / np.median(ours)
    print(f"  multi-index hashing (NearIndex)      {pct(ours)}   {speedup:6.1f}x faster than the scan")
    verify = Verification()
    verify.install()
    whole, bare = [], []
    for q in queries:
        verify.ms, t = 0.0, time.perf_counter()
        mem.lookup("scope", "f" * 32, q, sig)
        whole.append((time.perf_counter() - t) * 1000)
        bare.append(whole[-1] - verify.ms)
    print(f"  MemoryCache lookup incl. verification {pct(whole)}")
    print(f"  MemoryCache lookup excl. verification {pct(bare)}")
    other = prepare_image(_png(sk("coffee")), ImageOptions(max_bytes=10**8, max_pixels=10**8)).signature
    ver = timed(lambda _: compare(sig, other), queries[:500])
    print(f"  signature verification alone          {pct(ver)}")

    asyncio.run(_redis(args.redis, hashes, queries, sig, verify))


def _png(a: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(sk("chelsea") if a is None else a).save(buf, "PNG")
    return buf.getvalue()


async def _redis(url: str, hashes: list[int], queries: list[int], sig: bytes, verify: Verification) -> None:
    prefix = f"huayu-bench:{random.getrandbits(32):08x}:"
    cache = RedisCache(url, ttl_s=3600, near_distance=D, timeout_s=1.0, prefix=prefix, max_records=len(hashes))
    if not (await cache.ready())[0]:
        print("  Redis: not reachable, skipped")
        await cache.aclose()
        return
    await cache.follower.aclose()  # this one only loads the data; a fresh one loads the stream
    sid = scope_id("scope")
    reader: RedisCache | None = None
    try:
        t = time.perf_counter()
        for start in range(0, len(hashes), 10_000):
            pipe = cache.client.pipeline(transaction=False)
            for h in hashes[start : start + 10_000]:
                pipe.xadd(cache.stream_key, {b"r": stream_record(sid, h)})
            await pipe.execute()
        blob = pack_entry(sig, {"d": "x"})
        pipe = cache.client.pipeline(transaction=False)
        arr = np.array(hashes, dtype=np.uint64)
        # entries only where a query can land, so the stream is 1M strong and Redis stays small
        for q in queries:
            for i in np.flatnonzero(np.bitwise_count(arr ^ np.uint64(q)) <= D).tolist():
                pipe.hset(cache.entry_key(sid, hashes[i]), bytes.fromhex(f"{i:032x}"), blob)
                pipe.expire(cache.entry_key(sid, hashes[i]), 3600)
        await pipe.execute()
        print(f"  (Redis loaded in {time.perf_counter() - t:.1f} s)")
        reader = RedisCache(url, ttl_s=3600, near_distance=D, timeout_s=1.0, prefix=prefix, max_records=len(hashes))
        t = time.perf_counter()
        await reader.ready()
        await reader.follower.loaded.wait()
        print(f"  (a new process loaded the stream into its index in {time.perf_counter() - t:.1f} s)")
        whole, bare = [], []
        for q in queries:
            verify.ms, s = 0.0, time.perf_counter()
            await reader._lookup(sid, sig, await reader._fetch(sid, "f" * 32, q))  # get() less its timeout
            whole.append((time.perf_counter() - s) * 1000)
            bare.append(whole[-1] - verify.ms)
        print(f"  RedisCache lookup incl. verification  {pct(whole)}")
        print(f"  RedisCache lookup excl. verification  {pct(bare)}")
    finally:
        keys = [k async for k in cache.client.scan_iter(match=prefix + "*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await cache.client.delete(*keys[start : start + 10_000])
        await cache.aclose()
        if reader is not None:
            await reader.aclose()


if __name__ == "__main__":
    main()
