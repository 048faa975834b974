"""The image worker pool with real processes: answers, errors, bursts, a killed worker, cancelled
callers, shutdown, and both event loops the gateway runs on; staged tasks (the keys first, the JPEG
on finish()) and every way one can end."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import psutil
import pytest
import uvloop
from PIL import Image

from gateway.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable, Unprocessable, UnsupportedMedia
from gateway.images import ImageKeys, ImageOptions, ImageWorker, PreparedImage, prepare_image, stage_image
from tests.media import encode, jpeg, painting

OPTS = ImageOptions(max_bytes=256 << 20, max_pixels=120_000_000)


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """12 megapixels of noise as a ~36 MB PNG: a decode that takes a while, and an upload far larger
    than the pipe, so it goes to the worker in pieces as the pipe drains."""
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), np.uint8)
    return encode(Image.fromarray(noise), "PNG", compress_level=1)


def small(seed: int = 0) -> bytes:
    return jpeg(1024, 768, seed=seed, quality=95)


def keys_of(p: PreparedImage) -> ImageKeys:
    return ImageKeys(**{f.name: getattr(p, f.name) for f in fields(ImageKeys)})


def children() -> set[int]:
    return {c.pid for c in psutil.Process().children()}


def wait_dead(pid: int) -> None:
    """Block (the event loop too) until ``pid`` has exited; it stays unreaped, for its parent to reap."""
    deadline = time.monotonic() + 10
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"{pid} did not die"
        time.sleep(0.01)


async def test_answers_equal_a_direct_call(big_png: bytes) -> None:
    worker = ImageWorker(workers=2)
    try:
        await worker.warm()
        assert len(worker.pids) == 2
        ready = prepare_image(small(), OPTS).jpeg  # already the model's JPEG: sent on as it is
        for data in (small(), encode(painting(451, 300), "PNG"), ready, big_png):
            assert await worker.prepare(data, OPTS) == prepare_image(data, OPTS)
        # noise at 2048 pixels and q100: an answer of several MB, larger than the pipe, read in pieces
        wide = ImageOptions(max_bytes=256 << 20, max_pixels=120_000_000, max_edge=2048, jpeg_quality=100)
        answer = await worker.prepare(big_png, wide)
        assert len(answer.jpeg) > 2 << 20
        assert answer == prepare_image(big_png, wide)
    finally:
        worker.close()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(encode(painting(64, 64), "GIF"), UnsupportedMedia, id="gif"),
        pytest.param(b"", InvalidRequest, id="empty"),
        pytest.param(jpeg(64, 64), PayloadTooLarge, id="too-large"),
        pytest.param(jpeg(16, 64), Unprocessable, id="too-small"),
        pytest.param(b"\xff\xd8\xff\xe0 not really a JPEG", InvalidRequest, id="corrupt-header"),
    ],
)
async def test_errors_keep_their_type_and_message(data: bytes, error: type[Exception]) -> None:
    opts = ImageOptions(max_bytes=2000, max_pixels=120_000_000) if error is PayloadTooLarge else OPTS
    with pytest.raises(error) as direct:
        prepare_image(data, opts)
    worker = ImageWorker(workers=1)
    try:
        with pytest.raises(error) as pooled:
            await worker.prepare(data, opts)
        assert type(pooled.value) is type(direct.value)
        assert str(pooled.value) == str(direct.value)
        assert await worker.prepare(small(), OPTS) == prepare_image(small(), OPTS)  # and it serves on
    finally:
        worker.close()


async def test_an_unexpected_error_brings_the_workers_traceback() -> None:
    opts = ImageOptions(max_bytes=1 << 20, max_pixels=120_000_000)
    object.__setattr__(opts, "max_edge", "wide")  # past the options' own check: a fault in the worker's code
    with pytest.raises(TypeError) as direct:
        prepare_image(small(), opts)
    worker = ImageWorker(workers=1)
    try:
        with pytest.raises(TypeError) as pooled:
            await worker.prepare(small(), opts)
        assert str(pooled.value) == str(direct.value)
        assert "in target_size" in str(pooled.value.__cause__)  # where it went wrong, for the log
    finally:
        worker.close()


async def test_a_burst_waits_for_idle_workers() -> None:
    uploads = [small(seed) for seed in range(20)]
    worker = ImageWorker(workers=2)
    try:
        await worker.warm()
        pids = worker.pids
        results = await asyncio.gather(*(worker.prepare(u, OPTS) for u in uploads))
        assert results == [prepare_image(u, OPTS) for u in uploads]
        assert worker.pids == pids
    finally:
        worker.close()


async def test_a_killed_worker_fails_only_its_request(big_png: bytes) -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        [pid] = worker.pids
        doomed = asyncio.create_task(worker.prepare(big_png, OPTS))
        queued = [asyncio.create_task(worker.prepare(small(seed), OPTS)) for seed in range(3)]
        await asyncio.sleep(0.01)  # the big upload is on its way in, or being decoded (~0.15 s in all)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Unprocessable, match="decoder stopped"):
            await doomed
        # the requests queued behind it go to the replacement
        assert await asyncio.gather(*queued) == [prepare_image(small(seed), OPTS) for seed in range(3)]
        assert worker.pids != [pid]
    finally:
        worker.close()
    assert pid not in children()


async def test_a_worker_stuck_on_one_image_is_stopped_and_the_rest_go_on(big_png: bytes) -> None:
    worker = ImageWorker(workers=1, task_timeout_s=0.08)  # the big PNG takes ~0.15 s or more
    try:
        await worker.warm()
        [pid] = worker.pids
        stuck = asyncio.create_task(worker.prepare(big_png, OPTS))
        queued = [asyncio.create_task(worker.prepare(small(seed), OPTS)) for seed in range(2)]
        with pytest.raises(Unprocessable, match=r"took over 0\.08 s"):
            await stuck
        assert await asyncio.gather(*queued) == [prepare_image(small(seed), OPTS) for seed in range(2)]
        with pytest.raises(Unprocessable, match=r"took over 0\.08 s"):
            await worker.stage(big_png, OPTS)  # the first phase of a staged one is bounded too
        staged = await worker.stage(small(), OPTS)
        assert await staged.finish() == prepare_image(small(), OPTS)
        assert pid not in worker.pids and len(worker.pids) == 1
    finally:
        worker.close()
    assert pid not in children()


async def test_a_worker_killed_while_idle_costs_no_request() -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        [pid] = worker.pids
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)  # the loop has not seen it die yet: the task meets a broken pipe, and waits
        assert await worker.prepare(small(), OPTS) == prepare_image(small(), OPTS)
        assert worker.pids != [pid]
    finally:
        worker.close()


async def test_cancelled_callers_leave_the_worker_serving(big_png: bytes) -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        pids = worker.pids
        running = asyncio.create_task(worker.prepare(big_png, OPTS))
        waiting = asyncio.create_task(worker.prepare(small(1), OPTS))
        await asyncio.sleep(0.01)
        running.cancel()
        waiting.cancel()
        outcomes = await asyncio.gather(running, waiting, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        # the abandoned answer is read and dropped; the next caller gets its own
        assert await worker.prepare(small(2), OPTS) == prepare_image(small(2), OPTS)
        assert worker.pids == pids
    finally:
        worker.close()


async def test_close_is_prompt_and_reaps_every_worker(big_png: bytes) -> None:
    worker = ImageWorker(workers=2)
    await worker.warm()
    pids = worker.pids
    assert set(pids) <= children()
    busy = asyncio.create_task(worker.prepare(big_png, OPTS))
    await asyncio.sleep(0.01)
    start = time.monotonic()
    worker.close()
    assert time.monotonic() - start < 3
    with pytest.raises(ServiceUnavailable):
        await busy
    with pytest.raises(ServiceUnavailable):
        await worker.prepare(small(), OPTS)
    worker.close()  # twice is fine
    assert not set(pids) & children()


def test_a_worker_that_is_never_used_starts_nothing() -> None:
    before = children()
    ImageWorker(workers=2).close()
    assert children() <= before


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_on_each_event_loop(new_loop: Callable[[], asyncio.AbstractEventLoop], big_png: bytes) -> None:
    async def scenario() -> list[int]:
        worker = ImageWorker(workers=2)
        try:
            await worker.warm()
            uploads = [small(seed) for seed in range(4)] + [big_png]
            assert await asyncio.gather(*(worker.prepare(u, OPTS) for u in uploads)) == [
                prepare_image(u, OPTS) for u in uploads
            ]
            with pytest.raises(UnsupportedMedia):
                await worker.prepare(encode(painting(64, 64), "GIF"), OPTS)
            staged = [await worker.stage(small(seed), OPTS) for seed in range(2)]
            assert await staged[0].finish() == prepare_image(small(0), OPTS)
            staged[1].drop()
            killed = worker.pids[0]
            os.kill(killed, signal.SIGKILL)
            wait_dead(killed)
            assert await worker.prepare(small(), OPTS) == prepare_image(small(), OPTS)
            return [killed, *worker.pids]
        finally:
            worker.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        pids = runner.run(scenario())
    assert not set(pids) & children()


def test_workers_that_cannot_start_are_not_respawned_forever(tmp_path: Path) -> None:
    # without the __main__ guard every spawned worker, importing this script, dies as it starts
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            from gateway.errors import ServiceUnavailable
            from gateway.images import ImageWorker

            async def main():
                worker = ImageWorker(workers=1)
                try:
                    await worker.warm()
                except ServiceUnavailable as e:
                    print("refused:", e)
                finally:
                    worker.close()

            asyncio.run(main())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert "refused: the image workers could not start" in done.stdout, done.stderr[-2000:]
    assert done.stderr.count("before it was ready") == 3


# ---- staged tasks: the keys first, the JPEG on finish() ---------------------------------------


async def test_staged_keys_and_finish_equal_a_direct_call(big_png: bytes) -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        ready = prepare_image(small(), OPTS).jpeg
        uploads = [small(), encode(painting(451, 300), "PNG"), ready, big_png]
        for data in uploads:
            want = prepare_image(data, OPTS)
            staged = await worker.stage(data, OPTS)
            assert staged.keys == keys_of(want) == stage_image(data, OPTS).keys
            assert type(staged.keys) is ImageKeys  # the JPEG was not made, nor sent
            assert await staged.finish() == want
            assert await staged.finish() == want  # twice: the same answer, no second verdict
            staged.drop()  # after finish(): nothing happens
        assert worker.counts == {"staged": 4, "finished": 4}
        # the errors of the first stage keep their type, and expect no verdict
        with pytest.raises(UnsupportedMedia):
            await worker.stage(encode(painting(64, 64), "GIF"), OPTS)
        assert await worker.prepare(small(1), OPTS) == prepare_image(small(1), OPTS)
    finally:
        worker.close()


async def test_early_keys_come_before_the_keys_and_equal_them(big_png: bytes, caplog: pytest.LogCaptureFixture) -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        for data in (small(), jpeg(1024, 768, seed=3, quality=80), big_png):
            told: list[tuple[str, int]] = []
            staged = await worker.stage(data, OPTS, early=lambda d, h, told=told: told.append((d, h)))
            # the early frame arrived (often in the same read as the keys) and was heard first
            assert told == [(staged.keys.digest, staged.keys.phash)]
            assert await staged.finish() == prepare_image(data, OPTS)

        # a callback that fails is the caller's: logged, and the keys still come
        def broken(digest: str, phash: int) -> None:
            raise ValueError("the caller's bug")

        staged = await worker.stage(small(2), OPTS, early=broken)
        assert staged.keys == stage_image(small(2), OPTS).keys
        staged.drop()
        assert "the early keys' callback failed" in caplog.text
        assert worker.counts == {"staged": 4, "finished": 3, "dropped": 1}
    finally:
        worker.close()


def test_a_read_holding_two_answers_or_a_part_gives_each_whole() -> None:
    from gateway.images.worker_process import REPLY_HEADER, WorkerProcess

    def frame(reply: tuple[object, ...]) -> bytes:
        body = pickle.dumps(reply)
        return REPLY_HEADER.pack(len(body)) + body

    p = WorkerProcess.__new__(WorkerProcess)  # only its reading half, on a pipe of our own
    r, w = os.pipe()
    p.in_fd, p._inbox = r, bytearray()
    try:
        early, keys = frame(("early", ("ab" * 16, 7), None)), frame(("keys", "K", None))
        os.write(w, early + keys[:5])
        assert p.read() == [("early", ("ab" * 16, 7), None)]
        os.write(w, keys[5:] + early)
        assert p.read() == [("keys", "K", None), ("early", ("ab" * 16, 7), None)]
        os.write(w, keys[:2])
        assert p.read() == []  # not even the header yet
        os.write(w, keys[2:])
        assert p.read() == [("keys", "K", None)]
    finally:
        os.close(r)
        os.close(w)


async def test_drop_frees_the_worker_at_once() -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        pids = worker.pids
        staged = await worker.stage(small(1), OPTS)
        after = asyncio.create_task(worker.prepare(small(2), OPTS))
        await asyncio.sleep(0.2)
        assert not after.done()  # the only worker holds the staged image, until its verdict
        staged.drop()
        assert await asyncio.wait_for(after, 10) == prepare_image(small(2), OPTS)
        staged.drop()  # twice is fine
        with pytest.raises(RuntimeError, match="dropped"):
            await staged.finish()
        assert worker.pids == pids and worker.counts["dropped"] == 1
    finally:
        worker.close()


async def test_a_finish_cancelled_leaves_the_answer_to_the_next(big_png: bytes) -> None:
    worker = ImageWorker(workers=1)
    try:
        staged = await worker.stage(big_png, OPTS)
        first = asyncio.create_task(staged.finish())
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await staged.finish() == prepare_image(big_png, OPTS)
        assert await worker.prepare(small(), OPTS) == prepare_image(small(), OPTS)
    finally:
        worker.close()


async def test_a_caller_cancelled_before_its_keys_does_not_hold_the_worker(big_png: bytes) -> None:
    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        running = asyncio.create_task(worker.stage(big_png, OPTS))
        queued = asyncio.create_task(worker.stage(small(1), OPTS))
        await asyncio.sleep(0.01)  # the big upload is on its way in, or being decoded
        running.cancel()
        queued.cancel()
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        # when the keys come, the pool drops them itself: the next task runs on the one worker
        assert await asyncio.wait_for(worker.prepare(small(2), OPTS), 10) == prepare_image(small(2), OPTS)
        assert worker.counts["dropped"] == 1 and worker.counts["staged"] == 0
    finally:
        worker.close()


async def test_the_watchdog_drops_a_forgotten_staged_image(caplog: pytest.LogCaptureFixture) -> None:
    worker = ImageWorker(workers=1, verdict_timeout_s=0.2)
    try:
        forgotten = await worker.stage(small(1), OPTS)
        start = time.monotonic()
        assert await asyncio.wait_for(worker.prepare(small(2), OPTS), 10) == prepare_image(small(2), OPTS)
        assert 0.15 < time.monotonic() - start < 5
        assert "neither finished nor dropped" in caplog.text
        assert not forgotten.held
        with pytest.raises(RuntimeError, match="watchdog"):
            await forgotten.finish()
        # a verdict in time cancels it: nothing is dropped behind a finish
        finished = await worker.stage(small(3), OPTS)
        assert await finished.finish() == prepare_image(small(3), OPTS)
        await asyncio.sleep(0.3)
        assert worker.counts["dropped"] == 1
    finally:
        worker.close()


@pytest.mark.parametrize("noticed", [False, True], ids=["unnoticed", "noticed"])
async def test_a_worker_killed_between_keys_and_finish(noticed: bool) -> None:
    worker = ImageWorker(workers=1)
    try:
        staged = await worker.stage(small(1), OPTS)
        [pid] = worker.pids
        os.kill(pid, signal.SIGKILL)
        if noticed:  # the pool has seen it die, and started another
            while worker.pids == [pid]:
                await asyncio.sleep(0.01)
        else:  # not yet: the verdict meets a broken pipe
            wait_dead(pid)
        with pytest.raises(Unprocessable, match="decoder stopped"):
            await staged.finish()
        with pytest.raises(Unprocessable, match="decoder stopped"):
            await staged.finish()  # again: the same answer
        staged.drop()
        assert await worker.prepare(small(2), OPTS) == prepare_image(small(2), OPTS)
        assert worker.pids != [pid]
        # dropped, not finished, when it dies: nothing fails, and the pool serves on
        other = await worker.stage(small(3), OPTS)
        [pid] = worker.pids
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        other.drop()
        assert await worker.prepare(small(4), OPTS) == prepare_image(small(4), OPTS)
    finally:
        worker.close()
    assert pid not in children()


async def test_close_fails_a_held_staged_image() -> None:
    worker = ImageWorker(workers=1)
    staged = await worker.stage(small(), OPTS)
    worker.close()
    with pytest.raises(ServiceUnavailable):
        await staged.finish()
    staged.drop()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="page fault counts are read from /proc")
async def test_a_worker_keeps_its_image_sized_blocks_between_tasks() -> None:
    """A worker that met a smaller image first used to map and unmap every array of each larger
    image (glibc's mmap threshold follows the largest block freed): ~1,600 page faults a task for
    these 992x744 copies, which are resized to 992x736."""

    def faults(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])  # minflt

    worker = ImageWorker(workers=1)
    try:
        await worker.warm()
        (pid,) = worker.pids
        (await worker.stage(jpeg(512, 384, seed=9), OPTS)).drop()
        for seed in range(3):
            (await worker.stage(jpeg(992, 744, seed=seed, quality=90), OPTS)).drop()
        before = faults(pid)
        for seed in range(3, 23):
            (await worker.stage(jpeg(992, 744, seed=seed, quality=90), OPTS)).drop()
        per_task = (faults(pid) - before) / 20
        assert per_task < 40, f"{per_task:.0f} page faults a task"
    finally:
        worker.close()
