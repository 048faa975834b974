"""One image worker process: its life in the child, and its handle in the pool (``worker.py``).

They talk over two pipes. The pool writes a task as one frame::

    !BIQ  the mode, the length of the pickled options, the length of the image bytes
    the pickled ``ImageOptions``
    the image bytes as they are (not pickled: a 50 MB upload is neither copied nor scanned)

and the worker answers each with one frame, ``!Q`` length then a pickled ``Reply``: ``("ready", pid,
None)`` once at start, then ``("ok", PreparedImage, None)`` or ``("err", exception, traceback)``.

A task in ``KEYS_FIRST`` mode is answered in two steps: ``("keys", ImageKeys, None)`` once the cache
keys are known (in ``KEYS_EARLY`` mode ``("early", (digest, phash), None)`` comes before them, as soon
as those two are known, so a lookup can start while the signature is made), then the worker, holding
the pixels, waits for one verdict byte on the task pipe:
``FINISH`` (``+``) makes the JPEG and the thumbnail and answers ``("ok", PreparedImage, None)`` (or
``("err", ...)``); ``DROP`` (``-``) forgets the image, and the next task is read. A task that fails
before its keys answers ``("err", ...)`` and expects no verdict. The pool writes the verdict byte
only after the keys came, when the worker has read the whole task: the pipe is empty then, and one
non-blocking byte always goes in.
The pool's ends of both pipes are non-blocking (uvloop makes a watched fd so anyway): a frame goes out,
and comes in, in as many pieces as the pipe takes, and the event loop never waits on a worker, neither
for the rest of a 50 MB upload to drain nor for the rest of an answer being written.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import struct
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any, BinaryIO

import cv2

from gateway.errors import HuayuError
from gateway.images.prepare import ImageOptions, StagedImage, prepare_image, stage_image

TASK_HEADER = struct.Struct("!BIQ")
FULL, KEYS_FIRST, KEYS_EARLY = 0, 1, 2  # a task's mode
FINISH, DROP = b"+", b"-"  # the verdict on a task whose keys were sent
REPLY_HEADER = struct.Struct("!Q")
# Both pipes grow to this where the kernel allows: a typical upload (~0.2 MB) and every answer then go
# in one write, without waiting for the other side to drain the default 64 KiB.
PIPE_BYTES = 1 << 20

Reply = tuple[str, Any, str | None]


class WorkerProcess:
    """A worker process, seen from the pool: the process and the pool's ends of its two pipes."""

    def __init__(self) -> None:
        # spawn: forking a process that runs an event loop and threads is unsafe
        ctx = multiprocessing.get_context("spawn")
        task_r, self._tasks = ctx.Pipe(duplex=False)
        self._results, result_w = ctx.Pipe(duplex=False)
        self.out_fd, self.in_fd = self._tasks.fileno(), self._results.fileno()
        _grow(self.out_fd)
        _grow(self.in_fd)
        self.process: SpawnProcess = ctx.Process(
            target=_serve, args=(task_r, result_w), name="huayu-image", daemon=True
        )
        self.process.start()
        # the child has its own copies; with ours closed, its death reads as end of file on the answers
        task_r.close()
        result_w.close()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.in_fd, False)
        self.ready = False
        self.sent = 0  # bytes of the current task written
        self._unsent: list[memoryview] = []
        self._inbox = bytearray()  # an answer that has come in pieces, until it is whole

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def send(self, data: bytes, opts: ImageOptions, mode: int = FULL) -> None:
        """Queue a task's frame for ``write``."""
        head = pickle.dumps(opts, pickle.HIGHEST_PROTOCOL)
        self._unsent = [memoryview(TASK_HEADER.pack(mode, len(head), len(data)) + head), memoryview(data)]
        self.sent = 0

    def verdict(self, byte: bytes) -> None:
        """``FINISH`` or ``DROP`` the task whose keys came: one byte into the task pipe, which is
        empty then. ``OSError`` when the worker is gone (or, were the protocol broken, the pipe full)."""
        if os.write(self.out_fd, byte) != 1:
            raise OSError("the verdict was not written")

    def write(self) -> bool:
        """What the pipe takes now of the task, in one write; True once all of it is out. One write a
        call: with the worker draining the pipe as fast as it fills, a loop would only end with the
        whole upload, 30 ms of the event loop's time for a 36 MB one. A worker that is gone raises
        ``OSError`` (a broken pipe)."""
        try:
            n = os.writev(self.out_fd, self._unsent)
        except BlockingIOError:
            return False
        except OSError:
            self._unsent.clear()
            raise
        self.sent += n
        _advance(self._unsent, n)
        return not self._unsent

    def read(self) -> list[Reply]:
        """What has arrived, in one read: the answers it completes, none while one is still coming in
        pieces (the loop calls again while more is there). A worker has one task at a time, but a
        task in ``KEYS_EARLY`` mode answers twice in a row (the early keys, then the keys), so one
        read may hold both, or one and the start of the other. A worker that is gone, perhaps
        halfway through an answer, raises ``EOFError``."""
        try:
            chunk = os.read(self.in_fd, PIPE_BYTES)
        except BlockingIOError:
            return []
        except OSError as e:
            raise EOFError from e
        if not chunk:
            raise EOFError
        if not self._inbox and _whole(chunk):
            return [_loads(chunk)]  # the usual case: one answer in one read, copied once
        self._inbox += chunk
        replies = []
        while len(self._inbox) >= REPLY_HEADER.size:
            end = REPLY_HEADER.size + REPLY_HEADER.unpack_from(self._inbox)[0]
            if len(self._inbox) < end:
                break
            replies.append(_loads(self._inbox[:end]))
            del self._inbox[:end]
        return replies

    def close(self) -> None:
        self._tasks.close()
        self._results.close()


