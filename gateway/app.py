"""create_app() and its lifespan: the one place that wires the parts together."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from gateway.api import chat, describe, meta, reviews
from gateway.api.body import document_bodies
from gateway.api.hot import HotRoutes
from gateway.breaker import FaultMetrics
from gateway.cache import CacheMetrics, build_cache
from gateway.catalog import ModelCatalog
from gateway.config import Settings, get_settings
from gateway.deps import Services
from gateway.errors import install_handlers
from gateway.images import ImageWorker
from gateway.metrics import GatewayMetrics
from gateway.middleware import GatewayMiddleware
from gateway.pipeline import Describer
from gateway.safety import GuardClient, SafetyFilter, SafetyMetrics
from gateway.security import SecurityMiddleware, build_security
from gateway.store import ResultStore, StoreMetrics
from gateway.styles import StyleRegistry
from gateway.upstream import Upstream

log = logging.getLogger("huayu")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = GatewayMetrics()
    styles = StyleRegistry.load(settings.styles_dir, settings.default_style)
    cache_metrics = CacheMetrics(metrics.registry)
    store_metrics = StoreMetrics(metrics.registry)
    safety_metrics = SafetyMetrics(metrics.registry)
    fault_metrics = FaultMetrics(metrics.registry)
    security = build_security(settings, metrics.registry)  # a malformed key list stops start-up here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream(settings, metrics=fault_metrics)
        images = ImageWorker(settings.image_workers, metrics=cache_metrics, task_timeout_s=settings.image_timeout_s)
        await images.warm()
        cache = build_cache(settings, cache_metrics)
        if cache is not None:
            # Redis: connect and start following its stream now, not within the first request's
            # 50 ms bound (a slow first connection would skip the cache for a second)
            await cache.ready()
        safety = SafetyFilter.from_settings(settings) if settings.safety_enabled else None
        guard = (
            GuardClient(settings.guard_url, settings.guard_model, settings.guard_timeout_s, settings.guard_fail_open)
            if settings.guard_url
            else None
        )
        store = ResultStore(settings.database_url, metrics=store_metrics) if settings.store_enabled else None
        if store is not None:
            await store.start()
        describer = Describer(settings, upstream, images, metrics, cache, safety, guard, store, safety_metrics)
        app.state.services = Services(
            settings=settings,
            styles=styles,
            upstream=upstream,
            catalog=ModelCatalog(upstream, settings.upstream_model, styles),
            metrics=metrics,
            images=images,
            describer=describer,
            cache=cache,
            safety=safety,
            guard=guard,
            store=store,
        )
        try:
            yield
        finally:
            if store is not None:
                await store.close()
            if cache is not None:
                await cache.aclose()
            if guard is not None:
                await guard.aclose()
            await upstream.aclose()
            await security.aclose()
            images.close()

    app = FastAPI(
        title="huayu 画语",
        version="0.1.0",
        description="Style-controlled descriptions of artworks, OpenAI-compatible.",
        lifespan=lifespan,
        **_telemetry(settings),
    )
    install_handlers(app)
    app.include_router(meta.router)
    app.include_router(chat.router)
    app.include_router(describe.router)
    app.include_router(reviews.router)
    document_bodies(app)
    # innermost: the hot routes skip the router only after admission, the body limit and the keys
    app.add_middleware(HotRoutes, fastapi=app, routers=[chat.router, describe.router])
    # added before GatewayMiddleware, so it runs inside it: admission and the body limit come before keys
    app.add_middleware(
        SecurityMiddleware,
        keys=security.keys,
        limiter=security.limiter,
        metrics_key_required=security.metrics_key_required,
    )
    app.add_middleware(
        GatewayMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
    )
    return app


def _telemetry(settings: Settings) -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (in releases that have it) asks for the global providers on every
    request, ~15 µs; off unless HUAYU_OTEL_ENABLED."""
    if settings.otel_enabled or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
