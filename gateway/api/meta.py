"""Health, readiness, metrics, and what the gateway offers: models and styles."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse, Response

from gateway.deps import Services, services
from gateway.errors import HuayuError

router = APIRouter()


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(svc: Services = Depends(services)) -> JSONResponse:
    ok, reason, seconds = await svc.upstream.ready()
    checks: dict[str, Any] = {"upstream": {"ok": ok, "reason": reason, "seconds": round(seconds, 4)}}
    degraded: list[str] = []
    for name, part in (("cache", svc.cache), ("store", svc.store)):
        if part is None:
            continue
        part_ok, part_reason = await part.ready()
        checks[name] = {"ok": part_ok, "reason": part_reason}
        if not part_ok:
            degraded.append(f"{name}: {part_reason}")
    if not ok:
        body = {"status": "unavailable", "reason": reason, "checks": checks}
        return JSONResponse(body, status_code=503)
    status = "degraded" if degraded else "ready"
    return JSONResponse({"status": status, "reason": "; ".join(degraded) or "ok", "checks": checks})


@router.get("/metrics", tags=["operations"])
async def metrics(svc: Services = Depends(services)) -> Response:
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/models", tags=["openai"])
async def list_models(svc: Services = Depends(services)) -> dict[str, Any]:
    now = int(time.time())
    try:
        listed = await svc.catalog.upstream_models()
    except HuayuError:
        raise
    data: list[dict[str, Any]] = []
    for model in listed:
        entry = {k: model.get(k) for k in ("id", "object", "created", "owned_by", "root", "parent", "max_model_len")}
        entry["object"] = "model"
        data.append(entry)
    for alias in svc.catalog.aliases():
        data.append(
            {
                "id": alias,
                "object": "model",
                "created": now,
                "owned_by": "huayu",
                "root": svc.catalog.base,
                "parent": None,
            }
        )
    return {"object": "list", "data": data}


@router.get("/v1/styles", tags=["huayu"])
async def list_styles(svc: Services = Depends(services)) -> dict[str, Any]:
    return {"object": "list", "default": svc.styles.default, "data": [s.public() for s in svc.styles.all()]}
