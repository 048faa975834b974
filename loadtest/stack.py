"""Child processes for self-contained runs: the gateway under ``huayu serve``, and any HTTP service.

Each server gets its own interpreter so that the load generator, the gateway and the upstream never
share a GIL; all of them listen on loopback only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from gateway.errors import UpstreamUnavailable

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """A server in a child process; stopped (TERM, then KILL) when the block ends."""

    def __init__(self, name: str, cmd: Sequence[str], url: str, env: dict[str, str], log: Path | None = None) -> None:
        self.name, self.url = name, url
        self._log = open(log, "wb") if log else None  # noqa: SIM115 - closed in stop()
        sink = self._log or subprocess.DEVNULL
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(list(cmd), env=full_env, stdout=sink, stderr=subprocess.STDOUT)

    def wait_ready(self, path: str, timeout_s: float = 60.0, headers: dict[str, str] | None = None) -> None:
        """Polls ``path`` until it answers 200; raises if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise UpstreamUnavailable(f"{self.name} exited with code {self.proc.returncode} while starting.")
            try:
                r = httpx.get(self.url + path, timeout=2, headers=headers)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.2)
        self.stop()
        raise UpstreamUnavailable(f"{self.name} was not ready within {timeout_s:g} s at {self.url}{path} ({last}).")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Service:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_gateway(upstream_url: str, env: dict[str, str] | None = None, log: Path | None = None) -> Service:
    """``huayu serve`` on a free port in front of ``upstream_url`` (…/v1); returns once /healthz answers."""
    port = free_port()
    settings = {
        "HUAYU_HOST": "127.0.0.1",
        "HUAYU_PORT": str(port),
        "HUAYU_UPSTREAM_URL": upstream_url,
        "HUAYU_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    service = Service("the gateway", cmd, f"http://127.0.0.1:{port}", settings | (env or {}), log)
    service.wait_ready("/healthz")
    return service
