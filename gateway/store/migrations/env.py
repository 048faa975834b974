"""Alembic environment: huayu runs its migrations in code, on a connection it hands over.

See ``gateway.store.migrate``; there is no alembic.ini to keep.
"""

from __future__ import annotations

from alembic import context

from gateway.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run huayu's migrations with gateway.store.migrate (python -m gateway.store.migrate).")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them; batch mode does that for later migrations
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
