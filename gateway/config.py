"""Every limit, timeout and URL of the gateway, in one place.

Each field has a safe default and a one-line description; the README's configuration
table is generated from this class (``huayu config-table``) and a test keeps it in sync.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path(".data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUAYU_", env_file=None, extra="ignore")

    # --- listening ---
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, description="Port the gateway listens on.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    otel_enabled: bool = Field(
        False,
        description="FastAPI's OpenTelemetry spans and metrics per request, for a process that configures an "
        "OpenTelemetry SDK. Off, FastAPI does not look for one on every request; /metrics is always on.",
    )

    # --- upstream model server (vLLM's OpenAI-compatible API) ---
    upstream_url: str = Field("http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible model server.")
    upstream_model: str = Field("qwen-vl", description="Model name the model server serves (its --served-model-name).")
    upstream_api_key: str = Field("", description="Bearer key for the model server, if it wants one.")
    connect_timeout_s: float = Field(5.0, description="Seconds to open a connection to the model server.")
    first_byte_timeout_s: float = Field(120.0, description="Seconds to wait for the model server's response headers.")
    read_timeout_s: float = Field(
        60.0, description="Seconds allowed between two chunks of the model server's response."
    )
    upstream_max_connections: int = Field(
        256, description="Pooled connections to the model server (bounds concurrent generations)."
    )
    upstream_priority: bool = Field(
        True,
        description="Forward request priorities, so bulk work yields to visitors (needs vLLM's "
        "--scheduling-policy priority, which every huayu preset sets).",
    )

    # --- request limits ---
    max_body_bytes: int = Field(
        42 * 1024 * 1024, description="Largest request body accepted (base64 adds a third to an image)."
    )
    max_image_bytes: int = Field(30 * 1024 * 1024, description="Largest encoded image accepted.")
    max_image_pixels: int = Field(
        120_000_000, description="Largest image accepted, in pixels, read from the header before decoding."
    )
    image_max_edge: int = Field(
        1024, description="Long edge of the image the model receives (keep equal to the server's cap)."
    )
    jpeg_quality: int = Field(90, description="JPEG quality of the image sent to the model.")
    image_workers: int = Field(0, description="Processes that decode and resize images (0: one per core).")
    image_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest one image may take in a worker; past it the worker is stopped (a decoder "
        "stuck on a hostile file) and the request answered 422.",
    )
    image_memo_entries: int = Field(
        256, description="Recent uploads kept model-ready in memory, so a repeat skips decoding (0: off)."
    )
    crop_borders: bool = Field(False, description="Crop uniform scan borders by default.")
    correct_glare: bool = Field(False, description="Correct glare and shadow by default (changes colours).")
    max_tokens_limit: int = Field(2048, description="Largest max_tokens a caller may ask for.")

    # --- styles and languages ---
    styles_dir: Path | None = Field(None, description="Folder of extra style files (TOML) to load.")
    default_style: str = Field("curator", description="Style used when the request names none.")
    default_language: Literal["zh", "en"] = Field("zh", description="Language used when the request names none.")

    # --- cache ---
    cache_backend: Literal["memory", "redis", "off"] = Field(
        "memory", description="Description cache: in-process, Redis, or off."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for the cache and rate limits.")
    redis_timeout_s: float = Field(0.05, description="Seconds a Redis call may take before it is skipped.")
    redis_cache_prefix: str = Field(
        "huayu:cache:",
        min_length=1,
        description="Prefix of the Redis cache's keys: deployments sharing one Redis keep apart with their own.",
    )
    cache_ttl_s: int = Field(7 * 24 * 3600, description="Seconds a cached description lives.")
    cache_max_entries: int = Field(
        100_000,
        description="Entries kept by the in-process cache (LRU); with Redis, the records of its "
        "near-duplicate index (its stream and each process's copy; exact hits are not bounded by it).",
    )
    cache_near_distance: int = Field(
        10, description="Largest pHash Hamming distance considered a near-duplicate candidate."
    )

    # --- store ---
    database_url: str = Field(
        "sqlite+aiosqlite:///.data/huayu.db",
        description="SQLAlchemy URL of the results store (SQLite, PostgreSQL or MySQL/MariaDB).",
    )
    store_enabled: bool = Field(True, description="Keep every generated description in the database.")

    # --- safety ---
    safety_enabled: bool = Field(True, description="Filter generated text with the word lists.")
    wordlists_dir: Path | None = Field(None, description="Folder of extra word lists to load.")
    guard_url: str = Field("", description="OpenAI-compatible URL of a guard model (empty: no guard).")
    guard_model: str = Field("qwen3-guard", description="Model name of the guard model.")
    guard_timeout_s: float = Field(2.0, description="Seconds to wait for the guard model.")
    guard_fail_open: bool = Field(
        False, description="Publish text when the guard fails or cannot be parsed (else withhold it)."
    )

    # --- admission ---
    max_in_flight: int = Field(512, description="Requests in flight per process before 429.")
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM or Ctrl-C: seconds the requests in flight get to finish before they are cut.",
    )
    client_read_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take to send a request's head, or between two pieces of its "
        "body, before the gateway answers 408 and closes the connection.",
    )

    # --- keys and limits (see the README's Security section) ---
    api_keys: str = Field(
        "", description="API keys as comma-separated tenant:sha256hex entries (empty with no file: keys off)."
    )
    api_keys_file: Path | None = Field(None, description="File of tenant:sha256hex lines, added to HUAYU_API_KEYS.")
    metrics_key_required: bool = Field(False, description="Ask a key for /metrics too when keys are on.")
    rate_limit_requests_per_minute: int = Field(
        0, ge=0, description="Generation requests a key may make per minute (0: no limit)."
    )
    rate_limit_tokens_per_minute: int = Field(
        0, ge=0, description="Tokens (usage.total_tokens) a key may spend per minute (0: no limit)."
    )
    rate_limit_backend: Literal["redis", "memory"] = Field(
        "redis", description="Where the limits count: Redis (shared, in-process fallback) or in-process only."
    )

    # --- image URLs in chat requests ---
    image_urls_enabled: bool = Field(False, description="Fetch http(s) image URLs named in chat requests.")
    image_url_allowed_domains: str = Field(
        "", description="Comma-separated hosts images may be fetched from (.example.org: its subdomains too)."
    )
    image_url_allow_http: bool = Field(False, description="Allow plain http image URLs (else https only).")
    image_url_allow_private: bool = Field(
        False, description="Allow private and loopback addresses for image URLs (tests only; never in production)."
    )
    image_url_max_redirects: int = Field(
        3, ge=0, le=10, description="Redirects followed, each re-checked (0: a redirect is refused)."
    )
    image_url_timeout_s: float = Field(10.0, gt=0, description="Seconds allowed to fetch an image URL, in all.")

    # --- upstream faults ---
    upstream_retries: int = Field(
        2, ge=0, le=10, description="Retries of a model-server call that failed before its first byte."
    )
    upstream_retry_backoff_s: float = Field(
        0.1, ge=0, description="Base delay of those retries (doubled each time, with jitter)."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive model-server failures that open the circuit breaker."
    )
    breaker_reset_s: float = Field(
        10.0, gt=0, description="Seconds the breaker stays open before one probe request is let through."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
