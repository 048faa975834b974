"""Bad invocations of ``huayu batch`` end before any request, in one line and exit 2: an output
path that cannot be a folder, a bad --styles-dir, run-wide options out of the gateway's range and a
model the gateway does not serve. Also: the annotations of identical images keep unique ids, and a
CSV manifest saved with semicolons is read."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.batch import batch_main, read_inputs
from gateway.errors import Unprocessable
from tests.gateway.test_batch_peer import Peer, make_images, running
from tests.gateway.test_batch_run import folder_of, jsonl
from tests.media import jpeg

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a check that needed the server would fail otherwise


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("huayu batch: error: "), err
    return lines[0]


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_output_path_that_cannot_be_a_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    folder = folder_of(tmp_path, make_images(1))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    dry = ["--dry-run"] if dry_run else []
    base = [str(folder), "--gateway", NOWHERE, "--no-progress", *dry]

    assert batch_main([*base, "-o", str(a_file)]) == 2
    line = one_error_line(capsys)
    assert str(a_file) in line and "is a file, not a folder" in line

    inside = a_file / "out" / "deeper"
    assert batch_main([*base, "-o", str(inside)]) == 2
    line = one_error_line(capsys)
    assert str(inside) in line and "cannot be created" in line and f"{str(a_file)!r} is a file" in line
    assert a_file.read_text() == "keep me"


def test_an_output_folder_the_system_refuses_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = folder_of(tmp_path, make_images(1))

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # a read-only or foreign folder (the tests may run as root, whom permissions do not stop)
    monkeypatch.setattr(Path, "mkdir", refuse)
    out = tmp_path / "locked" / "out"
    assert batch_main([str(folder), "-o", str(out), "--gateway", NOWHERE, "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "cannot be created: Permission denied" in line


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("file", "is a file, not a folder"),
        ("bad_toml", "cannot be read: "),
        ("bad_shape", "is not valid"),
    ],
)
def test_a_bad_styles_dir_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, expected: str
) -> None:
    folder = folder_of(tmp_path, make_images(1))
    styles = tmp_path / "styles"
    if setup == "file":
        styles.write_text("name = 'x'\n")
    elif setup == "bad_toml":
        styles.mkdir()
        (styles / "good.toml").write_text("name = 'fine'\n[en]\nsystem = 's'\nuser = 'u'\n")
        (styles / "poem.toml").write_text('name = "poem\n')
    elif setup == "bad_shape":
        styles.mkdir()
        (styles / "poem.toml").write_text("name = 'poem'\nen = 'not a table'\n")
    out = tmp_path / "out"
    argv = [str(folder), "-o", str(out), "--direct", NOWHERE, "--styles-dir", str(styles), "--no-progress"]
    assert batch_main(argv) == 2
    line = one_error_line(capsys)
    assert expected in line and str(styles) in line
    if setup == "bad_toml":
        assert "poem.toml" in line and "good.toml" not in line
    assert not out.exists()  # nothing was started
    assert batch_main([*argv, "--dry-run"]) == 2
    assert expected in one_error_line(capsys)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--temperature", "5"], "--temperature must be from 0 to 2 (got 5)"),
        (["--temperature", "-0.1"], "--temperature must be from 0 to 2"),
        (["--temperature", "nan"], "--temperature must be from 0 to 2"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1 (got 0)"),
        (["--top-p", "0"], "--top-p must be more than 0 and at most 1 (got 0)"),
        (["--top-p", "1.5"], "--top-p must be more than 0 and at most 1"),
        (["--prompt", "字" * 4001], "--prompt is 4001 characters long; at most 4000"),
        (["--limit", "-1"], "--limit cannot be negative (got -1)"),
        (["--timeout", "0"], "--timeout must be more than 0 seconds (got 0)"),
        (["--timeout", "-5"], "--timeout must be more than 0 seconds"),
        (["--max-image-mb", "0"], "--max-image-mb must be more than 0 (got 0)"),
        (["--max-image-mb", "-1"], "--max-image-mb must be more than 0"),
        (["--max-image-mb", "inf"], "--max-image-mb must be more than 0"),
    ],
)
def test_run_wide_options_out_of_range_exit_2_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], expected: str
) -> None:
    images = make_images(3)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    out = tmp_path / "out"
    with running(peer) as url:
        assert batch_main([str(folder), "-o", str(out), "--gateway", url, "--no-progress", *option]) == 2
        assert expected in one_error_line(capsys)
        assert batch_main([str(folder), "-o", str(out), "--gateway", url, "--dry-run", *option]) == 2
        assert expected in one_error_line(capsys)
    assert peer.total() == 0 and not out.exists()  # no failures.jsonl with a line per item


def test_options_at_the_edges_of_their_ranges_are_accepted(tmp_path: Path) -> None:
    images = make_images(2)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    out = tmp_path / "out"
    edges = ["--temperature", "2", "--top-p", "1", "--max-tokens", "1", "--prompt", "字" * 4000]
    with running(peer) as url:
        base = [str(folder), "-o", str(out), "--gateway", url, "--no-progress"]
        assert batch_main([*base, "--limit", "0"]) == 0
        assert peer.total() == 0
        assert batch_main([*base, *edges, "--timeout", "0.5", "--max-image-mb", "0.01"]) == 0
    assert peer.total() == 2
    body = peer.bodies[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], len(body["prompt"])) == (2, 1, 1, 4000)


def test_an_unknown_model_fails_once_before_any_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gateway_url: str
) -> None:
    folder = folder_of(tmp_path, {f"leaf{i}.jpg": jpeg(64, 48, seed=7100 + i) for i in range(3)})
    out = tmp_path / "out"
    base = [str(folder), "-o", str(out), "--gateway", gateway_url, "--no-progress"]
    assert batch_main([*base, "--model", "nonesuch"]) == 2
    line = one_error_line(capsys)
    assert "no model 'nonesuch'" in line and "qwen-vl" in line
    assert not (out / "failures.jsonl").exists()  # it ended before the items, not with one failure each
    assert batch_main([*base, "--model", "qwen-vl:nonesuch"]) == 2
    assert "unknown style 'nonesuch'" in one_error_line(capsys)
    # the names the gateway takes still run: its documented name, and one with a style
    assert batch_main([*base, "--model", "qwen-vl", "--limit", "1"]) == 0
    assert batch_main([*base, "--model", "qwen-vl:kids_guide", "--limit", "1"]) == 0
    assert len(jsonl(out / "results.jsonl")) == 2


def test_a_model_the_peer_does_not_list_is_refused_before_any_request(tmp_path: Path) -> None:
    images = make_images(1)
    folder = folder_of(tmp_path, images)
    peer = Peer(images)
    with running(peer) as url:
        # the peer's /v1/models lists only qwen-vl: another name is refused before any item
        assert batch_main([str(folder), "-o", str(tmp_path / "out"), "--gateway", url, "--model", "other"]) == 2
    assert peer.total() == 0


def test_identical_images_get_unique_stable_annotation_ids(tmp_path: Path, gateway_url: str) -> None:
    same = jpeg(64, 48, seed=7200)
    folder = folder_of(tmp_path, {"img00.jpg": same, "dup.jpg": same, "other.jpg": jpeg(64, 48, seed=7201)})
    out = tmp_path / "out"
    # one request at a time, so the second copy is answered from the gateway's cache
    argv = [str(folder), "-o", str(out), "--gateway", gateway_url, "--no-progress", "-c", "1"]
    assert batch_main([*argv, "-s", "curator,kids_guide", "-l", "both"]) == 0
    records = jsonl(out / "results.jsonl")
    assert len(records) == 12
    by_item = {(r["source"], r["style"], r["language"]): r for r in records}
    shared = [
        by_item[("img00.jpg", s, lang)]["description_id"] == by_item[("dup.jpg", s, lang)]["description_id"]
        for s in ("curator", "kids_guide")
        for lang in ("zh", "en")
    ]
    assert all(shared)  # the precondition: a cache hit gives the copy the same description id

    items = orjson.loads((out / "annotations.json").read_bytes())["items"]
    ids = [a["id"] for a in items]
    assert len(ids) == len(set(ids)) == 12
    assert {a["id"] for a in items} == {f"urn:huayu:batch:{r['key']}" for r in records}
    bodies = {a["body"]["id"] for a in items}
    assert all(b.startswith("urn:huayu:description:") for b in bodies) and len(bodies) < 12  # the copies share
    # a rebuild (a run with nothing left to do) writes the same ids
    assert batch_main([*argv, "-s", "curator,kids_guide", "-l", "both"]) == 0
    again = orjson.loads((out / "annotations.json").read_bytes())["items"]
    assert [a["id"] for a in again] == ids


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_csv_saved_with_semicolons_or_tabs_is_read(tmp_path: Path, delimiter: str) -> None:
    manifest = tmp_path / "list.csv"
    rows = [["path", "title", "artist"], ["a.jpg", "Early Spring, a scroll", "Guo Xi"], ["b.jpg", "Lotus", ""]]
    manifest.write_text("\n".join(delimiter.join(r) for r in rows) + "\n", encoding="utf-8")
    inputs = read_inputs(str(manifest))
    assert [(a.source, a.metadata) for a in inputs.artworks] == [
        ("a.jpg", {"title": "Early Spring, a scroll", "artist": "Guo Xi"}),
        ("b.jpg", {"title": "Lotus"}),
    ]


def test_a_csv_without_an_image_column_hints_at_the_delimiter(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("picture|title\na.jpg|Lotus\n", encoding="utf-8")
    with pytest.raises(Unprocessable) as e:
        read_inputs(str(manifest))
    assert "no image column" in e.value.message and "separated by commas" in e.value.message
    manifest.write_text("picture,title\na.jpg,Lotus\n", encoding="utf-8")
    with pytest.raises(Unprocessable) as e:
        read_inputs(str(manifest))
    assert "separated by" not in e.value.message  # two columns were read: the delimiter is not the problem
