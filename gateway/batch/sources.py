"""Reading the input of a batch run: a folder of images, a CSV manifest or a IIIF manifest
(a file or an http(s) URL), into artworks.

A problem with the whole input (no such folder, a CSV without an image column, a manifest that is
not JSON) raises a HuayuError that says what was wrong and what is accepted; a problem with one
entry (a row without an image) becomes a Failure of that entry and the rest goes on.
"""

from __future__ import annotations

import csv
import io
import posixpath
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from gateway.batch.iiif import parse_manifest
from gateway.batch.model import METADATA_FIELDS, Artwork, Failure, Inputs, artwork_id
from gateway.errors import InvalidRequest, NotFound, Unprocessable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff")
IMAGE_COLUMNS = ("path", "url", "image")
ACCEPTED_INPUTS = "a folder of images, a CSV manifest (.csv/.tsv), a IIIF manifest (.json) or an http(s) URL of one"
# headers museums commonly use for the prompt's fields, beside the fields' own names
_ALIASES = {
    "date": "year",
    "creator": "artist",
    "maker": "artist",
    "author": "artist",
    "materials": "medium",
    "technique": "medium",
    "size": "dimensions",
    "measurements": "dimensions",
}
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_DELIMITER_HINT = {
    ",": "; its columns must be separated by commas (or semicolons or tabs)",
    ";": "; its columns must be separated by commas (or semicolons or tabs)",
    "\t": "; a .tsv's columns must be separated by tabs",
}


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def urn(source: str) -> str:
    return f"urn:huayu:artwork:{artwork_id(source)}"


