from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.errors import HuayuError, InvalidRequest
from serving.launch import (
    SERVER_MODULE,
    ModelServer,
    ModelServerError,
    build_command,
    detect_preset,
    free_port,
    preset_for_memory,
    serving_env,
    weights_available,
)
from serving.presets import PRESETS, TINY


def test_build_command_runs_the_openai_server_module_with_the_preset() -> None:
    cmd = build_command("h100", python="/opt/venv/bin/python", host="0.0.0.0", port=8001, extra=("--api-key", "k"))
    assert cmd[:3] == ["/opt/venv/bin/python", "-m", SERVER_MODULE]
    assert cmd[cmd.index("--model") + 1] == "Qwen/Qwen3-VL-8B-Instruct"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8001"
    assert cmd[cmd.index("--served-model-name") + 1] == "qwen-vl"
    assert cmd[-2:] == ["--api-key", "k"]  # extra goes last so it can override
    assert "--lora-modules" not in cmd


def test_build_command_model_path_and_adapters(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    cmd = build_command(
        TINY, python="py", port=9000, model_path=tmp_path / "m", lora_modules={"style-a": a, "style-b": b}
    )
    assert cmd[cmd.index("--model") + 1] == str(tmp_path / "m")
    specs = [json.loads(x) for x in cmd[cmd.index("--lora-modules") + 1 :]]
    assert specs == [
        {"name": "style-a", "path": str(a), "base_model_name": "qwen-vl-tiny-random"},
        {"name": "style-b", "path": str(b), "base_model_name": "qwen-vl-tiny-random"},
    ]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"port": 0}, "Port 0"),
        ({"port": 70000}, "Port 70000"),
        ({"lora_modules": {"bad name": "/x"}}, "bad name"),
    ],
)
def test_build_command_rejects_bad_input(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        build_command("tiny", python="py", **kwargs)  # type: ignore[arg-type]
    assert words in err.value.message


def test_adapters_on_a_preset_without_lora_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="serves no LoRA"):
        build_command("guard", python="py", lora_modules={"a": "/x"})


@pytest.mark.parametrize(
    ("mib", "preset"),
    [(None, "cpu"), (8_192, "cpu"), (16_384, "cpu"), (24_576, "rtx-24gb"), (81_559, "h100"), (143_771, "h200")],
)
def test_preset_for_memory(mib: int | None, preset: str) -> None:
    assert preset_for_memory(mib) == preset
    assert preset in PRESETS


def test_detect_preset_matches_this_machine() -> None:
    expected = "cpu" if shutil.which("nvidia-smi") is None else None
    got = detect_preset()
    assert got in PRESETS
    if expected is not None:
        assert got == expected


def test_serving_env_keeps_caches_under_the_data_dir(tmp_path: Path) -> None:
    env = serving_env(tmp_path / ".data", preset=TINY, offline=True, base={"PATH": "/usr/bin"})
    data = (tmp_path / ".data").resolve()
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR", "HF_HOME"):
        assert Path(env[key]).is_relative_to(data) and Path(env[key]).is_dir(), key
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["PATH"] == "/usr/bin"
    online = serving_env(tmp_path / ".data", base={"HF_HOME": "/elsewhere"})
    assert "HF_HUB_OFFLINE" not in online and online["HF_HOME"] == "/elsewhere"


def test_weights_available_reads_the_local_cache(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf")}
    assert not weights_available("Qwen/Qwen3-VL-8B-Instruct", env=env)
    snap = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-VL-8B-Instruct" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert not weights_available("Qwen/Qwen3-VL-8B-Instruct", env=env)  # config without weights
    (snap / "model-00001-of-00004.safetensors").write_bytes(b"\0" * 8)
    assert weights_available("Qwen/Qwen3-VL-8B-Instruct", env=env)
    assert not weights_available("Qwen/Qwen3-VL-2B-Instruct", env=env)
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert weights_available(str(local), env=env)


# A faithful peer of the readiness protocol: /health answers 503 until READY_AFTER seconds pass.
_PEER = textwrap.dedent(
    """
    import http.server, sys, time
    started = time.monotonic()
    ready_after = float(sys.argv[2])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and time.monotonic() - started >= ready_after
            self.send_response(200 if ok else 503)
            self.end_headers()
        def log_message(self, *a):
            pass
    print("peer listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _peer(tmp_path: Path, ready_after: float, port: int) -> list[str]:
    script = tmp_path / "peer.py"
    script.write_text(_PEER)
    return [sys.executable, str(script), str(port), str(ready_after)]


def test_model_server_waits_for_health_and_stops(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "logs" / "server.log"
    server = ModelServer(_peer(tmp_path, 1.0, port), env={}, log_path=log, host="127.0.0.1", port=port)
    with server:
        assert server.ready_after_s is not None and server.ready_after_s >= 1.0
        assert server.healthy() and server.base_url == f"http://127.0.0.1:{port}/v1"
        proc = server.proc
    assert proc is not None and proc.poll() is not None  # stopped on exit
    assert "peer listening" in log.read_text()


def test_model_server_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('ValueError: no such model'); sys.exit(3)"]
    server = ModelServer(cmd, env={}, log_path=tmp_path / "s.log", host="127.0.0.1", port=free_port())
    server.start()
    with pytest.raises(ModelServerError) as err:
        server.wait_ready(timeout=60)
    assert isinstance(err.value, HuayuError) and err.value.status == 503
    assert "code 3" in err.value.message and "no such model" in err.value.message


def test_model_server_times_out_and_stops_the_process(tmp_path: Path) -> None:
    port = free_port()
    server = ModelServer(_peer(tmp_path, 3600, port), env={}, log_path=tmp_path / "s.log", host="127.0.0.1", port=port)
    server.start()
    with pytest.raises(ModelServerError, match="not ready after 1 s"):
        server.wait_ready(timeout=1)
    assert server.proc is not None and server.proc.poll() is not None


def test_wait_ready_before_start_is_an_error(tmp_path: Path) -> None:
    server = ModelServer(["true"], env={}, log_path=tmp_path / "s.log", host="127.0.0.1", port=1)
    with pytest.raises(ModelServerError, match="never started"):
        server.wait_ready(1)
