"""POST /v1/chat/completions: OpenAI-compatible, streaming and not, with huayu's styles applied."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.body import json_body, read_json
from gateway.api.jobs import charge_usage, image_source, make_job
from gateway.api.sse import EventStream
from gateway.deps import Services, services
from gateway.errors import HuayuError, InvalidRequest
from gateway.job import Delta, EncodedImage, Job, Result
from gateway.prompting import caller_request
from gateway.protocol import MAX_PROMPT_CHARS, ChatCompletionRequest
from gateway.security import tenant_of

router = APIRouter(tags=["openai"])

# OpenAI fields that change nothing in a description: accepted and let be
_HARMLESS = frozenset({"user", "store", "service_tier", "parallel_tool_calls"})
# OpenAI fields that would change the answer, which huayu does not apply: refused rather than ignored
_UNSUPPORTED = frozenset(
    {
        "tools", "tool_choice", "functions", "function_call", "response_format", "logprobs", "top_logprobs",
        "stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias", "audio", "modalities",
        "prediction", "reasoning_effort", "web_search_options",
    }
)  # fmt: skip
_ACCEPTED = (
    "model, messages, stream, stream_options, max_tokens, max_completion_tokens, temperature, top_p, n, "
    "and huayu's style, language, artwork, cache, priority"
)


def _refuse_extra(extra: dict[str, Any]) -> None:
    """A field the route does not read is refused with what it accepts, not dropped: a misspelt
    ``styel`` or the predict route's ``metadata`` would else be answered in the default style, without
    the catalogue fields the caller meant to send."""
    names = sorted(set(extra) - _HARMLESS)
    if not names:
        return
    if "metadata" in names:
        message = (
            "The chat route takes the artwork's catalogue fields as `artwork` "
            '({"title", "artist", "year", "medium", "dimensions", "collection"}); `metadata` is the predict '
            "route's name for them."
        )
    elif unsupported := [n for n in names if n in _UNSUPPORTED]:
        message = (
            f"{', '.join(unsupported)}: not supported by huayu, which writes one description per request "
            f"with its style's sampling. Accepted: {_ACCEPTED}."
        )
    else:
        message = f"Unknown field{'s' if len(names) > 1 else ''} {', '.join(names)}. Accepted: {_ACCEPTED}."
    raise InvalidRequest(message, param=names[0], code="unsupported_field")


async def _image_source(urls: list[str], svc: Services) -> bytes | EncodedImage:
    if not urls:
        raise InvalidRequest(
            "The request has no image. Add a user content part "
            '{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}.',
            param="messages",
            code="missing_image",
        )
    if len(urls) > 1:
        raise InvalidRequest(
            f"The request has {len(urls)} images; huayu describes one artwork per request.",
            param="messages",
            code="too_many_images",
        )
    return await image_source(urls[0], svc)


@router.post("/v1/chat/completions", response_model=None, openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await read_json(request, ChatCompletionRequest)
    if body.model_extra:
        _refuse_extra(body.model_extra)
    svc = await services(request)
    alias_style, adapter = await svc.catalog.resolve(body.model)
    text, urls = caller_request(body.messages)
    if text is not None and len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"The request's own text is {len(text)} characters; at most {MAX_PROMPT_CHARS} are accepted "
            "(the style writes the rest of the prompt).",
            param="messages",
            code="prompt_too_long",
        )
    job = make_job(
        svc,
        image=await _image_source(urls, svc),
        style=body.style or alias_style,
        language=body.language,
        metadata=body.artwork.as_strings() if body.artwork else {},
        request=text,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        use_cache=body.cache,
        priority=body.priority,
        adapter=adapter,
        tenant=tenant_of(request),
    )
    request.state.style = job.style.name
    if not body.stream:
        result = await svc.describer.describe(job)
        charge_usage(request, result)
        return Response(orjson.dumps(_completion(result, body.model)), media_type="application/json")

    events = svc.describer.stream(job)
    first = await events.__anext__()  # errors before the first event still get their HTTP status
    include_usage = (body.stream_options or {}).get("include_usage") is True
    return EventStream(
        _sse(first, events, body.model, include_usage, request, job),
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _huayu_fields(result: Result) -> dict[str, Any]:
    return {
        "description_id": result.id,
        "style": result.style,
        "style_version": result.style_version,
        "language": result.language,
        "adapter": result.adapter,
        "cached": result.cached,
        "cache": result.cache,
        "safety": result.safety,
        "latency_ms": result.latency_ms,
    }


def _completion(result: Result, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + result.id.removeprefix("desc_"),
        "object": "chat.completion",
        "created": result.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.description},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": result.usage,
        "huayu": _huayu_fields(result),
    }


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _sse(
    first: Delta | Result,
    events: AsyncIterator[Delta | Result],
    model: str,
    include_usage: bool,
    request: Request,
    job: Job,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    cid = "chatcmpl-" + uuid.uuid4().hex
    # charged in the finally below too: a stream its caller leaves before the end cost the model what
    # it generated until then (the job's estimate), not nothing
    request.state.usage_tokens = job.spent_tokens
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    answered = False
    try:
        event: Delta | Result | None = first
        while event is not None:
            if isinstance(event, Delta):
                yield _chunk(cid, created, model, {"content": event.text})
            else:
                charge_usage(request, event, job.spent_tokens)
                answered = True
                final = _chunk(cid, created, model, {}, event.finish_reason)
                # the last chunk carries huayu's fields beside the OpenAI ones
                payload = orjson.loads(final[6:])
                payload["huayu"] = _huayu_fields(event)
                yield b"data: " + orjson.dumps(payload) + b"\n\n"
                if include_usage:
                    usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
                    usage |= {"choices": [], "usage": event.usage}
                    yield b"data: " + orjson.dumps(usage) + b"\n\n"
            event = await anext(events, None)
    except HuayuError as e:
        yield b"data: " + orjson.dumps(e.body()) + b"\n\n"
    finally:
        if not answered:  # ended before its answer: what the model has done so far
            request.state.usage_tokens = job.spent_tokens
    yield b"data: [DONE]\n\n"
