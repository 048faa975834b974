"""The in-process cache: bounded, least recently used entries go first, entries expire."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.cache.base import CacheHit, Prefetch, Recorder
from gateway.cache.fingerprint import same_artwork
from gateway.cache.index import NearIndex
from gateway.cache.metrics import CacheMetrics

if TYPE_CHECKING:
    from gateway.images import ImageKeys


@dataclass
class _Entry:
    scope: str
    digest: str
    phash: int
    signature: bytes
    value: dict[str, Any]
    expires: float
    slot: int


@dataclass
class _Near:
    """A scope's near index and the entry in each of its slots."""

    index: NearIndex
    entries: dict[int, _Entry]


class MemoryCache:
    backend = "memory"

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float,
        near_distance: int,
        metrics: CacheMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max(1, max_entries)
        self.ttl_s = ttl_s
        self.near_distance = near_distance
        self.clock = clock
        self._rec = Recorder(metrics, self.backend)
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._near: dict[str, _Near] = {}

    def __len__(self) -> int:
        return len(self._entries)

    prefetches = False  # a lookup here has no round trip to start early

    def prefetch(self, scope: str, digest: str, phash: int) -> Prefetch | None:
        return None

    async def get(self, scope: str, image: ImageKeys, prefetched: Prefetch | None = None) -> CacheHit | None:
        started = time.perf_counter()
        hit = self.lookup(scope, image.digest, image.phash, image.signature)
        self._rec.done(hit, started)
        return hit

    def lookup(self, scope: str, digest: str, phash: int, signature: bytes) -> CacheHit | None:
        now = self.clock()
        entry = self._entries.get((scope, digest))
        if entry is not None and self._alive(entry, now):
            self._entries.move_to_end((scope, digest))
            return CacheHit(dict(entry.value), "exact", 0)
        near = self._near.get(scope)
        if near is None or self.near_distance <= 0:
            return None
        for distance, slot in near.index.query(phash, self.near_distance):
            cand = near.entries[slot]
            if not self._alive(cand, now):
                continue
            if same_artwork(signature, cand.signature):
                self._entries.move_to_end((cand.scope, cand.digest))
                return CacheHit(dict(cand.value), "near", distance)
            self._rec.rejected()
        return None

    async def put(self, scope: str, image: ImageKeys, value: dict[str, Any]) -> None:
        self.store(scope, image.digest, image.phash, image.signature, value)

    def store(self, scope: str, digest: str, phash: int, signature: bytes, value: dict[str, Any]) -> None:
        key = (scope, digest)
        old = self._entries.pop(key, None)
        if old is not None:
            self._drop(old)
        while len(self._entries) >= self.max_entries:
            _, lru = self._entries.popitem(last=False)
            self._drop(lru)
        near = self._near.get(scope)
        if near is None:
            near = self._near[scope] = _Near(NearIndex(self.near_distance), {})
        slot = near.index.add(phash)
        entry = _Entry(scope, digest, phash, signature, dict(value), self.clock() + self.ttl_s, slot)
        self._entries[key] = entry
        near.entries[slot] = entry

    def _alive(self, entry: _Entry, now: float) -> bool:
        if entry.expires > now:
            return True
        if self._entries.get((entry.scope, entry.digest)) is entry:
            del self._entries[(entry.scope, entry.digest)]
            self._drop(entry)
        return False

    def _drop(self, entry: _Entry) -> None:
        near = self._near[entry.scope]
        near.index.remove(entry.slot)
        del near.entries[entry.slot]
        if not near.entries:
            del self._near[entry.scope]

    async def ready(self) -> tuple[bool, str]:
        return True, f"memory cache, {len(self._entries)} entries"

    async def aclose(self) -> None:
        self._entries.clear()
        self._near.clear()
