"""IIIF Presentation manifests (v2 and v3) to artworks: one artwork per canvas.

The image is fetched through the IIIF Image API service when the canvas has one, at a bounded
size (``/full/!1024,1024/0/default.jpg``), so a 100-megapixel master never crosses the network;
otherwise the image resource itself. Labels and metadata are read in the run's preferred
language; metadata whose label names a prompt field (Artist, Date, Medium, ...) grounds the
prompt, the rest is kept as ``extra``.
"""

from __future__ import annotations

import html
import re
from typing import Any

from gateway.batch.model import Artwork, Failure, Inputs
from gateway.errors import Unprocessable

_FIELD_LABELS = {
    "title": ("title", "titles", "object title", "标题", "名称", "作品名称", "题名"),
    "artist": ("artist", "creator", "maker", "author", "painter", "artist/maker", "作者", "画家", "艺术家"),
    "year": ("date", "year", "dated", "created", "date created", "年代", "日期", "时代", "创作年代"),
    "medium": ("medium", "materials", "material", "technique", "medium/technique", "材质", "媒材", "质地"),
    "dimensions": ("dimensions", "size", "measurements", "尺寸", "规格"),
    "collection": ("collection", "repository", "holding institution", "owner", "收藏", "馆藏", "收藏单位"),
}
_LABEL_TO_FIELD = {label: name for name, labels in _FIELD_LABELS.items() for label in labels}
_TAGS = re.compile(r"<[^>]+>")


def parse_manifest(doc: object, size: str = "!1024,1024", languages: tuple[str, ...] = ("zh", "en")) -> Inputs:
    if not isinstance(doc, dict):
        raise Unprocessable("The manifest is not a JSON object; a IIIF Presentation manifest (v2 or v3) is.")
    version = _version(doc)
    kind = str(doc.get("@type") or doc.get("type") or "")
    if kind.endswith("Collection"):
        raise Unprocessable("The manifest is a IIIF Collection; give huayu batch one of its manifests.")
    if version == 2:
        sequences = doc.get("sequences")
        if not isinstance(sequences, list) or not sequences or not isinstance(sequences[0], dict):
            raise Unprocessable("The IIIF v2 manifest has no sequences; it needs sequences[0].canvases.")
        canvases = sequences[0].get("canvases")
    else:
        canvases = doc.get("items")
    if not isinstance(canvases, list) or not canvases:
        where = "sequences[0].canvases" if version == 2 else "items"
        raise Unprocessable(f"The IIIF v{version} manifest has no canvases in {where}; there is nothing to describe.")
    reader = _Reader(version, languages)
    shared = reader.metadata(doc.get("metadata"))
    manifest_label = reader.text(doc.get("label"))
    artworks: list[Artwork] = []
    problems: list[Failure] = []
    seen: set[str] = set()
    duplicates = 0
    for n, canvas in enumerate(canvases, start=1):
        origin = f"canvas {n}"
        if not isinstance(canvas, dict):
            problems.append(Failure(origin, f"IIIF {origin} is not an object.", "bad_canvas"))
            continue
        canvas_id = str(canvas.get("@id") or canvas.get("id") or "")
        url = reader.image_url(canvas, size)
        if url is None:
            name = canvas_id or origin
            problems.append(Failure(name, f"IIIF {origin} ({name}) has no image resource.", "no_image"))
            continue
        source = canvas_id or url
        if source in seen:
            duplicates += 1
            continue
        seen.add(source)
        fields, extra = dict(shared[0]), dict(shared[1])
        label = reader.text(canvas.get("label"))
        if len(canvases) > 1 and label:
            fields["title"] = label
        elif manifest_label and "title" not in fields:
            fields["title"] = manifest_label
        own_fields, own_extra = reader.metadata(canvas.get("metadata"))
        fields.update(own_fields)
        extra.update(own_extra)
        artworks.append(Artwork(source, url, source, f"{origin} {label}".strip(), fields, extra))
    return Inputs(artworks, problems, duplicates)


