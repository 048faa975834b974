"""Keys and per-key limits, as pure ASGI middleware in front of every route.

Runs inside the admission middleware (so an overloaded process refuses before this costs anything)
and before the body is read. It decides the tenant, puts it in ``request.state.tenant`` for the
routers, and for generation routes counts the request, adds the ``x-ratelimit-*`` headers and
charges the tokens the router left in ``request.state.usage_tokens`` once the answer is sent.

The key comes from ``Authorization: Bearer``, ``x-api-key``, or the ``huayu_key`` cookie that the
review page sets (a browser sends no header on navigation or on ``<img>``); a write authenticated
by the cookie alone must come from the gateway's own origin.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import HuayuError, Unauthorized
from gateway.security.keys import PUBLIC_TENANT, KeyRing
from gateway.security.ratelimit import RateLimiter

COOKIE = "huayu_key"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/describe"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Shown to a browser that opens a page without a key: the key is kept in a same-site cookie, which
# the page's own requests (fetch, <img>) then carry.
_LOGIN_PAGE = b"""<!doctype html><html lang="zh"><meta charset="utf-8"><title>huayu</title>
<form onsubmit="document.cookie='huayu_key='+encodeURIComponent(k.value)+';path=/;SameSite=Strict'
+(location.protocol==='https:'?';Secure':'');location.reload();return false">
<label>API key / \xe5\xaf\x86\xe9\x92\xa5 <input id="k" type="password" autocomplete="off" autofocus></label>
<button>OK</button></form></html>"""


def is_limited(method: str, path: str) -> bool:
    """The routes that generate (and so cost model time): counted against the per-key limits."""
    if method != "POST":
        return False
    return path in LIMITED_PATHS or (path.startswith("/v1/models/") and path.endswith(":predict"))


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def presented_key(scope: Scope) -> tuple[str | None, bool]:
    """The key in the request, and whether it came from the cookie only."""
    auth = _header(scope, b"authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
    direct = _header(scope, b"x-api-key")
    if direct:
        return direct.strip(), False
    raw = _header(scope, b"cookie")
    if raw:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None, False
        if COOKIE in jar and jar[COOKIE].value:
            return unquote(jar[COOKIE].value), True
    return None, False


def _same_origin(scope: Scope) -> bool:
    origin = _header(scope, b"origin") or _header(scope, b"referer")
    if origin is None:
        return True  # not a browser's cross-site request: SameSite=Strict keeps the cookie off those
    host = _header(scope, b"host") or ""
    return urlsplit(origin).netloc.lower() == host.lower()


async def send_error(send: Send, err: HuayuError, extra: dict[str, str] | None = None) -> None:
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers | (extra or {})).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_login(send: Send) -> None:
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(_LOGIN_PAGE)).encode()),
        (b"www-authenticate", b'Bearer realm="huayu"'),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": _LOGIN_PAGE})


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, keys: KeyRing, limiter: RateLimiter, metrics_key_required: bool) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.open_paths = OPEN_PATHS if metrics_key_required else OPEN_PATHS | {"/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        method, path = scope["method"], scope["path"]
        tenant = PUBLIC_TENANT
        if self.keys.enabled and path not in self.open_paths:
            key, cookie_only = presented_key(scope)
            found = self.keys.tenant_of(key) if key else None
            if found is None or (cookie_only and method not in _SAFE_METHODS and not _same_origin(scope)):
                accept = _header(scope, b"accept") or ""
                if method == "GET" and "text/html" in accept and not path.startswith("/v1/"):
                    state["error_code"] = "invalid_api_key"
                    await _send_login(send)
                    return
                await self._refuse(scope, send, key is not None)
                return
            tenant = found
        state["tenant"] = tenant
        if not (self.limiter.enabled and is_limited(method, path)):
            await self.app(scope, receive, send)
            return
        try:
            quota = await self.limiter.admit(tenant)
        except HuayuError as e:
            state["error_code"] = e.code
            await send_error(send, e)
            return
        extra = [(k.encode(), v.encode()) for k, v in quota.headers().items()]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        finally:
            await self.limiter.charge(tenant, int(state.get("usage_tokens") or 0))

    @staticmethod
    async def _refuse(scope: Scope, send: Send, had_key: bool) -> None:
        if had_key:
            message = "The API key is not valid for this gateway."
        else:
            message = (
                "This gateway needs an API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>'). "
                "Ask its operator for one."
            )
        err = Unauthorized(message, headers={"WWW-Authenticate": 'Bearer realm="huayu"'})
        scope["state"]["error_code"] = err.code
        await send_error(send, err)
