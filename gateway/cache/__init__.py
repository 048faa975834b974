"""The description cache: exact (hash of the normalized 256-pixel view, ``view_digest``) and
near-duplicate (pHash within a Hamming distance, verified by a finer signature) matches, in
process or in Redis.

A cache never fails a request: a backend that is slow or down answers "miss" and is counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from gateway.cache.base import CacheHit, Prefetch
from gateway.cache.metrics import CacheMetrics
from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.images import ImageKeys

__all__ = ["CacheHit", "CacheMetrics", "DescriptionCache", "Prefetch", "build_cache"]


class DescriptionCache(Protocol):
    # whether prefetch() starts anything: then the image worker tells the early keys, else it need not
    prefetches: bool

    def prefetch(self, scope: str, digest: str, phash: int) -> Prefetch | None: ...

    async def get(self, scope: str, image: ImageKeys, prefetched: Prefetch | None = None) -> CacheHit | None: ...

    async def put(self, scope: str, image: ImageKeys, value: dict[str, Any]) -> None: ...

    async def ready(self) -> tuple[bool, str]: ...

    async def aclose(self) -> None: ...


def build_cache(settings: Settings, metrics: CacheMetrics | None = None) -> DescriptionCache | None:
    if settings.cache_backend == "off":
        return None
    if settings.cache_backend == "redis":
        from gateway.cache.redis_backend import RedisCache

        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            near_distance=settings.cache_near_distance,
            timeout_s=settings.redis_timeout_s,
            metrics=metrics,
            prefix=settings.redis_cache_prefix,
            max_records=settings.cache_max_entries,
        )
    from gateway.cache.memory import MemoryCache

    return MemoryCache(
        max_entries=settings.cache_max_entries,
        ttl_s=settings.cache_ttl_s,
        near_distance=settings.cache_near_distance,
        metrics=metrics,
    )
