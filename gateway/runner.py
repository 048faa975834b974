"""`make run` / `huayu run`: the model server and the gateway together, stopped together.

Picks the serving preset from the GPU it finds. Where the real weights cannot be had (no GPU,
or no network to fetch them), it says so in plain words and serves the tiny random-weights model
under a name that makes clear its text is random.
"""

from __future__ import annotations

import subprocess
import sys
import time

from gateway.cli import BANNER, _serving_python
from gateway.config import DATA_DIR, Settings

TINY_DIR = DATA_DIR / "models" / "tiny-qwen3-vl"

# Asks the model hub (through huggingface_hub, in the serving venv) whether the weights can be had.
_PROBE = """
import sys
from huggingface_hub import model_info
try:
    model_info(sys.argv[1], timeout=8)
except Exception as e:
    print(type(e).__name__ + ": " + str(e).splitlines()[0] if str(e) else type(e).__name__)
    sys.exit(1)
"""


def weights_problem(python: str, model_id: str, env: dict[str, str]) -> str:
    """Why the weights of ``model_id`` cannot be had here, or "" when they can (cached or fetchable)."""
    from serving.launch import weights_available

    if weights_available(model_id, env=env):
        return ""
    if env.get("HF_HUB_OFFLINE") == "1":
        return "they are not in the local cache and HF_HUB_OFFLINE is set"
    try:
        probe = subprocess.run(
            [python, "-c", _PROBE, model_id], env=env, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the model hub could not be asked ({type(e).__name__})"
    if probe.returncode != 0:
        detail = (probe.stdout or probe.stderr).strip().splitlines()
        return "they are not in the local cache and the model hub cannot be reached" + (
            f": {detail[-1][:160]}" if detail else ""
        )
    return ""


def run_stack(preset: str | None, gateway_port: int, model_port: int) -> int:
    from gateway.app import create_app
    from gateway.server import log_to_stderr, run
    from serving.launch import ModelServer, build_command, detect_preset, serving_env
    from serving.presets import get_preset

    python = _serving_python()
    chosen = preset or detect_preset()
    spec = get_preset(chosen)
    model_path = None
    if chosen != "tiny":
        why = weights_problem(python, spec.model, serving_env(DATA_DIR, preset=spec))
        if why:
            print(BANNER.format(model=spec.model, why=why), file=sys.stderr, flush=True)
            chosen, spec = "tiny", get_preset("tiny")
    if chosen == "tiny":
        print(f"building the tiny model in {TINY_DIR} ...", flush=True)
        subprocess.run([python, "-m", "serving.tiny_model", str(TINY_DIR)], check=True)
        model_path = str(TINY_DIR)

    cmd = build_command(chosen, python=python, host="127.0.0.1", port=model_port, model_path=model_path)
    log_path = DATA_DIR / "logs" / f"vllm-{chosen}.log"
    print("model server:", " ".join(cmd), flush=True)
    print(f"model server log: {log_path}", flush=True)
    server = ModelServer(
        cmd, env=serving_env(DATA_DIR, preset=spec), log_path=log_path, host="127.0.0.1", port=model_port
    )
    started = time.monotonic()
    server.start()
    try:
        server.wait_ready(timeout=1800)
        print(
            f"model server ready in {time.monotonic() - started:.0f} s at http://127.0.0.1:{model_port}/v1", flush=True
        )
        settings = Settings(
            upstream_url=f"http://127.0.0.1:{model_port}/v1",
            upstream_model=spec.served_name,
            port=gateway_port,
        )
        print(
            f"\nhuayu is up:\n  review page   http://{settings.host}:{gateway_port}/\n"
            f"  OpenAI API    http://{settings.host}:{gateway_port}/v1  (model {spec.served_name})\n"
            f"  predict       http://{settings.host}:{gateway_port}/v1/models/qwen-vl:predict\n"
            f"  metrics       http://{settings.host}:{gateway_port}/metrics\n"
            "Ctrl-C stops both.\n",
            flush=True,
        )
        log_to_stderr(settings.log_level)
        options = {"read_timeout_s": settings.client_read_timeout_s, "graceful_s": settings.shutdown_grace_s}
        run(create_app(settings), settings.host, gateway_port, **options)
    finally:
        print("stopping the model server ...", flush=True)
        server.stop()
    return 0
