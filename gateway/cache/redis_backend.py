"""The Redis cache: shared by every gateway process, the same behaviour as the in-process one.

Layout, all keys of a scope in one hash slot (``{sid}``) so the scripts also run on a cluster:
  ``<prefix>{sid}:p:<phash>``  a hash of the entries with that pHash: field = digest, value =
                               signature and description; the TTL is on this key;
  ``<prefix>{sid}:n:<band>``   a hash per pHash band: field = the band's 16 bits, value = the
                               packed 8-byte pHashes in that bucket.
A lookup is one round trip (the exact field plus 4 x 137 bucket fields; 8 bytes a candidate keep
the reply small), a second one only when a candidate lies within D. pHashes whose entries expired
are pruned from the buckets when a lookup meets them.
Redis slow or down: every call is bounded by ``timeout_s``, counted, and answered as a miss; after a
failure the backend is left alone for ``backoff_s`` so a dead Redis costs nothing per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.cache.base import CacheHit, Recorder
from gateway.cache.fingerprint import same_artwork
from gateway.cache.index import BANDS, band_values, flip_masks
from gateway.cache.metrics import CacheMetrics

if TYPE_CHECKING:
    from gateway.images import PreparedImage

log = logging.getLogger("huayu.cache")
RECORD = np.dtype(">u8")
_BLOB = struct.Struct("<2sH")

_PUT = """
redis.call('HSET', KEYS[5], ARGV[8], ARGV[2])
redis.call('EXPIRE', KEYS[5], ARGV[1])
for i = 1, 4 do
  local cur = redis.call('HGET', KEYS[i], ARGV[3 + i])
  if not cur then
    redis.call('HSET', KEYS[i], ARGV[3 + i], ARGV[3])
  else
    local found = false
    for j = 1, #cur, 8 do
      if string.sub(cur, j, j + 7) == ARGV[3] then found = true break end
    end
    if not found then redis.call('HSET', KEYS[i], ARGV[3 + i], cur .. ARGV[3]) end
  end
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return 1
"""

_PRUNE = """
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
for i = 1, 4 do
  local cur = redis.call('HGET', KEYS[i], ARGV[1 + i])
  if cur then
    local parts = {}
    for j = 1, #cur, 8 do
      local r = string.sub(cur, j, j + 7)
      if r ~= ARGV[1] then parts[#parts + 1] = r end
    end
    if #parts == 0 then redis.call('HDEL', KEYS[i], ARGV[1 + i])
    else redis.call('HSET', KEYS[i], ARGV[1 + i], table.concat(parts)) end
  end
end
return 1
"""


def scope_id(scope: str) -> str:
    return hashlib.blake2b(scope.encode(), digest_size=12).hexdigest()


def record(phash: int) -> bytes:
    return phash.to_bytes(8, "big")


def field(band_value: int) -> bytes:
    return band_value.to_bytes(2, "big")


def pack_entry(signature: bytes, value: dict[str, Any]) -> bytes:
    return _BLOB.pack(b"H1", len(signature)) + signature + orjson.dumps(value)


def unpack_entry(blob: bytes) -> tuple[bytes, dict[str, Any]] | None:
    if len(blob) < _BLOB.size:
        return None
    tag, n = _BLOB.unpack_from(blob)
    if tag != b"H1":
        return None
    value = orjson.loads(blob[_BLOB.size + n :])
    return blob[_BLOB.size : _BLOB.size + n], value if isinstance(value, dict) else {}


class RedisCache:
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int,
        near_distance: int,
        timeout_s: float,
        metrics: CacheMetrics | None = None,
        prefix: str = "huayu:cache:",
        backoff_s: float = 1.0,
    ) -> None:
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # a retry would only stretch the bound we promise
            health_check_interval=0,
        )
        self.ttl_s = max(1, int(ttl_s))
        self.near_distance = near_distance
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.backoff_s = backoff_s
        self._masks = flip_masks(max(near_distance, 0) // BANDS)
        self._rec = Recorder(metrics, self.backend)
        self._put = self.client.register_script(_PUT)
        self._prune = self.client.register_script(_PRUNE)
        self._down_until = 0.0
        self._last_error = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        kw = self.client.connection_pool.connection_kwargs
        self._where = f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}"

    def entry_key(self, sid: str, phash: int) -> str:
        return f"{self.prefix}{{{sid}}}:p:{phash:016x}"

    def band_keys(self, sid: str) -> list[str]:
        return [f"{self.prefix}{{{sid}}}:n:{b}" for b in range(BANDS)]

    async def get(self, scope: str, image: PreparedImage) -> CacheHit | None:
        started = time.perf_counter()
        hit = None
        if not self._skipping("get"):
            try:
                async with asyncio.timeout(self.timeout_s):
                    hit = await self._lookup(scope_id(scope), image.digest, image.phash, image.signature)
            except (RedisError, OSError, TimeoutError) as e:
                self._fail("get", e)
        self._rec.done(hit, started)
        return hit

    async def _lookup(self, sid: str, digest: str, phash: int, signature: bytes) -> CacheHit | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.entry_key(sid, phash), bytes.fromhex(digest))
        if self.near_distance > 0:
            for key, v in zip(self.band_keys(sid), band_values(phash), strict=True):
                pipe.hmget(key, [field(k) for k in (self._masks ^ v).tolist()])
        res = await pipe.execute()
        if isinstance(res[0], bytes) and (entry := unpack_entry(res[0])) is not None:
            return CacheHit(entry[1], "exact", 0)
        blobs = [b for values in res[1:] for b in values if b]
        if not blobs:
            return None
        hashes = np.unique(np.frombuffer(b"".join(blobs), dtype=RECORD).astype(np.uint64))
        dist = np.bitwise_count(hashes ^ np.uint64(phash))
        near = [
            (int(dist[i]), int(hashes[i])) for i in np.argsort(dist, kind="stable") if dist[i] <= self.near_distance
        ]
        if not near:
            return None
        pipe = self.client.pipeline(transaction=False)
        for _, h in near:
            pipe.hgetall(self.entry_key(sid, h))
        groups = await pipe.execute()
        for (d, h), group in zip(near, groups, strict=True):
            if not group:
                self._spawn_prune(sid, h)
                continue
            for blob in group.values():
                entry = unpack_entry(blob)
                if entry is not None and same_artwork(signature, entry[0]):
                    return CacheHit(entry[1], "near", d)
                self._rec.rejected()
        return None

    async def put(self, scope: str, image: PreparedImage, value: dict[str, Any]) -> None:
        await self.store(scope, image.digest, image.phash, image.signature, value)

    async def store(self, scope: str, digest: str, phash: int, signature: bytes, value: dict[str, Any]) -> None:
        if self._skipping("put"):
            return
        sid = scope_id(scope)
        keys = [*self.band_keys(sid), self.entry_key(sid, phash)]
        args: list[bytes | int] = [self.ttl_s, pack_entry(signature, value), record(phash)]
        args += [field(v) for v in band_values(phash)]
        args.append(bytes.fromhex(digest))
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._put(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as e:
            self._fail("put", e)

    def _spawn_prune(self, sid: str, phash: int) -> None:
        keys = [*self.band_keys(sid), self.entry_key(sid, phash)]
        args = [record(phash), *[field(v) for v in band_values(phash)]]

        async def prune() -> None:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._prune(keys=keys, args=args)
            except (RedisError, OSError, TimeoutError) as e:
                self._fail("prune", e)

        task = asyncio.get_running_loop().create_task(prune())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _skipping(self, op: str) -> bool:
        if time.monotonic() < self._down_until:
            self._rec.error(op, "skipped")
            return True
        return False

    def _fail(self, op: str, err: BaseException) -> None:
        reason = "timeout" if isinstance(err, TimeoutError) else "error"
        self._rec.error(op, reason)
        if time.monotonic() >= self._down_until:
            log.warning("redis cache %s failed (%s: %s); going on uncached", op, reason, err)
        self._down_until = time.monotonic() + self.backoff_s
        self._last_error = f"{reason}: {err}" if str(err) else reason

    async def ready(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(max(self.timeout_s, 0.2)):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as e:
            self._fail("ping", e)
            return (
                False,
                f"degraded: redis cache at {self._where} unreachable ({self._last_error}); requests go on uncached",
            )
        self._down_until = 0.0
        return True, f"redis cache at {self._where}"

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
