"""One error hierarchy, rendered in one place as the OpenAI error body.

``{"error": {"message", "type", "param", "code"}}``; the ``code`` doubles as a metric label.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

log = logging.getLogger("huayu.errors")


class HuayuError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # errors raised in the image worker processes cross a pickle boundary intact
        return (_rebuild, (type(self), self.message, self.param, self.code, self.status, self.headers))

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(HuayuError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(HuayuError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(HuayuError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(HuayuError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMedia(HuayuError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Unprocessable(HuayuError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable"


class RateLimited(HuayuError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class UpstreamError(HuayuError):
    """The model server answered with an error; its status and message are passed through."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ServiceUnavailable(HuayuError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamUnavailable(ServiceUnavailable):
    code = "upstream_unavailable"


class UpstreamTimeout(HuayuError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


def _rebuild(
    cls: type[HuayuError], message: str, param: str | None, code: str, status: int, headers: dict[str, str]
) -> HuayuError:
    return cls(message, param=param, code=code, status=status, headers=headers)


def error_response(err: HuayuError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form")]
        where = ".".join(loc) or "body"
        param = param or where
        if e.get("type") == "json_invalid":
            return ("The request body is not valid JSON: " + str(e.get("msg", "")), None)
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return ("Invalid request: " + "; ".join(parts), param)


def install_handlers(app: FastAPI) -> None:
    def render(request: Request, err: HuayuError) -> JSONResponse:
        request.state.error_code = err.code  # the metrics middleware labels errors by it
        return error_response(err)

    @app.exception_handler(HuayuError)
    async def _huayu(request: Request, exc: HuayuError) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return render(request, InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: NotFound, 405: InvalidRequest, 413: PayloadTooLarge}.get(exc.status_code, InvalidRequest)
        err = kind(str(exc.detail), status=exc.status_code)
        if exc.status_code == 405:
            err.code = "method_not_allowed"
        return render(request, err)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # the caller left, or its body stopped arriving (the server answered 408), before the request
        # was read: nobody to answer, nothing gone wrong here. Counted under nginx's 499.
        request.state.error_code = "client_disconnected"
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return render(request, HuayuError("The gateway hit an unexpected error; it has been logged."))
