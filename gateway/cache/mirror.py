"""Each gateway process's copy of which pHashes the shared Redis cache holds, so that finding the
near-duplicate candidates of an image is a local index query, not a round trip that ships
thousands of candidates to be filtered here.

Every put appends a record (scope, pHash) to one Redis stream. A process loads the stream when it
starts (XRANGE, in chunks) and then follows it (XREAD BLOCK on a connection of its own), so what
any process puts becomes a near candidate in all of them a round trip later. A record is kept as
long as Redis may still hold its entry: until ``ttl_s`` after it was put (the time in its stream
ID), and among the newest ``max_records``, the stream's own bound. A record whose entry is gone
anyway (evicted, deleted, flushed) is dropped when a lookup meets it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import redis.asyncio as aioredis

from gateway.cache.index import NearIndex

log = logging.getLogger("huayu.cache")
RECORD_SIZE = 32  # a stream record: the scope id (24 hex digits), the pHash (8 bytes, big-endian)
CHUNK = 10_000  # records per XRANGE / XREAD reply
BLOCK_MS = 1000  # how long one XREAD waits for news
SWEEP_S = 10.0  # how often records past their TTL are dropped


def stream_record(sid: str, phash: int) -> bytes:
    return sid.encode() + phash.to_bytes(8, "big")


def _id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


def _as_is(response: Any, **options: Any) -> Any:
    return response


def _raw(rid: tuple[int, int]) -> str:
    return f"{rid[0]}-{rid[1]}"


class Candidate(NamedTuple):
    distance: int
    phash: int
    slots: list[int]  # this pHash's records in the scope's index


class _Scope:
    def __init__(self, near_distance: int) -> None:
        self.index = NearIndex(near_distance)
        self.put_ms = np.zeros(64, dtype=np.int64)  # per slot: when its record was put

    def add(self, phashes: np.ndarray, ms: np.ndarray) -> None:
        slots = self.index.add_many(phashes)
        if len(slots) and slots.max() >= len(self.put_ms):
            self.put_ms = np.resize(self.put_ms, max(int(slots.max()) + 1, 2 * len(self.put_ms)))
        self.put_ms[slots] = ms


class Mirror:
    """The records, per scope, each scope's pHashes in a NearIndex."""

    def __init__(self, near_distance: int, *, ttl_s: float, max_records: int) -> None:
        self.near_distance = near_distance
        self.ttl_ms = int(ttl_s * 1000)
        self.max_records = max(1, max_records)
        self._scopes: dict[str, _Scope] = {}

    def __len__(self) -> int:
        return sum(len(s.index) for s in self._scopes.values())

    def add(self, sid: str, phashes: np.ndarray, ms: np.ndarray) -> None:
        scope = self._scopes.get(sid)
        if scope is None:
            scope = self._scopes[sid] = _Scope(self.near_distance)
        scope.add(np.asarray(phashes, dtype=np.uint64), np.asarray(ms, dtype=np.int64))

    def query(self, sid: str, phash: int) -> list[Candidate]:
        """The distinct pHashes within the near distance, nearest first."""
        scope = self._scopes.get(sid)
        if scope is None:
            return []
        found: dict[int, Candidate] = {}
        for distance, slot in scope.index.query(phash):
            h = scope.index.hash_of(slot)
            cand = found.get(h)
            if cand is None:
                found[h] = Candidate(distance, h, [slot])
            else:  # put more than once: one record each time
                cand.slots.append(slot)
        return list(found.values())

    def drop(self, sid: str, slots: Sequence[int]) -> None:
        scope = self._scopes.get(sid)
        if scope is not None:
            scope.index.remove_many(np.array(slots, dtype=np.int64))

    def sweep(self, now_ms: int) -> None:
        """Drops records past their TTL, then the oldest beyond ``max_records``."""
        cutoff = now_ms - self.ttl_ms
        live = {sid: s.index.live_slots() for sid, s in self._scopes.items()}
        total = sum(len(v) for v in live.values())
        if total > self.max_records:
            times = np.concatenate([s.put_ms[live[sid]] for sid, s in self._scopes.items()])
            cutoff = max(cutoff, int(np.partition(times, total - self.max_records)[total - self.max_records]))
        for sid, scope in list(self._scopes.items()):
            slots = live[sid]
            scope.index.remove_many(slots[scope.put_ms[slots] < cutoff])
            if not len(scope.index):
                del self._scopes[sid]


_Batch = dict[str, list[tuple[np.ndarray, np.ndarray]]]  # per scope id, per reply: pHashes, put times


