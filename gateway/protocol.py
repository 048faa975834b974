"""Pydantic models of the requests and responses: the predict route and the OpenAI subset."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# the caller's own words, inside the style's frame: predict's prompt, the upload form's, a chat's text
MAX_PROMPT_CHARS = 4000


class ArtworkMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=500)
    artist: str | None = Field(None, max_length=500)
    year: str | int | None = None
    medium: str | None = Field(None, max_length=500)
    dimensions: str | None = Field(None, max_length=200)
    collection: str | None = Field(None, max_length=500)

    @field_validator("year")
    @classmethod
    def _year_length(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, str) and len(value) > 100:
            raise ValueError("at most 100 characters")  # as the upload form's year
        return value

    def as_strings(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump().items() if v is not None and str(v).strip()}


class SamplingOverrides(BaseModel):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)


class PredictRequest(SamplingOverrides):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="The image: base64 or a data URL (data:image/jpeg;base64,...).")
    prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="The caller's own request, inside the style."
    )
    style: str | None = None
    language: Literal["zh", "en"] | None = None
    metadata: ArtworkMetadata | None = None
    cache: bool = True
    crop_borders: bool | None = None
    correct_glare: bool | None = None
    priority: int = Field(0, ge=-100, le=100, description="Lower runs first on the model server.")
    source: str | None = Field(
        None,
        max_length=2000,
        description="Where the artwork is in the caller's collection: a IIIF canvas id, an image URL or a "
        "file path. Stored as the artwork's source (the first one given stays); an http(s) one is what its "
        "IIIF annotations target, as `huayu batch`'s own do.",
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class SafetyVerdict(BaseModel):
    action: Literal["allow", "mask", "block", "regenerate"] = "allow"
    categories: list[str] = Field(default_factory=list)
    terms: list[str] = Field(default_factory=list)


class CacheInfo(BaseModel):
    kind: Literal["exact", "near", "coalesced"]
    distance: int = 0


class PredictResponse(BaseModel):
    id: str
    description: str
    style: str
    style_version: str
    language: Literal["zh", "en"]
    model: str
    adapter: str | None = None
    cached: bool
    cache: CacheInfo | None = None
    usage: Usage
    latency_ms: float
    finish_reason: str | None
    safety: SafetyVerdict = Field(default_factory=SafetyVerdict)


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions body, with huayu's extra fields (``extra_body`` in the SDK)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    style: str | None = None
    language: Literal["zh", "en"] | None = None
    artwork: ArtworkMetadata | None = None
    cache: bool = True
    priority: int = Field(0, ge=-100, le=100)
