"""What the pipeline hands the store for each generated description, and the ids it uses."""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

_HEX = re.compile(r"^[0-9a-f]{16,128}$")

STATUSES = ("draft", "approved", "rejected")


# The ids' random bits need to be unique, not secret: a generator of their own, seeded from the OS (and
# again in a forked child), instead of a getrandom() system call per description; not the random
# module's shared one, which anything in the process may seed with a fixed value
_bits = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_bits.seed)


def _time_ordered_hex() -> str:
    # 48 bits of milliseconds then 80 random bits (the UUIDv7 layout, without the version
    # nibbles): ids sort by creation time, which keeps keyset paging and B-tree inserts cheap
    return f"{int(time.time() * 1000):012x}{_bits.getrandbits(80):020x}"


def new_description_id() -> str:
    return "desc_" + _time_ordered_hex()


def new_feedback_id() -> str:
    return "fb_" + _time_ordered_hex()


def artwork_id(digest: str) -> str:
    return "art_" + digest[:16]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class DescriptionRecord:
    """One generated description and the artwork it describes.

    ``artwork_digest`` is the hex digest of the model-ready image (the artwork's identity);
    ``thumbnail`` is a small JPEG for the review page; ``image_jpeg`` the model-ready JPEG,
    kept for fine-tuning exports. ``messages`` are the rendered prompt messages without the
    image: ``[{"role": "system", "content": str}, {"role": "user", "content": str}]``.
    """

    id: str
    artwork_digest: str
    phash: int
    thumbnail: bytes
    style: str
    style_version: str
    language: str
    model: str
    text: str
    image_jpeg: bytes | None = None
    source: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    adapter: str | None = None
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0
    safety: dict[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    cached: bool = False


def without_nul(rec: DescriptionRecord) -> DescriptionRecord:
    """``rec`` with every U+0000 taken out of its texts, or ``rec`` itself when it has none. PostgreSQL's
    text and JSON types cannot hold one, and a model's answer may carry one (the request's own texts
    are refused before a description is made: ``gateway/api/jobs.py``)."""
    fields = ("text", "prompt", "metadata", "messages", "safety")
    if not any(_has_nul(getattr(rec, name)) for name in fields):
        return rec
    return replace(rec, **{name: _no_nul(getattr(rec, name)) for name in fields})


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def first_of_each_artwork(recs: list[DescriptionRecord]) -> dict[str, DescriptionRecord]:
    """The first record of each artwork in ``recs``, by digest: the one whose artwork row a batch writes."""
    arts: dict[str, DescriptionRecord] = {}
    for r in recs:
        arts.setdefault(r.artwork_digest, r)
    return arts


def record_problem(rec: DescriptionRecord) -> str | None:
    """Why ``rec`` can never be written (a bug upstream of the store), or None if it can."""
    if not rec.id or len(rec.id) > 64:
        return "id must be 1 to 64 characters"
    if not _HEX.match(rec.artwork_digest):
        return "artwork_digest must be 16 to 128 lowercase hex characters"
    if not 0 <= rec.phash < 2**64:
        return "phash must be an unsigned 64-bit integer"
    for name, value, limit in (
        ("style", rec.style, 64),
        ("style_version", rec.style_version, 32),
        ("language", rec.language, 16),
        ("model", rec.model, 128),
        ("adapter", rec.adapter or "", 128),
        ("tenant", rec.tenant or "", 128),
    ):
        if len(value) > limit:
            return f"{name} is longer than {limit} characters"
    if not rec.style or not rec.language or not rec.model:
        return "style, language and model must not be empty"
    return None
