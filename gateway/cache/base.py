"""What every cache backend shares: the hit it returns and how it reports to the metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

from gateway.cache.metrics import CacheMetrics


@dataclass(frozen=True)
class CacheHit:
    value: dict[str, Any]
    kind: Literal["exact", "near"]
    distance: int


@dataclass
class Prefetch:
    """A lookup's round trip started from the early keys (the digest and the pHash), while the image
    worker still makes the signature; ``get()`` verifies what it brought. Cancelled when unused."""

    digest: str
    phash: int
    task: asyncio.Task[Any]

    def serves(self, digest: str, phash: int) -> bool:
        return (self.digest, self.phash) == (digest, phash) and not self.task.cancelled()

    def cancel(self) -> None:
        self.task.cancel()


def retrieve(task: asyncio.Task[Any]) -> None:
    """A prefetch's failure is counted where it is awaited; one never awaited is not logged by asyncio."""
    if not task.cancelled():
        task.exception()


class Recorder:
    def __init__(self, metrics: CacheMetrics | None, backend: str) -> None:
        self.metrics = metrics
        self.backend = backend

    def done(self, hit: CacheHit | None, started: float) -> None:
        m = self.metrics
        if m is None:
            return
        m.lookup_seconds.labels(self.backend).observe(time.perf_counter() - started)
        if hit is None:
            m.misses.inc()
        else:
            m.hits.labels(hit.kind).inc()

    def rejected(self) -> None:
        if self.metrics is not None:
            self.metrics.rejected.inc()

    def error(self, op: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.backend_errors.labels(op, reason).inc()
