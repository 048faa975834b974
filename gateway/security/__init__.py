"""API keys, tenants and per-key limits.

``build_security(settings, registry)`` makes the parts; ``create_app`` installs
``SecurityMiddleware`` with them, and the routers read the caller's tenant with ``tenant_of``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.requests import Request

from gateway.config import Settings
from gateway.security.keys import PUBLIC_TENANT, KeyConfigError, KeyRing, hash_key, new_key
from gateway.security.middleware import SecurityMiddleware
from gateway.security.ratelimit import Quota, RateLimiter

__all__ = [
    "PUBLIC_TENANT",
    "KeyConfigError",
    "KeyRing",
    "Quota",
    "RateLimiter",
    "Security",
    "SecurityMiddleware",
    "build_security",
    "hash_key",
    "new_key",
    "tenant_of",
]


@dataclass
class Security:
    keys: KeyRing
    limiter: RateLimiter
    metrics_key_required: bool

    async def aclose(self) -> None:
        await self.limiter.aclose()


def build_security(settings: Settings, registry: CollectorRegistry | None = None) -> Security:
    """Raises KeyConfigError at start-up when the key list is malformed."""
    limiter = RateLimiter(
        requests_per_minute=settings.rate_limit_requests_per_minute,
        tokens_per_minute=settings.rate_limit_tokens_per_minute,
        redis_url=settings.redis_url if settings.rate_limit_backend == "redis" else None,
        timeout_s=settings.redis_timeout_s,
        registry=registry,
    )
    return Security(KeyRing.from_settings(settings), limiter, settings.metrics_key_required)


def tenant_of(request: Request) -> str:
    """The caller's tenant, set by SecurityMiddleware ("public" when keys are off)."""
    return str(getattr(request.state, "tenant", PUBLIC_TENANT))
