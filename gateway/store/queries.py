"""The queries behind the review API: each takes an open connection and returns JSON-ready dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from gateway.errors import NotFound, Unprocessable

from .record import STATUSES, new_feedback_id, utcnow
from .tables import artworks, descriptions, feedback

MAX_PAGE = 500
MAX_TEXT = 50_000
MAX_COMMENT = 10_000

d, a, f = descriptions.c, artworks.c, feedback.c
_DESC_COLS = [c for c in descriptions.c if c.name != "messages"] + [a.digest, a.source, a.meta]


# every database's signed 64-bit integer takes this; a larger offset would overflow the driver
MAX_OFFSET = 2**62


def check_paging(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise Unprocessable(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}.", param="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise Unprocessable(f"offset must be an integer from 0 to {MAX_OFFSET}, got {offset!r}.", param="offset")


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise Unprocessable(f"status must be one of {', '.join(STATUSES)}; got {status!r}.", param="status")
    return status


def check_rating(rating: object, *, param: str = "rating") -> float:
    if isinstance(rating, bool) or not isinstance(rating, int | float) or not 1 <= rating <= 5:
        raise Unprocessable(f"{param} must be a number from 1 to 5, got {rating!r}.", param=param)
    return float(rating)


def _check_text(value: object, param: str, limit: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value.strip()) or len(value) > limit:
        raise Unprocessable(f"{param} must be a non-empty text of at most {limit} characters.", param=param)
    if "\x00" in value:
        raise Unprocessable(f"{param} contains a NUL character (U+0000), which no database text holds.", param=param)
    try:
        value.encode()
    except UnicodeEncodeError:  # a JSON escape such as \ud800 with no partner: not a character at all
        raise Unprocessable(
            f"{param} contains an unpaired UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair).",
            param=param,
        ) from None
    return value


@dataclass(frozen=True)
class DescriptionFilter:
    """Which descriptions a listing or an export covers; a field left None does not filter.

    ``tenant`` confines everything to one tenant's descriptions (None: all, for operators)."""

    artwork_id: str | None = None
    style: str | None = None
    status: str | None = None
    min_rating: float | None = None
    adapter: str | None = None
    language: str | None = None
    tenant: str | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses; bad values raise Unprocessable."""
        where: list[ColumnElement[bool]] = []
        if self.tenant is not None:
            where.append(d.tenant == self.tenant)
        for name, value, col in (
            ("artwork_id", self.artwork_id, d.artwork_id),
            ("style", self.style, d.style),
            ("adapter", self.adapter, d.adapter),
            ("language", self.language, d.language),
        ):
            if value is not None:
                where.append(col == _check_text(value, name, 128))
        if self.status is not None:
            where.append(d.status == check_status(self.status))
        if self.min_rating is not None:
            # the average of the ratings, without a division that SQL engines round differently
            where.append(d.rating_count > 0)
            where.append(d.rating_sum >= check_rating(self.min_rating, param="min_rating") * d.rating_count)
        return where


def own_source(row: RowMapping | Mapping[str, Any]) -> str | None:
    """The source this description's request gave (the shared artwork's for rows older than that)."""
    source: str | None = row["artwork_source"] if row["artwork_meta"] is not None else row["source"]
    return source


def own_metadata(row: RowMapping | Mapping[str, Any]) -> dict[str, str]:
    """The catalogue fields this description's request gave (the shared artwork's for older rows)."""
    meta: dict[str, str] = row["artwork_meta"] if row["artwork_meta"] is not None else row["meta"]
    return meta


def description_dict(row: RowMapping | Mapping[str, Any]) -> dict[str, Any]:
    count = int(row["rating_count"])
    out = {
        "id": row["id"],
        "artwork_id": row["artwork_id"],
        "artwork_digest": row["digest"],
        "source": own_source(row),
        "style": row["style"],
        "style_version": row["style_version"],
        "language": row["language"],
        "model": row["model"],
        "adapter": row["adapter"],
        "prompt": row["prompt"],
        "text": row["text"],
        "edited_text": row["edited_text"],
        "final_text": row["edited_text"] if row["edited_text"] is not None else row["text"],
        "status": row["status"],
        "reviewer": row["reviewer"],
        "rating_avg": round(int(row["rating_sum"]) / count, 3) if count else None,
        "rating_count": count,
        "usage": row["usage"],
        "latency_ms": row["latency_ms"],
        "safety": row["safety"],
        "tenant": row["tenant"],
        "cached": bool(row["cached"]),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
    if "messages" in row:
        out["messages"] = row["messages"]
    return out


def _feedback_dict(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "description_id": row["description_id"],
        "rating": int(row["rating"]),
        "comment": row["comment"],
        "edited_text": row["edited_text"],
        "reviewer": row["reviewer"],
        "created_at": row["created_at"].isoformat(),
    }


def _joined(*cols: Any) -> Select[Any]:
    return select(*cols).select_from(descriptions.join(artworks, d.artwork_id == a.id))


async def list_descriptions(
    conn: AsyncConnection, where: list[ColumnElement[bool]], limit: int, offset: int
) -> dict[str, Any]:
    check_paging(limit, offset)
    total = (await conn.execute(select(func.count()).select_from(descriptions).where(*where))).scalar_one()
    q = _joined(*_DESC_COLS).where(*where).order_by(d.created_at.desc(), d.id.desc()).limit(limit).offset(offset)
    rows = (await conn.execute(q)).mappings().all()
    return {"data": [description_dict(r) for r in rows], "total": int(total), "limit": limit, "offset": offset}


async def get_description(conn: AsyncConnection, id: str) -> dict[str, Any]:
    row = (await conn.execute(_joined(*_DESC_COLS, d.messages).where(d.id == id))).mappings().first()
    if row is None:
        raise NotFound(f"No description with id {id!r}.", param="id")
    out = description_dict(row)
    fb = await conn.execute(select(feedback).where(f.description_id == id).order_by(f.created_at, f.id))
    out["feedback"] = [_feedback_dict(r) for r in fb.mappings()]
    return out


async def add_feedback(
    conn: AsyncConnection,
    id: str,
    rating: int,
    comment: str | None,
    edited_text: str | None,
    reviewer: str | None,
) -> dict[str, Any]:
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise Unprocessable(f"rating must be a whole number from 1 to 5, got {rating!r}.", param="rating")
    if comment is not None:
        _check_text(comment, "comment", MAX_COMMENT, empty_ok=True)
    if edited_text is not None:
        _check_text(edited_text, "edited_text", MAX_TEXT)
    if reviewer is not None:
        _check_text(reviewer, "reviewer", 128)
    now = utcnow()
    # one statement adds to the sums, so concurrent ratings of one description all count
    values: dict[str, Any] = {
        "rating_count": d.rating_count + 1,
        "rating_sum": d.rating_sum + rating,
        "updated_at": now,
    }
    if edited_text is not None:
        values["edited_text"] = edited_text
    if (await conn.execute(update(descriptions).where(d.id == id).values(**values))).rowcount == 0:
        raise NotFound(f"No description with id {id!r}.", param="id")
    row = {
        "id": new_feedback_id(),
        "description_id": id,
        "rating": rating,
        "comment": comment,
        "edited_text": edited_text,
        "reviewer": reviewer,
        "created_at": now,
    }
    await conn.execute(insert(feedback).values(**row))
    return {**row, "created_at": now.isoformat()}


async def update_description(
    conn: AsyncConnection, id: str, status: str | None, text: str | None, reviewer: str | None
) -> None:
    if status is None and text is None:
        raise Unprocessable("Nothing to change: give a status, a text, or both.", param="status")
    values: dict[str, Any] = {"updated_at": utcnow()}
    if status is not None:
        values["status"] = check_status(status)
    if text is not None:
        # the model's own text stays; the curator's version is the one exported
        values["edited_text"] = _check_text(text, "text", MAX_TEXT)
    if reviewer is not None:
        values["reviewer"] = _check_text(reviewer, "reviewer", 128)
    if (await conn.execute(update(descriptions).where(d.id == id).values(**values))).rowcount == 0:
        raise NotFound(f"No description with id {id!r}.", param="id")


async def list_artworks(
    conn: AsyncConnection, where: list[ColumnElement[bool]], limit: int, offset: int, per_style: int
) -> dict[str, Any]:
    check_paging(limit, offset)
    if isinstance(per_style, bool) or not isinstance(per_style, int) or not 1 <= per_style <= 100:
        raise Unprocessable(f"per_style must be an integer from 1 to 100, got {per_style!r}.", param="per_style")
    matching = a.id.in_(select(d.artwork_id).where(*where)) if where else a.id.is_not(None)
    total = (await conn.execute(select(func.count()).select_from(artworks).where(matching))).scalar_one()
    cols = [a.id, a.digest, a.phash, a.created_at, a.updated_at, a.image_jpeg.is_not(None)]
    q = select(*cols).where(matching).order_by(a.updated_at.desc(), a.id.desc()).limit(limit).offset(offset)
    arts = (await conn.execute(q)).all()
    by_id: dict[str, dict[str, Any]] = {}
    for r in arts:
        by_id[r[0]] = {
            "id": r[0],
            "digest": r[1],
            "phash": r[2],
            # what the newest of its listed descriptions were told, filled in below: not the shared
            # row, which with API keys on holds what any tenant sending the same image said
            "source": None,
            "metadata": {},
            "created_at": r[3].isoformat(),
            "updated_at": r[4].isoformat(),
            "has_image": bool(r[5]),
            "descriptions": [],
        }
    if by_id:
        # the newest few per artwork and style: an artwork described a hundred times stays one card
        rank = (
            func.row_number()
            .over(partition_by=(d.artwork_id, d.style), order_by=(d.created_at.desc(), d.id.desc()))
            .label("rank")
        )
        inner = _joined(*_DESC_COLS, rank).where(d.artwork_id.in_(list(by_id)), *where).subquery()
        q2 = select(inner).where(inner.c.rank <= per_style).order_by(inner.c.style, inner.c.rank)
        told: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        for row in (await conn.execute(q2)).mappings():
            by_id[row["artwork_id"]]["descriptions"].append(description_dict(row))
            when = (row["created_at"], row["id"])
            for field, value in (("metadata", own_metadata(row)), ("source", own_source(row))):
                key = (row["artwork_id"], field)
                if value and (key not in told or when > told[key][:2]):
                    told[key] = (*when, value)
        for (art_id, field), (_, _, value) in told.items():
            by_id[art_id][field] = value
    return {"data": list(by_id.values()), "total": int(total), "limit": limit, "offset": offset}


async def check_owner(conn: AsyncConnection, id: str, tenant: str | None) -> None:
    """NotFound unless description ``id`` exists and belongs to ``tenant`` (None: any tenant).

    Another tenant's description answers exactly like a missing one, so ids reveal nothing."""
    row = (await conn.execute(select(d.tenant).where(d.id == id))).first()
    if row is None or (tenant is not None and row[0] != tenant):
        raise NotFound(f"No description with id {id!r}.", param="id")


