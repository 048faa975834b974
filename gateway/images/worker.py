"""``prepare_image`` off the event loop, in a pool of processes, one per core.

Not ``ProcessPoolExecutor``: there each call crosses a feeder thread, a result thread and a
``call_soon_threadsafe`` back to the loop, wake-ups that added ~1 ms at p50 and 3-6 ms at p99 to a
6 ms image on a 2-core machine, and its feeder pickles a 36 MB upload holding the GIL (the loop stood
still 20 ms); ``bench/bench_images.py`` measures both. Here the event loop talks to each worker over two
pipes itself, with no thread on the path: it writes a task without blocking, a pipeful per turn of the
loop (``add_writer``), and reads the answer as it arrives (``add_reader``). A task goes to an idle
worker, or waits in a FIFO until one is free, so a burst never puts two images on one core. The
worker's side and the frames are in ``worker_process.py``.

``stage()`` is the two-phase way, for the description cache: the worker answers with the cache keys
(a ``Staged``) and keeps the upload (a small JPEG was decoded only at the fingerprint's scale) or the
model image's pixels; the model image, its JPEG and the thumbnail are made only if the caller then
asks (``Staged.finish()``, a miss). ``Staged.drop()`` (a hit) frees the worker at once. With an
``early`` callback the worker tells the digest and the pHash before the signature (``KEYS_EARLY``).
The worker stays busy between the two; a caller that went away meanwhile, or a ``Staged`` that is
never finished nor dropped (a watchdog, ``verdict_timeout_s``), is dropped by the pool itself.

The pool binds to the event loop that first uses it (the app's); its processes start then, not in
``__init__``. A test that makes one per test, each in its own loop, gets one pool per loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

from gateway.errors import ServiceUnavailable, Unprocessable
from gateway.images.prepare import EarlyKeys, ImageKeys, ImageOptions, PreparedImage
from gateway.images.worker_process import DROP, FINISH, FULL, KEYS_EARLY, KEYS_FIRST, Reply, WorkerProcess

if TYPE_CHECKING:
    from gateway.cache.metrics import CacheMetrics

log = logging.getLogger("huayu.images")

LOST = "the image could not be processed (the decoder stopped); try another copy"
# workers that die before they are ready, in a row, after which the pool starts no more: a broken
# install would otherwise respawn forever, each start a second of CPU
START_ATTEMPTS = 3
# a staged image neither finished nor dropped by then (a bug) is dropped, so its worker is not lost
VERDICT_TIMEOUT_S = 30.0
# a worker busy with one image longer than this (a decoder stuck on a hostile file) is stopped
TASK_TIMEOUT_S = 60.0


@dataclass(eq=False)  # identity: a task is found in the queue by itself, not by comparing uploads
class _Task:
    data: bytes
    opts: ImageOptions
    future: asyncio.Future[Any]  # a PreparedImage; a Staged for a task in KEYS_FIRST or KEYS_EARLY mode
    mode: int = FULL
    deadline: asyncio.TimerHandle | None = None  # while a worker has it
    early: EarlyKeys | None = None  # told the digest and the pHash before the keys come (KEYS_EARLY)


class Staged:
    """An image as far as its cache keys (``keys``), its worker holding the pixels: ``finish()`` for
    the model-ready image (a cache miss), or ``drop()`` (a hit), which frees the worker. Either may be
    called again, and after the worker died; ``finish()`` after ``drop()`` raises ``RuntimeError``."""

    def __init__(
        self, pool: ImageWorker, proc: WorkerProcess, keys: ImageKeys, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.keys = keys
        self._pool = pool
        self._proc = proc
        self._outcome: asyncio.Future[PreparedImage] | None = None  # once finish() was asked
        self._gone: str | None = None  # why it can no longer be finished: dropped, expired, lost, closed
        self._watchdog = loop.call_later(pool.verdict_timeout_s, self._expire)

    @property
    def held(self) -> bool:
        """Its worker waits for the verdict: neither finished nor dropped yet."""
        return self._outcome is None and self._gone is None

    async def finish(self) -> PreparedImage:
        if self._outcome is None:
            if self._gone == "lost":
                raise Unprocessable(LOST)
            if self._gone == "closed":
                raise ServiceUnavailable("the image workers have stopped")
            if self._gone is not None:
                raise RuntimeError(f"this staged image was {self._gone}; it cannot be finished")
            self._outcome = self._pool._finish(self._proc)
        # shielded: a finish() that is cancelled leaves the answer to a second one
        return await asyncio.shield(self._outcome)

    def drop(self) -> None:
        if self.held:
            self._pool._drop(self._proc)

    def _release(self, why: str) -> None:
        self._gone = self._gone or why
        self._watchdog.cancel()

    def _expire(self) -> None:
        if self.held:
            log.warning(
                "image worker %s: a staged image was neither finished nor dropped within %g s; dropped",
                self._proc.pid,
                self._pool.verdict_timeout_s,
            )
            self._pool._drop(self._proc, why="dropped by the watchdog, unfinished")


class _RemoteTraceback(Exception):
    """The worker's traceback, chained to an unexpected error so that the gateway's log shows where."""

    def __str__(self) -> str:
        return str(self.args[0])


class ImageWorker:
    """Runs ``prepare_image`` in a pool of processes, off the event loop, on all cores."""

    def __init__(
        self,
        workers: int = 0,
        metrics: CacheMetrics | None = None,
        verdict_timeout_s: float = VERDICT_TIMEOUT_S,
        task_timeout_s: float = TASK_TIMEOUT_S,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.metrics = metrics
        self.verdict_timeout_s = verdict_timeout_s
        self.task_timeout_s = task_timeout_s
        self._overdue: set[WorkerProcess] = set()  # stopped for taking too long: their task hears why
        # what the workers were asked: "full" tasks, "staged" ones (keys answered), then "finished" or
        # "dropped" (the tests read it: a cache hit must not have made a JPEG)
        self.counts: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._procs: list[WorkerProcess] = []
        self._idle: list[WorkerProcess] = []  # a stack: the worker that finished last has the warmest caches
        self._running: dict[WorkerProcess, _Task] = {}
        self._held: dict[WorkerProcess, Staged] = {}  # keys answered, waiting for finish() or drop()
        self._writing: set[WorkerProcess] = set()  # those with a task not yet all in their pipe
        self._waiting: deque[_Task] = deque()
        self._retired: list[SpawnProcess] = []  # dead workers, until reaped
        self._warming: list[asyncio.Future[None]] = []
        self._failed_starts = 0
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (the tests kill one)."""
        return [p.pid for p in self._procs]

    async def warm(self) -> None:
        """Start every worker now, and wait until each is ready, rather than on the first requests."""
        loop = self._bind()
        while any(not p.ready for p in self._procs):
            waiter = loop.create_future()
            self._warming.append(waiter)
            await waiter
            self._check()  # none left: they die as they start

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        if self.metrics is not None:
            self.metrics.image_tasks.labels(kind).inc()

    async def prepare(self, data: bytes, opts: ImageOptions) -> PreparedImage:
        """The model-ready image and its keys, in one go."""
        loop = self._bind()
        self._count("full")
        result: PreparedImage = await self._run(_Task(data, opts, loop.create_future()))
        return result

    async def stage(self, data: bytes, opts: ImageOptions, early: EarlyKeys | None = None) -> Staged:
        """The image's cache keys, its worker holding on until ``finish()`` or ``drop()``: one of them
        must follow (in a ``finally``), else the watchdog drops it after ``verdict_timeout_s``.
        ``early``, when given, is called on the event loop with the digest and the pHash as soon as
        the worker knows them, before the signature (its errors are logged, not raised)."""
        loop = self._bind()
        mode = KEYS_EARLY if early is not None else KEYS_FIRST
        staged: Staged = await self._run(_Task(data, opts, loop.create_future(), mode, early=early))
        return staged

    async def _run(self, task: _Task) -> Any:
        assert self._loop is not None
        start = self._loop.time()
        self._submit(task)
        try:
            result = await task.future
        except asyncio.CancelledError:
            # a caller that went away: dropped if still queued; if running, its answer is read and dropped
            if task in self._waiting:
                self._waiting.remove(task)
            elif task.future.done() and not task.future.cancelled() and task.future.exception() is None:
                result = task.future.result()  # the answer came as the caller was cancelled
                if isinstance(result, Staged):
                    result.drop()
            raise
        if self.metrics is not None:
            self.metrics.preprocess_seconds.observe(self._loop.time() - start)
        return result

    def close(self) -> None:
        """Stop every worker, promptly and leaving no zombie; callers still waiting get a 503."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        live = loop is not None and not loop.is_closed()
        pending = [*self._waiting, *self._running.values()]
        for task in self._running.values():
            if task.deadline is not None:
                task.deadline.cancel()
        self._waiting.clear()
        self._running.clear()
        for staged in self._held.values():
            staged._release("closed")
        self._held.clear()
        for p in self._procs:
            if live and loop is not None:
                loop.remove_reader(p.in_fd)
                loop.remove_writer(p.out_fd)
            p.close()
            p.process.terminate()  # nothing in a worker needs a clean exit; a long decode would delay one
            self._retired.append(p.process)
        self._procs.clear()
        self._idle.clear()
        if live:
            for task in pending:
                if not task.future.done():
                    task.future.set_exception(ServiceUnavailable("the image workers have stopped"))
            self._wake()
        deadline = time.monotonic() + 2.0
        for proc in self._retired:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._retired:
            if proc.exitcode is None:
                proc.kill()
                proc.join(1.0)
        self._retired.clear()

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None and not self._closed:
            self._loop = loop
            for _ in range(self.workers):
                self._spawn()
        elif self._loop is not loop and not self._closed:
            raise RuntimeError("an ImageWorker serves the event loop that first used it")
        self._check()
        return loop

    def _check(self) -> None:
        if self._closed:
            raise ServiceUnavailable("the image workers have stopped")
        if not self._procs:
            raise ServiceUnavailable("the image workers could not start; see the gateway's log")

    def _spawn(self) -> None:
        assert self._loop is not None
        p = WorkerProcess()  # ~10 ms on the loop (a fork and exec): at start-up, and after a crash
        self._procs.append(p)
        self._loop.add_reader(p.in_fd, self._readable, p)

    def _submit(self, task: _Task, *, first: bool = False) -> None:
        if self._idle:
            self._dispatch(self._idle.pop(), task)
        elif first:
            self._waiting.appendleft(task)
        else:
            self._waiting.append(task)

    def _dispatch(self, p: WorkerProcess, task: _Task) -> None:
        self._start(p, task)
        p.send(task.data, task.opts, task.mode)
        self._write(p)

    def _start(self, p: WorkerProcess, task: _Task) -> None:
        assert self._loop is not None
        self._running[p] = task
        task.deadline = self._loop.call_later(self.task_timeout_s, self._too_long, p, task)

    def _done(self, p: WorkerProcess) -> _Task | None:
        """The worker's task, no longer its: the answer came, or the worker is gone."""
        task = self._running.pop(p, None)
        if task is not None and task.deadline is not None:
            task.deadline.cancel()
        return task

    def _too_long(self, p: WorkerProcess, task: _Task) -> None:
        if self._running.get(p) is not task:
            return
        log.warning("image worker %s spent over %g s on one image; stopped", p.pid, self.task_timeout_s)
        self._overdue.add(p)
        p.process.kill()  # the end of file on its answers follows: _lost() fails the task and starts another

    def _write(self, p: WorkerProcess) -> None:
        assert self._loop is not None
        try:
            done = p.write()
        except OSError:
            # the worker is gone; the end of file on its answers says so too, and _lost() handles it there
            done = True
            if p.sent == 0:
                # it died idle, before this task reached it: the task is not to blame, and goes elsewhere
                task = self._done(p)
                assert task is not None
                self._submit(task, first=True)
        if not done and p not in self._writing:
            self._loop.add_writer(p.out_fd, self._write, p)
            self._writing.add(p)
        elif done and p in self._writing:
            self._loop.remove_writer(p.out_fd)
            self._writing.discard(p)

    def _readable(self, p: WorkerProcess) -> None:
        try:
            replies = p.read()  # none while one is still coming in pieces
        except EOFError:
            self._lost(p)
            return
        for reply in replies:
            if reply[0] == "early":
                self._early(p, *reply[1])
                continue
            if reply[0] == "ready":
                p.ready = True
                self._failed_starts = 0
                self._wake()
            elif reply[0] == "keys":
                if not self._keys(p, reply[1]):
                    continue  # it holds the pixels until the verdict (or it is gone)
            else:
                self._answer(p, reply)
            self._next(p)

    def _early(self, p: WorkerProcess, digest: str, phash: int) -> None:
        task = self._running.get(p)
        if task is None or task.early is None or task.future.done():
            return  # its caller went away
        try:
            task.early(digest, phash)
        except Exception:  # the caller's; the keys still come
            log.exception("the early keys' callback failed")

    def _keys(self, p: WorkerProcess, keys: ImageKeys) -> bool:
        """A staged task's keys: to its caller, the worker held. True if the worker is free instead."""
        assert self._loop is not None
        task = self._done(p)
        if task is not None and task.mode != FULL and not task.future.done():
            self._count("staged")
            self._held[p] = staged = Staged(self, p, keys, self._loop)
            task.future.set_result(staged)
            return False
        if task is not None and not task.future.done():  # keys for a task that asked for none: a bug
            task.future.set_exception(RuntimeError("the image worker answered with keys alone"))
        # the caller went away while the keys were being made
        self._count("dropped")
        return self._verdict(p, DROP)

    def _finish(self, p: WorkerProcess) -> asyncio.Future[PreparedImage]:
        """``Staged.finish()``: the worker makes the JPEG; its answer goes to the future returned."""
        assert self._loop is not None
        self._held.pop(p)._release("finished")
        self._count("finished")
        future: asyncio.Future[PreparedImage] = self._loop.create_future()
        future.add_done_callback(_retrieved)
        self._start(p, _Task(b"", _NO_OPTIONS, future))
        self._verdict(p, FINISH)  # if it is gone, the end of file comes, and _lost() fails the future
        return future

    def _drop(self, p: WorkerProcess, why: str = "dropped") -> None:
        """``Staged.drop()``: the worker forgets the image and takes the next task."""
        self._held.pop(p)._release(why)
        self._count("dropped")
        if self._verdict(p, DROP):
            self._next(p)

    def _verdict(self, p: WorkerProcess, byte: bytes) -> bool:
        try:
            p.verdict(byte)
        except OSError:
            # gone (or, were the protocol broken, not reading): the end of file on its answers comes,
            # the kill makes sure of it, and _lost() fails what was asked of it and starts another
            p.process.kill()
            return False
        return True

    def _answer(self, p: WorkerProcess, reply: Reply) -> None:
        kind, value, tb = reply
        task = self._done(p)
        if task is None or task.future.done():
            return  # its caller went away
        if kind == "ok":
            task.future.set_result(value)
            return
        if tb is not None:
            value.__cause__ = _RemoteTraceback(tb)
        task.future.set_exception(value)

    def _next(self, p: WorkerProcess) -> None:
        while self._waiting:
            task = self._waiting.popleft()
            if not task.future.done():
                self._dispatch(p, task)
                return
        self._idle.append(p)

    def _lost(self, p: WorkerProcess) -> None:
        """A worker died (a decoder crash, the kernel's OOM killer): fail its task only, start another."""
        assert self._loop is not None
        self._loop.remove_reader(p.in_fd)
        if p in self._writing:
            self._loop.remove_writer(p.out_fd)
            self._writing.discard(p)
        p.close()
        p.process.kill()  # in case it lives on with a broken pipe; a no-op on the dead
        self._procs.remove(p)
        if p in self._idle:
            self._idle.remove(p)
        self._retired.append(p.process)
        self._loop.call_later(1.0, self._reap)
        task = self._done(p)
        if task is not None and not task.future.done():
            if p in self._overdue:
                task.future.set_exception(
                    Unprocessable(f"the image took over {self.task_timeout_s:g} s to prepare and was given up")
                )
            else:
                task.future.set_exception(Unprocessable(LOST))
        self._overdue.discard(p)
        held = self._held.pop(p, None)
        if held is not None:
            held._release("lost")  # a finish() now raises Unprocessable(LOST)
        if not p.ready:
            self._failed_starts += 1
        log.warning(
            "image worker %s stopped%s%s",
            p.pid,
            " while preparing an image" if task is not None or held is not None else "",
            "" if p.ready else " before it was ready",
        )
        if self._failed_starts < START_ATTEMPTS:
            self._spawn()
        elif not self._procs:
            log.error("image workers fail to start; the gateway cannot prepare images")
            while self._waiting:
                waiting = self._waiting.popleft()
                if not waiting.future.done():
                    waiting.future.set_exception(ServiceUnavailable("the image workers could not start"))
        self._wake()

    def _reap(self) -> None:
        self._retired = [proc for proc in self._retired if proc.exitcode is None]  # exitcode reaps the dead

    def _wake(self) -> None:
        for waiter in self._warming:
            if not waiter.done():
                waiter.set_result(None)
        self._warming.clear()


# the options of a finishing task: the worker has them already, nothing is sent
_NO_OPTIONS = ImageOptions(max_bytes=0, max_pixels=0)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Marks a finish's failure as seen: its caller may have been cancelled, and asyncio would log it."""
    if not future.cancelled():
        future.exception()
