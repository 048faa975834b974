"""The outputs for content systems, rebuilt from the journal at the end of every run:
``results.csv`` (UTF-8 with BOM, so spreadsheet programs read Chinese correctly) and
``annotations.json`` (a IIIF AnnotationPage of W3C Web Annotations); and ``failures.jsonl``,
this run's failures with their reasons, written as they happen.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from gateway.batch.journal import RESULTS, read_records
from gateway.batch.model import METADATA_FIELDS, Failure

CSV_NAME = "results.csv"
ANNOTATIONS_NAME = "annotations.json"
FAILURES_NAME = "failures.jsonl"
CSV_COLUMNS = (
    "artwork_id",
    "source",
    "style",
    "language",
    "status",
    *METADATA_FIELDS,
    "description",
    "model",
    "style_version",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "description_id",
    "finished_at",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def latest_records(out_dir: Path) -> list[dict[str, Any]]:
    """One record per item (the last one written, should a journal ever hold two), in a stable order."""
    by_key = {r["key"]: r for r in read_records(out_dir / RESULTS)}
    return sorted(by_key.values(), key=lambda r: (str(r.get("source")), str(r.get("style")), str(r.get("language"))))


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # a cell a spreadsheet would run as a formula is quoted with a leading apostrophe
    return "'" + text if text.startswith(_FORMULA_START) else text


def render_csv(records: list[dict[str, Any]]) -> bytes:
    extra_names: list[str] = []
    for r in records:
        for name in r.get("extra") or {}:
            if name not in extra_names:
                extra_names.append(name)
    extra_columns = [name if name not in CSV_COLUMNS else f"extra.{name}" for name in extra_names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([*CSV_COLUMNS, *extra_columns])
    for r in records:
        usage = r.get("usage") or {}
        metadata = r.get("metadata") or {}
        extra = r.get("extra") or {}
        row: dict[str, Any] = {k: r.get(k) for k in CSV_COLUMNS}
        row.update({k: metadata.get(k) for k in METADATA_FIELDS})
        row["prompt_tokens"] = usage.get("prompt_tokens")
        row["completion_tokens"] = usage.get("completion_tokens")
        writer.writerow([_cell(row[k]) for k in CSV_COLUMNS] + [_cell(extra.get(n)) for n in extra_names])
    return "\ufeff".encode() + buf.getvalue().encode("utf-8")


def annotation(r: dict[str, Any]) -> dict[str, Any]:
    # the id is the item's key (artwork, style, language): unique in the page and the same in every
    # run; the description's id is not (two identical images share one cached description), so it
    # names the body, which the two annotations then share
    model = str(r.get("model") or "unknown")
    generator = model + (f"+{r['adapter']}" if r.get("adapter") else "")
    body: dict[str, Any] = {
        "type": "TextualBody",
        "value": r.get("description", ""),
        "language": r.get("language"),
        "format": "text/plain",
        "purpose": "describing",
    }
    if r.get("description_id"):
        body = {"id": f"urn:huayu:description:{r['description_id']}", **body}
    return {
        "id": f"urn:huayu:batch:{r['key']}",
        "type": "Annotation",
        "motivation": "describing",
        "created": r.get("finished_at"),
        "generator": {"id": f"urn:huayu:model:{generator}", "type": "Software", "name": generator},
        "body": body,
        "target": r.get("target"),
    }


def render_annotations(records: Iterable[dict[str, Any]]) -> bytes:
    # text the safety filter withheld is no description to publish
    items = [annotation(r) for r in records if r.get("status") != "filtered"]
    page = {
        "@context": ["http://www.w3.org/ns/anno.jsonld", "http://iiif.io/api/presentation/3/context.json"],
        "id": "urn:huayu:batch:annotations",
        "type": "AnnotationPage",
        "items": items,
    }
    return orjson.dumps(page, option=orjson.OPT_INDENT_2)


def _replace(path: Path, data: bytes) -> None:
    # readers never see half a file: write beside it, then rename over it
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_outputs(out_dir: Path) -> int:
    """Rebuilds results.csv and annotations.json from the journal; returns the records written."""
    records = latest_records(out_dir)
    _replace(out_dir / CSV_NAME, render_csv(records))
    _replace(out_dir / ANNOTATIONS_NAME, render_annotations(records))
    return len(records)


class FailureLog:
    """``failures.jsonl``: emptied when a run starts, one line per failure as it happens."""

    def __init__(self, out_dir: Path) -> None:
        self._f = (out_dir / FAILURES_NAME).open("wb")

    def add(self, failure: Failure) -> None:
        self._f.write(orjson.dumps(failure.record()) + b"\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
