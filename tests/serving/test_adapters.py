"""The adapter client against the real vLLM (CPU): load, list, unload by name, and its errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.errors import InvalidRequest, NotFound, Unprocessable, UpstreamUnavailable
from serving.adapters import adapters_main, list_adapters, load_adapter, server_root, unload_adapter
from serving.launch import free_port
from tests.e2e.conftest import MODEL_DIR, ROOT, SERVING_PYTHON, VllmServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_load_list_unload(vllm_server: VllmServer, capsys: pytest.CaptureFixture[str]) -> None:
    path = vllm_server.adapter_dirs["tiny-lora-b"]
    assert "added successfully" in load_adapter(vllm_server.base_url, "client-b", path)
    try:
        listed = {a["name"]: a for a in list_adapters(vllm_server.url)}
        assert listed["client-b"] == {"name": "client-b", "path": str(path.resolve()), "base": vllm_server.model}
        assert vllm_server.startup_adapter in listed and vllm_server.model not in listed
        with pytest.raises(InvalidRequest, match="already loaded") as info:
            load_adapter(vllm_server.url, "client-b", path)
        assert info.value.code == "adapter_exists"
        assert adapters_main(["--url", vllm_server.url, "list"]) == 0
        assert "client-b\t" in capsys.readouterr().out
    finally:
        assert adapters_main(["unload", "client-b", "--url", vllm_server.url]) == 0
    assert "client-b" not in {a["name"] for a in list_adapters(vllm_server.url)}
    with pytest.raises(NotFound, match="No adapter named 'client-b' is loaded"):
        unload_adapter(vllm_server.url, "client-b")


def test_an_adapter_the_server_cannot_take_is_rejected_with_its_reason(vllm_server: VllmServer, tmp_path: Path) -> None:
    # the tiny preset serves rank <= 8; vLLM says so, and the name stays free
    wide = tmp_path / "rank16"
    done = subprocess.run(
        [SERVING_PYTHON, "-m", "serving.lora", MODEL_DIR, wide, "--rank", "16"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with pytest.raises(Unprocessable) as info:
        load_adapter(vllm_server.url, "too-wide", wide)
    assert info.value.code == "adapter_rejected" and "16" in info.value.message
    assert "too-wide" not in {a["name"] for a in list_adapters(vllm_server.url)}


def test_bad_arguments_fail_before_any_call(tmp_path: Path, vllm_server: VllmServer) -> None:
    with pytest.raises(InvalidRequest, match="Adapter name 'a:b' is not valid"):
        load_adapter(vllm_server.url, "a:b", vllm_server.adapter_dirs["tiny-lora-b"])
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_adapter(vllm_server.url, "x", tmp_path / "nothing")
    half = tmp_path / "half"
    shutil.copytree(vllm_server.adapter_dirs["tiny-lora-b"], half)
    (half / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidRequest, match=r"adapter_model\.safetensors missing"):
        load_adapter(vllm_server.url, "x", half)
    with pytest.raises(UpstreamUnavailable, match=r"No model server answers at http://127\.0\.0\.1:"):
        list_adapters(f"http://127.0.0.1:{free_port()}/v1")
    assert server_root("http://h:1/v1/") == "http://h:1"
