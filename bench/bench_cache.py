"""Near-duplicate lookup among N cached hashes (default 1 million), with baselines measured in
the same run: a linear scan (numpy) and a BK-tree (pybktree).

    python -m bench.bench_cache [--n 1000000] [--queries 2000] [--redis redis://127.0.0.1:6379/0]

Hashes are uniform random 64-bit values; each query is a planted hash flipped in 0..D bits (a
hit) or a fresh random hash (a miss). Also timed: the in-process cache's whole lookup (index,
verification of the candidate, LRU), the Redis cache's, and signature verification alone.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pybktree
from PIL import Image
from skimage import data as skdata

from gateway.cache.fingerprint import compare
from gateway.cache.index import band_values
from gateway.cache.memory import MemoryCache
from gateway.cache.redis_backend import RedisCache, field, pack_entry, record, scope_id
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
    idx = mem._near["scope"]
    ours = timed(lambda q: idx.query(q, D), queries)
    speedup = np.median(lin) / np.median(ours)
    print(f"  multi-index hashing (NearIndex)      {pct(ours)}   {speedup:6.1f}x faster than the scan")
    whole = timed(lambda q: mem.lookup("scope", "f" * 32, q, sig), queries)
    print(f"  MemoryCache lookup incl. verification {pct(whole)}")
    other = prepare_image(_png(sk("coffee")), ImageOptions(max_bytes=10**8, max_pixels=10**8)).signature
    ver = timed(lambda _: compare(sig, other), queries[:500])
    print(f"  signature verification alone          {pct(ver)}")

    asyncio.run(_redis(args.redis, hashes, queries, sig))


def _png(a: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(sk("chelsea") if a is None else a).save(buf, "PNG")
    return buf.getvalue()


async def _redis(url: str, hashes: list[int], queries: list[int], sig: bytes) -> None:
    prefix = f"huayu-bench:{random.getrandbits(32):08x}:"
    cache = RedisCache(url, ttl_s=3600, near_distance=D, timeout_s=1.0, prefix=prefix)
    if not (await cache.ready())[0]:
        print("  Redis: not reachable, skipped")
        return
    sid = scope_id("scope")
    try:
        t = time.perf_counter()
        buckets: list[defaultdict[int, list[bytes]]] = [defaultdict(list) for _ in range(4)]
        for h in hashes:
            rec = record(h)
            for b, v in enumerate(band_values(h)):
                buckets[b][v].append(rec)
        for key, bucket in zip(cache.band_keys(sid), buckets, strict=True):
            items = [(field(v), b"".join(recs)) for v, recs in bucket.items()]
            for start in range(0, len(items), 4096):
                await cache.client.hset(key, mapping=dict(items[start : start + 4096]))
        blob = pack_entry(sig, {"d": "x"})
        pipe = cache.client.pipeline(transaction=False)
        arr = np.array(hashes, dtype=np.uint64)
        # entries only where a query can land, so the index is 1M strong and Redis stays small
        for q in queries:
            for i in np.flatnonzero(np.bitwise_count(arr ^ np.uint64(q)) <= D).tolist():
                pipe.hset(cache.entry_key(sid, hashes[i]), bytes.fromhex(f"{i:032x}"), blob)
                pipe.expire(cache.entry_key(sid, hashes[i]), 3600)
        await pipe.execute()
        print(f"  (Redis loaded in {time.perf_counter() - t:.1f} s)")
        lat = []
        for q in queries:
            s = time.perf_counter()
            await cache._lookup(sid, "f" * 32, q, sig)
            lat.append((time.perf_counter() - s) * 1000)
        print(f"  RedisCache lookup incl. verification  {pct(lat)}")
    finally:
        keys = [k async for k in cache.client.scan_iter(match=prefix + "*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await cache.client.delete(*keys[start : start + 10_000])
        await cache.aclose()


if __name__ == "__main__":
    main()
