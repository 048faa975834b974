"""The journal: ``results.jsonl`` in the output folder, one finished item a line, append-only.

It is both the run's first output and its resume state. Every line is handed to the kernel as
soon as its item finishes (so a SIGKILL loses nothing already written) and fsync'd about once a
second (so a power cut loses at most that second); a line cut short by a kill is dropped when
the journal is next opened, and its item runs again. A finished item is never requested again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import InvalidRequest

log = logging.getLogger("huayu.batch")

RESULTS = "results.jsonl"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a journal; a partial last line (a killed write) is left out."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s line %d is not JSON; ignored", path, n)
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                yield record


def finished_keys(path: Path) -> set[str]:
    return {r["key"] for r in read_records(path)}


def _complete_length(path: Path) -> int:
    """Bytes up to and including the last newline."""
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return pos - step + nl + 1
            pos -= step
    return 0


class Journal:
    def __init__(self, path: Path, fsync_interval_s: float = 1.0) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        # O_APPEND: each line is one write() at the end of the file, whole or not at all
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # two runs into one folder would each request what the other has not yet written
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise InvalidRequest(
                f"Another huayu batch is writing to {path.parent}; wait for it, or give another output folder."
            ) from None
        if path.stat().st_size:
            keep = _complete_length(path)
            if keep < path.stat().st_size:
                log.warning("%s ended in a partial line (a run was killed mid-write); dropped it", path)
                os.truncate(path, keep)
        self.finished = finished_keys(path)
        self._dirty = False
        self._stop = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def append(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        written = os.write(self._fd, line)
        while written < len(line):  # a short write (a full disk shows up as OSError instead)
            written += os.write(self._fd, line[written:])
        self.finished.add(record["key"])
        self._dirty = True

    async def _flush_until_stopped(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.fsync_interval_s)
            if self._dirty:
                self._dirty = False
                await asyncio.to_thread(os.fsync, self._fd)

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_until_stopped())

    async def close(self) -> None:
        # the flusher finishes its fsync before the descriptor goes away
        self._stop.set()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        os.fsync(self._fd)
        os.close(self._fd)
