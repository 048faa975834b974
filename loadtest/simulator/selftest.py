"""``python -m loadtest.simulator --selftest``: how many requests a second the simulator sustains.

The simulator runs in its own process; the client here is a raw keep-alive HTTP/1.1 loop on uvloop,
far cheaper per request than the simulator, so the figure is the simulator's. Each chat figure is
printed beside ``GET /health`` measured in the same run, the floor of any Starlette app on uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

import orjson
import uvloop

from loadtest.simulator.config import SimConfig
from loadtest.simulator.run import run_in_subprocess


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    start = lower.index(b"content-length:") + 15
    length = int(lower[start : lower.index(b"\r\n", start)])
    await reader.readexactly(length)
    return status


async def _closed_loop(host: str, port: int, request: bytes, seconds: float, concurrency: int) -> tuple[int, int]:
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                if await _read_response(reader) == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors


def _post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _image_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    # a smooth picture with a little grain compresses like a painting: about 100 KB at 1024x768
    grain = Image.effect_noise((1024, 768), 12).convert("RGB")
    Image.blend(Image.linear_gradient("L").convert("RGB").resize((1024, 768)), grain, 0.3).save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def selftest(config: SimConfig, seconds: float, concurrency: int) -> None:
    zero = config.model_copy(update={"ttft_ms": 0.0, "itl_ms": 0.0, "jitter": 0.0, "fault": "none"})
    text = [{"role": "user", "content": "用一段话描述这幅画的构图与笔触。"}]
    image = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _image_data_url()}},
                {"type": "text", "text": "Describe this painting for a museum label."},
            ],
        }
    ]
    cases = [
        ("GET /health (baseline)", b"GET /health HTTP/1.1\r\nhost: sim\r\n\r\n"),
        ("chat, text, 64 tokens", _post("/v1/chat/completions", orjson.dumps({"messages": text, "max_tokens": 64}))),
        ("chat, image, 64 tokens", _post("/v1/chat/completions", orjson.dumps({"messages": image, "max_tokens": 64}))),
        (
            "chat, text, stream 64 chunks",
            _post("/v1/chat/completions", orjson.dumps({"messages": text, "max_tokens": 64, "stream": True})),
        ),
    ]
    with run_in_subprocess(zero) as sim:
        host, port = sim.url.removeprefix("http://").rsplit(":", 1)
        print(f"simulator at {sim.url}; {concurrency} connections, {seconds:g} s per case, zero delays")
        baseline = 0.0
        for label, request in cases:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_closed_loop(host, int(port), request, min(0.5, seconds), concurrency))  # warm-up
                started = time.perf_counter()
                done, errors = runner.run(_closed_loop(host, int(port), request, seconds, concurrency))
            rate = done / (time.perf_counter() - started)
            baseline = baseline or rate
            print(f"{label:32s} {rate:9.0f} req/s  {rate / baseline:5.2f}x baseline  errors {errors}")
