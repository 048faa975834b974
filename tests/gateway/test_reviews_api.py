"""The review API and page over a real gateway, simulator upstream and SQLite store; the outage
cases against a database URL whose port is closed."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.store import DescriptionRecord, ResultStore, new_description_id, open_store
from gateway.web.gauges import ReviewGauges
from gateway.web.labels import LABELS
from loadtest.simulator import SimConfig
from loadtest.simulator import create_app as create_sim
from tests.media import b64, jpeg
from tests.servers import gateway_settings, serve

CLOSED_DB = "postgresql+asyncpg://postgres@127.0.0.1:1/x"
ADAPTER = "museum-v2"


@pytest.fixture(scope="module")
def review_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # its own simulator (serving an adapter) and database, so the counts below are this module's alone
    with serve(create_sim(SimConfig(model="qwen-vl", tokens=16, loras={ADAPTER: "adapters/museum-v2"}))) as sim:
        settings = gateway_settings(sim, tmp_path_factory.mktemp("reviews"))
        with serve(create_app(settings)) as url:
            yield url


@pytest.fixture
def api(review_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=review_url, timeout=30) as c:
        yield c


def _stored(api: httpx.Client, description_id: str) -> dict[str, Any]:
    """The description once the background writer has stored it."""
    deadline = time.monotonic() + 15
    while True:
        r = api.get(f"/v1/descriptions/{description_id}")
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            return body
        assert r.status_code == 404, r.text
        assert time.monotonic() < deadline, f"{description_id} was never stored"
        time.sleep(0.05)


def _describe(api: httpx.Client, seed: int, style: str = "curator", **form: str) -> dict[str, Any]:
    files = {"file": (f"painting-{seed}.jpg", jpeg(seed=seed), "image/jpeg")}
    r = api.post("/v1/describe", files=files, data={"style": style, "cache": "false", **form})
    assert r.status_code == 200, r.text
    return _stored(api, r.json()["id"])


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    message: str = r.json()["error"]["message"]
    return message


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


# ---- the page ---------------------------------------------------------------------------------


def test_every_label_exists_in_both_languages() -> None:
    assert set(LABELS["zh"]) == set(LABELS["en"])
    assert LABELS["zh"]["question"] == "这段文字贴切吗？" and LABELS["en"]["question"] == "Is this description apt?"


def test_page_is_chinese_by_default_and_english_by_cookie(api: httpx.Client) -> None:
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN"' in r.text and "描述审阅" in r.text and "学术评析" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    config = json.loads(re.search(r'id="huayu-config">(.*?)</script>', r.text, re.S)[1])  # type: ignore[index]
    assert config["model"] == "qwen-vl" and config["store"] is True
    assert {s["name"] for s in config["styles"]} >= {"curator", "academic", "kids_guide"}
    r = api.get("/", headers={"cookie": "huayu_lang=en"})
    assert '<html lang="en"' in r.text and "Description review" in r.text and "Scholarly critique" in r.text


def test_page_scripts_and_styles_are_served_and_revalidated(api: httpx.Client) -> None:
    page = api.get("/").text
    assert '<script type="module" src="static/review.js">' in page
    names = [*re.findall(r'href="static/([\w.]+)"', page), "review.js"]
    assert {"review.css", "words.js", "cards.js", "gallery.js", "compose.js", "review.js"} <= set(names)
    for name in names:
        r = api.get(f"/static/{name}")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and r.content
        again = api.get(f"/static/{name}", headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304 and not again.content
        if name.endswith(".js"):
            assert "innerHTML" not in r.text and "eval(" not in r.text
    assert "review.js" in _error(api.get("/static/secrets.py"), 404)


# ---- reading, rating, editing ------------------------------------------------------------------


def test_a_generated_description_is_stored_listed_and_shown_in_the_gallery(api: httpx.Client) -> None:
    d = _describe(api, 101, "academic", title="溪山行旅图", artist="范宽")
    assert d["style"] == "academic" and d["status"] == "draft" and d["rating_avg"] is None
    assert d["text"] and d["final_text"] == d["text"] and d["feedback"] == []
    listed = api.get("/v1/descriptions", params={"artwork_id": d["artwork_id"]}).json()
    assert [x["id"] for x in listed["data"]] == [d["id"]] and listed["total"] == 1

    art = next(a for a in api.get("/v1/artworks", params={"limit": 50}).json()["data"] if a["id"] == d["artwork_id"])
    assert art["metadata"] == {"title": "溪山行旅图", "artist": "范宽"} and art["source"] == "painting-101.jpg"
    assert [x["id"] for x in art["descriptions"]] == [d["id"]]
    thumb = api.get(f"/v1/artworks/{d['artwork_id']}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    full = api.get(f"/v1/artworks/{d['artwork_id']}/image")
    assert Image.open(io.BytesIO(full.content)).size[0] >= Image.open(io.BytesIO(thumb.content)).size[0]


def test_rating_editing_and_approval_are_kept(api: httpx.Client) -> None:
    d = _describe(api, 102)
    r = api.post(f"/v1/descriptions/{d['id']}/feedback", json={"rating": 4, "comment": "贴切", "reviewer": "lin"})
    assert r.status_code == 201, r.text
    assert r.json()["rating"] == 4 and r.json()["description"]["rating_avg"] == 4.0
    api.post(f"/v1/descriptions/{d['id']}/feedback", json={"rating": 5, "edited_text": "远山如黛，溪水潺潺。"})
    patched = api.patch(f"/v1/descriptions/{d['id']}", json={"status": "approved", "reviewer": "lin"}).json()
    assert patched["status"] == "approved" and patched["reviewer"] == "lin"
    assert patched["final_text"] == "远山如黛，溪水潺潺。" and patched["text"] == d["text"]
    again = api.get(f"/v1/descriptions/{d['id']}").json()
    assert again["rating_avg"] == 4.5 and again["rating_count"] == 2 and len(again["feedback"]) == 2
    edited = api.patch(f"/v1/descriptions/{d['id']}", json={"text": "新的文字"}).json()
    assert edited["final_text"] == "新的文字" and edited["status"] == "approved"

    by_filter = api.get("/v1/descriptions", params={"status": "approved", "min_rating": 4.5}).json()["data"]
    assert d["id"] in [x["id"] for x in by_filter]
    too_high = api.get("/v1/descriptions", params={"artwork_id": d["artwork_id"], "min_rating": 4.6}).json()
    assert too_high["total"] == 0


@pytest.mark.parametrize("rating", [0, 6, -1, 4.5, True, "four", None])
def test_a_rating_outside_one_to_five_is_422(api: httpx.Client, rating: object) -> None:
    d = _describe(api, 103)
    message = _error(api.post(f"/v1/descriptions/{d['id']}/feedback", json={"rating": rating}), 422)
    assert "1 to 5" in message
    assert api.get(f"/v1/descriptions/{d['id']}").json()["rating_count"] == 0


def test_bad_values_get_clear_errors(api: httpx.Client) -> None:
    d = _describe(api, 104)
    assert "draft, approved, rejected" in _error(api.patch(f"/v1/descriptions/{d['id']}", json={"status": "live"}), 422)
    assert "Nothing to change" in _error(api.patch(f"/v1/descriptions/{d['id']}", json={}), 422)
    assert "text" in _error(api.patch(f"/v1/descriptions/{d['id']}", json={"text": "  "}), 422)
    assert "jsonl, csv, finetune, iiif" in _error(api.get("/v1/export", params={"format": "xml"}), 422)
    assert "limit" in _error(api.get("/v1/descriptions", params={"limit": 0}), 422)
    assert "min_rating" in _error(api.get("/v1/artworks", params={"min_rating": 9}), 422)
    _error(api.post(f"/v1/descriptions/{d['id']}/feedback", json={"comment": "no rating"}), 400)
    _error(api.post(f"/v1/descriptions/{d['id']}/feedback", json={"rating": 3, "stars": 3}), 400)


def test_unknown_ids_are_404(api: httpx.Client) -> None:
    missing = "desc_" + "0" * 32
    assert missing in _error(api.get(f"/v1/descriptions/{missing}"), 404)
    _error(api.post(f"/v1/descriptions/{missing}/feedback", json={"rating": 3}), 404)
    _error(api.patch(f"/v1/descriptions/{missing}", json={"status": "approved"}), 404)
    assert "art_nope" in _error(api.get("/v1/artworks/art_nope/thumbnail"), 404)


# ---- exports -------------------------------------------------------------------------------------


def test_exports_carry_the_reviewed_text(api: httpx.Client) -> None:
    d = _describe(api, 105, "kids_guide")
    api.patch(f"/v1/descriptions/{d['id']}", json={"status": "approved", "text": "=一幅关于山的画"})
    params = {"artwork_id": d["artwork_id"]}

    r = api.get("/v1/export", params={**params, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="descriptions.csv"' in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["id"] for row in rows] == [d["id"]] and rows[0]["final_text"] == "'=一幅关于山的画"

    lines = api.get("/v1/export", params={**params, "format": "jsonl"}).text.splitlines()
    assert [json.loads(x)["final_text"] for x in lines] == ["=一幅关于山的画"]

    tune = [json.loads(x) for x in api.get("/v1/export", params={**params, "format": "finetune"}).text.splitlines()]
    assert len(tune) == 1 and tune[0]["messages"][-1] == {"role": "assistant", "content": "=一幅关于山的画"}
    image_part = tune[0]["messages"][-2]["content"][0]
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")

    page = api.get("/v1/export", params={**params, "format": "iiif"}).json()
    assert page["type"] == "AnnotationPage" and len(page["items"]) == 1
    anno = page["items"][0]
    assert anno["motivation"] == "describing" and anno["body"]["value"] == "=一幅关于山的画"
    assert anno["id"].endswith(f"/v1/descriptions/{d['id']}") and anno["id"].startswith("http://127.0.0.1:")


# ---- the A/B report and its gauges ----------------------------------------------------------------


def test_adapter_report_compares_the_base_model_with_an_adapter(api: httpx.Client) -> None:
    r = api.post("/v1/models/qwen-vl:predict", json={"image": b64(jpeg(seed=106)), "style": "alt_text", "cache": False})
    base = _stored(api, r.json()["id"])
    r = api.post(f"/v1/models/{ADAPTER}:predict", json={"image": b64(jpeg(seed=106)), "style": "alt_text"})
    tuned = _stored(api, r.json()["id"])
    assert base["adapter"] is None and tuned["adapter"] == ADAPTER
    for d, rating, status in ((base, 2, "rejected"), (tuned, 5, "approved")):
        api.post(f"/v1/descriptions/{d['id']}/feedback", json={"rating": rating})
        api.patch(f"/v1/descriptions/{d['id']}", json={"status": status})

    rows = {(x["adapter"], x["style"]): x for x in api.get("/v1/reports/adapters").json()["data"]}
    assert rows[(None, "alt_text")] | {"n": 1} == rows[(None, "alt_text")]
    assert rows[(None, "alt_text")]["avg_rating"] == 2.0 and rows[(None, "alt_text")]["approval_rate"] == 0.0
    assert rows[(ADAPTER, "alt_text")]["avg_rating"] == 5.0 and rows[(ADAPTER, "alt_text")]["approval_rate"] == 1.0

    metrics = api.get("/metrics").text
    assert _sample(metrics, "huayu_review_avg_rating", adapter="base", style="alt_text") == 2.0
    assert _sample(metrics, "huayu_review_avg_rating", adapter=ADAPTER, style="alt_text") == 5.0
    assert _sample(metrics, "huayu_review_approval_rate", adapter=ADAPTER, style="alt_text") == 1.0
    assert _sample(metrics, "huayu_review_descriptions", adapter="base", style="alt_text") == 1.0


def _record(style: str, adapter: str | None, seed: int) -> DescriptionRecord:
    return DescriptionRecord(
        id=new_description_id(),
        artwork_digest=f"{seed:032x}",
        phash=seed,
        thumbnail=jpeg(64, 48, seed=seed),
        style=style,
        style_version="v1",
        language="zh",
        model="qwen-vl",
        adapter=adapter,
        text="山水之间",
    )


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_gauges_refresh_on_scrape_without_waiting_for_the_database(tmp_path: Path) -> None:
    async with open_store(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}") as store:
        records = [_record("curator", None, 1), _record("curator", ADAPTER, 2)]
        for rec in records:
            store.record(rec)
        for rec in records:
            await _until(lambda rec=rec: store.pending() == 0)
        await store.add_feedback(records[1].id, 3)
        await store.update_description(records[1].id, status="approved")

        registry = CollectorRegistry()
        gauges = ReviewGauges(store, refresh_s=0.0)
        gauges.start(registry)
        try:
            rated = {"adapter": ADAPTER, "style": "curator"}
            # every scrape starts a refresh in the background and answers with what it has
            await _until(lambda: registry.get_sample_value("huayu_review_avg_rating", rated) == 3.0)
            assert registry.get_sample_value("huayu_review_approval_rate", rated) == 1.0
            base = {"adapter": "base", "style": "curator"}
            assert registry.get_sample_value("huayu_review_descriptions", base) == 1.0
            assert registry.get_sample_value("huayu_review_avg_rating", base) is None  # not rated: no sample
            await store.add_feedback(records[1].id, 5)
            await _until(lambda: registry.get_sample_value("huayu_review_avg_rating", rated) == 4.0)
            age = registry.get_sample_value("huayu_review_report_age_seconds")
            assert age is not None and 0 <= age < 10
        finally:
            await gauges.aclose()
        assert registry.get_sample_value("huayu_review_descriptions", base) is None  # unregistered


async def test_gauges_stay_empty_and_answer_while_the_database_is_down() -> None:
    store = ResultStore(CLOSED_DB, connect_timeout_s=1.0)
    await store.start()
    registry = CollectorRegistry()
    gauges = ReviewGauges(store, refresh_s=0.0)
    gauges.start(registry)
    try:
        assert await gauges.refresh() is False
        assert registry.get_sample_value("huayu_review_report_age_seconds") == -1.0
        assert registry.get_sample_value("huayu_review_avg_rating", {"adapter": "base", "style": "curator"}) is None
    finally:
        await gauges.aclose()
        await store.close()


# ---- no database ----------------------------------------------------------------------------------


def test_routes_answer_503_when_the_database_is_down(sim_url: str, tmp_path: Path) -> None:
    settings = gateway_settings(sim_url, tmp_path, database_url=CLOSED_DB)
    some_id = "desc_" + "0" * 32
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as c:
        for r in (
            c.get("/v1/descriptions"),
            c.get(f"/v1/descriptions/{some_id}"),
            c.post(f"/v1/descriptions/{some_id}/feedback", json={"rating": 4}),
            c.patch(f"/v1/descriptions/{some_id}", json={"status": "approved"}),
            c.get("/v1/export", params={"format": "csv"}),
            c.get("/v1/artworks"),
            c.get("/v1/reports/adapters"),
        ):
            assert "cannot be reached" in _error(r, 503)
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "huayu_review_report_age_seconds -1.0" in metrics.text
        assert c.get("/").status_code == 200


def test_routes_answer_503_when_the_store_is_off(sim_url: str, tmp_path: Path) -> None:
    settings = gateway_settings(sim_url, tmp_path, store_enabled=False)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/v1/descriptions")
        assert "HUAYU_STORE_ENABLED" in _error(r, 503) and r.json()["error"]["code"] == "store_disabled"
        _error(c.get("/v1/export"), 503)
        page = c.get("/")
        assert page.status_code == 200 and "结果库未启用" in page.text
        assert "huayu_review_" not in c.get("/metrics").text
