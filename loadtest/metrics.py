"""What one request measured, and the one set of metric definitions every report uses.

TTFT runs from sending the request to the first chunk whose content is not empty (the role chunk
and empty deltas do not count); E2E to the last byte, at the client. TPOT is
(E2E - TTFT) / (output tokens - 1) per request; ITL is every gap between content chunks, pooled.
Output tokens come from the server's ``usage``, never from counting chunks. A cache hit is an
answer huayu took from its cache (``exact`` or ``near``); one that joined an identical request in
flight (``coalesced``) waited for that generation, and is judged like a miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson


@dataclass
class Sample:
    """One request as the client saw it. Times in milliseconds; ``start_s`` from the run's start."""

    kind: str  # the user profile: visitor, curator, bulk
    step: int  # index of the load step it was sent in; -1 for the warm-up
    start_s: float
    e2e_ms: float
    ok: bool
    status: int = 0
    error: str | None = None
    stream: bool = False
    ttft_ms: float | None = None
    output_tokens: int | None = None
    cached: bool | None = None
    cache_kind: str | None = None  # huayu's cache.kind: exact, near or coalesced
    itl_ms: list[float] = field(default_factory=list)

    @property
    def cache_hit(self) -> bool:
        """Answered from the cache itself (not by waiting for an identical request's generation)."""
        return bool(self.cached) and self.cache_kind != "coalesced"

    @property
    def coalesced(self) -> bool:
        return bool(self.cached) and self.cache_kind == "coalesced"

    @property
    def tpot_ms(self) -> float | None:
        return tpot(self.e2e_ms, self.ttft_ms, self.output_tokens)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: bytes | str) -> Sample:
        data: dict[str, Any] = orjson.loads(line)
        return cls(**data)


def tpot(e2e_ms: float, ttft_ms: float | None, output_tokens: int | None) -> float | None:
    """Time per output token after the first; None where it is undefined (no stream, one token)."""
    if ttft_ms is None or output_tokens is None or output_tokens < 2:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class StreamResult:
    """What an SSE body told: the content chunks' arrival times and the final fields."""

    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    cached: bool | None = None
    cache_kind: str | None = None
    finished: bool = False  # a chunk carried finish_reason
    done: bool = False  # the [DONE] line arrived
    error: str | None = None
    text: str = ""


class StreamReader:
    """Feeds on the raw bytes of a chat-completions stream as they arrive, with their arrival times.

    Network reads split and merge SSE events freely, so bytes are buffered up to each blank line;
    an event is timed by the read that completed it, which is when a client could have shown it.
    """

    def __init__(self, sent_at: float) -> None:
        self.sent_at = sent_at
        self.result = StreamResult()
        self._buffer = b""
        self._last_content: float | None = None
        self._pieces: list[str] = []

    def feed(self, data: bytes, at: float) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return
            event, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip(), at)

    def _data(self, payload: bytes, at: float) -> None:
        r = self.result
        if payload == b"[DONE]":
            r.done = True
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            r.error = r.error or f"unparsable stream chunk: {payload[:80]!r}"
            return
        if not isinstance(chunk, dict):
            r.error = r.error or "stream chunk is not a JSON object"
            return
        if "error" in chunk:
            err = chunk["error"]
            r.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if r.ttft_ms is None:
                    r.ttft_ms = (at - self.sent_at) * 1000
                elif self._last_content is not None:
                    r.itl_ms.append((at - self._last_content) * 1000)
                self._last_content = at
                self._pieces.append(content)
            if choice.get("finish_reason"):
                r.finished = True
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            r.output_tokens = int(usage["completion_tokens"])
        huayu = chunk.get("huayu")
        if isinstance(huayu, dict) and "cached" in huayu:
            r.cached, r.cache_kind = huayu_cache(huayu)

    def close(self) -> StreamResult:
        """The result once the body has ended; a stream that ended early is an error."""
        r = self.result
        r.text = "".join(self._pieces)
        if r.error is None and not (r.finished and r.done):
            r.error = "the stream ended before its last chunk" if not r.finished else "the stream ended without [DONE]"
        return r


def huayu_cache(fields: dict[str, Any]) -> tuple[bool, str | None]:
    """``cached`` and the cache's kind from huayu's fields of an answer."""
    cache = fields.get("cache")
    kind = cache.get("kind") if isinstance(cache, dict) else None
    return bool(fields.get("cached")), kind if isinstance(kind, str) else None


def read_stream(chunks: Iterable[tuple[float, bytes]], sent_at: float) -> StreamResult:
    """The result of a whole stream given as (arrival time in seconds, bytes) pairs."""
    reader = StreamReader(sent_at)
    for at, data in chunks:
        reader.feed(data, at)
    return reader.close()
