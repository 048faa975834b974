"""A circuit breaker for the model server: closed, open, half-open.

After ``failures`` consecutive failures (no connection, a 5xx, no headers in time) it opens: calls
fail at once with 503 and ``Retry-After`` instead of each waiting out a timeout against a dead
server. After ``reset_s`` one probe is let through (half-open); its success closes the breaker,
its failure opens it again for another ``reset_s``. A 4xx is the caller's fault, so it is a success.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.errors import UpstreamUnavailable

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class FaultMetrics:
    """The series of the model server's fault handling; made once per app, shared by its clients."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.state = Gauge(
            "huayu_upstream_breaker_state",
            "Circuit breaker of the model server: 0 closed, 1 half-open, 2 open.",
            registry=registry,
        )
        self.opened = Counter(
            "huayu_upstream_breaker_opened", "Times the model server's circuit breaker opened.", registry=registry
        )
        self.rejected = Counter(
            "huayu_upstream_breaker_rejected",
            "Calls failed fast because the model server's circuit breaker was open.",
            registry=registry,
        )
        self.retries = Counter(
            "huayu_upstream_retries",
            "Model-server calls tried again after failing before their first byte, by reason.",
            ["reason"],
            registry=registry,
        )


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        reset_s: float = 10.0,
        *,
        metrics: FaultMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or reset_s <= 0:
            raise ValueError("failures must be at least 1 and reset_s positive")
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False
        self.metrics = metrics or FaultMetrics()

    def _set(self, state: str) -> None:
        self.state = state
        self.metrics.state.set(_STATE_VALUE[state])

    def retry_after(self) -> int:
        left = self.opened_at + self.reset_s - self.clock()
        return max(1, math.ceil(left))

    def before(self) -> None:
        """Call before each attempt: raises UpstreamUnavailable (503, Retry-After) while open."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.reset_s:
            self._set(HALF_OPEN)
            self.probing = False
        if self.state == CLOSED:
            return
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True  # this call is the one probe
            return
        self.metrics.rejected.inc()
        wait = self.retry_after() if self.state == OPEN else max(1, math.ceil(self.reset_s))
        raise UpstreamUnavailable(
            f"The model server failed {self.threshold} times in a row; the gateway stops calling it for a "
            f"while to let it recover. Retry in {wait} s.",
            code="upstream_circuit_open",
            headers={"Retry-After": str(wait)},
        )

    def success(self) -> None:
        self.consecutive = 0
        self.probing = False
        if self.state != CLOSED:
            self._set(CLOSED)

    def failure(self) -> None:
        self.consecutive += 1
        self.probing = False
        if self.state == HALF_OPEN or (self.state == CLOSED and self.consecutive >= self.threshold):
            self.opened_at = self.clock()
            self.metrics.opened.inc()
            self._set(OPEN)

    def release(self) -> None:
        """The attempt ended without a verdict (cancelled): let another probe through."""
        self.probing = False
