"""Model-server faults, injected by the simulator: retried before the first byte, timed out, reported
mid-stream as an SSE error event, and cut short by the circuit breaker."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.breaker import CircuitBreaker, FaultMetrics
from gateway.errors import UpstreamUnavailable
from tests.hardening.conftest import GatewayFactory
from tests.media import b64, data_url, jpeg
from tests.servers import Sim


def predict(seed: int = 1) -> dict[str, object]:
    return {"image": b64(jpeg(128, 96, seed=seed)), "cache": False}


def chat_messages(seed: int = 1) -> list[dict[str, object]]:
    part = {"type": "image_url", "image_url": {"url": data_url(jpeg(128, 96, seed=seed))}}
    return [{"role": "user", "content": [part]}]


def test_a_503_before_headers_is_retried(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(upstream_retries=2, upstream_retry_backoff_s=0.01) as client:
        sim.configure(fault="503", fault_count=2)
        r = client.post("/v1/models/qwen-vl:predict", json=predict())
        assert r.status_code == 200, r.text
        assert len(sim.requests()) == 3  # two 503s, then the answer
        assert 'huayu_upstream_retries_total{reason="503"} 2.0' in client.get("/metrics").text


def test_retries_run_out_into_a_503_with_a_body(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(upstream_retries=1, upstream_retry_backoff_s=0.01) as client:
        sim.configure(fault="503")
        r = client.post("/v1/models/qwen-vl:predict", json=predict())
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert "overloaded" in r.json()["error"]["message"]
        assert len(sim.requests()) == 2


def test_a_caller_error_is_never_retried(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(upstream_retries=3, upstream_retry_backoff_s=0.01, max_tokens_limit=100_000) as client:
        r = client.post("/v1/models/qwen-vl:predict", json=predict() | {"max_tokens": 50_000})
        assert r.status_code == 400 and "max_model_len" in r.json()["error"]["message"]
        assert len(sim.requests()) == 1


def test_a_failure_after_the_first_byte_is_not_retried(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(upstream_retries=3, upstream_retry_backoff_s=0.01) as client:
        sim.configure(fault="reset", fault_count=1)
        r = client.post("/v1/models/qwen-vl:predict", json=predict())
        assert r.status_code == 502 and "broke mid-answer" in r.json()["error"]["message"]
        assert len(sim.requests()) == 1


def test_a_hang_before_headers_ends_in_504(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(first_byte_timeout_s=0.5, upstream_retries=2) as client:
        sim.configure(fault="hang")
        r = client.post("/v1/models/qwen-vl:predict", json=predict())  # the client itself would wait 30 s
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert len(sim.requests()) == 1  # a timeout is not retried: it would multiply the wait


def _sdk(client_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=client_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_a_reset_mid_stream_raises_in_the_sdk(gateway: GatewayFactory, sim: Sim) -> None:
    # safety off: its hold-back would keep the first tokens until the reset, and then the error
    # would (rightly) still be an HTTP status
    with gateway(safety_enabled=False) as client, _sdk(str(client.base_url)) as sdk:
        sim.configure(fault="reset", reset_after=3)
        messages: Any = chat_messages(2)
        stream: Any = sdk.chat.completions.create(model="qwen-vl", messages=messages, stream=True)
        seen = []
        with pytest.raises(openai.APIError, match="broke mid-stream"):
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content if chunk.choices else None)
        assert any(seen)  # content had started: the error came in the stream, not as a status


def _sse_data(client: httpx.Client, seed: int) -> list[str]:
    body = {"model": "qwen-vl", "messages": chat_messages(seed), "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [line for line in r.iter_lines() if line.startswith("data:")]


def test_tokens_dripping_slower_than_the_read_timeout_end_in_an_error_event(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(read_timeout_s=0.3, safety_enabled=False) as client:
        sim.configure(itl_ms=2000)  # the first token at once, the next one after 2 s
        events = _sse_data(client, 3)
        assert events[-1] == "data: [DONE]"
        assert '"code":"upstream_timeout"' in events[-2] and "sent nothing for 0.3 s" in events[-2]
        assert any('"content":"' in e and '"content":""' not in e for e in events[:-2])


def test_a_drip_from_the_start_is_a_504(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(read_timeout_s=0.3) as client:
        sim.configure(fault="drip", drip_ms=5000)
        body = {"model": "qwen-vl", "messages": chat_messages(4), "stream": True}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_the_breaker_opens_fails_fast_then_probes_and_closes(gateway: GatewayFactory, sim: Sim) -> None:
    with gateway(upstream_retries=0, breaker_failures=2, breaker_reset_s=1.0) as client:
        sim.configure(fault="503")
        for _ in range(2):
            assert client.post("/v1/models/qwen-vl:predict", json=predict()).json()["error"]["code"] == (
                "upstream_unavailable"
            )
        fast = client.post("/v1/models/qwen-vl:predict", json=predict())
        assert fast.status_code == 503 and fast.json()["error"]["code"] == "upstream_circuit_open"
        assert 1 <= int(fast.headers["retry-after"]) <= 1
        assert len(sim.requests()) == 2  # the third call never reached the model server
        assert "huayu_upstream_breaker_state 2.0" in client.get("/metrics").text
        sim.configure(fault="none")
        time.sleep(1.1)
        assert client.post("/v1/models/qwen-vl:predict", json=predict()).status_code == 200  # the probe
        assert "huayu_upstream_breaker_state 0.0" in client.get("/metrics").text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_lets_one_probe_through_when_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=5, metrics=FaultMetrics(), clock=clock)
    for _ in range(2):
        breaker.before()
        breaker.failure()
    breaker.before()
    breaker.success()  # a success in between resets the count
    for _ in range(3):
        breaker.before()
        breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(UpstreamUnavailable) as fast:
        breaker.before()
    assert fast.value.headers["Retry-After"] == "5"
    clock.now += 5
    breaker.before()  # the probe
    assert breaker.state == "half_open"
    with pytest.raises(UpstreamUnavailable):
        breaker.before()  # a second caller while the probe is out
    breaker.failure()
    assert breaker.state == "open"  # the probe failed: open for another reset_s
    clock.now += 5
    breaker.before()
    breaker.success()
    assert breaker.state == "closed"
    breaker.before()


def _sim_metric(sim: Sim, name: str) -> float:
    for family in text_string_to_metric_families(sim.client.get("/metrics").text):
        for s in family.samples:
            if s.name + "".join(f"[{v}]" for k, v in s.labels.items() if k == "finished_reason") == name:
                return float(s.value)
    return 0.0


def test_a_caller_leaving_mid_stream_ends_the_generation_upstream(gateway: GatewayFactory, sim: Sim) -> None:
    """The stream's response watches for the caller's disconnect (uvicorn speaks ASGI 2.3): the model
    server's stream is closed at once, and the gateway is ready for the next request."""
    with gateway(safety_enabled=False) as client:
        sim.configure(itl_ms=50, tokens=400)
        before = _sim_metric(sim, "vllm:request_success_total[abort]")
        body = {"model": "qwen-vl", "messages": chat_messages(5), "stream": True, "max_tokens": 400}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(line for line in lines if '"content":"' in line and '"content":""' not in line)
            assert "huayu_requests_in_flight 1.0" in client.get("/metrics").text  # /metrics is not counted
        # the caller is gone after a token or two of 400 (20 s of them): the generation is aborted
        deadline = time.monotonic() + 5
        while _sim_metric(sim, "vllm:request_success_total[abort]") <= before:
            assert time.monotonic() < deadline, "the model server kept generating for a caller that left"
            time.sleep(0.05)
        assert _sim_metric(sim, "vllm:num_requests_running") == 0
        sim.configure(itl_ms=0, tokens=4)
        after = client.post("/v1/chat/completions", json={"model": "qwen-vl", "messages": chat_messages(6)})
        assert after.status_code == 200
        assert "huayu_requests_in_flight 0.0" in client.get("/metrics").text
