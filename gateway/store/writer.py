"""The background writer: descriptions reach the database off the request path.

Records wait in a bounded in-process queue. The writer takes them in batches and writes
each batch in one transaction. When the database is unreachable it keeps the batch and
tries again with exponential backoff, so an outage delays records but loses none (until
the queue is full; that and every other loss is counted and logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from .engine import is_outage
from .metrics import StoreMetrics
from .record import DescriptionRecord, artwork_id, first_of_each_artwork, utcnow
from .sqlite_batch import SqliteBatches
from .tables import artworks, descriptions
from .types import Blob

log = logging.getLogger("huayu.store")

# a record that fails this many times while the database is up is a bad record, not an outage
MAX_REJECTIONS = 3
STORED_MEMORY = 10_000  # artworks remembered as stored with their image


@dataclass(slots=True)
class _Held:
    rec: DescriptionRecord
    rejections: int = 0


@dataclass
class Writer:
    engine: AsyncEngine
    metrics: StoreMetrics
    ensure_schema: Callable[[], Awaitable[None]]
    queue_size: int = 10_000
    batch_size: int = 200
    # a record waits this long for others to share its transaction: at a few requests a second, one
    # write per request would cost the event loop more than the requests themselves
    linger_s: float = 0.05
    min_backoff_s: float = 0.2
    max_backoff_s: float = 30.0
    # an SQLite file's batches go through sqlite_batch.py, the others through the engine
    sqlite: SqliteBatches | None = None
    queue: asyncio.Queue[DescriptionRecord] = field(init=False)
    held: list[_Held] = field(init=False, default_factory=list)
    closing: bool = field(init=False, default=False)  # write what is left, then return
    stopped: bool = field(init=False, default=False)  # return now (close() ran out of time)
    wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    # artworks this writer has stored with their image: later descriptions need not send it again
    stored: OrderedDict[str, None] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.queue_size)

    def pending(self) -> int:
        return self.queue.qsize() + len(self.held)

    def _gauge(self) -> None:
        self.metrics.pending.set(self.pending())

    def put(self, rec: DescriptionRecord) -> bool:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            return False
        self._gauge()
        return True

    async def run(self) -> None:
        delay = self.min_backoff_s
        while not self.stopped:
            if not self.held:
                if self.closing and self.queue.empty():
                    return
                self.held.append(_Held(await self.queue.get()))
                if self.linger_s > 0 and self.queue.qsize() + 1 < self.batch_size:
                    await self._linger()
                while len(self.held) < self.batch_size and not self.queue.empty():
                    self.held.append(_Held(self.queue.get_nowait()))
            schema_ok = False
            try:
                # a schema that cannot be brought up is an outage too: keep the records
                await self.ensure_schema()
                schema_ok = True
                await self._write_all()
            except Exception as e:
                self.metrics.write_failures.inc()
                if schema_ok and not is_outage(e):
                    # the database answered but refused: find the bad record(s) one by one
                    await self._write_one_by_one()
                    continue
                log.warning(
                    "results store unreachable (%s); %d descriptions kept, retrying in %.1fs",
                    _short(e),
                    self.pending(),
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            delay = self.min_backoff_s

    async def _linger(self) -> None:
        # close() sets the event: then the batch goes at once (the event is left set for _sleep)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self.wake.wait()

    async def _sleep(self, seconds: float) -> None:
        # close() sets the event: one last attempt now instead of after a long backoff
        # (asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel from close())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        self.wake.clear()

    async def _write_all(self) -> None:
        start = time.perf_counter()
        recs = [h.rec for h in self.held]
        try:
            await self._write(recs, self.stored)
        except Exception:
            self.stored.clear()  # whatever failed, send every artwork in full next time
            raise
        self._remember(recs)
        self.metrics.write_seconds.observe(time.perf_counter() - start)
        self.metrics.written.inc(len(self.held))
        self.held = []
        self._gauge()

    async def _write(self, recs: list[DescriptionRecord], stored: Container[str] = frozenset()) -> None:
        if self.sqlite is not None:
            await self.sqlite.write(recs, stored)
            return
        async with self.engine.begin() as conn:
            await write_batch(conn, recs, stored)

    def _remember(self, recs: list[DescriptionRecord]) -> None:
        for r in recs:
            if r.image_jpeg is not None:
                self.stored[r.artwork_digest] = None
                self.stored.move_to_end(r.artwork_digest)
        while len(self.stored) > STORED_MEMORY:
            self.stored.popitem(last=False)

    async def _write_one_by_one(self) -> None:
        kept: list[_Held] = []
        for i, h in enumerate(self.held):
            try:
                await self._write([h.rec])
            except Exception as e:
                if is_outage(e):
                    kept.extend(self.held[i:])
                    break
                h.rejections += 1
                if h.rejections < MAX_REJECTIONS:
                    kept.append(h)
                    continue
                self.metrics.dropped.labels("rejected").inc()
                log.error("results store refused description %s for artwork %s: %s", h.rec.id, h.rec.artwork_digest, e)
            else:
                self.metrics.written.inc()
        self.held = kept
        self._gauge()


def _insert_ignore(conn: AsyncConnection, table: object) -> Insert:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()  # type: ignore[arg-type]
    if name == "mysql":
        return mysql.insert(table).prefix_with("IGNORE")  # type: ignore[arg-type]
    return sqlite.insert(table).on_conflict_do_nothing()  # type: ignore[arg-type]


async def write_batch(
    conn: AsyncConnection, recs: list[DescriptionRecord], stored: Container[str] = frozenset()
) -> None:
    """Insert the artworks (once per digest) and descriptions; writing the same batch twice is harmless.
    ``stored``: digests of artworks known to be in the database with their image already."""
    now = utcnow()
    arts = first_of_each_artwork(recs)
    new = [r for d, r in arts.items() if d not in stored]
    if new:
        await conn.execute(
            _insert_ignore(conn, artworks),
            [
                {
                    "id": artwork_id(r.artwork_digest),
                    "digest": r.artwork_digest,
                    "phash": f"{r.phash:016x}",
                    "source": r.source,
                    "meta": dict(r.metadata),
                    "thumbnail": r.thumbnail,
                    "image_jpeg": r.image_jpeg,
                    "created_at": r.created_at,
                    "updated_at": r.created_at,
                }
                for r in new
            ],
        )
    # an artwork first seen without its image or source gets them from a later description
    await conn.execute(
        update(artworks)
        .where(artworks.c.id == bindparam("b_id"))
        .values(
            updated_at=bindparam("b_at"),
            image_jpeg=func.coalesce(artworks.c.image_jpeg, bindparam("b_img", type_=Blob)),
            source=func.coalesce(artworks.c.source, bindparam("b_src")),
        ),
        [
            {"b_id": artwork_id(d), "b_at": now, "b_img": None if d in stored else r.image_jpeg, "b_src": r.source}
            for d, r in arts.items()
        ],
    )
    await conn.execute(
        _insert_ignore(conn, descriptions),
        [
            {
                "id": r.id,
                "artwork_id": artwork_id(r.artwork_digest),
                "style": r.style,
                "style_version": r.style_version,
                "language": r.language,
                "model": r.model,
                "adapter": r.adapter,
                "prompt": r.prompt,
                "messages": r.messages,
                "text": r.text,
                "edited_text": None,
                "usage": dict(r.usage),
                "latency_ms": float(r.latency_ms),
                "safety": dict(r.safety),
                "status": "draft",
                "reviewer": None,
                "tenant": r.tenant,
                "cached": r.cached,
                "rating_count": 0,
                "rating_sum": 0,
                "created_at": r.created_at,
                "updated_at": r.created_at,
                "artwork_meta": dict(r.metadata),
                "artwork_source": r.source,
            }
            for r in recs
        ],
    )


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