async def check_artwork_owner(conn: AsyncConnection, artwork_id: str, tenant: str | None) -> None:
    if tenant is None:
        return
    found = (await conn.execute(select(d.id).where(d.artwork_id == artwork_id, d.tenant == tenant).limit(1))).first()
    if found is None:
        raise NotFound(f"No artwork with id {artwork_id!r}.", param="artwork_id")


async def artwork_blob(conn: AsyncConnection, artwork_id: str, column: str) -> bytes:
    row = (await conn.execute(select(artworks.c[column]).where(a.id == artwork_id))).first()
    if row is None:
        raise NotFound(f"No artwork with id {artwork_id!r}.", param="artwork_id")
    if row[0] is None:
        raise NotFound(f"Artwork {artwork_id!r} has no stored image.", param="artwork_id")
    return bytes(row[0])


async def adapter_report(conn: AsyncConnection, tenant: str | None = None) -> list[dict[str, Any]]:
    approved = func.sum(case((d.status == "approved", 1), else_=0))
    rejected = func.sum(case((d.status == "rejected", 1), else_=0))
    rated = func.sum(case((d.rating_count > 0, 1), else_=0))
    q = select(
        d.adapter, d.style, func.count(), rated, func.sum(d.rating_sum), func.sum(d.rating_count), approved, rejected
    ).group_by(d.adapter, d.style)
    if tenant is not None:
        q = q.where(d.tenant == tenant)
    out = []
    for adapter, style, n, n_rated, r_sum, r_count, n_ok, n_no in (await conn.execute(q)).all():
        r_count, n_ok, n_no = int(r_count or 0), int(n_ok or 0), int(n_no or 0)
        out.append(
            {
                "adapter": adapter,
                "style": style,
                "n": int(n),
                "rated": int(n_rated or 0),
                "ratings": r_count,
                "avg_rating": round(int(r_sum or 0) / r_count, 3) if r_count else None,
                "approved": n_ok,
                "rejected": n_no,
                "approval_rate": round(n_ok / (n_ok + n_no), 3) if n_ok + n_no else None,
            }
        )
    # sorted here: the engines disagree on where NULL (the base model) sorts
    return sorted(out, key=lambda r: (r["adapter"] is not None, r["adapter"] or "", r["style"]))
