"""Each description keeps the catalogue fields and source its request gave.

The artwork row is shared by every tenant that sends the same image; what one tenant's request said
about it (a title, a private lender, an intranet URL) is now read from that tenant's own
descriptions, not from the shared row. Rows written before this revision have NULL here and are
read from the artwork as before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.store.types import Json, LongText

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("descriptions") as batch:
        batch.add_column(sa.Column("artwork_meta", Json, nullable=True))
        batch.add_column(sa.Column("artwork_source", LongText, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("descriptions") as batch:
        batch.drop_column("artwork_source")
        batch.drop_column("artwork_meta")
