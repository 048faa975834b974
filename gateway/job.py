"""What goes into describe() and what comes out: a Job, then a Result (or Deltas, then a Result)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.images import ImageOptions
from gateway.prompting import Sampling
from gateway.styles import Style


@dataclass(frozen=True)
class EncodedImage:
    """An image as the request carried it (base64 or a data URL). It is decoded only when the memo
    has not seen the same text: a repeat upload skips the decoding (~0.2 ms per 100 KB)."""

    text: str


@dataclass
class Job:
    image: bytes | EncodedImage
    style: Style
    language: str
    sampling: Sampling
    metadata: dict[str, str] = field(default_factory=dict)
    request: str | None = None
    use_cache: bool = True
    options: ImageOptions | None = None
    priority: int = 0
    tenant: str = "public"
    source: str | None = None
    adapter: str | None = None  # a LoRA adapter asked for by the request; else the style's
    # what the job has cost the model server so far, kept while it streams: an estimate (the prompt
    # from the image's size and the text, one token a content chunk) until the upstream's usage comes,
    # so a stream its caller leaves, or the safety filter stops, is charged too
    spent_tokens: int = 0


@dataclass
class Result:
    id: str
    description: str
    style: str
    style_version: str
    language: str
    model: str
    adapter: str | None
    cached: bool
    cache: dict[str, Any] | None
    usage: dict[str, int]
    latency_ms: float
    finish_reason: str | None
    safety: dict[str, Any]
    created: int = field(default_factory=lambda: int(time.time()))

    def predict_body(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "created"}


@dataclass(frozen=True)
class Delta:
    text: str
