"""An upload that already is the model's JPEG is sent on as coded, without its metadata; any other
is re-encoded as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from gateway.errors import InvalidRequest, PayloadTooLarge, Unprocessable, UnsupportedMedia
from gateway.images import ImageOptions, pixel_digest, prepare_image
from gateway.images.passthrough import strip_model_ready
from tests.gateway.imageset import sk
from tests.gateway.test_images import adobe_rgb_profile

OPTS = ImageOptions(max_bytes=30 * 1024 * 1024, max_pixels=120_000_000)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.ascontiguousarray(sk("chelsea")[:288, :448])  # sides multiples of 32


def save(rgb: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **{"quality": 90, **kw})
    return buf.getvalue()


def markers(jpeg: bytes) -> list[int]:
    """The markers of the segments before the first scan."""
    out, pos = [], 2
    while jpeg[pos + 1] != 0xDA:
        out.append(jpeg[pos + 1])
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    return out


def test_model_ready_jpeg_is_sent_on_without_its_metadata(rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # stands for the EXIF block: camera, time, GPS position
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    plain = save(rgb)
    data = save(rgb, exif=exif.tobytes(), comment=b"secret note", icc_profile=srgb) + b"PK\x03\x04 trailing archive"
    p = prepare_image(data, OPTS)
    assert p.jpeg == plain  # the same coded image, byte for byte, less the metadata and the tail
    assert b"PhoneMaker" not in p.jpeg and b"secret note" not in p.jpeg and b"PK" not in p.jpeg
    assert not any(0xE1 <= m <= 0xEF or m == 0xFE for m in markers(p.jpeg))
    pixels = simplejpeg.decode_jpeg(plain)
    assert p.artwork_digest == pixel_digest(pixels)
    assert (p.width, p.height, p.source_format) == (448, 288, "JPEG")


def test_passing_through_changes_no_key(rgb: np.ndarray) -> None:
    data = save(rgb)
    sent = prepare_image(data, OPTS)
    recoded = prepare_image(data, ImageOptions(max_bytes=OPTS.max_bytes, max_pixels=OPTS.max_pixels, jpeg_quality=89))
    assert sent.jpeg == data and recoded.jpeg != data  # q90 tables are finer than q89's: re-encoded
    assert (sent.digest, sent.phash, sent.signature) == (recoded.digest, recoded.phash, recoded.signature)


@pytest.mark.parametrize(
    "case",
    ["finer tables (q95)", "progressive", "turned by EXIF", "not multiples of 32", "Adobe RGB", "crop option"],
)
def test_other_jpegs_are_re_encoded(rgb: np.ndarray, case: str) -> None:
    opts = OPTS
    if case == "finer tables (q95)":
        data = save(rgb, quality=95)
    elif case == "progressive":
        data = save(rgb, progressive=True)
    elif case == "turned by EXIF":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = save(rgb, exif=exif.tobytes())
    elif case == "not multiples of 32":
        data = save(np.ascontiguousarray(rgb[:280]))
    elif case == "Adobe RGB":
        data = save(rgb, icc_profile=adobe_rgb_profile())
    else:
        data = save(rgb)
        opts = ImageOptions(max_bytes=OPTS.max_bytes, max_pixels=OPTS.max_pixels, crop_borders=True)
    p = prepare_image(data, opts)
    assert strip_model_ready(p.jpeg, 90) is not None  # what we send is model-ready in every case
    assert p.jpeg != strip_model_ready(data, 90)


def test_the_scan_must_end_the_image(rgb: np.ndarray) -> None:
    data = save(rgb)
    assert strip_model_ready(data, 90) == data
    assert strip_model_ready(data[:-2], 90) is None  # no end-of-image marker
    assert strip_model_ready(data[: len(data) // 2], 90) is None
    assert strip_model_ready(save(rgb, progressive=True), 90) is None
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        prepare_image(data[: len(data) // 2], OPTS)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_damaged_model_ready_jpegs_fail_cleanly(rgb: np.ndarray, data: st.DataObject) -> None:
    good = bytearray(save(rgb[:64, :64]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(2, len(good)))
    damaged = bytes(good[:cut])
    stripped = strip_model_ready(damaged, 90)
    assert stripped is None or (stripped[:2] == b"\xff\xd8" and stripped[-2:] == b"\xff\xd9")
    try:
        p = prepare_image(damaged, OPTS)
    except (InvalidRequest, UnsupportedMedia, PayloadTooLarge, Unprocessable):
        return
    assert simplejpeg.decode_jpeg(p.jpeg).shape == (p.height, p.width, 3)  # whatever is sent decodes
