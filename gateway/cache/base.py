"""What every cache backend shares: the hit it returns and how it reports to the metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from gateway.cache.metrics import CacheMetrics


@dataclass(frozen=True)
class CacheHit:
    value: dict[str, Any]
    kind: Literal["exact", "near"]
    distance: int


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