def _version(doc: dict[str, Any]) -> int:
    context = doc.get("@context")
    contexts = context if isinstance(context, list) else [context]
    text = " ".join(str(c) for c in contexts if isinstance(c, str))
    if "presentation/3" in text:
        return 3
    if "presentation/2" in text:
        return 2
    if "sequences" in doc:
        return 2
    if "items" in doc:
        return 3
    raise Unprocessable(
        "The JSON file is not a IIIF Presentation manifest: it has no IIIF @context and neither "
        "'sequences' (v2) nor 'items' (v3)."
    )


class _Reader:
    def __init__(self, version: int, languages: tuple[str, ...]) -> None:
        self.version = version
        self.languages = languages

    def text(self, value: object) -> str:
        """A v2 value (string, {"@value"}, or a list of them) or a v3 language map, as plain text."""
        options: list[tuple[str, str]] = []  # (language, text)
        if isinstance(value, str):
            options.append(("none", value))
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, str):
                    options.append(("none", v))
                elif isinstance(v, dict) and "@value" in v:
                    options.append((str(v.get("@language") or "none"), str(v["@value"])))
        elif isinstance(value, dict):
            if "@value" in value:
                options.append((str(value.get("@language") or "none"), str(value["@value"])))
            else:
                for lang, texts in value.items():
                    items = texts if isinstance(texts, list) else [texts]
                    options.append((str(lang), "; ".join(str(t) for t in items if isinstance(t, str | int | float))))
        if not options:
            return ""
        for wanted in (*self.languages, "none"):
            for lang, text in options:
                if lang == wanted or lang.split("-")[0] == wanted:
                    return _plain(text)
        return _plain(options[0][1])

    def metadata(self, entries: object) -> tuple[dict[str, str], dict[str, str]]:
        fields: dict[str, str] = {}
        extra: dict[str, str] = {}
        if not isinstance(entries, list):
            return fields, extra
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            label, value = self.text(entry.get("label")), self.text(entry.get("value"))
            if not label or not value:
                continue
            field = _LABEL_TO_FIELD.get(label.strip().lower())
            if field is not None and field not in fields:
                fields[field] = value
            elif field is None:
                extra[label] = value
        return fields, extra

    def image_url(self, canvas: dict[str, Any], size: str) -> str | None:
        resource = self._resource(canvas)
        if resource is None:
            return None
        services = resource.get("service")
        for service in services if isinstance(services, list) else [services]:
            if isinstance(service, dict):
                sid = service.get("@id") or service.get("id")
                if isinstance(sid, str) and sid.startswith(("http://", "https://")):
                    return f"{sid.rstrip('/')}/full/{size}/0/default.jpg"
        rid = resource.get("@id") or resource.get("id")
        if isinstance(rid, str) and rid.startswith(("http://", "https://")):
            return rid
        return None

    def _resource(self, canvas: dict[str, Any]) -> dict[str, Any] | None:
        if self.version == 2:
            images = canvas.get("images")
            first = images[0] if isinstance(images, list) and images else None
            resource = first.get("resource") if isinstance(first, dict) else None
        else:
            pages = canvas.get("items")
            page = pages[0] if isinstance(pages, list) and pages else None
            annos = page.get("items") if isinstance(page, dict) else None
            anno = annos[0] if isinstance(annos, list) and annos else None
            resource = anno.get("body") if isinstance(anno, dict) else None
            if isinstance(resource, list):
                resource = resource[0] if resource else None
        # a Choice (v3) or oa:Choice (v2) offers alternatives: the first is the default
        if isinstance(resource, dict) and str(resource.get("type") or resource.get("@type")).endswith("Choice"):
            options = resource.get("items") or ([resource["default"]] if "default" in resource else [])
            resource = options[0] if isinstance(options, list) and options else None
        return resource if isinstance(resource, dict) else None


def _plain(text: str) -> str:
    # IIIF allows a little HTML in labels and values; the prompt wants the words
    return " ".join(html.unescape(_TAGS.sub(" ", text)).split())
