"""The real vLLM OpenAI server (CPU) on the tiny Qwen3-VL, spoken to directly with httpx."""

from __future__ import annotations

import base64
import io
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.e2e.conftest import VllmServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def data_url(color: tuple[int, int, int], size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> str:
    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(250, 250, 250))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


RED = data_url((200, 30, 30))
BLUE = data_url((20, 30, 220))


def chat(server: VllmServer, image: str | None, model: str | None = None, max_tokens: int = 12) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "描述这幅画。Describe the painting."}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    body = {
        "model": model or server.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        # random weights often pick byte pieces that decode to "": compare the ids, not the text
        "return_token_ids": True,
    }
    r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def tokens(answer: dict[str, Any]) -> list[int]:
    ids: list[int] = answer["choices"][0]["token_ids"]
    return ids


def test_models_lists_the_base_and_the_startup_adapter(vllm_server: VllmServer) -> None:
    models = httpx.get(vllm_server.base_url + "/models", timeout=10).json()["data"]
    by_id = {m["id"]: m for m in models}
    assert vllm_server.model in by_id and vllm_server.startup_adapter in by_id
    assert by_id[vllm_server.startup_adapter]["parent"] == vllm_server.model


def test_chat_completion_with_a_data_url_image(vllm_server: VllmServer) -> None:
    answer = chat(vllm_server, RED)
    usage = answer["usage"]
    assert usage["completion_tokens"] == 12 and len(tokens(answer)) == 12
    # 640x480 -> 20x15 visual tokens of 32x32 px, plus markers and the prompt
    assert 300 < usage["prompt_tokens"] < 400
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["model"] == vllm_server.model


def test_greedy_output_depends_on_the_image_only(vllm_server: VllmServer) -> None:
    red_1, red_2, blue = chat(vllm_server, RED), chat(vllm_server, RED), chat(vllm_server, BLUE)
    assert tokens(red_1) == tokens(red_2)
    assert tokens(red_1) != tokens(blue)


def test_server_caps_large_images_to_the_pixel_budget(vllm_server: VllmServer) -> None:
    small = chat(vllm_server, data_url((10, 120, 40), (640, 480), "PNG"), max_tokens=1)["usage"]["prompt_tokens"]
    big = chat(vllm_server, data_url((10, 120, 40), (2048, 1536), "PNG"), max_tokens=1)["usage"]["prompt_tokens"]
    text_tokens = small - 300
    # 2048x1536 unscaled would be 3,072 visual tokens; under 1024x1024 pixels it is at most 1,024
    assert 900 < big - text_tokens <= 1024


def test_startup_adapter_changes_the_answer(vllm_server: VllmServer) -> None:
    base = chat(vllm_server, RED)
    tuned = chat(vllm_server, RED, model=vllm_server.startup_adapter)
    assert tuned["model"] == vllm_server.startup_adapter
    assert tokens(base) != tokens(tuned)


def test_adapter_loaded_at_runtime_is_listed_and_answers(vllm_server: VllmServer) -> None:
    name = f"tiny-lora-b-{uuid.uuid4().hex[:8]}"  # unique: the server outlives a single test
    path = vllm_server.adapter_dirs["tiny-lora-b"]
    r = httpx.post(
        vllm_server.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60
    )
    assert r.status_code == 200, r.text
    try:
        listed = [m["id"] for m in httpx.get(vllm_server.base_url + "/models", timeout=10).json()["data"]]
        assert name in listed
        answer = chat(vllm_server, RED, model=name)
        assert answer["model"] == name
        assert tokens(answer) not in (
            tokens(chat(vllm_server, RED)),
            tokens(chat(vllm_server, RED, vllm_server.startup_adapter)),
        )
    finally:
        r = httpx.post(vllm_server.url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
        assert r.status_code == 200, r.text
    listed = [m["id"] for m in httpx.get(vllm_server.base_url + "/models", timeout=10).json()["data"]]
    assert name not in listed


def test_unknown_model_and_missing_adapter_are_client_errors(vllm_server: VllmServer) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = httpx.post(vllm_server.base_url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]["message"]
    r = httpx.post(
        vllm_server.url + "/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": "/nonexistent"}, timeout=30
    )
    assert r.status_code in (400, 404) and "ghost" in r.json()["error"]["message"]
