"""Per-key limits: requests and tokens per minute, in fixed one-minute windows.

Counted in Redis (shared by every gateway process; one Lua script admits a request in one round
trip) with an in-process fallback: when Redis is slow or down, this process counts on its own for
``backoff_s`` before it tries Redis again, so an outage loosens the limit to one process's share
instead of failing requests or letting everything through. Refused requests are not counted, so a
client hammering past its limit does not push its own reset further away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import RateLimited

log = logging.getLogger("huayu.ratelimit")

# KEYS: request counter, token counter. ARGV: window ms, request limit, token limit (0: none).
# Returns {requests counted, tokens spent, verdict}; verdict 0 admitted, 1 requests, 2 tokens.
_ADMIT = """
local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and spent >= tpm then
  return {tonumber(redis.call('GET', KEYS[1]) or '0'), spent, 2}
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if rpm > 0 and n > rpm then
  redis.call('DECR', KEYS[1])
  return {n - 1, spent, 1}
end
return {n, spent, 0}
"""


@dataclass(frozen=True)
class Quota:
    """What a key has left in the current window, for the ``x-ratelimit-*`` headers."""

    limit_requests: int
    used_requests: int
    limit_tokens: int
    used_tokens: int
    reset_s: float

    def headers(self) -> dict[str, str]:
        reset = f"{max(1, math.ceil(self.reset_s))}s"
        out: dict[str, str] = {}
        if self.limit_requests:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.limit_requests - self.used_requests))
            out["x-ratelimit-reset-requests"] = reset
        if self.limit_tokens:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.limit_tokens - self.used_tokens))
            out["x-ratelimit-reset-tokens"] = reset
        return out


class RateLimiter:
    def __init__(
        self,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        redis_url: str | None,
        timeout_s: float = 0.05,
        registry: CollectorRegistry | None = None,
        window_s: float = 60.0,
        backoff_s: float = 1.0,
        prefix: str = "huayu:rl:",
    ) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.prefix = prefix
        self.client: aioredis.Redis | None = None
        if redis_url and self.enabled:
            self.client = aioredis.Redis.from_url(
                redis_url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),  # a retry would only stretch the bound
                health_check_interval=0,
            )
            self._admit = self.client.register_script(_ADMIT)
        self._local: dict[tuple[str, int], list[int]] = {}
        self._down_until = 0.0
        self.refused = Counter(
            "huayu_rate_limited", "Requests refused by a per-key limit, by limit.", ["limit"], registry=registry
        )
        self.fallbacks = Counter(
            "huayu_ratelimit_fallback",
            "Rate-limit decisions taken in process because Redis was slow or down.",
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    def _window(self) -> tuple[int, float]:
        now = time.time()
        w = int(now // self.window_s)
        return w, (w + 1) * self.window_s - now

    def _keys(self, tenant: str, w: int) -> list[str]:
        base = f"{self.prefix}{{{tenant}:{w}}}"
        return [base + ":r", base + ":t"]

    async def admit(self, tenant: str) -> Quota:
        """Counts one request of ``tenant``; raises RateLimited (429, Retry-After) past a limit."""
        w, reset = self._window()
        result = await self._redis_admit(tenant, w) if self._use_redis() else None
        if result is None:
            result = self._local_admit(tenant, w)
        used, spent, verdict = result
        quota = Quota(self.rpm, used, self.tpm, spent, reset)
        if verdict:
            which = "requests" if verdict == 1 else "tokens"
            limit = self.rpm if verdict == 1 else self.tpm
            self.refused.labels(which).inc()
            headers = quota.headers() | {"Retry-After": str(max(1, math.ceil(reset)))}
            raise RateLimited(
                f"This key has used its {limit} {which} per minute; the window resets in {math.ceil(reset)} s.",
                code=f"rate_limit_{which}",
                headers=headers,
            )
        return quota

    async def charge(self, tenant: str, tokens: int) -> None:
        """Adds the tokens an answer used (``usage.total_tokens``) to the key's window."""
        if tokens <= 0 or not self.tpm:
            return
        w, _ = self._window()
        if self._use_redis():
            assert self.client is not None
            key = self._keys(tenant, w)[1]
            try:
                async with asyncio.timeout(self.timeout_s):
                    pipe = self.client.pipeline(transaction=False)
                    pipe.incrby(key, tokens)
                    pipe.pexpire(key, int(self.window_s * 2000))
                    await pipe.execute()
                return
            except (RedisError, OSError, TimeoutError) as e:
                self._fail(e)
        self._local.setdefault((tenant, w), [0, 0])[1] += tokens

    def _use_redis(self) -> bool:
        return self.client is not None and time.monotonic() >= self._down_until

    async def _redis_admit(self, tenant: str, w: int) -> tuple[int, int, int] | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                res = await self._admit(
                    keys=self._keys(tenant, w), args=[int(self.window_s * 2000), self.rpm, self.tpm]
                )
            return int(res[0]), int(res[1]), int(res[2])
        except (RedisError, OSError, TimeoutError) as e:
            self._fail(e)
            return None

    def _fail(self, e: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("rate limits counted in process for %.1f s: Redis failed (%r)", self.backoff_s, e)
        self._down_until = time.monotonic() + self.backoff_s
        self.fallbacks.inc()

    def _local_admit(self, tenant: str, w: int) -> tuple[int, int, int]:
        if self._local and next(iter(self._local))[1] < w:  # oldest first: past windows are dropped
            self._local = {k: v for k, v in self._local.items() if k[1] >= w}
        counts = self._local.setdefault((tenant, w), [0, 0])
        if self.tpm and counts[1] >= self.tpm:
            return counts[0], counts[1], 2
        if self.rpm and counts[0] >= self.rpm:
            return counts[0], counts[1], 1
        counts[0] += 1
        return counts[0], counts[1], 0

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
