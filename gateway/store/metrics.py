"""The store's Prometheus series, registered on the gateway's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.written = Counter("huayu_store_written", "Descriptions written to the results store.", registry=r)
        self.write_failures = Counter(
            "huayu_store_write_failures",
            "Failed write attempts of the results store (the records are kept and retried).",
            registry=r,
        )
        self.dropped = Counter(
            "huayu_store_dropped",
            "Descriptions the store gave up on, by reason (queue_full, invalid, rejected, shutdown); each is logged.",
            ["reason"],
            registry=r,
        )
        self.pending = Gauge(
            "huayu_store_pending", "Descriptions waiting to be written (queued or being retried).", registry=r
        )
        self.write_seconds = Histogram(
            "huayu_store_write_seconds",
            "Time one batch of descriptions took to write.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
