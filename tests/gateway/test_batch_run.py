"""The batch runner against a real HTTP peer on loopback: folders, CSV and IIIF inputs, retries,
per-item failures, dry runs, the direct mode and the outputs."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from gateway.batch import BatchConfig, batch_main, run_batch
from gateway.styles import StyleRegistry
from tests.gateway.test_batch_peer import Peer, Scripted, make_images, running


def folder_of(tmp_path: Path, images: dict[str, bytes]) -> Path:
    folder = tmp_path / "collection"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return folder


def cfg(tmp_path: Path, source: Path | str, url: str, **kw: Any) -> BatchConfig:
    base: dict[str, Any] = {"concurrency": 4, "backoff_s": 0.01, "progress": False, "gateway": url}
    base.update(kw)
    return BatchConfig(input=str(source), out_dir=tmp_path / "out", **base)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def csv_rows(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM spreadsheet programs need for Chinese
    return list(csv.DictReader(io.StringIO(raw[3:].decode("utf-8"), newline="")))


async def test_folder_in_two_styles_and_languages_then_nothing_twice(tmp_path: Path) -> None:
    images = make_images(6)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    peer.cached.add("art01.jpg")
    peer.blocked.add("art02.jpg")
    with running(peer) as url:
        config = cfg(tmp_path, folder, url, styles=("curator", "kids_guide"), languages=("zh", "en"))
        summary = await run_batch(config)
        assert (summary.planned, summary.done, summary.cached, summary.filtered, summary.failed) == (24, 16, 4, 4, 0)
        assert summary.prompt_tokens == 24 * 100 and summary.completion_tokens == 24 * 20
        assert set(peer.requests.values()) == {1} and len(peer.requests) == 24
        assert {b["priority"] for b in peer.bodies} == {10} and all(b["cache"] for b in peer.bodies)
        again = await run_batch(config)
    assert (again.skipped, again.finished, peer.total()) == (24, 0, 24)

    out = tmp_path / "out"
    records = jsonl(out / "results.jsonl")
    assert len({r["key"] for r in records}) == len(records) == 24
    first = next(
        r for r in records if r["source"] == "art00.jpg" and r["style"] == "kids_guide" and r["language"] == "en"
    )
    assert first["description"] == "kids_guide/en art00.jpg" and first["status"] == "done"
    assert first["usage"]["total_tokens"] == 120 and first["style_version"] == "v-kids_guide"
    assert {r["status"] for r in records if r["source"] == "art01.jpg"} == {"cached"}
    rows = csv_rows(out / "results.csv")
    assert len(rows) == 24 and rows[0]["source"] == "art00.jpg"
    page = orjson.loads((out / "annotations.json").read_bytes())
    assert page["type"] == "AnnotationPage" and len(page["items"]) == 20  # the 4 withheld texts are left out
    anno = page["items"][0]
    assert anno["motivation"] == "describing" and anno["body"]["type"] == "TextualBody"
    assert anno["body"]["language"] in ("zh", "en") and anno["target"].startswith("urn:huayu:artwork:")
    assert (out / "failures.jsonl").read_bytes() == b""


def test_csv_run_reports_each_bad_row_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_images(3)
    folder = folder_of(tmp_path, {"art00.jpg": images["art00.jpg"]})
    (folder / "fake.jpg").write_text("this is not a picture")
    peer = Peer(images)
    with running(peer) as url:
        manifest = folder / "list.csv"
        manifest.write_text(
            "path,title,artist,accession number,room\n"
            "art00.jpg,溪山行旅图,范宽,1-1,east\n"
            f"{url}/images/art01.jpg,Remote,,1-2,west\n"
            ",No image at all,,1-3,\n"
            "gone.jpg,Missing file,,1-4,\n"
            "fake.jpg,Not a picture,,1-5,\n"
            f"{url}/images/nothere.jpg,Dead link,,1-6,\n",
            encoding="utf-8",
        )
        code = batch_main([str(manifest), "-o", str(tmp_path / "out"), "--gateway", url, "--no-progress"])
    assert code == 1
    sent = {b.get("metadata", {}).get("title") for b in peer.bodies}
    assert sent == {"溪山行旅图", "Remote"}
    assert next(b for b in peer.bodies if b["metadata"]["title"] == "溪山行旅图")["metadata"]["artist"] == "范宽"
    failures = {f["source"]: f for f in jsonl(tmp_path / "out" / "failures.jsonl")}
    assert "has no image" in failures["row 4"]["reason"]
    assert "does not exist" in failures["gone.jpg"]["reason"] and failures["gone.jpg"]["code"] == "not_found"
    assert (
        "not an image" in failures["fake.jpg"]["reason"] and "JPEG, PNG, WebP, TIFF" in failures["fake.jpg"]["reason"]
    )
    assert "HTTP 404" in failures[f"{url}/images/nothere.jpg"]["reason"]
    rows = csv_rows(tmp_path / "out" / "results.csv")
    assert sorted((r["title"], r["accession number"], r["room"]) for r in rows) == [
        ("Remote", "1-2", "west"),
        ("溪山行旅图", "1-1", "east"),
    ]
    printed = capsys.readouterr().out
    assert "failed 4" in printed and "gone.jpg" in printed


def iiif_v2(url: str, names: list[str]) -> dict[str, Any]:
    canvases = [
        {
            "@id": f"{url}/canvas/{name}",
            "@type": "sc:Canvas",
            "label": f"Leaf {name}",
            "images": [
                {"resource": {"@id": f"{url}/images/{name}", "service": {"@id": f"{url}/iiif/{name}"}}, "on": ""}
            ],
        }
        for name in names
    ]
    return {
        "@context": "http://iiif.io/api/presentation/2/context.json",
        "@id": f"{url}/manifest",
        "@type": "sc:Manifest",
        "label": "Album",
        "metadata": [{"label": "Artist", "value": "Shen Zhou"}],
        "sequences": [{"canvases": canvases}],
    }


def iiif_v3(url: str, names: list[str]) -> dict[str, Any]:
    def canvas(name: str) -> dict[str, Any]:
        body = {"id": f"{url}/images/{name}", "type": "Image", "format": "image/jpeg"}
        anno = {"type": "Annotation", "motivation": "painting", "body": body, "target": f"{url}/c3/{name}"}
        return {"id": f"{url}/c3/{name}", "type": "Canvas", "items": [{"type": "AnnotationPage", "items": [anno]}]}

    return {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": f"{url}/manifest3",
        "type": "Manifest",
        "label": {"en": ["Scroll"]},
        "metadata": [{"label": {"en": ["Medium"]}, "value": {"en": ["Ink on silk"]}}],
        "items": [canvas(n) for n in names],
    }


@pytest.mark.parametrize("version", [2, 3])
async def test_iiif_manifest_run(tmp_path: Path, version: int) -> None:
    images = make_images(3)
    peer = Peer(images)
    with running(peer) as url:
        doc = (iiif_v2 if version == 2 else iiif_v3)(url, sorted(images))
        manifest = tmp_path / "manifest.json"
        manifest.write_bytes(orjson.dumps(doc))
        summary = await run_batch(cfg(tmp_path, manifest, url, languages=("en",)))
    assert (summary.done, summary.failed) == (3, 0)
    if version == 2:
        assert "/iiif/art00.jpg/full/!1024,1024/0/default.jpg" in peer.image_paths
        assert {b["metadata"]["title"] for b in peer.bodies} == {f"Leaf art0{i}.jpg" for i in range(3)}
        assert {b["metadata"]["artist"] for b in peer.bodies} == {"Shen Zhou"}
        canvas = f"{url}/canvas/"
    else:
        assert "/images/art02.jpg" in peer.image_paths
        assert {b["metadata"]["medium"] for b in peer.bodies} == {"Ink on silk"}
        canvas = f"{url}/c3/"
    page = orjson.loads((tmp_path / "out" / "annotations.json").read_bytes())
    assert sorted(a["target"] for a in page["items"]) == [f"{canvas}art0{i}.jpg" for i in range(3)]
    # the gateway stores the canvas as the artwork's source: its own IIIF export targets the same canvas
    assert sorted(b["source"] for b in peer.bodies) == [f"{canvas}art0{i}.jpg" for i in range(3)]


async def test_retries_backoff_retry_after_and_permanent_failures(tmp_path: Path) -> None:
    images = make_images(5)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    peer.script = {
        "art00.jpg": [Scripted(500, "engine hiccup", "internal_error")],
        "art01.jpg": [Scripted(400, "Unknown style 'x'", "unknown_style")],
        "art02.jpg": [Scripted(429, "too many requests", "rate_limited", {"Retry-After": "1"})],
        "art03.jpg": [Scripted(503, "model server down", "upstream_unavailable")] * 5,
    }
    with running(peer) as url:
        summary = await run_batch(cfg(tmp_path, folder, url, retries=2))
    count = {name: peer.requests[(name, "curator", "zh")] for name in images}
    assert count == {"art00.jpg": 2, "art01.jpg": 1, "art02.jpg": 2, "art03.jpg": 3, "art04.jpg": 1}
    first, second = peer.times[("art02.jpg", "curator", "zh")]
    assert second - first >= 0.95  # the server's Retry-After was honoured
    assert (summary.done, summary.failed, summary.retries) == (3, 2, 4)
    reasons = {f.source: f for f in summary.failures}
    assert reasons["art01.jpg"].code == "unknown_style" and "HTTP 400: Unknown style" in reasons["art01.jpg"].reason
    assert reasons["art01.jpg"].attempts == 1
    assert reasons["art03.jpg"].attempts == 3 and "model server down" in reasons["art03.jpg"].reason


async def test_an_answer_with_no_text_is_tried_again_not_published(tmp_path: Path) -> None:
    images = make_images(3)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    peer.empty.update({"art00.jpg": 1, "art01.jpg": 5})
    with running(peer) as url:
        summary = await run_batch(cfg(tmp_path, folder, url, retries=2))
    assert (summary.done, summary.failed) == (2, 1)
    assert peer.requests[("art00.jpg", "curator", "zh")] == 2 and peer.requests[("art01.jpg", "curator", "zh")] == 3
    (failure,) = summary.failures
    assert failure.source == "art01.jpg" and "no text" in failure.reason and failure.attempts == 3
    records = jsonl(tmp_path / "out" / "results.jsonl")
    assert sorted(r["source"] for r in records) == ["art00.jpg", "art02.jpg"]
    assert all(r["description"].strip() for r in records)


async def test_dry_run_sends_nothing_and_counts_what_is_left(tmp_path: Path) -> None:
    images = make_images(4)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    with running(peer) as url:
        dry = await run_batch(cfg(tmp_path, folder, url, languages=("zh", "en"), dry_run=True))
        assert (dry.planned, dry.skipped, peer.total()) == (8, 0, 0)
        assert not (tmp_path / "out").exists()
        await run_batch(cfg(tmp_path, folder, url, languages=("zh", "en"), limit=3))
        dry = await run_batch(cfg(tmp_path, folder, url, languages=("zh", "en"), dry_run=True))
    assert peer.total() == 3
    assert dry.skipped == 3 and sum(c["todo"] for c in dry.plan.values()) == 5
    assert dry.plan["curator/zh"]["total"] == dry.plan["curator/en"]["total"] == 4


async def test_direct_mode_builds_the_chat_request(tmp_path: Path) -> None:
    images = make_images(2)
    folder = folder_of(tmp_path, images)
    (folder / "list.csv").write_text("image,title\nart00.jpg,Early Spring\nart01.jpg,\n", encoding="utf-8")
    peer = Peer(images)
    with running(peer) as url:
        summary = await run_batch(
            cfg(tmp_path, folder / "list.csv", url + "/v1", direct=url + "/v1", languages=("en",))
        )
    assert (summary.done, summary.failed) == (2, 0)
    curator = StyleRegistry.load().get("curator")
    body = next(b for b in peer.bodies if "Early Spring" in b["messages"][1]["content"][1]["text"])
    assert body["model"] == "qwen-vl" and "priority" not in body
    assert body["messages"][0] == {"role": "system", "content": curator.system_prompt("en")}
    image, text = body["messages"][1]["content"]
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert text["text"] == curator.user_text("en", {"title": "Early Spring"}, None)
    assert body["max_tokens"] == curator.sampling.max_tokens
    records = jsonl(tmp_path / "out" / "results.jsonl")
    assert sorted(r["description"] for r in records) == ["chat art00.jpg", "chat art01.jpg"]


def test_bad_invocations_exit_2_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_images(1)
    folder = folder_of(tmp_path, images)
    broken = tmp_path / "broken.json"
    broken.write_text('{"@context": "http://iiif.io/api/presentation/3/context.json", "items": [')
    peer = Peer(images)
    out = str(tmp_path / "out")
    with running(peer) as url:
        assert batch_main([str(broken), "-o", out, "--gateway", url]) == 2
        assert "not valid JSON" in capsys.readouterr().err
        assert batch_main([str(folder), "-o", out, "--gateway", url, "-s", "nonesuch"]) == 2
        assert "Unknown style 'nonesuch'" in capsys.readouterr().err
        assert batch_main([str(folder), "-o", out, "--gateway", url, "-l", "fr"]) == 2
        assert "accepted: zh, en" in capsys.readouterr().err
    assert batch_main([str(folder), "-o", out, "--gateway", url, "--no-progress"]) == 2  # the peer is gone
    assert "Cannot reach the gateway" in capsys.readouterr().err
    assert batch_main([str(folder)]) == 2  # no output folder
    assert peer.total() == 0


async def test_progress_bar_shows_rate_eta_and_counts(tmp_path: Path) -> None:
    images = make_images(3)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    peer.cached.add("art00.jpg")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=220, color_system=None)
    with running(peer) as url:
        await run_batch(cfg(tmp_path, folder, url, progress=True), console)
    shown = screen.getvalue()
    assert "3/3" in shown and "items/s" in shown and "ETA" in shown
    assert "done 2 · cached 1 · filtered 0 · failed 0" in shown
