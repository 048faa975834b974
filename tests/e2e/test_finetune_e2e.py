"""Learning from feedback, end to end on the CPU with the tiny Qwen3-VL and the real vLLM.

Describe artworks through the gateway -> curators edit and rate them -> the finetune export ->
``python -m serving.finetune`` trains a LoRA adapter (the loss goes down) -> the adapter is
loaded into the running vLLM by name -> a style routed to it answers, differently from the
base model at temperature 0 -> ratings of its descriptions are reported per adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.errors import HuayuError
from gateway.store import ResultStore
from serving.adapters import list_adapters, load_adapter, unload_adapter
from tests.e2e.conftest import MODEL_DIR, ROOT, SERVING_PYTHON, VllmServer
from tests.media import b64, jpeg
from tests.servers import serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADAPTER = "ft-museum"
STYLE = """
name = "{name}"
title_zh = "馆藏之声"
title_en = "Museum voice"
{adapter}
[sampling]
temperature = 0.0
max_tokens = 16
[zh]
system = "你是敦煌研究院的讲解员。"
user = "{{metadata}}\\n请介绍这件作品。"
[en]
system = "You are a guide of the Dunhuang Academy."
user = "{{metadata}}\\nDescribe this work."
"""
# what the curators wrote: short, and different per artwork, so that the adapter can memorise them
TARGETS = ["飞天在云中起舞，衣带飘扬。", "青绿山水，层峦叠嶂。", "菩萨低眉，慈悲庄严。", "莲花童子，手持宝瓶。"]
CONFIG = ROOT / "serving" / "finetune_configs" / "tiny-cpu.toml"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(url: str, fn: Any) -> Any:
    store = ResultStore(url)
    await store.start()
    try:
        return await fn(store)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def stack(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("finetune-e2e")
    styles = tmp / "styles"
    styles.mkdir()
    (styles / "ft_base.toml").write_text(STYLE.format(name="ft_base", adapter=""), encoding="utf-8")
    tuned = STYLE.format(name="ft_tuned", adapter=f'adapter = "{ADAPTER}"')
    (styles / "ft_tuned.toml").write_text(tuned, encoding="utf-8")
    db = f"sqlite+aiosqlite:///{tmp / 'store.db'}"
    settings = Settings(
        upstream_url=vllm_server.base_url,
        upstream_model=vllm_server.model,
        styles_dir=styles,
        database_url=db,
        image_workers=1,
        cache_backend="off",
    )
    try:
        with serve(create_app(settings)) as url:
            yield {"url": url, "db": db, "tmp": tmp}
    finally:
        # never loaded when the test failed early: the shared server stays clean either way
        with contextlib.suppress(HuayuError):
            unload_adapter(vllm_server.url, ADAPTER)


def predict(url: str, image: bytes, style: str) -> dict[str, Any]:
    r = httpx.post(
        url + "/v1/models/qwen-vl:predict",
        json={"image": b64(image), "style": style, "language": "zh", "cache": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_stored(db: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        page = run(_with_store(db, lambda s: s.list_descriptions(limit=100)))
        if page["total"] >= n or time.monotonic() > deadline:
            rows: list[dict[str, Any]] = page["data"]
            return rows
        time.sleep(0.2)


def finetune(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(SERVING_PYTHON), "-m", "serving.finetune", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_feedback_to_adapter_to_report(stack: dict[str, Any], vllm_server: VllmServer) -> None:
    url, db, tmp = stack["url"], stack["db"], stack["tmp"]
    images = [jpeg(256, 256, seed=100 + i) for i in range(len(TARGETS))]

    # 1. the base model describes; curators correct and rate what it wrote
    base = [predict(url, img, "ft_base") for img in images]
    assert all(b["adapter"] is None for b in base)
    stored = {d["id"]: d for d in wait_stored(db, len(images))}
    assert {b["id"] for b in base} <= set(stored)

    async def review(store: ResultStore) -> bytes:
        for b, target in zip(base, TARGETS, strict=True):
            await store.add_feedback(b["id"], 4, edited_text=target, reviewer="curator")
        return b"".join([chunk async for chunk in await store.export("finetune")])

    export = run(_with_store(db, review))
    data = tmp / "finetune.jsonl"
    data.write_bytes(export)
    records = [json.loads(line) for line in export.splitlines()]
    assert sorted(r["messages"][-1]["content"] for r in records) == sorted(TARGETS)

    # 2. train a few steps on what the curators wrote
    out = tmp / "adapter"
    done = finetune("--data", data, "--base", MODEL_DIR, "--out", out, "--config", CONFIG)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "training.json").read_text())
    losses = [s["loss"] for s in report["losses"]]
    assert len(losses) == report["optimizer_steps"] == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    assert report["samples"] == {"train": 3, "eval": 1} and isinstance(report["eval_loss"], float)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000020"]  # keep_checkpoints = 1

    # 3. the adapter loads into the running vLLM as it is, under a name
    load_adapter(vllm_server.url, ADAPTER, out)
    assert ADAPTER in {a["name"] for a in list_adapters(vllm_server.base_url)}

    # 4. the style routed to it answers, and not as the base model does (temperature 0 in both styles)
    tuned = [predict(url, img, "ft_tuned") for img in images]
    assert all(t["adapter"] == ADAPTER for t in tuned)
    differs = [t["description"] != b["description"] for t, b in zip(tuned, base, strict=True)]
    assert all(differs), [(t["description"], b["description"]) for t, b in zip(tuned, base, strict=True)]

    # 5. ratings per adapter: the team compares before making the adapter the default
    async def rate(store: ResultStore) -> list[dict[str, Any]]:
        for t in tuned:
            await store.add_feedback(t["id"], 5, reviewer="curator")
            await store.update_description(t["id"], status="approved", reviewer="curator")
        await store.update_description(base[0]["id"], status="rejected", reviewer="curator")
        return await store.adapter_report()

    wait_stored(db, 2 * len(images))
    rows = {(r["adapter"], r["style"]): r for r in run(_with_store(db, rate))}
    mine, theirs = rows[(ADAPTER, "ft_tuned")], rows[(None, "ft_base")]
    assert (mine["n"], mine["avg_rating"], mine["approval_rate"]) == (4, 5.0, 1.0)
    assert (theirs["n"], theirs["avg_rating"], theirs["approval_rate"]) == (4, 4.0, 0.0)


def test_training_resumes_from_its_own_adapter(stack: dict[str, Any]) -> None:
    data, adapter = stack["tmp"] / "finetune.jsonl", stack["tmp"] / "adapter"
    if not (adapter / "training.json").is_file():
        pytest.fail("the end-to-end test above did not leave its adapter", pytrace=False)
    out = stack["tmp"] / "resumed"
    args = ("--data", data, "--base", MODEL_DIR, "--out", out, "--config", CONFIG, "--max-steps", "2")
    done = finetune(*args, "--resume", adapter)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "training.json").read_text())
    assert report["resumed_from"] == str(adapter) and len(report["losses"]) == 2
    before = json.loads((adapter / "training.json").read_text())["losses"][0]["loss"]
    assert report["losses"][0]["loss"] < before  # it starts from the trained weights, not from zero
