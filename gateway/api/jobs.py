"""Shared by the routers: a request's fields turned into a pipeline Job, checked against the limits."""

from __future__ import annotations

from starlette.requests import Request

from gateway.deps import Services
from gateway.errors import InvalidRequest
from gateway.fetch import ImageFetcher
from gateway.images import ImageOptions
from gateway.job import EncodedImage, Job, Result
from gateway.prompting import resolve_sampling


def make_job(
    svc: Services,
    *,
    image: bytes | EncodedImage,
    style: str | None,
    language: str | None,
    metadata: dict[str, str],
    request: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    use_cache: bool = True,
    priority: int = 0,
    adapter: str | None = None,
    crop_borders: bool | None = None,
    correct_glare: bool | None = None,
    source: str | None = None,
    tenant: str = "public",
) -> Job:
    for name, value in metadata.items():
        refuse_unstorable(value, name)
    if request is not None:
        refuse_unstorable(request, "prompt")
    if source is not None:
        refuse_unstorable(source, "source")
    settings = svc.settings
    chosen = svc.styles.get(style)
    lang = language or settings.default_language
    if lang not in chosen.languages:
        raise InvalidRequest(
            f"The style {chosen.name!r} has no {lang!r} prompt; it supports: {', '.join(chosen.languages)}.",
            param="language",
            code="unsupported_language",
        )
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens {max_tokens} is above this gateway's limit of {settings.max_tokens_limit}.",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    options = svc.image_options
    if crop_borders is not None or correct_glare is not None:
        options = ImageOptions.from_settings(settings, crop_borders=crop_borders, correct_glare=correct_glare)
    return Job(
        image=image,
        style=chosen,
        language=lang,
        sampling=resolve_sampling(chosen, max_tokens, temperature, top_p, settings.max_tokens_limit),
        metadata=metadata,
        request=request,
        use_cache=use_cache,
        options=options,
        priority=priority,
        tenant=tenant,
        source=source,
        adapter=adapter,
    )


def image_url(value: str) -> str | None:
    """The image's address when the request named one (http or https) instead of sending its bytes."""
    return value.strip() if value.lstrip()[:8].lower().startswith(("http://", "https://")) else None


async def image_source(value: str, svc: Services) -> bytes | EncodedImage:
    """The image a request names: a data URL or base64 (decoded in the pipeline, unless its memo
    knows the text), or (when allowed) an http(s) URL, fetched here."""
    url = image_url(value)
    if url is not None:
        return await ImageFetcher(svc.settings).fetch(url)
    head = value.lstrip()[:16].lower()
    scheme, sep, _ = head.partition(":")
    if sep and scheme.isalpha() and scheme != "data" and value.lstrip()[len(scheme) + 1 : len(scheme) + 3] == "//":
        raise InvalidRequest(
            f"image URL scheme {scheme!r} is not accepted; send a data URL (data:image/jpeg;base64,...)",
            param="image",
            code="image_url_refused",
        )
    return EncodedImage(value)


def refuse_unstorable(value: str, param: str) -> None:
    """A text the results store could not keep (PostgreSQL's text and JSON types hold no U+0000) is
    refused here, before a description is made from it; else the caller would have an answer whose
    record is then refused by the database."""
    if "\x00" in value:
        raise InvalidRequest(
            f"{param} contains a NUL character (U+0000), which a stored description cannot hold; remove it.",
            param=param,
            code="invalid_text",
        )


def charge_usage(request: Request, result: Result, job_spent: int = 0) -> None:
    """Leaves the tokens a fresh answer used where the per-key token limit charges them (a cached or
    coalesced answer cost the model server nothing)."""
    spent = int(result.usage.get("total_tokens") or 0) or job_spent
    request.state.usage_tokens = 0 if result.cached else spent
