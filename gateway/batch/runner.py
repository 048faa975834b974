"""``run_batch``: the whole job, top to bottom.

input -> artworks -> items (artwork x style x language) -> minus the journal's finished items ->
a bounded pool of workers, each: image (shared by the items of one artwork) -> request -> retry
with backoff -> journal line (or a failure) -> at the end results.csv and annotations.json.

The pool keeps ``concurrency`` requests in flight so the model server's continuous batching stays
full; items are queued artwork by artwork, so the styles of one artwork run close together and
reuse one read of its image (and the server's prefix cache of it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from gateway.batch.client import Described, Sender, load_styles
from gateway.batch.images import LoadedImage, load_image
from gateway.batch.journal import RESULTS, Journal, finished_keys
from gateway.batch.model import LANGUAGES, Artwork, BatchConfig, BatchSummary, Failure, Item
from gateway.batch.outputs import FailureLog, write_outputs
from gateway.batch.progress import ProgressView
from gateway.batch.retry import Transient, backoff
from gateway.batch.sources import read_inputs
from gateway.errors import HuayuError, InvalidRequest
from gateway.protocol import MAX_PROMPT_CHARS

log = logging.getLogger("huayu.batch")


def check_config(config: BatchConfig) -> None:
    if config.concurrency < 1:
        raise InvalidRequest(f"concurrency must be at least 1 (got {config.concurrency}).", param="concurrency")
    if not config.styles:
        raise InvalidRequest("Name at least one style.", param="style")
    bad = [lang for lang in config.languages if lang not in LANGUAGES]
    if bad or not config.languages:
        raise InvalidRequest(
            f"Unknown language {', '.join(bad) or '(none)'}; accepted: {', '.join(LANGUAGES)}.", param="language"
        )
    if config.retries < 0:
        raise InvalidRequest(f"retries cannot be negative (got {config.retries}).", param="retries")
    if config.priority is not None and not -100 <= config.priority <= 100:
        raise InvalidRequest(f"priority must be from -100 to 100 (got {config.priority}).", param="priority")
    # the gateway's own limits (gateway.protocol.PredictRequest): checked here once, not failed per item
    if config.max_tokens is not None and config.max_tokens < 1:
        raise InvalidRequest(f"--max-tokens must be at least 1 (got {config.max_tokens}).", param="max_tokens")
    if config.temperature is not None and not 0.0 <= config.temperature <= 2.0:
        raise InvalidRequest(f"--temperature must be from 0 to 2 (got {config.temperature:g}).", param="temperature")
    if config.top_p is not None and not 0.0 < config.top_p <= 1.0:
        raise InvalidRequest(f"--top-p must be more than 0 and at most 1 (got {config.top_p:g}).", param="top_p")
    if config.prompt is not None and len(config.prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"--prompt is {len(config.prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted.",
            param="prompt",
        )
    if config.limit is not None and config.limit < 0:
        raise InvalidRequest(f"--limit cannot be negative (got {config.limit}).", param="limit")
    if not config.request_timeout_s > 0:
        raise InvalidRequest(
            f"--timeout must be more than 0 seconds (got {config.request_timeout_s:g}).", param="timeout"
        )
    if config.max_image_bytes < 1:
        raise InvalidRequest(
            f"--max-image-mb must be more than 0 (got {config.max_image_bytes / 2**20:g} MiB).", param="max_image_mb"
        )
    check_out_dir(config.out_dir)


def check_out_dir(out_dir: Path) -> None:
    """The output folder is a folder, or can become one; nothing is created here (a dry run creates nothing)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidRequest(
            f"The output folder {str(out_dir)!r} is a file, not a folder; give a folder with -o.", param="out"
        )
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InvalidRequest(
            f"The output folder {str(out_dir)!r} cannot be created: {str(parent)!r} is a file, not a folder.",
            param="out",
        )


def _make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidRequest(
            f"The output folder {str(out_dir)!r} cannot be created: {e.strerror or e}.", param="out"
        ) from e


class _Images:
    """Each artwork's image is read once for all its items, and dropped when its last item ends."""

    def __init__(self, client: httpx.AsyncClient, max_bytes: int, pending: dict[str, int]) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.pending = pending
        self.loads: dict[str, asyncio.Task[LoadedImage]] = {}

    async def get(self, art: Artwork) -> LoadedImage:
        task = self.loads.get(art.id)
        if task is None:
            task = asyncio.ensure_future(load_image(art, self.client, self.max_bytes))
            self.loads[art.id] = task
        try:
            return await asyncio.shield(task)
        except Transient:
            # the next try reads it afresh; a permanent error stays, so its sibling items fail fast
            if self.loads.get(art.id) is task:
                del self.loads[art.id]
            raise

    def release(self, art: Artwork) -> None:
        self.pending[art.id] -= 1
        if self.pending[art.id] == 0:
            self.loads.pop(art.id, None)


def plan(artworks: list[Artwork], config: BatchConfig) -> list[Item]:
    return [Item(a, s, lang) for a in artworks for s in config.styles for lang in config.languages]


def _count_plan(summary: BatchSummary, items: list[Item], done: set[str], limit: int | None) -> list[Item]:
    """The items to run now; fills the summary's per style/language counts."""
    todo = [it for it in items if it.key not in done]
    summary.skipped = len(items) - len(todo)
    todo = todo[:limit] if limit is not None else todo
    queued = {it.key for it in todo}
    for it in items:
        counts = summary.plan.setdefault(f"{it.style}/{it.language}", {"total": 0, "done": 0, "todo": 0})
        counts["total"] += 1
        counts["done"] += it.key in done
        counts["todo"] += it.key in queued
    return todo


