"""`huayu batch` through the gateway on the real vLLM (CPU, tiny model): killed mid-run, resumed."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import Settings
from tests.e2e.conftest import ROOT, VllmServer
from tests.media import painting
from tests.servers import serve

pytestmark = pytest.mark.e2e

ARTWORKS = 30
STYLES = ("curator", "alt_text")


@pytest.fixture(scope="module")
def gateway(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("batch-gateway")
    settings = Settings(
        upstream_url=vllm_server.base_url,
        upstream_model=vllm_server.model,
        database_url=f"sqlite+aiosqlite:///{tmp / 'batch.db'}",
        image_workers=1,
    )
    with serve(create_app(settings)) as url:
        yield url


def _collection(folder: Path) -> Path:
    images = folder / "images"
    images.mkdir()
    with (folder / "collection.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "title", "artist", "year", "accession"])
        for i in range(ARTWORKS):
            painting(256, 192, seed=100 + i).save(images / f"work-{i:02d}.jpg", quality=85)
            w.writerow([f"images/work-{i:02d}.jpg", f"作品 {i}", "佚名", 1700 + i, f"ACC-{i:04d}"])
        w.writerow(["images/missing.jpg", "不存在的作品", "", "", "ACC-9999"])
    return folder / "collection.csv"


def _batch(manifest: Path, out: Path, gateway: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "batch",
        str(manifest),
        "-o",
        str(out),
        "-s",
        ",".join(STYLES),
        "--gateway",
        gateway,
        "-c",
        "4",
        "--max-tokens",
        "16",
        "--no-progress",
    ]


def _records(out: Path) -> list[dict[str, object]]:
    lines = (out / "results.jsonl").read_bytes().split(b"\n")
    return [json.loads(line) for line in lines if line.strip()]


def test_a_collection_killed_and_resumed_is_described_once(gateway: str, tmp_path: Path) -> None:
    manifest = _collection(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_batch(manifest, out, gateway), cwd=ROOT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "results.jsonl").exists() and len(_records(out)) >= 6:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(_records(out))
    assert 0 < at_kill < ARTWORKS * len(STYLES), "the kill should land mid-run"

    second = subprocess.run(_batch(manifest, out, gateway), cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 1, second.stderr  # the missing file is a failure; the rest are done
    records = _records(out)
    keys = Counter((str(r["source"]), str(r["style"])) for r in records)
    assert len(keys) == ARTWORKS * len(STYLES) and max(keys.values()) == 1
    assert all(r["description"] for r in records)
    assert {r["model"] for r in records} == {"qwen-vl-tiny-random"}
    titled = next(r for r in records if str(r["source"]).endswith("work-07.jpg"))
    assert titled["metadata"]["title"] == "作品 7" and titled["extra"]["accession"] == "ACC-0007"

    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("missing.jpg" in f["source"] for f in failures)
    raw = (out / "results.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert len(rows) == ARTWORKS * len(STYLES)
    page = json.loads((out / "annotations.json").read_text(encoding="utf-8"))
    assert page["type"] == "AnnotationPage" and len(page["items"]) == ARTWORKS * len(STYLES)
    assert {a["motivation"] for a in page["items"]} == {"describing"}
