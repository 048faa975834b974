"""The gateway in front of a real vLLM server (CPU) serving the tiny random-weights Qwen3-VL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.styles import StyleRegistry
from serving.presets import PIXELS_PER_VISUAL_TOKEN
from tests.e2e.conftest import VllmServer
from tests.media import b64, data_url, jpeg
from tests.servers import free_port, serve

pytestmark = pytest.mark.e2e

ROUTED_STYLE = """
name = "lora_voice"
title_zh = "适配器"
title_en = "Adapter voice"
adapter = "tiny-lora-a"
[sampling]
temperature = 0.0
max_tokens = 24
[zh]
system = "你是美术馆的讲解员。"
user = "{metadata}\\n请介绍这件作品。"
[en]
system = "You are a museum guide."
user = "{metadata}\\nDescribe this work."
"""


def _settings(vllm: VllmServer, tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "upstream_url": vllm.base_url,
        "upstream_model": vllm.model,
        "database_url": f"sqlite+aiosqlite:///{tmp / 'e2e.db'}",
        "image_workers": 1,
        "max_tokens_limit": 100_000,
        "styles_dir": tmp / "styles",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gateway(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("e2e-gateway")
    (tmp / "styles").mkdir()
    (tmp / "styles" / "lora_voice.toml").write_text(ROUTED_STYLE, encoding="utf-8")
    base = ROUTED_STYLE.replace('name = "lora_voice"', 'name = "base_voice"').replace('adapter = "tiny-lora-a"\n', "")
    (tmp / "styles" / "base_voice.toml").write_text(base, encoding="utf-8")
    with serve(create_app(_settings(vllm_server, tmp))) as url:
        yield url


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=120) as c:
        yield c


@pytest.fixture
def sdk(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def predict(http: httpx.Client, **body: object) -> dict[str, object]:
    body.setdefault("cache", False)
    r = http.post("/v1/models/qwen-vl:predict", json=body)
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()
    return data


def test_predict_through_the_real_model(http: httpx.Client, vllm_server: VllmServer) -> None:
    out = predict(http, image=b64(jpeg(seed=1)), max_tokens=16)
    assert out["model"] == vllm_server.model and out["style"] == "curator" and out["description"]
    usage = out["usage"]
    assert isinstance(usage, dict) and 0 < usage["completion_tokens"] <= 16


@pytest.mark.parametrize("style", sorted(StyleRegistry.load().names()))
def test_every_shipped_style_answers(http: httpx.Client, style: str) -> None:
    for language in ("zh", "en"):
        out = predict(http, image=b64(jpeg(seed=2)), style=style, language=language, max_tokens=12)
        assert out["style"] == style and out["language"] == language
        assert out["finish_reason"] in ("stop", "length", "content_filter")


def test_openai_sdk_stream_and_non_stream(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(jpeg(seed=3))}}]}]
    plain = sdk.chat.completions.create(
        model="qwen-vl-tiny-random", messages=messages, max_tokens=16, temperature=0, extra_body={"cache": False}
    )
    assert plain.choices[0].message.content and plain.usage is not None
    stream = sdk.chat.completions.create(
        model="qwen-vl-tiny-random:academic",
        messages=messages,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"cache": False},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_the_documented_model_name_means_the_base_model(sdk: openai.OpenAI, vllm_server: VllmServer) -> None:
    # the README's examples say "qwen-vl"; `make run` without a GPU serves the tiny model under its own name
    assert vllm_server.model != "qwen-vl"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(jpeg(seed=4))}}]}]
    for model in ("qwen-vl", "qwen-vl:alt_text"):
        reply = sdk.chat.completions.create(model=model, messages=messages, max_tokens=8, extra_body={"cache": False})
        assert reply.choices[0].message.content and reply.model == model
        huayu = (reply.model_extra or {})["huayu"]
        assert huayu["style"] == ("alt_text" if ":" in model else "curator") and huayu["adapter"] is None


def test_models_lists_the_real_model_adapter_and_aliases(http: httpx.Client, vllm_server: VllmServer) -> None:
    ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert {vllm_server.model, vllm_server.startup_adapter, f"{vllm_server.model}:kids_guide"} <= ids


def test_the_image_reaches_the_model(http: httpx.Client) -> None:
    a, b = b64(jpeg(seed=10)), b64(jpeg(seed=11))
    first = predict(http, image=a, temperature=0, max_tokens=24)["description"]
    again = predict(http, image=a, temperature=0, max_tokens=24)["description"]
    other = predict(http, image=b, temperature=0, max_tokens=24)["description"]
    assert first == again
    assert first != other


def test_a_large_upload_is_resized_to_the_pixel_cap(http: httpx.Client) -> None:
    big = predict(http, image=b64(jpeg(4000, 3000, seed=12, quality=80)), temperature=0, max_tokens=4)
    small = predict(http, image=b64(jpeg(512, 384, seed=12)), temperature=0, max_tokens=4)
    big_usage, small_usage = big["usage"], small["usage"]
    assert isinstance(big_usage, dict) and isinstance(small_usage, dict)
    # 4000x3000 becomes 1024x768 (768 visual tokens); 512x384 is 192: the text around them is identical
    visual = (1024 * 768 - 512 * 384) // PIXELS_PER_VISUAL_TOKEN
    assert big_usage["prompt_tokens"] - small_usage["prompt_tokens"] == visual
    assert big_usage["prompt_tokens"] < 1024 * 1024 // PIXELS_PER_VISUAL_TOKEN + 2048


def test_a_style_routed_to_an_adapter(http: httpx.Client) -> None:
    # the two styles differ only in their adapter: same messages, different weights
    image = b64(jpeg(seed=20))
    routed = predict(http, image=image, style="lora_voice", language="en")
    again = predict(http, image=image, style="lora_voice", language="en")
    base = predict(http, image=image, style="base_voice", language="en")
    assert routed["adapter"] == "tiny-lora-a" and base["adapter"] is None
    assert routed["description"] == again["description"]  # temperature 0
    assert routed["description"] != base["description"]


def test_an_adapter_loaded_at_runtime_is_routed(http: httpx.Client, vllm_server: VllmServer) -> None:
    path = vllm_server.adapter_dirs["tiny-lora-b"]
    r = httpx.post(
        vllm_server.url + "/v1/load_lora_adapter", json={"lora_name": "tiny-lora-b", "lora_path": str(path)}, timeout=60
    )
    assert r.status_code == 200 or "already been loaded" in r.text, r.text
    image = data_url(jpeg(seed=21))
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}]
    body = {"messages": msgs, "max_tokens": 24, "temperature": 0, "cache": False}
    with_b = http.post("/v1/chat/completions", json={"model": "tiny-lora-b", **body})
    base = http.post("/v1/chat/completions", json={"model": vllm_server.model, **body})
    assert with_b.status_code == 200, with_b.text
    assert with_b.json()["huayu"]["adapter"] == "tiny-lora-b"
    assert with_b.json()["choices"][0]["message"]["content"] != base.json()["choices"][0]["message"]["content"]


def test_vllm_400_reaches_the_client_with_its_message(http: httpx.Client) -> None:
    r = http.post("/v1/models/qwen-vl:predict", json={"image": b64(jpeg(seed=30)), "max_tokens": 5000, "cache": False})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "max_tokens" in message or "context length" in message


def test_a_stopped_model_server_gives_503(tmp_path: Path, vllm_server: VllmServer) -> None:
    """A second vLLM, stopped under a running gateway: requests and /readyz answer 503."""
    from serving.launch import ModelServer, build_command, serving_env
    from serving.presets import TINY
    from tests.e2e.conftest import DATA, MODEL_DIR, SERVING_PYTHON

    port = free_port()
    cmd = build_command(TINY, python=SERVING_PYTHON, port=port, model_path=MODEL_DIR)
    own = ModelServer(
        cmd,
        env=serving_env(DATA, preset=TINY, offline=True),
        log_path=tmp_path / "vllm.log",
        host="127.0.0.1",
        port=port,
    )
    own.start()
    try:
        own.wait_ready(timeout=420)
        settings = _settings(vllm_server, tmp_path, upstream_url=own.base_url, styles_dir=None)
        with serve(create_app(settings)) as url:
            assert httpx.get(url + "/readyz", timeout=30).status_code == 200
            own.stop()
            r = httpx.post(url + "/v1/models/qwen-vl:predict", json={"image": b64(jpeg(seed=31))}, timeout=60)
            assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
            ready = httpx.get(url + "/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    finally:
        own.stop()


def test_bulk_priority_is_accepted_by_vllm(http: httpx.Client) -> None:
    # the presets run vLLM with --scheduling-policy priority; a plain server would answer 400 here
    out = predict(http, image=b64(jpeg(seed=40)), priority=10, max_tokens=8)
    assert out["description"] is not None
