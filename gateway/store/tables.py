"""The store's tables (SQLAlchemy Core); the migrations in ``migrations/versions`` create them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

from .types import Blob, Json, LongText, UTCDateTime

metadata = MetaData()

# InnoDB and utf8mb4 so Chinese text (and emoji in comments) round-trips on MySQL/MariaDB
MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

artworks = Table(
    "artworks",
    metadata,
    Column("id", String(32), primary_key=True),  # art_<digest[:16]>
    Column("digest", String(128), nullable=False),
    Column("phash", String(16), nullable=False),  # hex: an unsigned 64-bit value overflows BIGINT
    Column("source", LongText, nullable=True),
    Column("meta", Json, nullable=False),
    Column("thumbnail", Blob, nullable=False),
    Column("image_jpeg", Blob, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),  # last description written: gallery order
    UniqueConstraint("digest", name="uq_artworks_digest"),
    Index("ix_artworks_updated_at", "updated_at"),
    **MYSQL,
)

descriptions = Table(
    "descriptions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("artwork_id", String(32), ForeignKey("artworks.id", name="fk_descriptions_artwork"), nullable=False),
    Column("style", String(64), nullable=False),
    Column("style_version", String(32), nullable=False),
    Column("language", String(16), nullable=False),
    Column("model", String(128), nullable=False),
    Column("adapter", String(128), nullable=True),
    Column("prompt", LongText, nullable=True),
    Column("messages", Json, nullable=True),
    Column("text", LongText, nullable=False),
    Column("edited_text", LongText, nullable=True),
    Column("usage", Json, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("safety", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reviewer", String(128), nullable=True),
    Column("tenant", String(128), nullable=True),
    Column("cached", Boolean, nullable=False),
    # kept in step with the feedback rows in the same transaction, so rating filters need no join
    Column("rating_count", Integer, nullable=False),
    Column("rating_sum", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # the catalogue fields and source as this description's request gave them: the artwork row is
    # shared by every tenant sending the same image, so what each said is read from its own rows
    # (NULL in rows written before migration 0002: read from the artwork)
    Column("artwork_meta", Json, nullable=True),
    Column("artwork_source", LongText, nullable=True),
    Index("ix_descriptions_artwork_id", "artwork_id"),
    Index("ix_descriptions_style", "style"),
    Index("ix_descriptions_status", "status"),
    Index("ix_descriptions_adapter_style", "adapter", "style"),
    Index("ix_descriptions_created_at", "created_at"),
    **MYSQL,
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("description_id", String(64), ForeignKey("descriptions.id", name="fk_feedback_description"), nullable=False),
    Column("rating", SmallInteger, nullable=False),
    Column("comment", LongText, nullable=True),
    Column("edited_text", LongText, nullable=True),
    Column("reviewer", String(128), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_feedback_description_id", "description_id"),
    **MYSQL,
)
