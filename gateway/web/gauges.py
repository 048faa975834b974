"""The A/B report as Prometheus gauges: ``huayu_review_*{adapter,style}``.

A scrape never waits for the database: ``collect()`` serves the last report and, when it is
older than ``refresh_s``, starts one refresh in the background. So the query runs at most once
per ``refresh_s``, only while someone scrapes, and a database outage only makes the figures age
(``huayu_review_report_age_seconds`` says by how much).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.store import ResultStore

log = logging.getLogger("huayu.reviews")

REFRESH_S = 30.0
BASE_ADAPTER = "base"  # the label of descriptions written by the base model, without an adapter
LABELS = ("adapter", "style")
AGE_HELP = "Seconds since the huayu_review_* figures were read from the database (-1: not yet)."
# (series, field of the report row, help)
SERIES = (
    ("huayu_review_descriptions", "n", "Stored descriptions, by adapter and style."),
    ("huayu_review_rated", "rated", "Descriptions with at least one rating, by adapter and style."),
    ("huayu_review_avg_rating", "avg_rating", "Average curator rating (1-5) over all ratings, by adapter and style."),
    (
        "huayu_review_approval_rate",
        "approval_rate",
        "Approved / (approved + rejected) descriptions, by adapter and style.",
    ),
)


class ReviewGauges:
    """A Prometheus collector over ``ResultStore.adapter_report()``."""

    def __init__(self, store: ResultStore, *, refresh_s: float = REFRESH_S) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.rows: list[dict[str, Any]] = []
        self.updated: float | None = None  # monotonic time of the last good report
        self._tried = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: Future[bool] | None = None
        self._registry: CollectorRegistry | None = None

    def start(self, registry: CollectorRegistry) -> None:
        """Register on ``registry`` and read the first report in the background."""
        self._loop = asyncio.get_running_loop()
        registry.register(self)
        self._registry = registry
        self._kick()

    async def aclose(self) -> None:
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            # let a refresh in flight finish (the store bounds its queries): cancelling it inside the
            # database driver can strand a connection that the event loop then waits on forever
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.wrap_future(pending), timeout=10)

    def update(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.updated = time.monotonic()

    async def refresh(self) -> bool:
        """Read the report now; False (and the old figures kept) when the database cannot answer."""
        try:
            rows = await self.store.adapter_report()
        except Exception as e:  # whatever the database does, /metrics keeps working
            log.warning("review gauges not refreshed: %s", e)
            return False
        self.update(rows)
        return True

    def _kick(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if self._pending is not None and not self._pending.done():
            return
        self._tried = time.monotonic()
        # thread-safe: prometheus_client may collect from another thread (its own HTTP server)
        coro = self.refresh()
        try:
            self._pending = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is shutting down
            coro.close()

    def describe(self) -> Iterator[Metric]:
        # names only, for the registry's duplicate check; no query at registration
        for name, _, doc in SERIES:
            yield GaugeMetricFamily(name, doc, labels=LABELS)
        yield GaugeMetricFamily("huayu_review_report_age_seconds", AGE_HELP)

    def collect(self) -> Iterator[Metric]:
        if time.monotonic() - self._tried >= self.refresh_s:
            self._kick()
        for name, field, doc in SERIES:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            for row in self.rows:
                value = row.get(field)
                if value is not None:  # no ratings or no decisions yet: no sample, rather than a fake 0
                    family.add_metric([row["adapter"] or BASE_ADAPTER, row["style"]], float(value))
            yield family
        age = GaugeMetricFamily("huayu_review_report_age_seconds", AGE_HELP)
        age.add_metric([], -1.0 if self.updated is None else time.monotonic() - self.updated)
        yield age
