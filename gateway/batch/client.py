"""Sending one job item: to the gateway's predict route (cache, filter and store apply), or with
``--direct`` straight to an OpenAI-compatible model server's chat completions.

Either way the answer becomes one result; a 4xx other than 408/429 is the item's permanent
failure, everything else that fails is Transient and tried again.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from gateway.batch.images import LoadedImage
from gateway.batch.model import BatchConfig, Item, Status
from gateway.batch.retry import Transient, parse_retry_after, retryable_status
from gateway.catalog import DOCUMENTED_NAME
from gateway.errors import (
    HuayuError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMedia,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.protocol import PredictResponse
from gateway.styles import Style, StyleRegistry

BULK_PRIORITY = 10  # vLLM runs lower values first; live traffic uses 0
_BY_STATUS: dict[int, type[HuayuError]] = {
    400: InvalidRequest,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMedia,
    422: Unprocessable,
}


@dataclass(frozen=True)
class Described:
    status: Status
    description: str
    fields: dict[str, Any]  # what the server said about it: model, usage, safety, ids


def direct_messages(
    style: Style, language: str, image_url: str, metadata: dict[str, str], prompt: str | None
) -> list[dict[str, Any]]:
    """The chat messages of one description: the image first, then the style's text, so the model
    server's prefix cache shares an artwork's image across its styles."""
    return [
        {"role": "system", "content": style.system_prompt(language)},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": style.user_text(language, metadata, prompt)},
            ],
        },
    ]


def base_url(url: str, suffix: str) -> str:
    """``url`` without a trailing slash and without ``suffix`` (users paste both forms)."""
    url = url.rstrip("/")
    return url[: -len(suffix)] if url.endswith(suffix) else url


def load_styles(styles_dir: Path | None) -> StyleRegistry:
    """The shipped styles plus those of ``--styles-dir``; a folder that is not one, or a style file
    that cannot be read, is an InvalidRequest naming the file (the registry's own errors say less)."""
    if styles_dir is None:
        return StyleRegistry.load()
    if not styles_dir.is_dir():
        what = "is a file, not a folder" if styles_dir.exists() else "does not exist"
        raise InvalidRequest(
            f"--styles-dir {str(styles_dir)!r} {what}; give a folder of style files (*.toml).", param="styles_dir"
        )
    for path in sorted(styles_dir.glob("*.toml")):
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InvalidRequest(f"The style file {str(path)!r} cannot be read: {reason}.", param="styles_dir") from e
    try:
        return StyleRegistry.load(styles_dir)
    except (ValueError, TypeError, AttributeError) as e:  # parse_style on a file of the wrong shape
        raise InvalidRequest(
            f"A style file in --styles-dir {str(styles_dir)!r} is not valid: {e}.", param="styles_dir"
        ) from e


class Sender:
    def __init__(self, config: BatchConfig, styles: StyleRegistry | None = None) -> None:
        self.config = config
        self.direct = config.direct is not None
        if self.direct:
            self.styles = styles or load_styles(config.styles_dir)
            self.url = base_url(str(config.direct), "/v1") + "/v1/chat/completions"
            self.health_url = base_url(str(config.direct), "/v1") + "/v1/models"
            self.priority = config.priority
        else:
            root = base_url(config.gateway, "/v1")
            self.url = f"{root}/v1/models/{config.model}:predict"
            self.health_url = f"{root}/healthz"
            self.priority = BULK_PRIORITY if config.priority is None else config.priority
        headers = {"content-type": "application/json"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.request_timeout_s, connect=10.0, pool=None),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def check(self, styles: tuple[str, ...], languages: tuple[str, ...]) -> None:
        """Fails fast, before any item: nothing listens at the server's address, or the model (through
        the gateway), a style or a language the run asks for does not exist there."""
        try:
            await self.client.get(self.health_url, timeout=10.0)
        except httpx.HTTPError as e:
            where = (
                "model server (--direct)" if self.direct else "gateway (start it with `huayu run`, or pass --gateway)"
            )
            raise UpstreamUnavailable(f"Cannot reach the {where} at {self.health_url}: {type(e).__name__}.") from e
        known = {s.name: s.languages for s in self.styles.all()} if self.direct else await self._gateway_styles()
        if not self.direct:
            await self._check_model(known)
        if known is None:
            return  # a gateway without /v1/styles: each item reports an unknown style itself
        for name in styles:
            if name not in known:
                raise InvalidRequest(
                    f"Unknown style {name!r}. Valid styles: {', '.join(sorted(known))}.", param="style"
                )
            missing = [lang for lang in languages if lang not in known[name]]
            if missing:
                raise InvalidRequest(
                    f"The style {name!r} has no {'/'.join(missing)} prompt; it supports: {', '.join(known[name])}.",
                    param="language",
                )

    async def _check_model(self, styles: dict[str, list[str]] | None) -> None:
        """An unknown ``--model`` fails here, once, not as a 404 for every item. The gateway takes
        ``qwen-vl``, what its /v1/models lists (the base model, adapters, ``<base>:<style>``) and
        ``<model>:<style>``; a gateway that does not answer the list leaves each item to say it."""
        url = self.url.split("/v1/models/")[0] + "/v1/models"
        try:
            response = await self.client.get(url, timeout=10.0)
            listed = (
                [str(m["id"]) for m in orjson.loads(response.content)["data"]] if response.status_code == 200 else []
            )
        except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, TypeError):
            return
        if not listed:
            return
        model = self.config.model
        head, _, style = model.partition(":")
        heads = {DOCUMENTED_NAME, *(m.partition(":")[0] for m in listed)}
        if head not in heads:
            raise NotFound(
                f"The gateway has no model {model!r}; it serves: {', '.join(sorted(heads))} "
                f"(a style may follow, as in {DOCUMENTED_NAME}:curator).",
                param="model",
                code="model_not_found",
            )
        if style and styles is not None and style not in styles:
            raise InvalidRequest(
                f"The model {model!r} names an unknown style {style!r}. Valid styles: {', '.join(sorted(styles))}.",
                param="model",
            )

    async def _gateway_styles(self) -> dict[str, list[str]] | None:
        url = self.url.split("/v1/models/")[0] + "/v1/styles"
        try:
            response = await self.client.get(url, timeout=10.0)
            data = orjson.loads(response.content)["data"] if response.status_code == 200 else None
            return {str(s["name"]): [str(x) for x in s["languages"]] for s in data} if data is not None else None
        except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, TypeError):
            return None

    def body(self, item: Item, image: LoadedImage) -> dict[str, Any]:
        c = self.config
        art = item.artwork
        sampling = {"max_tokens": c.max_tokens, "temperature": c.temperature, "top_p": c.top_p}
        body: dict[str, Any]
        if self.direct:
            style = self.styles.get(item.style)
            body = {
                "model": c.model,
                "messages": direct_messages(style, item.language, image.data_url, art.metadata, c.prompt),
                "max_tokens": c.max_tokens or style.sampling.max_tokens,
                "temperature": c.temperature if c.temperature is not None else style.sampling.temperature,
                "top_p": c.top_p if c.top_p is not None else style.sampling.top_p,
            }
        else:
            body = {"image": image.b64, "style": item.style, "language": item.language, "cache": c.cache}
            # the store's record of the artwork points where this run's annotations do: a canvas or
            # image URL as it is, else the path or id in the input
            body["source"] = art.target if art.target.startswith(("http://", "https://")) else art.source
            if art.metadata:
                body["metadata"] = art.metadata
            if c.prompt:
                body["prompt"] = c.prompt
            body.update({k: v for k, v in sampling.items() if v is not None})
        if self.priority is not None:
            body["priority"] = self.priority
        return body

    async def describe(self, item: Item, image: LoadedImage) -> Described:
        content = orjson.dumps(self.body(item, image))
        try:
            response = await self.client.post(self.url, content=content)
        except httpx.TimeoutException as e:
            raise Transient(UpstreamTimeout(f"No answer within {self.config.request_timeout_s:g} s.")) from e
        except httpx.TransportError as e:
            raise Transient(UpstreamUnavailable(f"The server is unreachable ({type(e).__name__}).")) from e
        if response.status_code >= 400:
            raise _failure(response)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as e:
            raise Transient(UpstreamError("The server answered with something that is not JSON.")) from e
        described = self._direct_result(item, data) if self.direct else _gateway_result(data)
        if described.status != "filtered" and not described.description.strip():
            # nothing to publish; sampling again usually gives text, so it is retried like an outage
            raise Transient(UpstreamError("The model answered with no text."))
        return described

    def _direct_result(self, item: Item, data: Any) -> Described:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise Transient(UpstreamError("The model server's answer has no choices[0].message.content.")) from e
        usage = data.get("usage") or {}
        fields = {
            "description_id": data.get("id"),
            "model": data.get("model"),
            "adapter": None,
            "style_version": self.styles.get(item.style).version,
            "cached": False,
            "cache": None,
            "usage": {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            "finish_reason": choice.get("finish_reason"),
            "safety": None,
            "latency_ms": None,
        }
        return Described("done", str(text), fields)


def _gateway_result(data: Any) -> Described:
    try:
        r = PredictResponse.model_validate(data)
    except ValidationError as e:
        raise Transient(UpstreamError(f"The gateway's answer is not a predict response: {e.errors()[0]}")) from e
    status: Status = "filtered" if r.safety.action == "block" else "cached" if r.cached else "done"
    fields = {
        "description_id": r.id,
        "model": r.model,
        "adapter": r.adapter,
        "style_version": r.style_version,
        "cached": r.cached,
        "cache": r.cache.model_dump() if r.cache else None,
        "usage": r.usage.model_dump(),
        "finish_reason": r.finish_reason,
        "safety": r.safety.model_dump(),
        "latency_ms": r.latency_ms,
    }
    return Described(status, r.description, fields)


def _failure(response: httpx.Response) -> Exception:
    status = response.status_code
    message, code = f"HTTP {status}", str(status)
    try:
        err = orjson.loads(response.content).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = str(err.get("code") or code)
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        text = response.text.strip()[:300]
        message = text or message
    error = _BY_STATUS.get(status, UpstreamError)(f"HTTP {status}: {message}", code=code, status=status)
    if retryable_status(status):
        return Transient(error, parse_retry_after(response.headers.get("retry-after")))
    return error
