"""Starting vLLM's OpenAI server for a preset, and waiting for it.

Standard library only (plus the error hierarchy), so the gateway's venv can launch the
server that lives in the serving venv: ``build_command(python=".venv-serving/bin/python")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from gateway.errors import InvalidRequest, UpstreamUnavailable
from serving.presets import Preset, get_preset

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class ModelServerError(UpstreamUnavailable):
    code = "model_server_failed"


def preset_for_memory(gpu_mib: int | None) -> str:
    """The preset for a GPU with this much memory (MiB); None means no usable GPU."""
    if gpu_mib is None:
        return "cpu"
    gb = gpu_mib * 2**20 / 1e9
    if gb >= 120:
        return "h200"
    if gb >= 70:
        return "h100"
    if gb >= 20:
        return "rtx-24gb"
    return "cpu"


def gpu_memory_mib() -> int | None:
    """Memory of the first NVIDIA GPU in MiB, from nvidia-smi; None without a working one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def detect_preset() -> str:
    """h200 / h100 (>= 70 GB), rtx-24gb (>= 20 GB), else cpu."""
    return preset_for_memory(gpu_memory_mib())


def build_command(
    preset: Preset | str,
    *,
    python: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    model_path: str | os.PathLike[str] | None = None,
    lora_modules: Mapping[str, str | os.PathLike[str]] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv that starts vLLM's OpenAI server for ``preset``.

    ``model_path`` replaces the preset's model (a local copy of the weights, or the tiny
    model's folder); ``lora_modules`` maps adapter names to folders loaded at start-up,
    which clients then name as their ``model``.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    if not 0 < port < 65536:
        raise InvalidRequest(f"Port {port} is out of range; give a port from 1 to 65535.", param="port")
    if lora_modules and p.lora is None:
        raise InvalidRequest(f"Preset {p.name!r} serves no LoRA adapters; drop the adapters.", param="lora_modules")
    model = os.fspath(model_path) if model_path is not None else p.model
    cmd = [os.fspath(python), "-m", SERVER_MODULE, "--model", model, "--host", host, "--port", str(port)]
    cmd += p.args()
    if lora_modules:
        cmd.append("--lora-modules")
        for name, path in lora_modules.items():
            if not name or any(c.isspace() for c in name):
                raise InvalidRequest(f"LoRA adapter name {name!r} must be non-empty, without spaces.")
            spec = {"name": name, "path": str(Path(path).resolve()), "base_model_name": p.served_name}
            cmd.append(json.dumps(spec))
    return cmd + list(extra)


def serving_env(
    data_dir: str | os.PathLike[str],
    *,
    preset: Preset | None = None,
    offline: bool = False,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for the vLLM process: caches and temporary files under ``data_dir``.

    vLLM and torch otherwise write to the home cache and /tmp. HF_HOME is kept when the
    caller already set it (weights downloaded elsewhere stay usable). ``offline`` sets
    HF_HUB_OFFLINE so nothing is fetched at start-up.
    """
    data = Path(data_dir).resolve()
    env = dict(os.environ if base is None else base)
    dirs = {
        "VLLM_CACHE_ROOT": data / "cache" / "vllm",
        "TORCHINDUCTOR_CACHE_DIR": data / "cache" / "torchinductor",
        "TRITON_CACHE_DIR": data / "cache" / "triton",
        "TMPDIR": data / "tmp",
    }
    if "HF_HOME" not in env:
        dirs["HF_HOME"] = data / "hf"
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env["VLLM_NO_USAGE_STATS"] = "1"  # it would phone home otherwise
    env["DO_NOT_TRACK"] = "1"
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if preset is not None:
        env.update(preset.env)
    return env


def hf_home(env: Mapping[str, str] | None = None) -> Path:
    e = os.environ if env is None else env
    if "HF_HOME" in e:
        return Path(e["HF_HOME"])
    return Path(e.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"


def weights_available(model_id: str, *, env: Mapping[str, str] | None = None) -> bool:
    """True when ``model_id`` is a local model folder or is in the local Hugging Face cache.

    Pass the environment the server will get (``serving_env(...)``) to look in its HF_HOME.
    """
    local = Path(model_id).expanduser()
    if (local / "config.json").is_file():
        return True
    if model_id.count("/") != 1:
        return False
    snapshots = hf_home(env) / "hub" / ("models--" + model_id.replace("/", "--")) / "snapshots"
    return any(
        (snap / "config.json").is_file() and any(snap.glob("*.safetensors"))
        for snap in (snapshots.iterdir() if snapshots.is_dir() else ())
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ModelServer:
    """A vLLM server subprocess: output to a log file, readiness from /health."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: str | os.PathLike[str],
        host: str,
        port: int,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.host, self.port = host, port
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # its own session, so that stop() can reach the engine processes it spawns
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Block until /health answers 200; returns the seconds since start.

        Fails at once, with the log's tail, when the process exits.
        """
        if self.proc is None:
            raise ModelServerError("The model server was never started; call start() first.")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ModelServerError(
                    f"The model server exited with code {code} before it was ready. "
                    f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self.healthy():
                self.ready_after_s = time.monotonic() - self.started_at
                return self.ready_after_s
            time.sleep(0.5)
        self.stop()
        raise ModelServerError(
            f"The model server was not ready after {timeout:.0f} s. "
            f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (vLLM shuts its engine down cleanly), then SIGKILL to the whole group."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # stragglers (engine core, workers) if any; the group outlives its leader only while they do
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()

    def __enter__(self) -> ModelServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