def _record(item: Item, result: Described) -> dict[str, Any]:
    art = item.artwork
    return {
        "key": item.key,
        "artwork_id": art.id,
        "source": art.source,
        "target": art.target,
        "origin": art.origin,
        "style": item.style,
        "language": item.language,
        "status": result.status,
        "description": result.description,
        **result.fields,
        "metadata": art.metadata,
        "extra": art.extra,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class _Run:
    def __init__(self, config: BatchConfig, summary: BatchSummary, sender: Sender, images: _Images) -> None:
        self.config = config
        self.summary = summary
        self.sender = sender
        self.images = images
        self.journal: Journal
        self.failures: FailureLog
        self.view: ProgressView

    def fail(self, failure: Failure) -> None:
        self.summary.failed += 1
        self.summary.failures.append(failure)
        self.failures.add(failure)

    async def worker(self, queue: asyncio.Queue[Item]) -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await self.one(item)
            finally:
                self.images.release(item.artwork)
                self.view.advance()

    async def one(self, item: Item) -> None:
        c, s = self.config, self.summary
        attempt = 0
        while True:
            attempt += 1
            try:
                image = await self.images.get(item.artwork)
                result = await self.sender.describe(item, image)
            except Transient as t:
                if attempt > c.retries:
                    return self._failed(item, t.error, attempt)
                s.retries += 1
                self.view.refresh()
                await asyncio.sleep(backoff(attempt, c.backoff_s, c.max_backoff_s, t.retry_after))
                continue
            except HuayuError as e:
                return self._failed(item, e, attempt)
            except Exception as e:  # a bug must cost one item, not a run over ten thousand
                log.exception("unexpected error on %s", item.key)
                return self._failed(item, HuayuError(f"internal error: {type(e).__name__}: {e}"), attempt)
            self.journal.append(_record(item, result))
            setattr(s, result.status, getattr(s, result.status) + 1)
            usage = result.fields.get("usage") or {}
            s.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            s.completion_tokens += int(usage.get("completion_tokens") or 0)
            return

    def _failed(self, item: Item, error: HuayuError, attempts: int) -> None:
        self.fail(
            Failure(item.artwork.source, error.message, str(error.code), item.key, item.style, item.language, attempts)
        )


async def run_batch(config: BatchConfig, console: Console | None = None) -> BatchSummary:
    """Describes every artwork of ``config.input`` not yet in the journal of ``config.out_dir``;
    with ``dry_run``, only counts them. ``console``: where the progress bar goes (stderr).

    Raises a HuayuError for a bad invocation (unreadable input, unknown style, no server);
    per-item problems end in the summary's failures instead.
    """
    console = console or Console(stderr=True, soft_wrap=True)
    check_config(config)
    styles = load_styles(config.styles_dir) if config.direct is not None else None  # a bad --styles-dir: exit 2
    t0 = time.perf_counter()
    inputs = await asyncio.to_thread(
        read_inputs, config.input, timeout_s=config.fetch_timeout_s, iiif_size=config.iiif_size,
        languages=config.languages, skip=config.out_dir,
    )  # fmt: skip
    items = plan(inputs.artworks, config)
    summary = BatchSummary(planned=len(items), duplicates=inputs.duplicates, dry_run=config.dry_run)
    if config.dry_run:
        done = await asyncio.to_thread(finished_keys, config.out_dir / RESULTS)
        _count_plan(summary, items, done, config.limit)
        summary.failures = list(inputs.problems)
        summary.failed = len(inputs.problems)
        return summary

    _make_out_dir(config.out_dir)
    try:
        journal = Journal(config.out_dir / RESULTS, config.fsync_interval_s)  # locked: one run per folder
    except OSError as e:
        raise InvalidRequest(
            f"The journal {str(config.out_dir / RESULTS)!r} cannot be opened: {e.strerror or e}.", param="out"
        ) from e
    sender = Sender(config, styles)
    fetcher = httpx.AsyncClient(
        timeout=config.fetch_timeout_s, follow_redirects=True, limits=httpx.Limits(max_connections=config.concurrency)
    )
    try:
        todo = _count_plan(summary, items, journal.finished, config.limit)
        if todo:
            await sender.check(config.styles, config.languages)
        pending: dict[str, int] = {}
        for it in todo:
            pending[it.artwork.id] = pending.get(it.artwork.id, 0) + 1
        run = _Run(config, summary, sender, _Images(fetcher, config.max_image_bytes, pending))
        run.journal = journal
        run.failures = FailureLog(config.out_dir)
        for problem in inputs.problems:
            run.fail(problem)
        queue: asyncio.Queue[Item] = asyncio.Queue()
        for it in todo:
            queue.put_nowait(it)
        journal.start()
        t_send = time.perf_counter()
        try:
            with ProgressView(len(todo), summary, console, config.progress) as run.view:
                workers = [asyncio.create_task(run.worker(queue)) for _ in range(min(config.concurrency, len(todo)))]
                try:
                    await asyncio.gather(*workers)
                finally:
                    for w in workers:
                        w.cancel()
        finally:
            summary.elapsed_s = time.perf_counter() - t_send
            run.failures.close()
    finally:
        await journal.close()
        await sender.aclose()
        await fetcher.aclose()
        # also when stopped: the outputs always match the journal
        await asyncio.to_thread(write_outputs, config.out_dir)
    log.debug("batch took %.2f s in all", time.perf_counter() - t0)
    return summary
