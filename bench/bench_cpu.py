"""The gateway's own CPU per request, in process: what each request costs huayu, free of the 2-core
machine's scheduling noise.

The app is called as an ASGI application (no HTTP server, no load-client process) in front of a
zero-delay simulator in another process, one request at a time, and the process's CPU time is read
before and after (every thread of it: the results store's included). The baseline, in the same
run: huayu's own HTTP client sending the simulator the very request huayu sends it, which is the
part of a request's CPU that no gateway avoids. The rest is huayu's work. Wall-clock latency of the
end-to-end benchmark (``bench_gateway``) moves with this figure but also with the machine; this one
moves by a few microseconds between runs, so it shows what a change to the request path is worth.

    python -m bench.bench_cpu [--requests 3000] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.bench_gateway import bodies, image_b64, last_request
from bench.run_all import write_section
from gateway.app import create_app
from gateway.config import Settings
from gateway.http1 import Client
from loadtest.simulator import SimConfig, run_in_subprocess

CHAT = "/v1/chat/completions"
Call = Callable[[], Awaitable[None]]


def asgi_call(app: Any, body: bytes) -> Call:
    """One chat request to ``app``, its body in 64 KB pieces as uvicorn hands them over."""
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def call() -> None:
        left = iter(pieces)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            piece = next(left, None)
            if piece is None:
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": piece, "more_body": True}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": CHAT,
            "raw_path": CHAT.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"the gateway answered {sent[0]['status']}: {sent[1:]}")

    return call


def client_call(client: Client, body: bytes) -> Call:
    async def call() -> None:
        response = await client.post(CHAT, body, headers={"content-type": "application/json"})
        async with response:
            await response.read()

    return call


async def measure(call: Call, requests: int) -> tuple[float, float]:
    """CPU microseconds per request (this process, all its threads) and the wall-clock p50."""
    for _ in range(min(300, requests)):
        await call()
    walls = []
    cpu = time.process_time()
    for _ in range(requests):
        t = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - t)
    return (time.process_time() - cpu) / requests * 1e6, statistics.median(walls) * 1e6


async def run(sim_url: str, requests: int, rounds: int, tmp: Path) -> dict[str, list[tuple[float, float]]]:
    common: dict[str, Any] = {"upstream_url": sim_url + "/v1", "cache_backend": "off", "safety_enabled": True}
    configs = {
        "huayu, store off": Settings(**common, store_enabled=False),
        "huayu as shipped (safety, SQLite store)": Settings(**common, database_url=f"sqlite+aiosqlite:///{tmp}/s.db"),
    }
    body = bodies(image_b64(), 16)["huayu_plain"]
    results: dict[str, list[tuple[float, float]]] = {BASELINE: [], **{name: [] for name in configs}}
    upstream_body = b""
    for _ in range(rounds):
        for name, settings in configs.items():
            app = create_app(settings)
            async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
                results[name].append(await measure(asgi_call(app, body), requests))
            if not upstream_body:  # what huayu sent upstream, as the simulator recorded it
                upstream_body = last_request(sim_url)
        client = Client(sim_url)
        results[BASELINE].append(await measure(client_call(client, upstream_body), requests))
        await client.aclose()
    return results


BASELINE = "baseline: huayu's HTTP client, huayu's upstream request, straight to the simulator"


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    base = statistics.median(cpu for cpu, _ in results[BASELINE])
    lines = [
        "| path | CPU µs per request | its own (minus the baseline) | ratio to the baseline | wall p50 µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        cpus = [cpu for cpu, _ in runs]
        cpu = statistics.median(cpus)
        own = "–" if name == BASELINE else f"{cpu - base:.0f}"
        wall = statistics.median(w for _, w in runs)
        spread = f" ({min(cpus):.0f}–{max(cpus):.0f})"
        lines.append(f"| {name} | {cpu:.0f}{spread} | {own} | {cpu / base:.2f} | {wall:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per figure")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="huayu-bench-") as tmp,
        run_in_subprocess(SimConfig(tokens=16, max_model_len=16384)) as sim,
    ):
        results = uvloop.run(run(sim.url, args.requests, args.rounds, Path(tmp)))
    text = (
        f"One chat request at a time with a 102 KB base64 image, called in process as an ASGI app "
        f"(huayu's cache off, its image memo on); {args.requests} requests per figure after 300 to warm up, "
        f"{args.rounds} rounds, medians (min–max). CPU: the process's CPU time over the requests, every "
        "thread. The simulator (zero delay) runs in its own process and is not counted.\n\n" + table(results)
    )
    print(text)
    if not args.no_write:
        write_section("bench_cpu", "The gateway's CPU per request", text)


if __name__ == "__main__":
    main()
