"""Prometheus series of the safety stage (``huayu_`` prefix), registered on the gateway's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.metrics import Labelled
from gateway.safety.guard import GuardVerdict
from gateway.safety.verdict import Verdict

GUARD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


class SafetyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Labelled(
            Counter(
                "huayu_safety_verdicts",
                "Texts judged by the word filter, by resulting action.",
                ["action"],
                registry=registry,
            )
        )
        self.hits = Counter(
            "huayu_safety_hits",
            "Texts with a word-list hit, by category and the action the text received.",
            ["category", "action"],
            registry=registry,
        )
        self.guard_latency = Histogram(
            "huayu_guard_latency_seconds",
            "Time the guard model took to judge a text (failures included).",
            buckets=GUARD_BUCKETS,
            registry=registry,
        )
        self.guard_verdicts = Counter(
            "huayu_guard_verdicts",
            "Guard model verdicts, by label (none: no usable answer).",
            ["label"],
            registry=registry,
        )
        self.guard_failures = Counter(
            "huayu_guard_failures",
            "Guard calls without a usable verdict, by reason (timeout, unavailable, http_5xx, unparseable, ...).",
            ["reason"],
            registry=registry,
        )

    def observe_verdict(self, verdict: Verdict) -> None:
        """Once per published result (not per stream chunk)."""
        self.verdicts.labels(verdict.action).inc()
        for category in verdict.categories:
            self.hits.labels(category, verdict.action).inc()

    def observe_guard(self, verdict: GuardVerdict) -> None:
        self.guard_latency.observe(verdict.latency_s)
        self.guard_verdicts.labels(verdict.label or "none").inc()
        if verdict.failed:
            self.guard_failures.labels(verdict.error).inc()
