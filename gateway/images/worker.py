"""``prepare_image`` off the event loop, in a pool of processes."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import cv2

from gateway.errors import Unprocessable
from gateway.images.prepare import ImageOptions, PreparedImage, prepare_image

if TYPE_CHECKING:
    from gateway.cache.metrics import CacheMetrics


def _warm() -> int:
    return os.getpid()


def _init_worker() -> None:
    # one process per core already: more threads per process would only contend
    cv2.setNumThreads(1)


class ImageWorker:
    """Runs ``prepare_image`` in a pool of processes, off the event loop, on all cores."""

    def __init__(self, workers: int = 0, metrics: CacheMetrics | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.metrics = metrics
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing

        # spawn: forking a process that runs an event loop and threads is unsafe
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)

    async def warm(self) -> None:
        """Start every worker now rather than on the first requests."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _warm) for _ in range(self.workers)))

    async def prepare(self, data: bytes, opts: ImageOptions) -> PreparedImage:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            result = await loop.run_in_executor(self._pool, prepare_image, data, opts)
        except BrokenProcessPool as e:
            # a decoder crashed or the kernel killed a worker (memory): replace the pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise Unprocessable("the image could not be processed (the decoder stopped); try another copy") from e
        if self.metrics is not None:
            self.metrics.preprocess_seconds.observe(loop.time() - start)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
