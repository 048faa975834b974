"""Hostile uploads through a real gateway: bombs, truncations and polyglots end as clear 4xx answers,
never a 5xx, and the gateway keeps serving afterwards."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from tests.media import b64, encode, jpeg, painting
from tests.servers import gateway_settings, serve


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming a huge canvas; a few bytes of compressed zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim other dimensions."""
    data = bytearray(jpeg(64, 64))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_bomb() -> bytes:
    """A tiny TIFF whose header claims 60000 x 60000 pixels (3.6 gigapixels)."""
    small = encode(painting(64, 64), "TIFF", compression="tiff_deflate")
    data = bytearray(small)
    little = data[:2] == b"II"
    order = "<" if little else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            fmt = order + ("H" if kind == 3 else "I")
            data[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 60000)
    return bytes(data)


def jpeg_zip_polyglot() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.html", "<script>alert(1)</script>")
    return jpeg(96, 96, seed=3) + buf.getvalue()


def html_gif_polyglot() -> bytes:
    return b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=1;<html><script>alert(1)</script></html>"


CASES = [
    ("png claiming 100000x100000", png_claiming(100_000, 100_000), 413, "pixels"),
    ("jpeg claiming 60000x60000", jpeg_claiming(60_000, 60_000), 413, "pixels"),
    ("tiff bomb", tiff_bomb(), 413, "pixels"),
    ("truncated jpeg", jpeg(256, 256)[:1500], 400, "truncated"),
    ("truncated png", encode(painting(128, 128), "PNG")[:300], 400, "corrupt"),
    ("html+gif polyglot", html_gif_polyglot(), 415, "GIF"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "SVG"),
    ("random bytes", bytes(range(256)) * 8, 415, "accepted formats"),
    ("tiny image", jpeg(8, 8), 422, "at least 32 pixels"),
]


@pytest.fixture(scope="module")
def client(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = gateway_settings(sim_url, tmp_path_factory.mktemp("hostile"), store_enabled=False)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.mark.parametrize(("name", "data", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_hostile_upload_gets_a_clear_4xx(client: httpx.Client, name: str, data: bytes, status: int, words: str) -> None:
    r = client.post("/v1/models/qwen-vl:predict", json={"image": b64(data), "cache": False})
    assert r.status_code == status, (name, r.text)
    assert words in r.json()["error"]["message"]
    form = client.post("/v1/describe", files={"file": ("x.bin", data)}, data={"cache": "false"})
    assert form.status_code == status, (name, form.text)


def test_a_jpeg_zip_polyglot_is_described_as_the_jpeg_it_starts_with(client: httpx.Client) -> None:
    r = client.post("/v1/models/qwen-vl:predict", json={"image": b64(jpeg_zip_polyglot()), "cache": False})
    # the trailing archive is never read; the model gets the JPEG rebuilt from its coding segments
    assert r.status_code == 200, r.text


def test_the_gateway_still_serves_after_the_hostile_uploads(client: httpx.Client) -> None:
    r = client.post("/v1/models/qwen-vl:predict", json={"image": b64(jpeg(128, 96, seed=11))})
    assert r.status_code == 200
    metrics = client.get("/metrics").text
    assert 'huayu_requests_total{route="/v1/models/{model}:predict",status="500"' not in metrics
