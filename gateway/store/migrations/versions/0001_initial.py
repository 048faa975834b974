"""Artworks, descriptions and feedback.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from gateway.store.types import Blob, Json, LongText, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "artworks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("phash", sa.String(16), nullable=False),
        sa.Column("source", LongText, nullable=True),
        sa.Column("meta", Json, nullable=False),
        sa.Column("thumbnail", Blob, nullable=False),
        sa.Column("image_jpeg", Blob, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("digest", name="uq_artworks_digest"),
        **MYSQL,
    )
    op.create_index("ix_artworks_updated_at", "artworks", ["updated_at"])
    op.create_table(
        "descriptions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "artwork_id", sa.String(32), sa.ForeignKey("artworks.id", name="fk_descriptions_artwork"), nullable=False
        ),
        sa.Column("style", sa.String(64), nullable=False),
        sa.Column("style_version", sa.String(32), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("adapter", sa.String(128), nullable=True),
        sa.Column("prompt", LongText, nullable=True),
        sa.Column("messages", Json, nullable=True),
        sa.Column("text", LongText, nullable=False),
        sa.Column("edited_text", LongText, nullable=True),
        sa.Column("usage", Json, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("safety", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=True),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("rating_count", sa.Integer, nullable=False),
        sa.Column("rating_sum", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        **MYSQL,
    )
    op.create_index("ix_descriptions_artwork_id", "descriptions", ["artwork_id"])
    op.create_index("ix_descriptions_style", "descriptions", ["style"])
    op.create_index("ix_descriptions_status", "descriptions", ["status"])
    op.create_index("ix_descriptions_adapter_style", "descriptions", ["adapter", "style"])
    op.create_index("ix_descriptions_created_at", "descriptions", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "description_id",
            sa.String(64),
            sa.ForeignKey("descriptions.id", name="fk_feedback_description"),
            nullable=False,
        ),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("comment", LongText, nullable=True),
        sa.Column("edited_text", LongText, nullable=True),
        sa.Column("reviewer", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        **MYSQL,
    )
    op.create_index("ix_feedback_description_id", "feedback", ["description_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("descriptions")
    op.drop_table("artworks")
