"""The two hot routes (chat completions, predict) dispatched without FastAPI's router.

Every description request went through Starlette's exception middleware, FastAPI's router (which
tries the routes in turn: about 70 µs on this machine with huayu's ~40 routes), its dependency
solver and its request-response wrapper before reaching an endpoint that takes only the ``Request``.
``HotRoutes`` sits where the router would be reached and calls those endpoints directly. The
routes stay declared in their routers, so the OpenAPI document, the schemathesis checks and any
other method on the same path behave as before; errors go through the app's own exception
handlers, found the way Starlette finds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

CHAT = "/v1/chat/completions"
PREDICT = "/v1/models/{model}:predict"


class HotRoutes:
    """ASGI middleware: ``POST /v1/chat/completions`` and ``POST /v1/models/{model}:predict`` straight
    to their endpoints; everything else to the app."""

    def __init__(self, app: ASGIApp, *, fastapi: FastAPI, routers: list[APIRouter]) -> None:
        self.app = app
        self.fastapi = fastapi
        found = {
            route.path: route
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute) and "POST" in (route.methods or ())
        }
        self._chat = found[CHAT]
        self._predict = found[PREDICT]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route: APIRoute | None = None
        params: dict[str, str] = {}
        if path == CHAT:
            route = self._chat
        elif path.startswith("/v1/models/") and path.endswith(":predict"):
            model = path[len("/v1/models/") : -len(":predict")]
            if model and "/" not in model:
                route, params = self._predict, {"model": model}
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request=request, **params)
        except Exception as exc:
            response = await self._handled(request, exc)
        await response(scope, receive, send)

    async def _handled(self, request: Request, exc: Exception) -> Response:
        handlers: dict[Any, Callable[[Request, Exception], Any]] = self.fastapi.exception_handlers
        for kind in type(exc).__mro__:
            handler = handlers.get(kind)
            if handler is not None:
                response: Response = await handler(request, exc)
                return response
        raise exc
