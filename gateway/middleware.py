"""Pure ASGI middleware on the hot path: body limit, admission control, request metrics.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and the
cost per request stays in microseconds.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import HuayuError, InvalidRequest, PayloadTooLarge, RateLimited
from gateway.metrics import GatewayMetrics


async def _send_error(send: Send, err: HuayuError) -> None:
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatewayMiddleware:
    """Counts, times and bounds every HTTP request; refuses oversize bodies while they are read."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, max_body_bytes: int, max_in_flight: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        # read when /metrics is scraped, not kept up to date twice a request (a lock each time)
        metrics.in_flight.set_function(lambda: self.in_flight)

    @staticmethod
    def _route_name(scope: Scope) -> str:
        # the router records the matched route in the scope; its template keeps label cardinality low
        return str(getattr(scope.get("route"), "path", "unmatched"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in ("/metrics", "/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        scope.setdefault("state", {})

        if self.in_flight >= self.max_in_flight:
            refused: HuayuError = RateLimited(
                f"The gateway is at its limit of {self.max_in_flight} requests in flight; retry shortly.",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
            await _send_error(send, refused)
            self._observe(scope, "refused", 429, started, refused.code)
            return

        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            # no id, filter or name holds one, and PostgreSQL refuses it in any text it is compared with
            bad = InvalidRequest("The request's URL contains a NUL character (%00); remove it.", code="invalid_url")
            await _send_error(send, bad)
            self._observe(scope, "refused", 400, started, bad.code)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            err = self._too_large()
            await _send_error(send, err)
            self._observe(scope, "refused", 413, started, err.code)
            return

        received = 0
        responded = False  # the gateway answered 413 itself; whatever the app sends after is dropped
        started_response = False

        async def limited_receive() -> Message:
            nonlocal received, responded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # refuse now, while reading: the rest of the body is never buffered. The app sees
                    # a disconnect (FastAPI would turn an exception raised here into a 400).
                    if not started_response and not responded:
                        await _send_error(send, self._too_large())
                        status["code"] = 413
                    responded = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started_response
            if responded:
                return
            if message["type"] == "http.response.start":
                started_response = True
                status["code"] = message["status"]
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, limited_receive, watched_send)
        finally:
            self.in_flight -= 1
            self._observe(scope, self._route_name(scope), status["code"], started, None)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The request body is larger than the limit of {self.max_body} bytes. "
            "Send a smaller image (the gateway resizes to 1024 px anyway)."
        )

    def _observe(self, scope: Scope, route: str, status: int, started: float, code: str | None) -> None:
        state: dict[str, Any] = scope.get("state", {})
        style = str(state.get("style", ""))
        self.metrics.requests.labels(route, str(status), style).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)
        error_code = code or state.get("error_code")
        if status >= 400 and error_code:
            self.metrics.errors.labels(str(error_code)).inc()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
