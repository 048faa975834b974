"""Prometheus series of the description cache and the image pipeline (all prefixed ``huayu_``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from gateway.metrics import Labelled

LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
PREPROCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.hits = Labelled(
            Counter("huayu_cache_hits", "Descriptions served from the cache, by match kind.", ["kind"], registry=r)
        )
        self.misses = Counter("huayu_cache_misses", "Cache lookups that found nothing to serve.", registry=r)
        self.rejected = Counter(
            "huayu_cache_near_rejected", "Near-duplicate candidates that failed verification.", registry=r
        )
        self.lookup_seconds = Labelled(
            Histogram(
                "huayu_cache_lookup_seconds",
                "Time of one cache lookup, by backend.",
                ["backend"],
                buckets=LOOKUP_BUCKETS,
                registry=r,
            )
        )
        self.backend_errors = Counter(
            "huayu_cache_backend_errors",
            "Cache backend calls that failed, timed out, or were skipped while the backend was down.",
            ["op", "reason"],
            registry=r,
        )
        self.image_tasks = Counter(
            "huayu_image_tasks",
            "Image worker tasks: full (the model's JPEG at once), staged (the cache keys first), then "
            "finished (a miss: the JPEG made) or dropped (a hit or a joined request: no JPEG made).",
            ["kind"],
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "huayu_image_preprocess_seconds",
            "Time to turn an upload into the model-ready image.",
            buckets=PREPROCESS_BUCKETS,
            registry=r,
        )