def _whole(frame: bytes | bytearray) -> bool:
    return len(frame) >= REPLY_HEADER.size and len(frame) == REPLY_HEADER.size + REPLY_HEADER.unpack_from(frame)[0]


def _loads(frame: bytes | bytearray) -> Reply:
    try:
        reply: Reply = pickle.loads(memoryview(frame)[REPLY_HEADER.size :])
    except Exception as e:  # the worker checks what it sends; this is a last line
        return ("err", e, None)
    return reply


def _serve(tasks: Connection, results: Connection) -> None:
    """The worker's whole life: until the pool closes its end of the task pipe (or dies)."""
    # Ctrl-C reaches the whole process group; the pool, not the terminal, decides when workers stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one process per core already: more threads per process would only contend
    cv2.setNumThreads(1)
    keep_heap()
    reader = open(tasks.fileno(), "rb", closefd=False)  # noqa: SIM115 - lives as long as the process
    out = results.fileno()
    try:
        _reply(out, ("ready", os.getpid(), None))
        while (task := _read_task(reader)) is not None:
            mode, data, opts = task
            if mode == FULL:
                reply = _run(prepare_image, data, opts)
            else:
                reply = _run(stage_image, data, opts, None, _teller(out) if mode == KEYS_EARLY else None)
            del data, task  # the upload's memory goes back before the next one arrives
            if mode == FULL or reply[0] != "ok":
                _reply(out, reply)  # the image, or an error (when staged: no verdict comes)
                continue
            staged: StagedImage = reply[1]
            del reply
            _reply(out, ("keys", staged.keys, None))
            verdict = reader.read(1)
            if verdict == FINISH:
                _reply(out, _run(staged.finish))
            elif verdict != DROP:
                return  # the end of file (the pool closed), or a broken protocol: this worker is done
            del staged  # the pixels go back before the next task arrives
    except BrokenPipeError:
        pass  # the pool closed the answers' pipe: nobody is waiting for one


# glibc's mallopt() parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_MAX = 32 * 1024 * 1024  # blocks up to this come from the heap (glibc's ceiling for the setting)
HEAP_TRIM = 64 * 1024 * 1024  # free memory at the heap's top beyond this goes back to the system


def keep_heap() -> bool:
    """Keeps a worker's image-sized blocks in its heap between tasks; True where that took (glibc).

    glibc serves a large block with a fresh mapping and unmaps it on free, while the block is above
    its mmap threshold; the threshold follows the largest block freed so far. A worker that met a
    small image first then mapped and unmapped the arrays of every larger one: in the cache-hit
    benchmark ~300 page faults a task, and a copy's keys took 4.2-4.3 ms in the worker instead of
    3.6-3.8 (p99 8.8-10.1 instead of 6.0-7.2). Fixed thresholds keep blocks up to 32 MB (a 1024-pixel
    image's arrays are ~2.4 MB) in the heap, where the next task finds them; a 50-megapixel master's
    arrays are still mapped, and returned when freed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators do as they do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM))


def _read_task(reader: BinaryIO) -> tuple[int, bytes, ImageOptions] | None:
    head = reader.read(TASK_HEADER.size)
    if len(head) < TASK_HEADER.size:
        return None  # end of file: the pool closed
    mode, n_opts, n_data = TASK_HEADER.unpack(head)
    opts = pickle.loads(reader.read(n_opts))
    data = reader.read(n_data)
    if len(data) < n_data:
        return None
    return mode, data, opts


def _teller(out: int) -> Callable[[str, int], None]:
    """stage_image's ``early``: the digest and the pHash to the pool at once, in a frame of their own."""

    def tell(digest: str, phash: int) -> None:
        _reply(out, ("early", (digest, phash), None))

    return tell


def _run(work: Callable[..., Any], *args: Any) -> Reply:
    try:
        return ("ok", work(*args), None)
    except Exception as e:
        # the gateway's own errors are answers; anything else is a fault, whose origin the logs should show
        tb = None if isinstance(e, HuayuError) else traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e, pickle.HIGHEST_PROTOCOL))
        except Exception:
            # one that does not survive pickling would fail the answer, not just the request
            return ("err", RuntimeError(f"{type(e).__name__}: {e}"), tb)
        return ("err", e, tb)


def _reply(fd: int, reply: Reply) -> None:
    body = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    bufs = [memoryview(REPLY_HEADER.pack(len(body))), memoryview(body)]
    while bufs:  # a blocking fd: each write takes what the pipe has room for, until all is out
        _advance(bufs, os.writev(fd, bufs))


def _advance(bufs: list[memoryview], n: int) -> None:
    """Drop the first ``n`` bytes written from the front of ``bufs``, and any empty buffer there."""
    while bufs and len(bufs[0]) <= n:
        n -= len(bufs.pop(0))
    if n:
        bufs[0] = bufs[0][n:]


def _grow(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        # not Linux, or past the user's quota of large pipes: the default size works, with more round trips
        pass
