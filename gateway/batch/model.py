"""The nouns of a batch run: artworks read from the input, the job items made of them, the run's
configuration and its summary.

An artwork's id is a hash of its source (a path relative to the folder or manifest, a URL, or a
IIIF canvas id), so it is the same in every run over the same input; a job item is an artwork in
one style and one language, and its key is the resume key of the journal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

METADATA_FIELDS = ("title", "artist", "year", "medium", "dimensions", "collection")
LANGUAGES = ("zh", "en")

Status = Literal["done", "cached", "filtered"]


def artwork_id(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Artwork:
    source: str  # what the id hashes: relative path, URL or canvas id
    location: str  # where the bytes are: an absolute path or an http(s) URL
    target: str  # what an annotation points at: canvas id, image URL or urn:huayu:artwork:<id>
    origin: str  # where in the input it came from, for messages ("row 7", "canvas 3", a file name)
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return artwork_id(self.source)

    @property
    def remote(self) -> bool:
        return self.location.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Item:
    artwork: Artwork
    style: str
    language: str

    @property
    def key(self) -> str:
        return item_key(self.artwork.id, self.style, self.language)


def item_key(art_id: str, style: str, language: str) -> str:
    return f"{art_id}:{style}:{language}"


@dataclass(frozen=True)
class Failure:
    source: str
    reason: str
    code: str  # an HTTP status, or the HuayuError code of an input problem
    key: str | None = None
    style: str | None = None
    language: str | None = None
    attempts: int = 0

    def record(self) -> dict[str, object]:
        return {
            "key": self.key,
            "source": self.source,
            "style": self.style,
            "language": self.language,
            "code": self.code,
            "reason": self.reason,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Inputs:
    """What an input held: the artworks, and the entries that could not become one."""

    artworks: list[Artwork]
    problems: list[Failure]
    duplicates: int = 0


@dataclass
class BatchConfig:
    input: str  # a folder, a CSV file, a IIIF manifest file, or a manifest's http(s) URL
    out_dir: Path
    styles: tuple[str, ...] = ("curator",)
    languages: tuple[str, ...] = ("zh",)
    gateway: str = "http://127.0.0.1:8080"
    direct: str | None = None  # an OpenAI-compatible server: send there instead of the gateway
    model: str = "qwen-vl"
    styles_dir: Path | None = None  # extra style files, for --direct (the gateway has its own)
    api_key: str = ""
    concurrency: int = 32
    priority: int | None = None  # None: 10 through the gateway, not sent in direct mode
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    cache: bool = True
    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    request_timeout_s: float = 600.0
    fetch_timeout_s: float = 30.0
    max_image_bytes: int = 30 * 1024 * 1024
    iiif_size: str = "!1024,1024"
    limit: int | None = None
    dry_run: bool = False
    progress: bool = True
    fsync_interval_s: float = 1.0


@dataclass
class BatchSummary:
    planned: int = 0  # job items in the input
    skipped: int = 0  # finished in an earlier run
    done: int = 0  # described this run by the model
    cached: int = 0  # answered from the gateway's cache
    filtered: int = 0  # withheld by the safety filter (action "block")
    failed: int = 0  # items that failed after retries, plus inputs that could not be read
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    duplicates: int = 0
    dry_run: bool = False
    plan: dict[str, dict[str, int]] = field(default_factory=dict)  # "style/language" -> {"total","done","todo"}
    failures: list[Failure] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.done + self.cached + self.filtered

    @property
    def items_per_s(self) -> float:
        return self.finished / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0
