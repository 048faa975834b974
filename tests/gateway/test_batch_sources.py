"""Reading batch inputs: folders, CSV manifests and IIIF v2/v3 manifests, and their failures."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.batch.iiif import parse_manifest
from gateway.batch.model import artwork_id
from gateway.batch.sources import read_csv, read_inputs
from gateway.errors import HuayuError, NotFound, Unprocessable
from tests.media import jpeg


def test_folder_reads_images_recursively_and_skips_the_rest(tmp_path: Path) -> None:
    (tmp_path / "room1").mkdir()
    (tmp_path / ".thumbs").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "a.jpg").write_bytes(jpeg(32, 32, 1))
    (tmp_path / "room1" / "b.PNG").write_bytes(b"whatever")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".thumbs" / "c.jpg").write_bytes(jpeg(32, 32, 2))
    (tmp_path / "out" / "d.jpg").write_bytes(jpeg(32, 32, 3))
    inputs = read_inputs(str(tmp_path), skip=tmp_path / "out")
    assert [a.source for a in inputs.artworks] == ["a.jpg", "room1/b.PNG"]
    first = inputs.artworks[0]
    assert first.id == artwork_id("a.jpg")  # relative: the id survives moving the folder
    assert first.target == f"urn:huayu:artwork:{first.id}"
    assert Path(first.location) == tmp_path / "a.jpg"


def test_missing_or_empty_or_unknown_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        read_inputs(str(tmp_path / "nope"))
    with pytest.raises(NotFound, match="holds no images"):
        read_inputs(str(tmp_path))
    (tmp_path / "list.xlsx").write_bytes(b"PK")
    with pytest.raises(HuayuError, match="CSV manifest"):
        read_inputs(str(tmp_path / "list.xlsx"))


def test_csv_metadata_extra_columns_and_rows_without_image(tmp_path: Path) -> None:
    text = (
        "\ufeffPath,Title,artist,Date,medium,dimensions,collection,accession,notes\n"
        "img/one.jpg,山水,王希孟,1113,绢本设色,51.5 × 1191.5 cm,故宫博物院,X-1,\n"
        ",No image,,,,,,X-2,oops\n"
        'https://example.org/two.jpg,Two,,,,,,X-3,"multi, cell"\n'
        "img/one.jpg,Duplicate,,,,,,X-4,\n"
        "ftp://example.org/three.jpg,Three,,,,,,X-5,\n"
    )
    inputs = read_csv(text, base=str(tmp_path))
    one, two = inputs.artworks
    assert one.source == "img/one.jpg" and Path(one.location) == tmp_path / "img" / "one.jpg"
    assert one.metadata == {
        "title": "山水",
        "artist": "王希孟",
        "year": "1113",
        "medium": "绢本设色",
        "dimensions": "51.5 × 1191.5 cm",
        "collection": "故宫博物院",
    }
    assert one.extra == {"accession": "X-1", "notes": ""}
    assert two.location == two.source == two.target == "https://example.org/two.jpg"
    assert two.extra["notes"] == "multi, cell"
    assert inputs.duplicates == 1
    reasons = {p.source: p.reason for p in inputs.problems}
    assert "has no image" in reasons["row 3"]
    assert "neither a file path nor an http(s) URL" in reasons["ftp://example.org/three.jpg"]


def test_csv_relative_paths_in_a_remote_manifest_resolve_as_urls() -> None:
    inputs = read_csv("url,title\nimages/a.jpg,A\n", base="https://museum.example/data/list.csv")
    assert inputs.artworks[0].location == "https://museum.example/data/images/a.jpg"


def test_csv_without_an_image_column_or_not_utf8_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(Unprocessable, match=r"no image column.*path, url, image"):
        read_csv("title,artist\nA,B\n", base=str(tmp_path))
    bad = tmp_path / "gbk.csv"
    bad.write_bytes("path,title\na.jpg,故宫博物院\n".encode("gbk"))
    with pytest.raises(Unprocessable, match="not UTF-8"):
        read_inputs(str(bad))


def manifest_v2() -> dict[str, object]:
    def canvas(n: int, service: bool) -> dict[str, object]:
        resource: dict[str, object] = {"@id": f"https://img.example/{n}.jpg", "@type": "dctypes:Image"}
        if service:
            resource["service"] = {
                "@context": "http://iiif.io/api/image/2/context.json",
                "@id": f"https://img.example/iiif/{n}",
            }
        return {
            "@id": f"https://m.example/canvas/{n}",
            "@type": "sc:Canvas",
            "label": [{"@value": f"Leaf {n}", "@language": "en"}, {"@value": f"第{n}开", "@language": "zh"}],
            "images": [{"@type": "oa:Annotation", "motivation": "sc:painting", "resource": resource}],
        }

    return {
        "@context": "http://iiif.io/api/presentation/2/context.json",
        "@id": "https://m.example/manifest",
        "@type": "sc:Manifest",
        "label": "Album",
        "metadata": [
            {"label": "Artist", "value": "<span>Shen Zhou</span>"},
            {"label": "Date", "value": [{"@value": "1490", "@language": "en"}]},
            {"label": "Accession number", "value": "1986.1"},
        ],
        "sequences": [{"canvases": [canvas(1, True), canvas(2, False), {"@id": "https://m.example/canvas/3"}]}],
    }


def test_iiif_v2_canvases_metadata_and_image_service() -> None:
    inputs = parse_manifest(manifest_v2(), "!1024,1024", ("zh", "en"))
    first, second = inputs.artworks
    assert first.location == "https://img.example/iiif/1/full/!1024,1024/0/default.jpg"
    assert second.location == "https://img.example/2.jpg"  # no service: the resource itself
    assert first.source == first.target == "https://m.example/canvas/1"
    assert first.metadata == {"artist": "Shen Zhou", "year": "1490", "title": "第1开"}
    assert first.extra == {"Accession number": "1986.1"}
    assert [p.code for p in inputs.problems] == ["no_image"]
    assert "canvas 3" in inputs.problems[0].reason


def test_iiif_v3_language_maps_choice_and_single_canvas_title() -> None:
    doc = {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": "https://m.example/v3",
        "type": "Manifest",
        "label": {"en": ["Autumn Colours"], "zh": ["秋色"]},
        "metadata": [
            {"label": {"en": ["Medium"]}, "value": {"en": ["Ink on paper"], "zh": ["纸本水墨"]}},
            {"label": {"en": ["Dimensions"]}, "value": {"none": ["30 x 40 cm"]}},
        ],
        "items": [
            {
                "id": "https://m.example/v3/canvas/1",
                "type": "Canvas",
                "items": [
                    {
                        "type": "AnnotationPage",
                        "items": [
                            {
                                "type": "Annotation",
                                "motivation": "painting",
                                "body": {
                                    "type": "Choice",
                                    "items": [
                                        {
                                            "id": "https://img.example/v3/a.jpg",
                                            "type": "Image",
                                            "service": [{"id": "https://img.example/iiif3/a", "type": "ImageService3"}],
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (art,) = parse_manifest(doc, "!512,512", ("en",)).artworks
    assert art.location == "https://img.example/iiif3/a/full/!512,512/0/default.jpg"
    assert art.metadata == {"title": "Autumn Colours", "medium": "Ink on paper", "dimensions": "30 x 40 cm"}
    (art_zh,) = parse_manifest(doc, "!512,512", ("zh",)).artworks
    assert art_zh.metadata["title"] == "秋色" and art_zh.metadata["medium"] == "纸本水墨"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hello": "world"}', "not a IIIF Presentation manifest"),
        (b'{"@context": "http://iiif.io/api/presentation/2/context.json", "sequences": []}', "no sequences"),
        (b'{"@context": "http://iiif.io/api/presentation/3/context.json", "items": []}', "no canvases"),
        (b'{"@context": "http://iiif.io/api/presentation/3/context.json", "type": "Collection"}', "Collection"),
    ],
)
def test_malformed_manifests_say_what_is_wrong(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(Unprocessable, match=message):
        read_inputs(str(path))


def test_manifest_json_roundtrip_from_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(orjson.dumps(manifest_v2()))
    inputs = read_inputs(str(path), languages=("en",))
    assert [a.metadata["title"] for a in inputs.artworks] == ["Leaf 1", "Leaf 2"]
