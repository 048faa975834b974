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
        False, description="Forward the request priority (needs vLLM --scheduling-policy priority)."
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
    cache_ttl_s: int = Field(7 * 24 * 3600, description="Seconds a cached description lives.")
    cache_max_entries: int = Field(100_000, description="Entries kept by the in-process cache (LRU).")
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
