"""The writer's batches into an SQLite file: the standard ``sqlite3`` module, one trip to a thread a batch.

Through SQLAlchemy and aiosqlite a batch cost the gateway's process ~1.7 ms of CPU whatever its size
(a thread round trip costs ~90 µs of CPU on the 2-core benchmark host, and a transaction made a dozen:
begin, three statements, commit, the pool's checks), then ~35 µs a record; all of it landed between
requests. Here the rows are made on the event loop (~3.5 µs a record) and the whole transaction runs
in one call on a thread of the writer's own, on a connection of its own: ~0.25 ms a batch, ~20 µs a
record, the GIL released while SQLite works. In ``bench_cpu`` the store's share of a request's CPU
went from ~115 µs to ~30-70. The rows are what SQLAlchemy would have written
(``tests/gateway/test_store.py`` compares the two byte for byte); the async engine still runs the
migrations and every query.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Container
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import orjson

from .record import DescriptionRecord, artwork_id, first_of_each_artwork, utcnow

_ARTWORK = (
    "INSERT INTO artworks (id, digest, phash, source, meta, thumbnail, image_jpeg, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_TOUCH = (
    "UPDATE artworks SET updated_at = ?, image_jpeg = coalesce(artworks.image_jpeg, ?), "
    "source = coalesce(artworks.source, ?) WHERE artworks.id = ?"
)
_DESCRIPTION = (
    "INSERT INTO descriptions (id, artwork_id, style, style_version, language, model, adapter, prompt, messages, "
    "text, edited_text, usage, latency_ms, safety, status, reviewer, tenant, cached, rating_count, rating_sum, "
    "created_at, updated_at, artwork_meta, artwork_source) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, 'draft', NULL, ?, ?, 0, 0, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)

Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


def _json(value: object) -> str:
    return orjson.dumps(value).decode()  # as the engine's JSON serializer writes it (engine.py)


def _when(at: datetime) -> str:
    # SQLAlchemy's DATETIME on SQLite: UTC, naive, to the microsecond (types.UTCDateTime)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def rows(recs: list[DescriptionRecord], stored: Container[str] = frozenset()) -> Rows:
    """The parameters of the batch's three statements, as ``writer.write_batch`` sends them."""
    now = _when(utcnow())
    arts = first_of_each_artwork(recs)
    new = [
        (
            artwork_id(d),
            d,
            f"{r.phash:016x}",
            r.source,
            _json(dict(r.metadata)),
            r.thumbnail,
            r.image_jpeg,
            _when(r.created_at),
            _when(r.created_at),
        )
        for d, r in arts.items()
        if d not in stored
    ]
    touch = [(now, None if d in stored else r.image_jpeg, r.source, artwork_id(d)) for d, r in arts.items()]
    descriptions = []
    for r in recs:
        at = _when(r.created_at)
        descriptions.append(
            (
                r.id,
                artwork_id(r.artwork_digest),
                r.style,
                r.style_version,
                r.language,
                r.model,
                r.adapter,
                r.prompt,
                _json(r.messages),
                r.text,
                _json(dict(r.usage)),
                float(r.latency_ms),
                _json(dict(r.safety)),
                r.tenant,
                int(r.cached),
                at,
                at,
                _json(dict(r.metadata)),
                r.source,
            )
        )
    return new, touch, descriptions


class SqliteBatches:
    """Writes batches of records into the SQLite file at ``path``; ``close()`` when done."""

    def __init__(self, path: str, *, busy_timeout_s: float) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="huayu-store-sqlite")
        self._conn: sqlite3.Connection | None = None  # made, used and closed on that thread only

    async def write(self, recs: list[DescriptionRecord], stored: Container[str] = frozenset()) -> None:
        batch = rows(recs, stored)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, batch)

    def _write(self, batch: Rows) -> None:
        conn = self._conn
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")  # the database is in WAL mode (engine.py)
            self._conn = conn
        new, touch, descriptions = batch
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock now, not halfway through
            if new:
                conn.executemany(_ARTWORK, new)
            conn.executemany(_TOUCH, touch)
            conn.executemany(_DESCRIPTION, descriptions)
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:  # a connection that cannot roll back is not used again
                conn.close()
                self._conn = None
            raise

    def close(self) -> None:
        """Closes the connection after the write in progress, if any (without waiting for it)."""
        self._thread.submit(self._disconnect)
        self._thread.shutdown(wait=False)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
