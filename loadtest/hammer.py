"""A fast HTTP load client for the gateway benchmark, run in a process of its own (aiohttp on uvloop).

    python -m loadtest.hammer SPEC.json      # prints one JSON object of figures

SPEC: ``url``, ``body_file`` (or ``body_files``, sent in turn), ``headers``, ``stream``, and either
``concurrency`` (closed loop: each connection sends its next request when the last one ends) or
``rate`` (open loop: requests start
on a fixed schedule, timed from their scheduled start so a slow server cannot hide its queue),
with ``seconds`` and ``max_requests`` bounding the run and ``warmup`` requests sent first.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.metrics import StreamReader, percentile


class _Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.url: str = spec["url"]
        files = spec.get("body_files") or [spec["body_file"]]
        self.bodies = [Path(f).read_bytes() for f in files]
        self.sent = 0
        self.cached = 0  # answers that say they came from huayu's cache
        self.headers = {"content-type": "application/json", **spec.get("headers", {})}
        self.stream = bool(spec.get("stream"))
        self.timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout_s", 30)))
        self.e2e: list[float] = []
        self.ttft: list[float] = []
        self.errors: dict[str, int] = {}

    async def one(self, session: aiohttp.ClientSession, started: float, record: bool = True) -> None:
        error = None
        ttft = None
        body = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        try:
            async with session.post(self.url, data=body, headers=self.headers, timeout=self.timeout) as r:
                if r.status != 200:
                    await r.read()
                    error = f"HTTP {r.status}"
                elif self.stream:
                    reader = StreamReader(started)
                    async for data in r.content.iter_any():
                        reader.feed(data, time.perf_counter())
                    result = reader.close()
                    error, ttft = result.error, result.ttft_ms
                else:
                    answer = await r.read()
                    if b'"choices"' not in answer:
                        error = "no choices in the answer"
                    elif record and b'"cached":true' in answer:
                        self.cached += 1
        except (aiohttp.ClientError, TimeoutError) as e:
            error = type(e).__name__
        if not record:
            return
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
            return
        self.e2e.append((time.perf_counter() - started) * 1000)
        if ttft is not None:
            self.ttft.append(ttft)

    def figures(self, wall_s: float) -> dict[str, Any]:
        n_err = sum(self.errors.values())
        total = len(self.e2e) + n_err
        out: dict[str, Any] = {
            "requests": total,
            "ok": len(self.e2e),
            "errors": self.errors,
            "error_rate": n_err / total if total else 0.0,
            "wall_s": wall_s,
            "rps": len(self.e2e) / wall_s if wall_s else 0.0,
            "cached": self.cached,
        }
        for name, values in (("e2e_ms", self.e2e), ("ttft_ms", self.ttft)):
            out[name] = {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
        return out


async def closed_loop(run: _Run, concurrency: int, seconds: float, max_requests: int, warmup: int) -> float:
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(warmup):
            await asyncio.gather(*(run.one(session, time.perf_counter(), False) for _ in range(concurrency)))
        t0 = time.perf_counter()
        end = t0 + seconds
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                await run.one(session, time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0


async def open_loop(run: _Run, rate: float, seconds: float, max_requests: int, warmup: int) -> float:
    conn = aiohttp.TCPConnector(limit=4096)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(warmup):
            await run.one(session, time.perf_counter(), False)
        count = min(max_requests, max(1, round(rate * seconds)))
        t0 = time.perf_counter()
        tasks = []
        for i in range(count):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run.one(session, due)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0


async def hammer(spec: dict[str, Any]) -> dict[str, Any]:
    run = _Run(spec)
    seconds, cap, warmup = (
        float(spec.get("seconds", 2)),
        int(spec.get("max_requests", 100_000)),
        int(spec.get("warmup", 0)),
    )
    if spec.get("rate"):
        wall = await open_loop(run, float(spec["rate"]), seconds, cap, warmup)
    else:
        wall = await closed_loop(run, int(spec.get("concurrency", 1)), seconds, cap, warmup)
    return run.figures(wall)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m loadtest.hammer SPEC.json")
    spec = orjson.loads(Path(args[0]).read_bytes())
    try:
        import uvloop

        figures = uvloop.run(hammer(spec))
    except ImportError:  # uvloop comes with uvicorn[standard]; plain asyncio still gives usable figures
        figures = asyncio.run(hammer(spec))
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
