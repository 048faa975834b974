"""A real vLLM server (CPU backend) on the tiny random-weights Qwen3-VL, once per session.

The model and two random LoRA adapters are built into ``.data/models/`` (skipped when
already there); the server starts with ``tiny-lora-a`` loaded and runtime LoRA loading
enabled. Other test folders share the same server with
``from tests.e2e.conftest import vllm_server``: a reference count keeps one process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serving.launch import ModelServer, build_command, free_port, serving_env
from serving.presets import TINY

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".data"
MODELS = DATA / "models"
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
MODEL_DIR = MODELS / "tiny-qwen3-vl"
ADAPTERS = {"tiny-lora-a": (MODELS / "tiny-lora-a", 1), "tiny-lora-b": (MODELS / "tiny-lora-b", 2)}
STARTUP_ADAPTER = "tiny-lora-a"

_BUILD = f"""
from pathlib import Path
from serving.tiny_model import build_tiny_model
from serving.lora import make_random_adapter
model = build_tiny_model(Path({str(MODEL_DIR)!r}), seed=0)
for out, seed in {[(str(p), s) for p, s in ADAPTERS.values()]!r}:
    make_random_adapter(model, Path(out), seed=seed)
"""


@dataclass
class VllmServer:
    base_url: str  # ".../v1"
    model: str  # the served name of the base model
    adapter_dirs: dict[str, Path]  # every adapter built; only STARTUP_ADAPTER is loaded at start
    startup_adapter: str
    ready_after_s: float
    server: ModelServer = field(repr=False)

    @property
    def url(self) -> str:
        return self.server.url


def require_serving_venv() -> Path:
    if not SERVING_PYTHON.exists():
        pytest.fail(
            f"The serving venv is missing ({SERVING_PYTHON.relative_to(ROOT)}): the e2e tests need the real vLLM. "
            "Run `make test` (it installs it) or `bash serving/install.sh .venv-serving`.",
            pytrace=False,
        )
    return SERVING_PYTHON


def build_models() -> None:
    python = require_serving_venv()
    done = subprocess.run([python, "-c", _BUILD], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"Building the tiny model and adapters failed:\n{done.stderr[-4000:]}", pytrace=False)


_lock = threading.Lock()
_shared: VllmServer | None = None
_users = 0


def _acquire() -> VllmServer:
    global _shared, _users
    with _lock:
        if _shared is None:
            build_models()
            port = free_port()
            cmd = build_command(
                TINY,
                python=SERVING_PYTHON,
                port=port,
                model_path=MODEL_DIR,
                lora_modules={STARTUP_ADAPTER: ADAPTERS[STARTUP_ADAPTER][0]},
            )
            env = serving_env(DATA, preset=TINY, offline=True)
            server = ModelServer(cmd, env=env, log_path=DATA / "logs" / "vllm-e2e.log", host="127.0.0.1", port=port)
            server.start()
            try:
                ready = server.wait_ready(timeout=420)
            except Exception as exc:
                server.stop()
                pytest.fail(str(exc), pytrace=False)
            print(f"\nvLLM (tiny, CPU) ready after {ready:.1f} s on port {port}", file=sys.stderr)
            _shared = VllmServer(
                base_url=server.base_url,
                model=TINY.served_name,
                adapter_dirs={name: path for name, (path, _) in ADAPTERS.items()},
                startup_adapter=STARTUP_ADAPTER,
                ready_after_s=ready,
                server=server,
            )
        _users += 1
        return _shared


def _release() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users == 0 and _shared is not None:
            _shared.server.stop()
            _shared = None


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmServer]:
    server = _acquire()
    try:
        yield server
    finally:
        _release()