class Follower:
    """Loads the stream into a Mirror, then follows it: one task per RedisCache."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        mirror: Mirror,
        *,
        on_error: Callable[[BaseException], None],
        backoff_s: float,
    ) -> None:
        self.client = client
        for command in ("XRANGE", "XREAD"):  # raw replies: no dict made per record
            client.set_response_callback(command, _as_is)
        self.key = key
        self.mirror = mirror
        self.on_error = on_error
        self.backoff_s = backoff_s
        self.loaded = asyncio.Event()  # set once the stream has been read to its end
        self._last = (0, 0)  # where reading the stream goes on from
        self._seen = (0, 0)  # the newest record read from the stream (added, or about to be)
        self._own: set[tuple[int, int]] = set()  # put here, added at once, not to be added again
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def put_here(self, sid: str, phash: int, stream_id: bytes) -> None:
        """A put of this process: in the mirror at once, not only when the stream brings it back."""
        rid = _id(stream_id)
        if rid <= self._seen:
            return  # the stream has already brought it
        if len(self._own) > 100_000:  # not being followed (Redis down?): forget, at worst a duplicate
            self._own.clear()
        self._own.add(rid)
        self.mirror.add(sid, np.array([phash], dtype=np.uint64), np.array([rid[0]]))

    async def _run(self) -> None:
        next_sweep, failing = 0.0, False
        while not self._closing:
            try:
                if not self.loaded.is_set():
                    await self._load()
                    self.loaded.set()
                reply: Any = await self.client.xread({self.key: _raw(self._last)}, count=CHUNK, block=BLOCK_MS)
                # one stream's entries, as a map (RESP3) or a list of [key, entries] (RESP2)
                for entries in reply.values() if isinstance(reply, dict) else [e for _, e in reply or []]:
                    batch = _Batch()
                    self._parse(entries, batch)
                    self._add(batch)
                failing = False
            except Exception as e:  # whatever it was, following must go on after a pause
                if not failing:  # once a streak: a Redis that is down is logged by the requests too
                    unexpected = not isinstance(e, aioredis.RedisError | OSError | TimeoutError)
                    log.warning("following the cache's stream failed (%r); retrying", e, exc_info=unexpected)
                failing = True
                self.on_error(e)
                await asyncio.sleep(self.backoff_s)
            if time.monotonic() >= next_sweep or len(self.mirror) > 1.1 * self.mirror.max_records:
                self.mirror.sweep(int(time.time() * 1000))
                next_sweep = time.monotonic() + SWEEP_S

    async def _load(self) -> None:
        """The whole stream, gathered first and added in one go per scope (one index merge)."""
        start, batch = "-", _Batch()
        if self._last != (0, 0):
            start = "(" + _raw(self._last)
        while True:
            entries: Any = await self.client.xrange(self.key, min=start, max="+", count=CHUNK)
            if entries:
                self._parse(entries, batch)
                start = "(" + entries[-1][0].decode()
            if len(entries) < CHUNK:
                break
        self._add(batch)

    def _parse(self, entries: list[list[Any]], batch: _Batch) -> None:
        """Raw entries, [id, [field, value]], into ``batch``, as arrays: a long stream's load keeps
        16 bytes a record until it is added, not a few Python objects."""
        groups: dict[bytes, tuple[list[bytes], list[int]]] = {}
        for raw_id, fields in entries:
            if self._own and (rid := _id(raw_id)) in self._own:
                self._own.discard(rid)
            elif len(fields) == 2 and fields[0] == b"r" and len(rec := fields[1]) == RECORD_SIZE:
                group = groups.get(rec[:24])
                if group is None:
                    group = groups[rec[:24]] = ([], [])
                group[0].append(rec[24:])
                group[1].append(int(raw_id.partition(b"-")[0]))
        for sid, (phashes, ms) in groups.items():
            part = (np.frombuffer(b"".join(phashes), dtype=">u8"), np.array(ms, dtype=np.int64))
            batch.setdefault(sid.decode(errors="replace"), []).append(part)  # garbage: no lookup asks
        self._seen = max(self._seen, _id(entries[-1][0]))

    def _add(self, batch: _Batch) -> None:
        for sid, parts in batch.items():
            self.mirror.add(sid, np.concatenate([h for h, _ in parts]), np.concatenate([m for _, m in parts]))
        self._last = self._seen

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            # again until it ends: on Python 3.11 a cancel that comes as one of redis-py's writes
            # (an asyncio.wait_for) completes is lost, and the task would follow on for ever
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.05)
            self._task = None
        await self.client.aclose()
