"""Starting the upstream simulator: in a thread or a child process on a free port, or from the command line.

``run_in_thread`` suits functional tests (cheap, same process); ``run_in_subprocess`` gives the
simulator its own interpreter, so it never competes with the gateway for one GIL in a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from loadtest.simulator.app import create_app
from loadtest.simulator.config import SimConfig
from loadtest.simulator.engine import Simulator

READY = "huayu simulator ready at "


class RunningSim:
    """A started simulator: its root URL, its OpenAI base URL, and the test-control endpoints."""

    def __init__(self, url: str, stop: Callable[[], None]) -> None:
        self.url = url
        self.base_url = url + "/v1"
        self._stop = stop

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_sim/config", changes)

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/_sim/reset", None)

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._call("GET", f"/_sim/requests?limit={limit}", None)["data"]
        return data

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        response = httpx.request(method, self.url + path, json=body, timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        self._stop()

    def __enter__(self) -> RunningSim:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # listening before the ready line: early connections queue instead of failing
    return sock


def _server(config: SimConfig, log_level: str) -> tuple[uvicorn.Server, Simulator]:
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            ws="none",
            lifespan="off",
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )
    )
    return server, app.state.sim


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_in_thread(config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    """Serves a simulator from a daemon thread of this process; port 0 picks a free one."""
    server, sim = _server(config or SimConfig(), "warning")
    sock = _listening_socket(host, port)
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve(sockets=[sock])

    def target() -> None:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(serve())

    thread = threading.Thread(target=target, name=f"simulator-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("The simulator did not start within 10 s.")
        time.sleep(0.005)

    def stop() -> None:
        if not thread.is_alive():
            return
        # requests held by the 'hang' fault would keep the graceful shutdown waiting
        loops[0].call_soon_threadsafe(lambda: sim.release.set())
        server.should_exit = True
        thread.join(10)
        sock.close()

    return RunningSim(_url(sock), stop)


def run_in_subprocess(config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    """Serves a simulator from a child Python process; returns once it accepts connections."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "loadtest.simulator", "--host", host, "--port", str(port)]
    cmd += ["--config-json", (config or SimConfig()).model_dump_json()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = ""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if selector.select(timeout=20):
            line = proc.stdout.readline()
    if not line.startswith(READY):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"The simulator process did not start (exit code {proc.poll()}, said {line!r}).")

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    return RunningSim(line[len(READY) :].strip(), stop)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.simulator", description="An upstream simulator like vLLM.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed on the ready line).")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--config-json", help="A whole SimConfig as JSON; the flags below override it.")
    p.add_argument("--selftest", action="store_true", help="Measure the simulator's throughput and exit.")
    p.add_argument("--seconds", type=float, default=2.0, help="Selftest: seconds per measurement.")
    p.add_argument("--concurrency", type=int, default=32, help="Selftest: connections in the closed loop.")
    flags: list[tuple[str, type]] = [
        ("--model", str),
        ("--max-model-len", int),
        ("--ttft-ms", float),
        ("--itl-ms", float),
        ("--jitter", float),
        ("--tokens", int),
        ("--max-num-seqs", int),
        ("--fault", str),
        ("--fault-rate", float),
        ("--fault-count", int),
        ("--drip-ms", float),
        ("--reply", str),
    ]
    for flag, kind in flags:
        p.add_argument(
            flag, type=kind, default=None, help=SimConfig.model_fields[flag[2:].replace("-", "_")].description
        )
    p.add_argument("--extra-model", action="append", default=None, dest="extra_models", help="Repeatable.")
    p.add_argument("--lora", action="append", default=None, metavar="NAME=PATH", help="Repeatable.")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    data: dict[str, Any] = SimConfig.model_validate_json(args.config_json).model_dump() if args.config_json else {}
    for name in SimConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None and name != "loras":
            data[name] = value
    if args.lora:
        bad = [item for item in args.lora if "=" not in item]
        if bad:
            raise SystemExit(f"--lora wants NAME=PATH, got {bad}.")
        data["loras"] = dict(item.split("=", 1) for item in args.lora)
    return SimConfig.model_validate(data)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as e:  # pydantic's ValidationError says which field and what it accepts
        raise SystemExit(f"Invalid simulator settings: {e}") from e
    if args.selftest:
        from loadtest.simulator.selftest import selftest

        selftest(config, args.seconds, args.concurrency)
        return
    sock = _listening_socket(args.host, args.port)
    server, _ = _server(config, args.log_level)
    print(READY + _url(sock), flush=True)
    server.run(sockets=[sock])
