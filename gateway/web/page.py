"""The review page at ``/``: one server-rendered template and two static files, no build step.

The template renders the frame (filters, styles, the upload form, the card templates) in the
reader's language; ``review.js`` fills the gallery from the JSON API and streams new descriptions.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from gateway.deps import Services, services
from gateway.errors import NotFound
from gateway.web.labels import LABELS, LANGUAGES

router = APIRouter(include_in_schema=False)

_HERE = resources.files("gateway.web")
templates = Jinja2Templates(directory=str(_HERE))  # autoescapes .html: user text is never markup
LANG_COOKIE = "huayu_lang"

_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
ASSETS: dict[str, bytes] = {
    f.name: f.read_bytes() for f in _HERE.iterdir() if f.is_file() and f.name.rsplit(".", 1)[-1] in _TYPES
}
# the modules import each other by plain name, so no hashed URLs: browsers revalidate (a 304) instead
ETAGS = {name: '"' + hashlib.sha256(data).hexdigest()[:16] + '"' for name, data in ASSETS.items()}
MODULES = sorted(name for name in ASSETS if name.endswith(".js") and name != "review.js")

SECURITY_HEADERS = {
    # no inline script and nothing from elsewhere: model text can never run as code
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _styles(svc: Services) -> list[dict[str, Any]]:
    out = []
    for s in svc.styles.all():
        info = s.public()
        title = info.get("title") or {}
        out.append(
            {
                "name": info["name"],
                "title": {lang: str(title.get(lang) or info["name"]) for lang in LANGUAGES},
                "languages": list(info.get("languages") or LANGUAGES),
            }
        )
    return out


@router.get("/", response_class=HTMLResponse)
async def review_page(request: Request, svc: Services = Depends(services)) -> Response:
    lang = request.cookies.get(LANG_COOKIE)
    lang = lang if lang in LANGUAGES else "zh"
    styles = _styles(svc)
    config = {
        "model": svc.settings.upstream_model,
        "default_style": svc.styles.default,
        "default_language": svc.settings.default_language,
        "max_body_bytes": svc.settings.max_body_bytes,
        "store": svc.store is not None,
        "styles": styles,
        "labels": LABELS,
    }
    return templates.TemplateResponse(
        request,
        "review.html",
        {
            "lang": lang,
            "t": LABELS[lang],
            "styles": styles,
            "default_style": svc.styles.default,
            "default_language": svc.settings.default_language,
            "store": svc.store is not None,
            # orjson escapes nothing HTML-special; the script tag's content must not close early
            "config_json": orjson.dumps(config).decode().replace("<", "\\u003c"),
            "modules": MODULES,
        },
        headers={**SECURITY_HEADERS, "cache-control": "no-cache"},
    )


@router.get("/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    data = ASSETS.get(name)
    if data is None:
        raise NotFound(f"No static file {name!r}; the review page uses: {', '.join(sorted(ASSETS))}.", param="name")
    headers = {"cache-control": "no-cache", "etag": ETAGS[name], "x-content-type-options": "nosniff"}
    if request.headers.get("if-none-match") == ETAGS[name]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=_TYPES[name.rsplit(".", 1)[1]], headers=headers)
