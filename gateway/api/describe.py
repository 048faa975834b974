"""The routes documented for huayu's users: the predict endpoint (JSON) and a form upload."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.responses import Response

from gateway.api.body import json_body, read_json
from gateway.api.jobs import charge_usage, image_source, image_url, make_job
from gateway.deps import Services, services
from gateway.errors import InvalidRequest
from gateway.protocol import MAX_PROMPT_CHARS, PredictRequest, PredictResponse
from gateway.security import tenant_of

router = APIRouter(tags=["huayu"])


@router.post("/v1/models/{model}:predict", response_model=PredictResponse, openapi_extra=json_body(PredictRequest))
async def predict(model: str, request: Request) -> Response:
    body = await read_json(request, PredictRequest)
    svc = await services(request)
    alias_style, adapter = await svc.catalog.resolve(model)
    job = make_job(
        svc,
        image=await image_source(body.image, svc),
        style=body.style or alias_style,
        language=body.language,
        metadata=body.metadata.as_strings() if body.metadata else {},
        request=body.prompt,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        use_cache=body.cache,
        priority=body.priority,
        adapter=adapter,
        crop_borders=body.crop_borders,
        correct_glare=body.correct_glare,
        source=body.source or image_url(body.image),
        tenant=tenant_of(request),
    )
    request.state.style = job.style.name
    result = await svc.describer.describe(job)
    charge_usage(request, result)
    answer = PredictResponse.model_validate(result.predict_body())
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/v1/describe", response_model=PredictResponse)
async def describe_upload(
    request: Request,
    file: Annotated[UploadFile, File(description="The image file (JPEG, PNG, WebP or TIFF).")],
    style: Annotated[str | None, Form()] = None,
    language: Annotated[Literal["zh", "en"] | None, Form()] = None,
    prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS)] = None,
    title: Annotated[str | None, Form(max_length=500)] = None,
    artist: Annotated[str | None, Form(max_length=500)] = None,
    year: Annotated[str | None, Form(max_length=100)] = None,
    medium: Annotated[str | None, Form(max_length=500)] = None,
    dimensions: Annotated[str | None, Form(max_length=200)] = None,
    collection: Annotated[str | None, Form(max_length=500)] = None,
    max_tokens: Annotated[int | None, Form(ge=1)] = None,
    temperature: Annotated[float | None, Form(ge=0.0, le=2.0)] = None,
    top_p: Annotated[float | None, Form(gt=0.0, le=1.0)] = None,
    cache: Annotated[bool, Form()] = True,
    svc: Services = Depends(services),
) -> PredictResponse:
    data = await file.read()
    if not data:
        raise InvalidRequest("The uploaded file is empty.", param="file", code="missing_image")
    metadata = {
        k: v
        for k, v in {
            "title": title,
            "artist": artist,
            "year": year,
            "medium": medium,
            "dimensions": dimensions,
            "collection": collection,
        }.items()
        if v
    }
    job = make_job(
        svc,
        image=data,
        style=style,
        language=language,
        metadata=metadata,
        request=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        use_cache=cache,
        source=file.filename,
        tenant=tenant_of(request),
    )
    request.state.style = job.style.name
    result = await svc.describer.describe(job)
    charge_usage(request, result)
    return PredictResponse.model_validate(result.predict_body())
