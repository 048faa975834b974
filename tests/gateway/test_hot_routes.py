"""``HotRoutes``: the two description routes reach their endpoints without FastAPI's router, and
everything around them behaves as if the router had dispatched them."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from gateway.api.hot import CHAT, PREDICT, HotRoutes
from gateway.errors import InvalidRequest, install_handlers
from tests.media import b64, data_url, jpeg
from tests.servers import serve


def test_the_hot_routes_are_counted_under_their_templates(client: httpx.Client) -> None:
    image = jpeg(seed=61)
    chat = {
        "model": "qwen-vl",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}]}],
    }
    assert client.post(CHAT, json=chat).status_code == 200
    assert client.post("/v1/models/qwen-vl:predict", json={"image": b64(image)}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'huayu_requests_total{route="/v1/chat/completions",status="200"' in metrics
    assert 'huayu_requests_total{route="/v1/models/{model}:predict",status="200"' in metrics


def test_other_methods_and_paths_still_go_through_the_router(client: httpx.Client) -> None:
    r = client.get(CHAT)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.post("/v1/models/a/b:predict", json={"image": "x"})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert {CHAT, PREDICT} <= set(client.get("/openapi.json").json()["paths"])


def test_errors_are_rendered_by_the_apps_own_handlers() -> None:
    router = APIRouter()
    seen: list[str] = []

    @router.post(CHAT)
    async def chat(request: Request) -> Response:
        raise InvalidRequest("no image", param="messages", code="missing_image")

    @router.post(PREDICT)
    async def predict(model: str, request: Request) -> Response:
        seen.append(model)
        raise RuntimeError("a bug")

    app = FastAPI()
    install_handlers(app)
    # the router is not included: only HotRoutes can reach these endpoints
    app.add_middleware(HotRoutes, fastapi=app, routers=[router])
    with serve(app) as url:
        r = httpx.post(url + CHAT, json={})
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_image"
        r = httpx.post(url + "/v1/models/m-1:predict", json={})
        assert r.status_code == 500 and "unexpected error" in r.json()["error"]["message"]
        assert "Traceback" not in r.text and "a bug" not in r.text
        assert httpx.post(url + "/v1/models/a/b:predict", json={}).status_code == 404
    assert seen == ["m-1"]
