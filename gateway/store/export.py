"""Export formats: JSONL and CSV for content systems, chat records for fine-tuning, IIIF annotations.

Every format streams: rows are read a page at a time (keyset on the id) and rendered as they come.

- ``jsonl``: one description per line, the fields of ``GET /v1/descriptions/{id}`` plus the
  artwork's metadata and the prompt messages.
- ``csv``: UTF-8 with a byte-order mark (Excel then reads Chinese correctly), CRLF line ends;
  text cells that start with ``= + - @`` get a leading ``'`` so a spreadsheet never runs them.
  ``safety_action`` says what the filter did (``allow``, ``mask``, ``block``...): a blocked
  description's text is the neutral fallback, not a description.
- ``finetune``: approved, well-rated (average >= 4) or edited descriptions, never rejected
  ones, as OpenAI chat records ``{"messages": [system, user(image + text), assistant]}``; the
  image is the model-ready JPEG as a ``data:image/jpeg;base64,`` URL (self-contained lines; no
  files to ship alongside), the assistant turn the edited text if any, else the text. Records
  whose artwork has no stored image or whose prompt messages were not stored are skipped (logged).
- ``iiif``: one W3C Web Annotation ``AnnotationPage``; each description is an ``Annotation``
  with motivation ``describing``, a ``TextualBody`` in its language, targeting the artwork's
  source URI (http/https) or ``urn:huayu:artwork:<digest>``. Rejected descriptions are left
  out unless a status filter asks for them; so are those the safety filter blocked (their text is
  the neutral fallback) unless a curator has written their text.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from .queries import description_dict, own_metadata
from .tables import artworks, descriptions

log = logging.getLogger("huayu.store")

Format = Literal["jsonl", "csv", "finetune", "iiif"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "finetune", "iiif")
MEDIA_TYPES: dict[str, str] = {
    "jsonl": "application/jsonl; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "finetune": "application/jsonl; charset=utf-8",
    "iiif": 'application/ld+json; profile="http://www.w3.org/ns/anno.jsonld"',
}
FILENAMES: dict[str, str] = {
    "jsonl": "descriptions.jsonl",
    "csv": "descriptions.csv",
    "finetune": "finetune.jsonl",
    "iiif": "annotations.json",
}
CSV_COLUMNS = (
    "id",
    "artwork_id",
    "artwork_digest",
    "source",
    "metadata",
    "style",
    "style_version",
    "language",
    "model",
    "adapter",
    "status",
    "reviewer",
    "rating_avg",
    "rating_count",
    "text",
    "edited_text",
    "final_text",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "cached",
    "created_at",
    "updated_at",
    "safety_action",
)
ANNO_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
PAGE = 200
IMAGE_PAGE = 25  # finetune pages carry images: keep the memory of one page small

d, a = descriptions.c, artworks.c


def selection(fmt: Format, where: list[ColumnElement[bool]], status_given: bool) -> list[ColumnElement[bool]]:
    if fmt == "finetune":
        good = or_(
            d.status == "approved",
            and_(d.rating_count > 0, d.rating_sum >= 4 * d.rating_count),
            d.edited_text.is_not(None),
        )
        return [*where, d.status != "rejected", good]
    if fmt == "iiif" and not status_given:
        return [*where, d.status != "rejected"]
    return where


def _page_query(where: list[ColumnElement[bool]], after: str | None, limit: int) -> Select[Any]:
    cols = [*descriptions.c, a.digest, a.source, a.meta]
    q = select(*cols).select_from(descriptions.join(artworks, d.artwork_id == a.id)).where(*where)
    if after is not None:
        q = q.where(d.id > after)
    return q.order_by(d.id).limit(limit)


async def fetch_page(
    conn: AsyncConnection, fmt: Format, where: list[ColumnElement[bool]], after: str | None
) -> list[dict[str, Any]]:
    """One page of export rows (description dicts, with ``metadata`` and, for finetune, ``image``)."""
    rows = (await conn.execute(_page_query(where, after, IMAGE_PAGE if fmt == "finetune" else PAGE))).mappings().all()
    out = []
    for r in rows:
        item = description_dict(r)
        item["metadata"] = own_metadata(r)
        out.append(item)
    if fmt == "finetune" and out:
        ids = sorted({o["artwork_id"] for o in out})
        images: dict[str, bytes | None] = dict(
            (await conn.execute(select(a.id, a.image_jpeg).where(a.id.in_(ids)))).all()
        )
        for o in out:
            o["image"] = images.get(o["artwork_id"])
    return out


def header(fmt: Format, export_id: str) -> bytes:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerow(CSV_COLUMNS)
        return b"\xef\xbb\xbf" + buf.getvalue().encode()
    if fmt == "iiif":
        head = orjson.dumps({"@context": ANNO_CONTEXT, "id": export_id, "type": "AnnotationPage"})
        return head[:-1] + b',"items":['
    return b""


def footer(fmt: Format) -> bytes:
    return b"]}\n" if fmt == "iiif" else b""


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return value


def render_csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    for r in rows:
        usage = r.get("usage") or {}
        safety = r.get("safety") or {}
        flat = {
            **r,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "safety_action": safety.get("action", "allow") if isinstance(safety, dict) else None,
        }
        w.writerow([_csv_cell(flat.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue().encode()


def render_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def finetune_record(r: Mapping[str, Any]) -> dict[str, Any] | None:
    """One chat-format training record, or None when the image or the prompt was not stored."""
    messages = r.get("messages") or []
    system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
    user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    image = r.get("image")
    if image is None or user is None:
        return None
    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    chat: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    chat.append(
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": user}],
        }
    )
    chat.append({"role": "assistant", "content": r["final_text"]})
    meta = {k: r[k] for k in ("id", "artwork_id", "style", "style_version", "language", "adapter", "status")}
    meta.update(rating_avg=r["rating_avg"], edited=r["edited_text"] is not None)
    return {"messages": chat, "huayu": meta}


def render_finetune(rows: list[dict[str, Any]]) -> tuple[bytes, int]:
    out, skipped = [], 0
    for r in rows:
        rec = finetune_record(r)
        if rec is None:
            skipped += 1
        else:
            out.append(orjson.dumps(rec) + b"\n")
    return b"".join(out), skipped


def annotation(r: Mapping[str, Any], base_url: str | None) -> dict[str, Any]:
    source = r.get("source") or ""
    target = source if source.startswith(("http://", "https://")) else f"urn:huayu:artwork:{r['artwork_digest']}"
    anno_id = f"{base_url.rstrip('/')}/v1/descriptions/{r['id']}" if base_url else f"urn:huayu:description:{r['id']}"
    generator = r["model"] + (f"+{r['adapter']}" if r.get("adapter") else "")
    return {
        "id": anno_id,
        "type": "Annotation",
        "motivation": "describing",
        "created": r["created_at"],
        "modified": r["updated_at"],
        "generator": {"id": f"urn:huayu:model:{generator}", "type": "Software", "name": generator},
        "body": {
            "type": "TextualBody",
            "value": r["final_text"],
            "language": r["language"],
            "format": "text/plain",
            "purpose": "describing",
        },
        "target": target,
    }


def blocked(r: Mapping[str, Any]) -> bool:
    """The safety filter withheld the model's text (the neutral fallback stands in), and no curator
    has written one since."""
    safety = r.get("safety")
    return isinstance(safety, dict) and safety.get("action") == "block" and r.get("edited_text") is None


def render_iiif(rows: list[dict[str, Any]], base_url: str | None, first: bool) -> bytes:
    parts = [orjson.dumps(annotation(r, base_url)) for r in rows if not blocked(r)]
    body = b",".join(parts)
    return body if first or not body else b"," + body


def render(fmt: Format, rows: list[dict[str, Any]], base_url: str | None, first: bool) -> tuple[bytes, int]:
    """The bytes of one page and how many rows were skipped."""
    if fmt == "csv":
        return render_csv(rows), 0
    if fmt == "finetune":
        return render_finetune(rows)
    if fmt == "iiif":
        return render_iiif(rows, base_url, first), 0
    # jsonl: the artwork's metadata and prompt messages travel with the description
    return render_jsonl(rows), 0
