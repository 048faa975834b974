"""The running services, shared by the routers through FastAPI's dependency injection."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from gateway.cache import DescriptionCache
from gateway.catalog import ModelCatalog
from gateway.config import Settings
from gateway.images import ImageOptions, ImageWorker
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Describer
from gateway.safety import GuardClient, SafetyFilter
from gateway.store import ResultStore
from gateway.styles import StyleRegistry
from gateway.upstream import Upstream


@dataclass
class Services:
    settings: Settings
    styles: StyleRegistry
    upstream: Upstream
    catalog: ModelCatalog
    metrics: GatewayMetrics
    images: ImageWorker
    describer: Describer
    cache: DescriptionCache | None
    safety: SafetyFilter | None
    guard: GuardClient | None
    store: ResultStore | None
    # the settings' image options, made once: a request that sets neither option uses these
    image_options: ImageOptions = field(init=False)

    def __post_init__(self) -> None:
        self.image_options = ImageOptions.from_settings(self.settings)


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
