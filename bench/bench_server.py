"""The gateway on huayu's own HTTP server against the same app on uvicorn, request by request.

Two gateway processes with the same settings (cache off, store off) in front of one simulator: one
is ``huayu serve`` (``gateway/server.py``), the other uvicorn (uvloop, httptools) serving the same
``create_app``. One client alternates its requests between the two and the simulator itself (huayu's
own upstream request, the baseline of the added latency), one at a time, so every figure of a path
is taken beside the others' under the same machine load; the pairing of each request with its
neighbours makes a difference of tens of microseconds visible on a busy 2-core host. The CPU a
request costs each gateway is its process's CPU time over the run, divided by its requests.

    python -m bench.bench_server [--seconds 60] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import uvloop

from bench.bench_gateway import bodies, image_b64, last_request
from bench.run_all import write_section
from loadtest.simulator import SimConfig, run_in_subprocess
from loadtest.stack import Service, free_port, start_gateway

CHAT = "/v1/chat/completions"
HUAYU = "huayu serve (gateway/server.py)"
UVICORN = "the same app on uvicorn"
DIRECT = "straight to the simulator, huayu's upstream request"
SETTINGS = {"HUAYU_CACHE_BACKEND": "off", "HUAYU_STORE_ENABLED": "false", "HUAYU_LOG_LEVEL": "warning"}


def start_uvicorn(upstream: str, tmp: Path) -> Service:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "gateway.app:create_app", "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
    env = {"HUAYU_UPSTREAM_URL": upstream, **SETTINGS}
    service = Service("uvicorn", cmd, f"http://127.0.0.1:{port}", env, log=tmp / "uvicorn.log")
    service.wait_ready("/healthz")
    return service


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def alternate(targets: dict[str, tuple[str, bytes]], seconds: float, warmup: int) -> dict[str, list[float]]:
    """Latencies (s) of each target's requests, sent in turn, one at a time, for ``seconds``."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(url: str, body: bytes) -> float:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}")
            return time.perf_counter() - started

        for _ in range(warmup):
            for name in names:
                await one(*targets[name])
        end = time.monotonic() + seconds
        turn = 0
        while time.monotonic() < end:
            for name in names[turn % 3 :] + names[: turn % 3]:  # each path first, second and last in turn
                times[name].append(await one(*targets[name]))
            turn += 1
    return times


def table(times: dict[str, list[float]], cpu: dict[str, float]) -> str:
    base = statistics.median(times[DIRECT]) * 1e3
    lines = [
        "| path | requests | p50 ms | p99 ms | added p50 ms | CPU µs a request (gateway process) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        ordered = sorted(values)
        p50 = statistics.median(values) * 1e3
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
        added = "–" if name == DIRECT else f"{p50 - base:.3f}"
        spent = f"{cpu[name] / len(values) * 1e6:.0f}" if name in cpu else "–"
        lines.append(f"| {name} | {len(values)} | {p50:.3f} | {p99:.2f} | {added} | {spent} |")
    paired = statistics.median(a - b for a, b in zip(times[HUAYU], times[UVICORN], strict=False)) * 1e3
    ratio = (cpu[HUAYU] / len(times[HUAYU])) / (cpu[UVICORN] / len(times[UVICORN]))
    lines.append("")
    lines.append(
        f"huayu's server minus uvicorn, the median over neighbouring requests: {paired:+.3f} ms; "
        f"CPU a request {ratio:.2f}x uvicorn's."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    body = bodies(image_b64(), 16)["huayu_plain"]
    with tempfile.TemporaryDirectory() as name, run_in_subprocess(SimConfig(tokens=16, max_model_len=16384)) as sim:
        tmp = Path(name)
        ours = start_gateway(sim.base_url, SETTINGS, log=tmp / "huayu.log")
        theirs = start_uvicorn(sim.base_url, tmp)
        try:
            httpx.post(ours.url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=60)
            upstream_body = last_request(sim.url)
            targets = {
                HUAYU: (ours.url + CHAT, body),
                UVICORN: (theirs.url + CHAT, body),
                DIRECT: (sim.url + CHAT, upstream_body),
            }
            pids = {HUAYU: ours.proc.pid, UVICORN: theirs.proc.pid}
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            times = uvloop.run(alternate(targets, args.seconds, args.warmup))
            cpu = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
            # the warm-up's requests are in the CPU time too
            cpu = {n: c * len(times[n]) / (len(times[n]) + args.warmup) for n, c in cpu.items()}
        finally:
            theirs.stop()
            ours.stop()
    text = (
        "One client process (aiohttp on uvloop) sends a chat request with a 102 KB base64 image to each "
        f"path in turn, one at a time, for {args.seconds:.0f} s; the gateways run the same app with the same "
        "settings (cache and store off) in front of one zero-delay simulator. Added = the path's p50 minus "
        "the simulator's answering huayu's own upstream request in the same run.\n\n" + table(times, cpu)
    )
    print(text)
    if not args.no_write:
        write_section("bench_server", "huayu's HTTP server against uvicorn", text)


if __name__ == "__main__":
    main()
