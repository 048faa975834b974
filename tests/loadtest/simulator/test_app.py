"""The simulator over real sockets, driven by httpx and the official openai SDK."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtest.simulator import RunningSim, SimConfig, run_in_thread

ZH: list[ChatCompletionMessageParam] = [{"role": "user", "content": "用一段话描述这幅画的构图与笔触。"}]
EN: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Describe this painting for a museum label."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with run_in_thread(SimConfig(extra_models=["qwen-guard"])) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(sim: RunningSim) -> None:
    sim.reset()


@pytest.fixture
def http(sim: RunningSim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        yield client


@pytest.fixture
def oai(sim: RunningSim) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url, api_key="unused", max_retries=0, timeout=10) as client:
        yield client


def _image_url(width: int = 1024, height: int = 768) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 90)).save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _sse(http: httpx.Client, body: dict[str, Any]) -> list[str]:
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def _metrics(http: httpx.Client) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            key = s.name + ("" if "le" not in s.labels else f"[{s.labels['le']}]")
            if "finished_reason" in s.labels:
                key += f"[{s.labels['finished_reason']}]"
            samples[key] = s.value
    return samples


def test_completion_shape_usage_and_determinism(oai: openai.OpenAI) -> None:
    messages: Any = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": _image_url()}}, {"type": "text", "text": "描述"}],
        }
    ]
    first = oai.chat.completions.create(model="qwen-vl", messages=messages, max_tokens=200)
    again = oai.chat.completions.create(model="qwen-vl", messages=messages, max_tokens=200)
    other = oai.chat.completions.create(model="qwen-vl", messages=ZH, max_tokens=200)
    assert first.id.startswith("chatcmpl-") and first.id != again.id
    assert first.object == "chat.completion" and first.model == "qwen-vl"
    choice = first.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == again.choices[0].message.content != other.choices[0].message.content
    assert choice.message.content and "，" in choice.message.content  # a Chinese prompt gets a Chinese answer
    assert first.usage is not None
    # 1024x768 -> 32x24 visual tokens + 2 markers; 2 CJK characters; chat-template overhead 3 + 4
    assert first.usage.prompt_tokens == 770 + 2 + 7
    assert first.usage.completion_tokens == 64  # the default natural length
    assert first.usage.total_tokens == first.usage.prompt_tokens + 64


def test_max_tokens_cuts_with_finish_reason_length(oai: openai.OpenAI, sim: RunningSim) -> None:
    short = oai.chat.completions.create(model="qwen-vl", messages=EN, max_tokens=5)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 5
    sim.configure(tokens=None)  # no natural end: as long as max_tokens allows
    full = oai.chat.completions.create(model="qwen-vl", messages=EN, max_completion_tokens=40)
    assert full.usage is not None and full.usage.completion_tokens == 40
    assert full.choices[0].finish_reason == "length"


def test_stream_chunks_like_vllm(http: httpx.Client, oai: openai.OpenAI) -> None:
    body = {"model": "qwen-vl", "messages": EN, "max_tokens": 10, "stream_options": {"include_usage": True}}
    lines = _sse(http, body)
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [httpx.Response(200, content=line[6:]).json() for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:] if c["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 9 + ["length"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(content) == 10
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    whole = oai.chat.completions.create(model="qwen-vl", messages=EN, max_tokens=10)
    assert text == whole.choices[0].message.content
    # without include_usage there is no usage chunk
    plain = _sse(http, {"messages": EN, "max_tokens": 3})
    assert "usage" not in plain[-2]


def test_stream_through_the_sdk(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="qwen-vl", messages=ZH, stream=True, max_tokens=300)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts).endswith("。")


def test_validation_errors_in_vllm_shape(http: httpx.Client, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-4", messages=EN)
    assert "The model `gpt-4` does not exist" in missing.value.message
    r = http.post("/v1/chat/completions", json={"model": "qwen-vl"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == 400
    assert error["param"] == "messages" and "messages" in error["message"]
    big: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_url(4096, 4096)}}]}
    ]
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096 tokens"):
        oai.chat.completions.create(model="qwen-vl", messages=big)
    with pytest.raises(openai.BadRequestError, match="cannot be greater than max_model_len=4096"):
        oai.chat.completions.create(model="qwen-vl", messages=EN, max_tokens=5000)
    assert http.post("/v1/chat/completions", content=b"{oops").json()["error"]["message"].startswith("The request body")
    assert http.post("/v1/chat/completions", json=[1]).status_code == 400
    assert http.post("/v1/chat/completions", json={"messages": EN, "max_tokens": "9"}).status_code == 400


def test_prompt_near_the_limit_shortens_the_answer(oai: openai.OpenAI, sim: RunningSim) -> None:
    sim.configure(max_model_len=20, tokens=50)
    out = oai.chat.completions.create(model="qwen-vl", messages=EN)  # 18 prompt tokens: room for 2
    assert out.usage is not None and (out.usage.prompt_tokens, out.usage.completion_tokens) == (18, 2)
    assert out.choices[0].finish_reason == "length"


def test_fault_503_and_500_with_rate_and_count(oai: openai.OpenAI, sim: RunningSim) -> None:
    sim.configure(fault="503", fault_rate=0.5)
    outcomes = []
    for _ in range(6):
        try:
            oai.chat.completions.create(model="qwen-vl", messages=EN, max_tokens=2)
            outcomes.append("ok")
        except openai.APIStatusError as e:
            outcomes.append(str(e.status_code))
    assert outcomes == ["ok", "503"] * 3  # every second request, counted from the change
    sim.configure(fault="500", fault_rate=1.0, fault_count=2)
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="qwen-vl", messages=EN)
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="qwen-vl", messages=EN)
    assert oai.chat.completions.create(model="qwen-vl", messages=EN).choices
    assert sim.configure()["fault_count"] == 0


def test_hang_never_sends_headers_until_released(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(fault="hang")
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={"messages": EN}, timeout=httpx.Timeout(5, read=0.3))
    # a reset frees held requests with a 503 instead of leaving them forever
    answer: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answer.append(http.post("/v1/chat/completions", json={"messages": EN})))
    waiter.start()
    deadline = time.monotonic() + 5
    while len(sim.requests()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.reset()
    waiter.join(5)
    assert answer[0].status_code == 503 and "hang" in answer[0].json()["error"]["message"]


def test_reset_breaks_the_stream(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(fault="reset", reset_after=3)
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json={"messages": EN, "stream": True}) as response,
    ):
        assert response.status_code == 200
        received.extend(line for line in response.iter_lines() if line)
    assert len(received) == 4  # the role chunk and three content chunks, then the connection dropped
    assert "data: [DONE]" not in received
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json={"messages": EN})


def test_drip_paces_every_token(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(fault="drip", drip_ms=80)
    stamps = []
    with http.stream("POST", "/v1/chat/completions", json={"messages": EN, "stream": True, "max_tokens": 3}) as r:
        started = time.perf_counter()
        for line in r.iter_lines():
            if line.startswith("data: {") and '"role"' not in line:
                stamps.append(time.perf_counter() - started)
    assert len(stamps) == 3
    gaps = [b - a for a, b in zip([0.0, *stamps], stamps, strict=False)]
    assert all(gap >= 0.07 for gap in gaps), gaps  # the first token drips too


def test_ttft_and_itl_pace_the_stream(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(ttft_ms=150, itl_ms=40)
    started = time.perf_counter()
    lines = _sse(http, {"messages": EN, "max_tokens": 4})
    elapsed = time.perf_counter() - started
    assert len(lines) == 1 + 4 + 1  # the role, four tokens, [DONE]
    assert elapsed >= 0.15 + 3 * 0.04 - 0.01


def test_config_endpoint_merges_validates_and_resets(http: httpx.Client, sim: RunningSim) -> None:
    assert http.get("/_sim/config").json()["fault"] == "none"
    merged = http.post("/_sim/config", json={"ttft_ms": 5, "reply": "好"}).json()
    assert merged["ttft_ms"] == 5 and merged["reply"] == "好" and merged["model"] == "qwen-vl"
    bad = http.post("/_sim/config", json={"fault": "explode"})
    assert bad.status_code == 400 and "fault" in bad.json()["error"]["message"]
    assert http.post("/_sim/config", json={"no_such_field": 1}).status_code == 400
    assert http.get("/_sim/config").json()["ttft_ms"] == 5  # a refused change leaves the config alone
    assert http.post("/_sim/reset").json()["ttft_ms"] == 0


def test_scripted_replies_and_a_guard_model(oai: openai.OpenAI, sim: RunningSim) -> None:
    sim.configure(reply="这幅画很美。", replies_by_model={"qwen-guard": "Safety: Unsafe\nCategories: Violent"})
    out = oai.chat.completions.create(model="qwen-vl", messages=EN)
    assert out.choices[0].message.content == "这幅画很美。"
    assert out.usage is not None and out.usage.completion_tokens == 6
    guard = oai.chat.completions.create(model="qwen-guard", messages=EN)
    assert guard.choices[0].message.content == "Safety: Unsafe\nCategories: Violent"
    cut = oai.chat.completions.create(model="qwen-guard", messages=EN, max_tokens=2)
    assert cut.choices[0].message.content == "Safety: Unsafe" and cut.choices[0].finish_reason == "length"


def test_models_and_lora_lifecycle(http: httpx.Client, oai: openai.OpenAI) -> None:
    listed = http.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["qwen-vl", "qwen-guard"]
    assert listed["data"][0]["max_model_len"] == 4096 and listed["data"][0]["owned_by"] == "vllm"
    load = http.post("/v1/load_lora_adapter", json={"lora_name": "ink", "lora_path": "/adapters/ink"})
    assert load.status_code == 200 and "added successfully" in load.text
    assert http.post("/v1/load_lora_adapter", json={"lora_name": "ink", "lora_path": "x"}).status_code == 400
    assert http.post("/v1/load_lora_adapter", json={"lora_name": "qwen-vl", "lora_path": "x"}).status_code == 400
    assert http.post("/v1/load_lora_adapter", json={"lora_name": "ink"}).status_code == 400
    card = http.get("/v1/models").json()["data"][-1]
    assert (card["id"], card["root"], card["parent"]) == ("ink", "/adapters/ink", "qwen-vl")
    assert oai.chat.completions.create(model="ink", messages=EN).model == "ink"
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "ink"}).status_code == 200
    gone = http.post("/v1/unload_lora_adapter", json={"lora_name": "ink"})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "NotFoundError"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="ink", messages=EN)


def test_health(http: httpx.Client, sim: RunningSim) -> None:
    ok = http.get("/health")
    assert ok.status_code == 200 and ok.content == b""
    sim.configure(healthy=False)
    assert http.get("/health").status_code == 503


def test_metrics_parse_and_count(http: httpx.Client, oai: openai.OpenAI) -> None:
    before = _metrics(http)
    out = oai.chat.completions.create(model="qwen-vl", messages=EN, max_tokens=7)
    after = _metrics(http)
    assert out.usage is not None
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == out.usage.prompt_tokens
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 7
    assert after["vllm:request_success_total[length]"] - before.get("vllm:request_success_total[length]", 0) == 1
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        assert after[f"{name}_count"] - before[f"{name}_count"] == 1
        assert after[f"{name}_bucket[+Inf]"] == after[f"{name}_count"]
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0
    labels = next(iter(text_string_to_metric_families(http.get("/metrics").text))).samples[0].labels
    assert labels == {"model_name": "qwen-vl", "engine": "0"}


def test_max_num_seqs_queues_and_gauges_show_it(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(max_num_seqs=1, ttft_ms=400)
    threads = [
        threading.Thread(target=lambda: http.post("/v1/chat/completions", json={"messages": EN})) for _ in range(2)
    ]
    for t in threads:
        t.start()
    deadline, seen = time.monotonic() + 3, {}
    while time.monotonic() < deadline:
        seen = _metrics(http)
        if seen["vllm:num_requests_waiting"] == 1:
            break
        time.sleep(0.02)
    assert seen["vllm:num_requests_running"] == 1 and seen["vllm:num_requests_waiting"] == 1
    assert seen["vllm:kv_cache_usage_perc"] > 0
    for t in threads:
        t.join(5)
    assert _metrics(http)["vllm:num_requests_running"] == 0


def test_client_leaving_aborts_the_generation(sim: RunningSim, http: httpx.Client) -> None:
    sim.configure(ttft_ms=5000)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={"messages": EN}, timeout=httpx.Timeout(5, read=0.2))
    deadline = time.monotonic() + 3
    while _metrics(http).get("vllm:request_success_total[abort]", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _metrics(http)["vllm:request_success_total[abort]"] >= 1
    assert _metrics(http)["vllm:num_requests_running"] == 0


def test_requests_are_recorded_in_a_ring(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(record_limit=3)
    for i in range(5):
        http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"n{i}"}], "model": "x"})
    kept = sim.requests()
    assert [b["messages"][0]["content"] for b in kept] == ["n2", "n3", "n4"]  # unknown model: still recorded
    assert [b["messages"][0]["content"] for b in sim.requests(limit=1)] == ["n4"]
    assert http.get("/_sim/requests?limit=0").json()["data"] == []
    assert http.get("/_sim/requests?limit=-1").status_code == 400


def test_reset_cuts_a_long_generation_short(http: httpx.Client, sim: RunningSim) -> None:
    sim.configure(ttft_ms=30_000)
    answer: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answer.append(http.post("/v1/chat/completions", json={"messages": EN})))
    waiter.start()
    deadline = time.monotonic() + 5
    while _metrics(http)["vllm:num_requests_running"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.reset()
    waiter.join(5)
    assert answer[0].status_code == 503 and "cut short" in answer[0].json()["error"]["message"]
