"""ResultStore: the one object the gateway holds for keeping and reviewing descriptions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import HuayuError, ServiceUnavailable, Unprocessable

from . import export as ex
from . import queries as q
from .engine import in_memory, is_outage, make_engine, normalize_url, upgrade
from .metrics import StoreMetrics
from .queries import DescriptionFilter
from .record import DescriptionRecord, record_problem, without_nul
from .sqlite_batch import SqliteBatches
from .writer import Writer

ALL = DescriptionFilter()  # every description (of every tenant)

log = logging.getLogger("huayu.store")
T = TypeVar("T")


class ResultStore:
    """Keeps every generated description; answers the review API's queries.

    ``record()`` never blocks nor raises: a background writer does the inserts and outlives
    database outages (see ``writer.py``). Queries raise ``ServiceUnavailable`` when the
    database cannot be reached, ``NotFound`` for unknown ids, ``Unprocessable`` for bad values.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 10_000,
        metrics: StoreMetrics | None = None,
        connect_timeout_s: float = 5.0,
        query_timeout_s: float = 15.0,
        close_timeout_s: float = 5.0,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.url = normalize_url(url)
        self.metrics = metrics or StoreMetrics()
        self._connect_timeout_s = connect_timeout_s
        self._query_timeout_s = query_timeout_s
        self._close_timeout_s = close_timeout_s
        self._backoff = (min_backoff_s, max_backoff_s)
        self._queue_size = queue_size
        self._engine: AsyncEngine | None = None
        self._writer: Writer | None = None
        self._task: asyncio.Task[None] | None = None
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._early: list[DescriptionRecord] = []  # recorded before start()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise ServiceUnavailable("The results store has not been started.")
        return self._engine

    async def start(self) -> None:
        """Create the engine, run the migrations and start the writer.

        A database that is down at start-up does not stop the gateway: the migrations are
        retried by the writer, and queries answer 503 until they have run.
        """
        self._engine = make_engine(self.url, connect_timeout_s=self._connect_timeout_s)
        try:
            await self._ensure_schema()
        except Exception as e:
            if not is_outage(e):
                raise
            log.warning("results store unreachable at start-up (%s); will keep retrying", e)
        sqlite = None
        if self.url.get_backend_name() == "sqlite" and not in_memory(self.url):
            sqlite = SqliteBatches(str(self.url.database), busy_timeout_s=self._connect_timeout_s * 3)
        self._writer = Writer(
            self._engine,
            self.metrics,
            self._ensure_schema,
            queue_size=self._queue_size,
            min_backoff_s=self._backoff[0],
            max_backoff_s=self._backoff[1],
            sqlite=sqlite,
        )
        for rec in self._early:
            self._enqueue(rec)
        self._early.clear()
        self._task = asyncio.create_task(self._writer.run(), name="huayu-store-writer")

    async def close(self) -> None:
        """Write what can be written within ``close_timeout_s``, then stop; what is left is counted and logged."""
        w, task = self._writer, self._task
        if w is not None and task is not None:
            w.closing = True
            w.wake.set()
            if not w.held and w.queue.empty():
                task.cancel()  # idle in queue.get(): nothing to flush
            await asyncio.wait({task}, timeout=self._close_timeout_s)
            if not task.done():
                w.stopped = True
                task.cancel()
                await asyncio.wait({task}, timeout=self._close_timeout_s)
            left = w.pending()
            if left:
                self.metrics.dropped.labels("shutdown").inc(left)
                log.error("results store closed with %d descriptions not written (database unreachable)", left)
            if w.sqlite is not None:
                w.sqlite.close()
        if self._engine is not None:
            await self._engine.dispose()

    def record(self, rec: DescriptionRecord) -> None:
        """Queue ``rec`` for writing; returns at once and never raises."""
        try:
            rec = without_nul(rec)
            problem = record_problem(rec)
            if problem is not None:
                self.metrics.dropped.labels("invalid").inc()
                log.error("description %r not stored: %s", getattr(rec, "id", None), problem)
                return
            if self._writer is None:
                if len(self._early) < self._queue_size:
                    self._early.append(rec)
                else:
                    self._full(rec)
                return
            self._enqueue(rec)
        except Exception:  # a bug here must never fail the request that produced the text
            log.exception("description %r not stored", getattr(rec, "id", None))
            self.metrics.dropped.labels("invalid").inc()

    def _enqueue(self, rec: DescriptionRecord) -> None:
        assert self._writer is not None
        if not self._writer.put(rec):
            self._full(rec)

    def _full(self, rec: DescriptionRecord) -> None:
        self.metrics.dropped.labels("queue_full").inc()
        log.error("results store queue full (%d waiting): description %s not stored", self._queue_size, rec.id)

    def pending(self) -> int:
        return (self._writer.pending() if self._writer else 0) + len(self._early)

    async def ready(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._ensure_schema()
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as e:
            return (
                False,
                f"results database unreachable: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}",
            )
        return True, f"results database ok ({self.pending()} descriptions waiting to be written)"

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                await upgrade(self.engine)
                self._schema_ready = True

    async def _run(self, fn: Callable[[AsyncConnection], Awaitable[T]], *, write: bool = False) -> T:
        try:
            async with asyncio.timeout(self._query_timeout_s):
                await self._ensure_schema()
                async with self.engine.begin() if write else self.engine.connect() as conn:
                    return await fn(conn)
        except HuayuError:
            raise
        except Exception as e:
            if is_outage(e):
                raise ServiceUnavailable(
                    "The results database cannot be reached; descriptions are still generated and kept "
                    "for writing, but reviews and exports must wait until it is back."
                ) from e
            raise

    # --- queries behind the review API ---

    async def list_descriptions(
        self, which: DescriptionFilter = ALL, *, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """``{"data": [description...], "total": n, "limit", "offset"}``, newest first."""
        where = which.where()
        q.check_paging(limit, offset)
        return await self._run(lambda c: q.list_descriptions(c, where, limit, offset))

    async def get_description(self, id: str, *, tenant: str | None = None) -> dict[str, Any]:
        """One description with its prompt ``messages`` and its ``feedback`` list."""

        async def read(c: AsyncConnection) -> dict[str, Any]:
            await q.check_owner(c, id, tenant)
            return await q.get_description(c, id)

        return await self._run(read)

    async def add_feedback(
        self,
        id: str,
        rating: int,
        comment: str | None = None,
        edited_text: str | None = None,
        reviewer: str | None = None,
        *,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Store a rating (1-5, whole); an ``edited_text`` becomes the description's final text.

        Returns the feedback row plus ``"description"``: the description as it is now.
        """

        async def write(c: AsyncConnection) -> dict[str, Any]:
            await q.check_owner(c, id, tenant)
            return await q.add_feedback(c, id, rating, comment, edited_text, reviewer)

        fb = await self._run(write, write=True)
        return {**fb, "description": await self.get_description(id)}

    async def update_description(
        self,
        id: str,
        *,
        status: str | None = None,
        text: str | None = None,
        reviewer: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Set the status (draft, approved, rejected) and/or the curator's text; returns the description."""

        async def write(c: AsyncConnection) -> None:
            await q.check_owner(c, id, tenant)
            await q.update_description(c, id, status, text, reviewer)

        await self._run(write, write=True)
        return await self.get_description(id)

    async def list_artworks(
        self, which: DescriptionFilter = ALL, *, limit: int = 24, offset: int = 0, per_style: int = 5
    ) -> dict[str, Any]:
        """The gallery: artworks with a matching description, most recently described first, each
        with ``descriptions`` (those matching the filters, by style, the newest ``per_style`` of each)."""
        where = which.where()
        q.check_paging(limit, offset)
        return await self._run(lambda c: q.list_artworks(c, where, limit, offset, per_style))

    async def get_artwork_thumbnail(self, artwork_id: str, *, tenant: str | None = None) -> bytes:
        """The JPEG thumbnail stored with the artwork."""
        return await self._blob(artwork_id, "thumbnail", tenant)

    async def get_artwork_image(self, artwork_id: str, *, tenant: str | None = None) -> bytes:
        """The model-ready JPEG stored with the artwork (NotFound if it was not kept)."""
        return await self._blob(artwork_id, "image_jpeg", tenant)

    async def _blob(self, artwork_id: str, column: str, tenant: str | None) -> bytes:
        async def read(c: AsyncConnection) -> bytes:
            await q.check_artwork_owner(c, artwork_id, tenant)
            return await q.artwork_blob(c, artwork_id, column)

        return await self._run(read)

    async def adapter_report(self, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """Per adapter (None: the base model) and style: n, rated, ratings, avg_rating (over all
        ratings), approved, rejected, approval_rate (approved / (approved + rejected))."""
        return await self._run(lambda c: q.adapter_report(c, tenant))

    async def export(
        self, fmt: str, which: DescriptionFilter = ALL, *, base_url: str | None = None
    ) -> AsyncIterator[bytes]:
        """Check the request and read the first page now (so errors are raised before any byte
        is sent), then return the stream. ``base_url`` makes IIIF annotation ids resolvable."""
        if fmt not in ex.FORMATS:
            raise Unprocessable(f"format must be one of {', '.join(ex.FORMATS)}; got {fmt!r}.", param="format")
        f: ex.Format = fmt  # type: ignore[assignment]
        where = ex.selection(f, which.where(), which.status is not None)
        first = await self._run(lambda c: ex.fetch_page(c, f, where, None))
        export_id = f"{base_url.rstrip('/')}/v1/export?format=iiif" if base_url else "urn:huayu:export:iiif"
        return self._stream(f, where, first, base_url, export_id)

    async def _stream(
        self, fmt: ex.Format, where: Any, page: list[dict[str, Any]], base_url: str | None, export_id: str
    ) -> AsyncIterator[bytes]:
        if head := ex.header(fmt, export_id):
            yield head
        skipped, first = 0, True
        while page:
            body, n = ex.render(fmt, page, base_url, first)
            skipped += n
            first = first and not body
            if body:
                yield body
            page = await self._run(partial(ex.fetch_page, fmt=fmt, where=where, after=page[-1]["id"]))
        if tail := ex.footer(fmt):
            yield tail
        if skipped:
            log.warning("finetune export skipped %d descriptions without a stored image or prompt", skipped)


@contextlib.asynccontextmanager
async def open_store(url: str, **kwargs: Any) -> AsyncIterator[ResultStore]:
    """``async with open_store(url) as store:`` — start() and close() around a block (CLI, tests)."""
    store = ResultStore(url, **kwargs)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