def read_inputs(
    source: str,
    *,
    timeout_s: float = 30.0,
    iiif_size: str = "!1024,1024",
    languages: tuple[str, ...] = ("zh", "en"),
    skip: Path | None = None,
) -> Inputs:
    """The artworks of ``source``. ``languages``: the order in which a IIIF manifest's labels are
    read; ``skip``: a folder never to read images from (the output folder)."""
    if is_url(source):
        data, kind = _fetch_manifest(source, timeout_s)
        if kind == "csv":
            return read_csv(
                _decode_csv(data, source), base=source, delimiter="," if not source.endswith(".tsv") else "\t"
            )
        return parse_manifest(_parse_json(data, source), iiif_size, languages)
    path = Path(source)
    if not path.exists():
        raise NotFound(f"The input {source!r} does not exist; give {ACCEPTED_INPUTS}.", param="input")
    if path.is_dir():
        return read_folder(path, skip=skip)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        text = _decode_csv(_read_bytes(path), source)
        return read_csv(text, base=str(path.parent.resolve()), delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in (".json", ".jsonld"):
        return parse_manifest(_parse_json(_read_bytes(path), source), iiif_size, languages)
    raise InvalidRequest(f"The input {source!r} is not something huayu batch reads; give {ACCEPTED_INPUTS}.")


def read_folder(folder: Path, skip: Path | None = None) -> Inputs:
    root = folder.resolve()
    skipped = skip.resolve() if skip is not None else None
    artworks: list[Artwork] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if skipped is not None and path.is_relative_to(skipped):
            continue
        if not path.is_file():
            continue
        src = rel.as_posix()
        artworks.append(Artwork(source=src, location=str(path), target=urn(src), origin=src))
    if not artworks:
        raise NotFound(
            f"The folder {str(folder)!r} holds no images; huayu batch reads files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}.",
            param="input",
        )
    return Inputs(artworks, [])


def read_csv(text: str, *, base: str, delimiter: str = ",") -> Inputs:
    """``base``: the folder (or URL) that relative image paths are relative to. A .csv whose header
    has no comma but a semicolon or a tab (as spreadsheet programs in many locales save it) is read
    with that delimiter."""
    text = text.removeprefix("\ufeff")
    end = text.find("\n")
    first = text if end < 0 else text[:end]
    if delimiter == "," and "," not in first:
        delimiter = next((d for d in (";", "\t") if d in first), delimiter)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise Unprocessable("The CSV manifest is empty; it needs a header row and one row per artwork.") from None
    except csv.Error as e:
        raise Unprocessable(f"The CSV manifest cannot be parsed: {e}.") from e
    names = [h.strip().lower() for h in header]
    if not any(n in IMAGE_COLUMNS for n in names):
        raise Unprocessable(
            f"The CSV manifest has no image column (its header: {', '.join(h.strip() for h in header)}); "
            f"it needs one named {', '.join(IMAGE_COLUMNS)}, holding a file path or an http(s) URL"
            f"{_DELIMITER_HINT.get(delimiter, '') if len(header) == 1 else ''}.",
            param="input",
        )
    artworks: list[Artwork] = []
    problems: list[Failure] = []
    seen: set[str] = set()
    duplicates = 0
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = [(names[i], header[i].strip(), row[i].strip()) for i in range(min(len(names), len(row)))]
            found = {name: value for name, _, value in cells if name in IMAGE_COLUMNS and value}
            image = next((found[c] for c in IMAGE_COLUMNS if c in found), "")
            origin = f"row {line}"
            if not image:
                problems.append(
                    Failure(
                        origin, f"CSV {origin} has no image: its {'/'.join(IMAGE_COLUMNS)} cell is empty.", "no_image"
                    )
                )
                continue
            scheme = urlsplit(image).scheme.lower()
            if len(scheme) > 1 and scheme not in ("http", "https", "file"):
                problems.append(
                    Failure(image, f"CSV {origin}: {image!r} is neither a file path nor an http(s) URL.", "bad_source")
                )
                continue
            src, location = _resolve(image, base)
            if src in seen:
                duplicates += 1
                continue
            seen.add(src)
            metadata: dict[str, str] = {}
            extra: dict[str, str] = {}
            for name, original, value in cells:
                field = name if name in METADATA_FIELDS else _ALIASES.get(name)
                if field is not None:
                    if value and field not in metadata:
                        metadata[field] = value
                elif name not in IMAGE_COLUMNS:
                    extra[original] = value
            target = src if is_url(src) else urn(src)
            artworks.append(Artwork(src, location, target, origin, metadata, extra))
    except csv.Error as e:
        raise Unprocessable(f"The CSV manifest cannot be parsed at line {line}: {e}.") from e
    return Inputs(artworks, problems, duplicates)


def _resolve(image: str, base: str) -> tuple[str, str]:
    """(the source the id hashes, where to read it)."""
    if is_url(image):
        return image, image
    if image.lower().startswith("file://"):
        image = urlsplit(image).path
    if is_url(base):
        url = urljoin(base, image)
        return url, url
    if posixpath.isabs(image) or Path(image).is_absolute():
        return Path(image).as_posix(), image
    rel = posixpath.normpath(image.replace("\\", "/"))
    return rel, str(Path(base) / rel)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"The input {str(path)!r} cannot be read: {e.strerror or e}.", param="input") from e


def _decode_csv(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unprocessable(
            f"The CSV manifest {source!r} is not UTF-8 (byte {e.start}); save it as UTF-8 (with or without BOM)."
        ) from e


def _parse_json(data: bytes, source: str) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise Unprocessable(f"The manifest {source!r} is not valid JSON ({e}); a IIIF Presentation manifest is.") from e


def _fetch_manifest(url: str, timeout_s: float) -> tuple[bytes, str]:
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client, client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise NotFound(f"The manifest URL {url!r} answered HTTP {response.status_code}.", param="input")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_MANIFEST_BYTES:
                    raise Unprocessable(f"The manifest at {url!r} is larger than {MAX_MANIFEST_BYTES >> 20} MiB.")
                chunks.append(chunk)
            ctype = response.headers.get("content-type", "").lower()
    except httpx.HTTPError as e:
        raise InvalidRequest(f"The manifest URL {url!r} cannot be fetched ({type(e).__name__}: {e}).") from e
    path = urlsplit(url).path.lower()
    kind = "csv" if "csv" in ctype or "tab-separated" in ctype or path.endswith((".csv", ".tsv")) else "json"
    return b"".join(chunks), kind
