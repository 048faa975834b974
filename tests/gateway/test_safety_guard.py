"""The guard model stage: parsing Qwen3Guard's verdicts, and the client against a real HTTP peer."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.safety import GuardClient, GuardVerdict, SafetyMetrics, Verdict, apply_guard, parse_guard_output
from loadtest.simulator.app import create_app
from loadtest.simulator.config import SimConfig


@pytest.mark.parametrize(
    ("text", "label", "categories", "refusal", "action"),
    [
        ("Safety: Safe\nCategories: None\nRefusal: No", "Safe", [], False, "allow"),
        ("Safety: Safe\nCategories: None", "Safe", [], None, "allow"),  # prompt-only form
        ("Safety: Unsafe\nCategories: Violent\nRefusal: No", "Unsafe", ["Violent"], False, "block"),
        (
            "Safety: Unsafe\nCategories: Sexual Content or Sexual Acts, Suicide & Self-Harm\nRefusal: Yes",
            "Unsafe",
            ["Sexual Content or Sexual Acts", "Suicide & Self-Harm"],
            True,
            "block",
        ),
        (
            "Safety: Controversial\nCategories: Sexual Content or Sexual Acts",
            "Controversial",
            ["Sexual Content or Sexual Acts"],
            None,
            "allow",
        ),
        ("**Safety**: unsafe\n**Categories**: jailbreak\n", "Unsafe", ["Jailbreak"], None, "block"),  # loose shape
        ("  safety:  SAFE \n categories: none", "Safe", [], None, "allow"),
        ("Safety: Unsafe\nCategories: Something New", "Unsafe", ["Something New"], None, "block"),
    ],
)
def test_parse_every_verdict_form(
    text: str, label: str, categories: list[str], refusal: bool | None, action: str
) -> None:
    v = parse_guard_output(text)
    assert (v.label, v.categories, v.refusal, v.action, v.error) == (label, categories, refusal, action, "")


def test_controversial_blocks_when_asked() -> None:
    assert parse_guard_output("Safety: Controversial\nCategories: Violent", block_controversial=True).action == "block"


@pytest.mark.parametrize("garbage", ["", "I'm sorry, I can't help with that.", "Safety: maybe", "Safe", "\x00\ufffd"])
@pytest.mark.parametrize("fail_open", [True, False])
def test_unparseable_output_follows_the_setting(garbage: str, fail_open: bool) -> None:
    v = parse_guard_output(garbage, fail_open=fail_open)
    assert (v.error, v.label, v.action) == ("unparseable", None, "allow" if fail_open else "block")


def test_apply_guard() -> None:
    ok = Verdict("mask", ["profanity"], ["傻逼"], "＊＊")
    assert apply_guard(ok, GuardVerdict("allow", "Safe")) is ok
    unsafe = apply_guard(ok, GuardVerdict("block", "Unsafe", ["Violent"]), "en")
    assert (unsafe.action, unsafe.categories, unsafe.text) == ("block", ["profanity", "guard:Violent"], "")
    assert "Unsafe" in unsafe.reason
    failed = apply_guard(Verdict("allow", text="x"), GuardVerdict("block", error="timeout"), "zh")
    assert (failed.action, failed.categories) == ("block", ["guard"]) and "timeout" in failed.reason


# --- a scripted guard model: a real OpenAI-shaped HTTP server on loopback --------------------

SCRIPT = {
    "calm": "Safety: Safe\nCategories: None\nRefusal: No",
    "gore": "Safety: Unsafe\nCategories: Violent\nRefusal: No",
    "nude": "Safety: Controversial\nCategories: Sexual Content or Sexual Acts\nRefusal: No",
    "babble": "The text looks fine to me!",
}


async def _chat(request: Request) -> Response:
    body = await request.json()
    request.app.state.seen.append(body)
    said = body["messages"][-1]["content"]
    if said == "slow":
        await asyncio.sleep(1.0)
        said = "calm"
    if said == "error":
        return JSONResponse({"error": {"message": "model crashed"}}, status_code=500)
    if said == "not-json":
        return PlainTextResponse("<html>proxy page</html>")
    if said == "no-choices":
        return JSONResponse({"object": "chat.completion", "choices": []})
    content = SCRIPT[said]
    return JSONResponse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    )


@pytest.fixture(scope="module")
def guard_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    app.state.seen = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the scripted guard server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app.state.seen
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.mark.parametrize(
    ("said", "label", "action"),
    [("calm", "Safe", "allow"), ("gore", "Unsafe", "block"), ("nude", "Controversial", "allow")],
)
async def test_client_reads_scripted_verdicts(
    guard_server: tuple[str, list[dict[str, Any]]], said: str, label: str, action: str
) -> None:
    url, seen = guard_server
    guard = GuardClient(url, "qwen3-guard", timeout_s=5.0, fail_open=False)
    try:
        v = await guard.judge("请描述这幅画", said)
    finally:
        await guard.aclose()
    assert (v.label, v.action, v.error) == (label, action, "")
    assert v.latency_s > 0
    assert seen[-1]["model"] == "qwen3-guard"
    assert seen[-1]["messages"] == [
        {"role": "user", "content": "请描述这幅画"},
        {"role": "assistant", "content": said},
    ]


@pytest.mark.parametrize(
    ("said", "timeout_s", "error"),
    [
        ("slow", 0.2, "timeout"),
        ("error", 5.0, "http_500"),
        ("not-json", 5.0, "bad_response"),
        ("no-choices", 5.0, "bad_response"),
        ("babble", 5.0, "unparseable"),
    ],
)
@pytest.mark.parametrize("fail_open", [True, False])
async def test_client_failures_follow_the_setting(
    guard_server: tuple[str, list[dict[str, Any]]], said: str, timeout_s: float, error: str, fail_open: bool
) -> None:
    url, _ = guard_server
    guard = GuardClient(url + "/chat/completions", "qwen3-guard", timeout_s=timeout_s, fail_open=fail_open)
    try:
        v = await guard.judge("prompt", said)
    finally:
        await guard.aclose()
    assert (v.error, v.action, v.failed) == (error, "allow" if fail_open else "block", True)


async def test_client_against_nothing_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    guard = GuardClient(f"http://127.0.0.1:{port}/v1", "g", timeout_s=2.0, fail_open=False)
    try:
        v = await guard.judge("p", "r")
    finally:
        await guard.aclose()
    assert (v.error, v.action) == ("unavailable", "block")


def test_metrics() -> None:
    registry = CollectorRegistry()
    m = SafetyMetrics(registry)
    m.observe_verdict(Verdict("block", ["profanity", "self_harm"], ["傻逼", "去死吧"]))
    m.observe_verdict(Verdict("allow", text="ok"))
    m.observe_guard(GuardVerdict("block", error="timeout", latency_s=2.0))
    m.observe_guard(GuardVerdict("allow", "Safe", latency_s=0.05))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("huayu_safety_hits_total", category="self_harm", action="block") == 1
    assert value("huayu_safety_verdicts_total", action="allow") == 1
    assert value("huayu_guard_failures_total", reason="timeout") == 1
    assert value("huayu_guard_verdicts_total", label="Safe") == 1
    assert value("huayu_guard_latency_seconds_count") == 2
    assert value("huayu_guard_latency_seconds_sum") == pytest.approx(2.05)


# --- the project's upstream simulator serving scripted guard verdicts --------------------------


def _simulated_guard(**config: Any) -> httpx.AsyncClient:
    app = create_app(SimConfig(extra_models=["qwen3-guard"], **config))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.mark.parametrize(
    ("reply", "label", "categories", "action"),
    [
        ("Safety: Safe\nCategories: None\nRefusal: No", "Safe", [], "allow"),
        ("Safety: Unsafe\nCategories: Violent, Jailbreak\nRefusal: No", "Unsafe", ["Violent", "Jailbreak"], "block"),
        ("Safety: Controversial\nCategories: Sexual Content or Sexual Acts", "Controversial", None, "allow"),
    ],
)
async def test_simulator_scripted_verdicts(reply: str, label: str, categories: list[str] | None, action: str) -> None:
    async with _simulated_guard(replies_by_model={"qwen3-guard": reply}) as client:
        guard = GuardClient("http://sim/v1", "qwen3-guard", timeout_s=5.0, fail_open=False, client=client)
        v = await guard.judge("describe", "a calm harbour at dusk")
    assert (v.label, v.action, v.error) == (label, action, "")
    assert v.categories == (categories if categories is not None else ["Sexual Content or Sexual Acts"])


@pytest.mark.parametrize(("fault", "error"), [("hang", "timeout"), ("500", "http_500"), ("503", "http_503")])
async def test_simulator_faults_fail_closed(fault: str, error: str) -> None:
    async with _simulated_guard(fault=fault) as client:
        guard = GuardClient("http://sim/v1", "qwen3-guard", timeout_s=0.3, fail_open=False, client=client)
        v = await guard.judge("describe", "text")
    assert (v.error, v.action) == (error, "block")
