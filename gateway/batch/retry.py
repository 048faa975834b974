"""What is worth trying again, and how long to wait: exponential backoff with jitter, and the
server's own Retry-After when it gives one."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from gateway.errors import HuayuError

MAX_RETRY_AFTER_S = 120.0


class Transient(Exception):
    """A failure that may pass: a connection error, a timeout, 408, 429 or a 5xx."""

    def __init__(self, error: HuayuError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff(attempt: int, base_s: float, cap_s: float, retry_after: float | None) -> float:
    """Seconds before try ``attempt + 1`` (``attempt`` counts from 1). Full jitter spreads a burst
    of failures (a server restart) so the retries do not all land in the same instant."""
    if retry_after is not None:
        return retry_after
    ceiling = min(cap_s, base_s * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
