"""The review API: stored descriptions, curators' feedback, exports, the gallery and the A/B report.

Thin: every check of a value (rating 1-5, status, paging) is the store's, so the same rules hold
for the CLI and the API, and bad values answer 422 with the store's message. The review page
(``gateway/web``) is included here, and so are the ``huayu_review_*`` gauges, started with the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from gateway.api.body import json_body, read_json
from gateway.deps import Services, services
from gateway.errors import ServiceUnavailable
from gateway.security import tenant_of
from gateway.security.keys import PUBLIC_TENANT
from gateway.store import FILENAMES, MEDIA_TYPES, DescriptionFilter, ResultStore
from gateway.web import page
from gateway.web.gauges import ReviewGauges


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI nests an included router's lifespan inside the app's, so the services exist here
    svc: Services | None = getattr(app.state, "services", None)
    gauges = None
    if svc is not None and svc.store is not None:
        gauges = ReviewGauges(svc.store)
        gauges.start(svc.metrics.registry)
        app.state.review_gauges = gauges
    try:
        yield
    finally:
        if gauges is not None:
            await gauges.aclose()


router = APIRouter(tags=["reviews"], lifespan=_lifespan)
router.include_router(page.router)


async def tenant_scope(request: Request) -> str | None:
    """With API keys on, a caller sees only its own tenant's descriptions; with keys off, all."""
    tenant = tenant_of(request)
    return None if tenant == PUBLIC_TENANT else tenant


def store_of(svc: Services) -> ResultStore:
    if svc.store is None:
        raise ServiceUnavailable(
            "The results store is turned off on this gateway (HUAYU_STORE_ENABLED=false), so there are "
            "no stored descriptions to review or export. Turn it on and set HUAYU_DATABASE_URL.",
            code="store_disabled",
        )
    return svc.store


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # not bounded here: the store answers 422 for a rating outside 1-5 or not a whole number
    rating: Any = Field(
        ...,
        description="How apt the description is: a whole number from 1 to 5.",
        json_schema_extra={"type": "integer", "minimum": 1, "maximum": 5},
    )
    comment: str | None = Field(None, description="What the reviewer thinks, free text.")
    edited_text: str | None = Field(None, description="The reviewer's corrected text; it becomes the final text.")
    reviewer: str | None = Field(None, description="Who gave the feedback.")


class DescriptionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(None, description="draft, approved or rejected.")
    text: str | None = Field(None, description="The curator's text; the model's own text is kept beside it.")
    reviewer: str | None = Field(None, description="Who made the change.")


async def description_filter(
    artwork_id: str | None = None,
    style: str | None = None,
    status: str | None = Query(None, description="draft, approved or rejected."),
    min_rating: float | None = Query(None, description="Average rating at least this (1-5)."),
    adapter: str | None = None,
    language: str | None = None,
    tenant: str | None = Depends(tenant_scope),
) -> DescriptionFilter:
    """The filters of the description listing and the export, as query parameters."""
    return DescriptionFilter(artwork_id, style, status, min_rating, adapter, language, tenant)


@router.get("/v1/descriptions")
async def list_descriptions(
    which: DescriptionFilter = Depends(description_filter),
    limit: int = Query(50, description="Page size, 1 to 500."),
    offset: int = 0,
    svc: Services = Depends(services),
) -> dict[str, Any]:
    return await store_of(svc).list_descriptions(which, limit=limit, offset=offset)


@router.get("/v1/descriptions/{description_id}")
async def get_description(
    description_id: str, svc: Services = Depends(services), tenant: str | None = Depends(tenant_scope)
) -> dict[str, Any]:
    return await store_of(svc).get_description(description_id, tenant=tenant)


# the bodies are read by pydantic's own JSON parser, as the description routes' are (api/body.py): a
# malformed body is answered with what is wrong in it, not FastAPI's "error parsing the body"
@router.post("/v1/descriptions/{description_id}/feedback", status_code=201, openapi_extra=json_body(FeedbackRequest))
async def add_feedback(
    description_id: str,
    request: Request,
    svc: Services = Depends(services),
    tenant: str | None = Depends(tenant_scope),
) -> dict[str, Any]:
    body = await read_json(request, FeedbackRequest)
    return await store_of(svc).add_feedback(
        description_id,
        body.rating,
        comment=body.comment,
        edited_text=body.edited_text,
        reviewer=body.reviewer,
        tenant=tenant,
    )


@router.patch("/v1/descriptions/{description_id}", openapi_extra=json_body(DescriptionPatch))
async def update_description(
    description_id: str,
    request: Request,
    svc: Services = Depends(services),
    tenant: str | None = Depends(tenant_scope),
) -> dict[str, Any]:
    body = await read_json(request, DescriptionPatch)
    return await store_of(svc).update_description(
        description_id, status=body.status, text=body.text, reviewer=body.reviewer, tenant=tenant
    )


@router.get("/v1/export", response_model=None)
async def export(
    request: Request,
    fmt: str = Query("jsonl", alias="format", description="jsonl, csv, finetune or iiif."),
    which: DescriptionFilter = Depends(description_filter),
    svc: Services = Depends(services),
) -> StreamingResponse:
    body = await store_of(svc).export(fmt, which, base_url=str(request.base_url))
    return StreamingResponse(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="{FILENAMES[fmt]}"'},
    )


@router.get("/v1/artworks")
async def list_artworks(
    style: str | None = None,
    status: str | None = None,
    min_rating: float | None = None,
    limit: int = Query(24, description="Artworks per page, 1 to 500."),
    offset: int = 0,
    per_style: int = Query(5, description="Newest descriptions kept per artwork and style, 1 to 100."),
    svc: Services = Depends(services),
    tenant: str | None = Depends(tenant_scope),
) -> dict[str, Any]:
    which = DescriptionFilter(style=style, status=status, min_rating=min_rating, tenant=tenant)
    return await store_of(svc).list_artworks(which, limit=limit, offset=offset, per_style=per_style)


# an artwork id is a digest of its image: what it points to never changes
_IMMUTABLE = {"cache-control": "private, max-age=604800, immutable"}


@router.get("/v1/artworks/{artwork_id}/thumbnail", response_class=Response)
async def artwork_thumbnail(
    artwork_id: str, svc: Services = Depends(services), tenant: str | None = Depends(tenant_scope)
) -> Response:
    data = await store_of(svc).get_artwork_thumbnail(artwork_id, tenant=tenant)
    return Response(data, media_type="image/jpeg", headers=_IMMUTABLE)


@router.get("/v1/artworks/{artwork_id}/image", response_class=Response)
async def artwork_image(
    artwork_id: str, svc: Services = Depends(services), tenant: str | None = Depends(tenant_scope)
) -> Response:
    data = await store_of(svc).get_artwork_image(artwork_id, tenant=tenant)
    return Response(data, media_type="image/jpeg", headers=_IMMUTABLE)


@router.get("/v1/reports/adapters")
async def adapter_report(
    request: Request, svc: Services = Depends(services), tenant: str | None = Depends(tenant_scope)
) -> dict[str, Any]:
    rows = await store_of(svc).adapter_report(tenant=tenant)
    gauges: ReviewGauges | None = getattr(request.app.state, "review_gauges", None)
    if gauges is not None and tenant is None:  # the gauges show the whole deployment
        gauges.update(rows)  # the report was computed anyway: the gauges need not wait for their timer
    return {"object": "list", "data": rows}
