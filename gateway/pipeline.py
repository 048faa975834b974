"""describe(): the data path of one description, top to bottom.

image -> preprocess -> cache -> style -> upstream -> safety -> store -> answer

A request that may use the cache stages its image (``ImageMemo.stage``): the keys first, then the
model-ready JPEG only on a miss that goes upstream; every way out (a hit, a joined flight, an error,
a cancelled request, a client gone mid-stream) drops what was not finished, so no worker waits.

The routers (``gateway/api``) turn a request into a ``Job`` and the ``Result`` (or the stream of
``Delta`` then ``Result``) into their wire format (the three are in ``gateway/job.py``); everything
in between happens here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.cache import CacheHit, DescriptionCache, Prefetch
from gateway.config import Settings
from gateway.errors import ServiceUnavailable
from gateway.images import ImageKeys, ImageOptions, ImageWorker, PreparedImage
from gateway.images.memo import ImageMemo, StagedUpload
from gateway.job import Delta, EncodedImage, Job, Result
from gateway.metrics import GatewayMetrics
from gateway.prompting import build_messages, cache_scope
from gateway.safety import GuardClient, SafetyFilter, SafetyMetrics, Verdict, apply_guard
from gateway.store import DescriptionRecord, ResultStore, new_description_id
from gateway.upstream import Upstream


@dataclass
class _Prepared:
    job: Job
    keys: ImageKeys
    scope: str
    model: str
    adapter: str | None
    started: float
    upload: StagedUpload | None = None  # staged for the cache: finish() for the image, else drop()
    prefetch: Prefetch | None = None  # the cache's round trip, started from the early keys
    # the image and the messages carrying it: made by _ready(), only for a request that goes upstream
    image: PreparedImage | None = None
    data_url: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prepared(self) -> PreparedImage:
        if self.image is None:
            raise RuntimeError("the image was not finished: _ready() comes before the model is asked")
        return self.image

    def release(self) -> None:
        """The staged image is not needed (a hit, a joined flight, a failure): its worker is freed.
        Nothing happens once it was finished. A prefetch never awaited is called off."""
        if self.upload is not None:
            self.upload.drop()
        if self.prefetch is not None:
            self.prefetch.cancel()  # a no-op once it is done


class Describer:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        images: ImageWorker,
        metrics: GatewayMetrics,
        cache: DescriptionCache | None = None,
        safety: SafetyFilter | None = None,
        guard: GuardClient | None = None,
        store: ResultStore | None = None,
        safety_metrics: SafetyMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.images = images
        self.metrics = metrics
        self.cache = cache
        self.safety = safety
        self.guard = guard
        self.store = store
        self.safety_metrics = safety_metrics
        self._flights: dict[str, asyncio.Future[Result]] = {}
        # fresh answers on their way into the cache, by flight key: asking again in the moment between
        # the answer and its cache write (a Redis round trip) joins the answer instead of the model
        self._landing: dict[str, Result] = {}
        self._puts: set[asyncio.Task[None]] = set()
        self.memo = ImageMemo(images, settings.image_memo_entries)

    # ---- the public entry points -------------------------------------------------------

    async def describe(self, job: Job) -> Result:
        prep = await self._prepare(job)
        try:
            hit = await self._lookup(prep)
            if hit is not None:
                return hit  # the finally below drops the staged image
            return await self._coalesced(prep, self._generate)
        finally:
            prep.release()

    async def stream(self, job: Job) -> AsyncIterator[Delta | Result]:
        prep = await self._prepare(job)
        try:
            hit = await self._lookup(prep)
            cacheable = self._cacheable(job)  # a request that skips the cache joins no flight either
            if hit is None and cacheable and self._flight_key(prep) in self._flights:
                prep.release()
                hit = await self._join(self._flight_key(prep), prep)
            if hit is not None:
                prep.release()
                yield Delta(hit.description)
                yield hit
                return
            key = self._flight_key(prep) if cacheable else ""
            future = self._lead(key) if cacheable else None  # others asking the same join this one
            try:
                result: Result | None = None
                async for event in self._stream_generate(prep):
                    if isinstance(event, Result):
                        result = event
                    yield event
                if result is not None and future is not None and not future.done():
                    future.set_result(result)
            except BaseException as e:
                if future is not None and not future.done():
                    future.set_exception(e if isinstance(e, Exception) else _leader_gone())
                    future.exception()  # retrieved here, so an unjoined failure is not logged twice
                raise
            finally:
                if future is not None:
                    self._flights.pop(key, None)
        finally:
            prep.release()  # a client gone mid-stream included: the generator is closed

    # ---- steps --------------------------------------------------------------------------

    async def _prepare(self, job: Job) -> _Prepared:
        """The image's cache keys; for a request that skips the cache, the model-ready image at once
        (no verdict round trip to the worker)."""
        started = time.perf_counter()
        options = job.options or ImageOptions.from_settings(self.settings)
        upload = job.image.text if isinstance(job.image, EncodedImage) else job.image
        adapter = job.adapter or job.style.adapter or None
        model = adapter or self.settings.upstream_model
        if not self._cacheable(job):  # no scope: it is only ever a key of the cache and its flights
            image, data_url = await self.memo.prepare(upload, options)
            return _Prepared(job, image, "", model, adapter, started, image=image, data_url=data_url)
        scope = cache_scope(
            tenant=job.tenant,
            model=self.settings.upstream_model,
            adapter=adapter or "",
            style=job.style,
            language=job.language,
            sampling=job.sampling,
            metadata=job.metadata,
            request=job.request,
            options=(options.crop_borders, options.correct_glare),
        )
        # the cache's round trip starts from the early keys, while the worker makes the signature
        prefetch: list[Prefetch] = []
        cache = self.cache
        assert cache is not None

        def early(digest: str, phash: int) -> None:
            if (started_early := cache.prefetch(scope, digest, phash)) is not None:
                prefetch.append(started_early)

        try:
            # last, with nothing after it that can fail: the caller's try/finally drops what is staged
            staged = await self.memo.stage(upload, options, early if cache.prefetches else None)
        except BaseException:
            for p in prefetch:
                p.cancel()
            raise
        first = prefetch[0] if prefetch else None
        return _Prepared(job, staged.keys, scope, model, adapter, started, upload=staged, prefetch=first)

    async def _ready(self, prep: _Prepared) -> None:
        """What going upstream needs: the model-ready image (a staged one finished) and the messages."""
        if prep.image is None:
            assert prep.upload is not None
            prep.image, prep.data_url = await prep.upload.finish()
        if not prep.messages:
            job = prep.job
            canary = self.safety.canary if self.safety else ""
            prep.messages = build_messages(job.style, job.language, prep.data_url, job.metadata, job.request, canary)

    def _cacheable(self, job: Job) -> bool:
        return self.cache is not None and job.use_cache and job.style.cache

    async def _lookup(self, prep: _Prepared) -> Result | None:
        if not self._cacheable(prep.job):
            return None
        if self._landing and (landing := self._landing.get(self._flight_key(prep))) is not None:
            self.metrics.coalesced.inc()
            return self._joined(landing, prep)
        assert self.cache is not None
        hit: CacheHit | None = await self.cache.get(prep.scope, prep.keys, prep.prefetch)
        if hit is None:
            return None
        value = hit.value
        return Result(
            id=str(value["id"]),
            description=str(value["description"]),
            style=prep.job.style.name,
            style_version=prep.job.style.version,
            language=prep.job.language,
            model=str(value.get("model", prep.model)),
            adapter=prep.adapter,
            cached=True,
            cache={"kind": hit.kind, "distance": hit.distance},
            usage=dict(value.get("usage", {})),
            latency_ms=self._elapsed_ms(prep),
            finish_reason=value.get("finish_reason"),
            safety=dict(value.get("safety", {"action": "allow", "categories": [], "terms": []})),
        )

    def _flight_key(self, prep: _Prepared) -> str:
        return prep.scope + ":" + prep.keys.digest

    def _lead(self, key: str) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return future

    async def _join(self, key: str, prep: _Prepared) -> Result:
        self.metrics.coalesced.inc()
        return self._joined(await asyncio.shield(self._flights[key]), prep)

    def _joined(self, result: Result, prep: _Prepared) -> Result:
        return replace(
            result, cached=True, cache={"kind": "coalesced", "distance": 0}, latency_ms=self._elapsed_ms(prep)
        )

    async def _coalesced(self, prep: _Prepared, work: Callable[[_Prepared], Awaitable[Result]]) -> Result:
        if not self._cacheable(prep.job):
            return await work(prep)
        key = self._flight_key(prep)
        if key in self._flights:
            prep.release()  # the leader's answer will do: this image is not needed
            return await self._join(key, prep)
        future = self._lead(key)
        try:
            result = await work(prep)
        except BaseException as e:  # cancelled too: those who joined must not wait for ever
            future.set_exception(e if isinstance(e, Exception) else _leader_gone())
            future.exception()
            raise
        finally:
            self._flights.pop(key, None)
        future.set_result(result)
        return result

    def _body(self, prep: _Prepared, stream: bool, messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        s = prep.job.sampling
        body: dict[str, Any] = {
            "model": prep.model,
            "messages": messages or prep.messages,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.settings.upstream_priority and prep.job.priority:
            body["priority"] = prep.job.priority
        return body

    async def _complete(
        self, prep: _Prepared, messages: list[dict[str, Any]] | None = None
    ) -> tuple[str, str | None, dict[str, int]]:
        t0 = time.perf_counter()
        data = await self.upstream.chat(self._body(prep, stream=False, messages=messages))
        self.metrics.upstream_latency.labels(prep.model).observe(time.perf_counter() - t0)
        choice = (data.get("choices") or [{}])[0]
        text = str((choice.get("message") or {}).get("content") or "")
        return text, choice.get("finish_reason"), _usage(data.get("usage"))

    async def _generate(self, prep: _Prepared) -> Result:
        await self._ready(prep)
        lang = prep.job.language
        text, finish, usage = await self._complete(prep)
        verdict = self._check(text, lang)
        if verdict.action == "regenerate" and self.safety is not None:
            # once, with a stricter instruction; what still fails is withheld
            strict = build_messages(
                prep.job.style,
                lang,
                prep.data_url,
                prep.job.metadata,
                prep.job.request,
                self.safety.canary,
                self.safety.strict_instruction(lang),
            )
            text, finish, again = await self._complete(prep, strict)
            usage = {k: usage.get(k, 0) + again.get(k, 0) for k in set(usage) | set(again)}
            verdict = self.safety.check(text, lang, retried=True)
        if not verdict.withheld and self.guard is not None:
            judged = await self.guard.judge(prep.messages[1]["content"][1]["text"], verdict.text)
            if self.safety_metrics is not None:
                self.safety_metrics.observe_guard(judged)
            verdict = apply_guard(verdict, judged, lang)
        if verdict.withheld:
            finish = "content_filter"
        return self._finish(
            prep, verdict.text if not verdict.withheld else self._fallback(lang), finish, usage, verdict
        )

    async def _stream_generate(self, prep: _Prepared) -> AsyncIterator[Delta | Result]:
        await self._ready(prep)
        job = prep.job
        job.spent_tokens = _prompt_estimate(prep)
        sf = self.safety.stream(prep.job.language) if self.safety else None
        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, int] = {}
        t0 = time.perf_counter()
        stopped = False
        async for chunk in self.upstream.stream(self._body(prep, stream=True)):
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
                job.spent_tokens = usage.get("total_tokens") or job.spent_tokens
            for choice in chunk.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta and not usage:
                    job.spent_tokens += 1
                out = sf.feed(delta) if sf is not None and delta else delta
                if sf is not None and sf.stopped:
                    stopped = True  # withheld: stop reading, the model server cancels on disconnect
                    break
                if out:
                    if not parts:
                        self.metrics.ttft.labels(prep.job.style.name).observe(time.perf_counter() - prep.started)
                    parts.append(out)
                    yield Delta(out)
            if stopped:
                break
        self.metrics.upstream_latency.labels(prep.model).observe(time.perf_counter() - t0)
        if sf is None:
            verdict = Verdict("allow", [], [], "".join(parts))
        else:
            tail = sf.finish()
            if tail:
                parts.append(tail)
                yield Delta(tail)
            verdict = sf.verdict
        if verdict.withheld:
            finish = "content_filter"
            notice = ("\n\n" if parts else "") + self._fallback(prep.job.language)
            parts.append(notice)
            yield Delta(notice)
        yield self._finish(prep, "".join(parts), finish, usage, verdict)

    def _check(self, text: str, language: str) -> Verdict:
        if self.safety is None:
            return Verdict("allow", [], [], text)
        return self.safety.check(text, language)

    def _fallback(self, language: str) -> str:
        return self.safety.fallback_text(language) if self.safety else ""

    def _finish(
        self, prep: _Prepared, text: str, finish: str | None, usage: dict[str, int], verdict: Verdict
    ) -> Result:
        style = prep.job.style
        result = Result(
            id=new_description_id(),
            description=text,
            style=style.name,
            style_version=style.version,
            language=prep.job.language,
            model=self.settings.upstream_model,
            adapter=prep.adapter,
            cached=False,
            cache=None,
            usage=usage,
            latency_ms=self._elapsed_ms(prep),
            finish_reason=finish,
            safety=verdict.public(),
        )
        # an empty answer is no description: not cached, so asking again can give one
        fit = result.description.strip() and not verdict.withheld and finish != "content_filter"
        landing = ""
        if fit and self._cacheable(prep.job):
            landing = self._flight_key(prep)
            self._landing[landing] = result  # from now until the cache has it
        # the bookkeeping waits for the answer to leave: the caller's response is written in this same
        # step of the event loop (nothing between here and the transport awaits), the rest right after
        asyncio.get_running_loop().call_soon(self._after, prep, result, verdict, landing)
        return result

    def _after(self, prep: _Prepared, result: Result, verdict: Verdict, landing: str) -> None:
        """A fresh answer's cache entry, metrics and store record, once the answer is on its way."""
        try:
            if landing:
                self._put(prep, result, landing)
            style = result.style
            usage = result.usage
            if self.safety_metrics is not None:
                self.safety_metrics.observe_verdict(verdict)
            self.metrics.generated_tokens.labels(style).inc(usage.get("completion_tokens", 0))
            self.metrics.prompt_tokens.labels(style).inc(usage.get("prompt_tokens", 0))
        finally:  # the record above all: whatever failed before, the text reaches the store
            if self.store is not None:
                self.store.record(self._record(prep, result))

    def _put(self, prep: _Prepared, result: Result, key: str) -> None:
        """Writes the answer to the cache; it stops answering from ``_landing`` once the write is over,
        landed or not (a cache that failed counts its error and answers a miss next time)."""

        def landed(task: asyncio.Task[None]) -> None:
            if self._landing.get(key) is result:
                del self._landing[key]
            self._puts.discard(task)

        assert self.cache is not None
        task = asyncio.get_running_loop().create_task(self.cache.put(prep.scope, prep.keys, self._cache_value(result)))
        self._puts.add(task)  # held: the loop keeps only a weak reference, and its end is what frees the key
        task.add_done_callback(landed)

    @staticmethod
    def _cache_value(result: Result) -> dict[str, Any]:
        keep = ("id", "description", "model", "usage", "finish_reason", "safety")
        return {k: getattr(result, k) for k in keep}

    def _record(self, prep: _Prepared, result: Result) -> DescriptionRecord:
        job, image = prep.job, prep.prepared  # a record is of a miss: its image was finished upstream of here
        system = prep.messages[0]["content"]
        user_text = prep.messages[1]["content"][1]["text"]
        return DescriptionRecord(
            id=result.id,
            artwork_digest=image.artwork_digest,
            phash=image.phash,
            thumbnail=image.thumbnail,
            image_jpeg=image.jpeg,
            source=job.source,
            metadata=job.metadata,
            style=result.style,
            style_version=result.style_version,
            language=result.language,
            model=result.model,
            adapter=result.adapter,
            prompt=job.request,
            text=result.description,
            usage=result.usage,
            latency_ms=result.latency_ms,
            safety=result.safety,
            tenant=job.tenant,
            created_at=datetime.now(UTC),
            cached=False,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user_text}],
        )

    @staticmethod
    def _elapsed_ms(prep: _Prepared) -> float:
        return round((time.perf_counter() - prep.started) * 1000, 2)


def _prompt_estimate(prep: _Prepared) -> int:
    """The prompt's tokens, roughly, before the model server says: Qwen3-VL takes one token for each
    32x32 pixels of the image (16-pixel patches, merged 2x2), and the text about one for two
    characters (Chinese is nearer one a character, English four characters a token)."""
    text = 0
    for message in prep.messages:  # build_messages: the system's text, then the image and the user's text
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text") for p in content or () if isinstance(p, dict)]
        text += sum(len(t) for t in parts if isinstance(t, str))
    image = prep.prepared
    return (image.width // 32) * (image.height // 32) + text // 2


def _leader_gone() -> ServiceUnavailable:
    """What those who joined a request in flight get when it ended without an answer of its own
    failing (its client left, or it was cancelled): a retryable 503, not their connection dropped."""
    return ServiceUnavailable(
        "The identical request this one was waiting on was cancelled by its own client before its answer; "
        "send this one again.",
        code="joined_request_cancelled",
        headers={"Retry-After": "0"},
    )


def _usage(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(raw.get(k) or 0) for k in keys}
