"""The image pipeline on real encoded files: formats, limits, orientation, colour, sizes."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from blake3 import blake3
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageOps

from gateway.cache.fingerprint import fit, hamming, same_artwork
from gateway.config import Settings
from gateway.errors import InvalidRequest, PayloadTooLarge, Unprocessable, UnsupportedMedia
from gateway.images import (
    ImageKeys,
    ImageOptions,
    ImageWorker,
    PreparedImage,
    decode_image_payload,
    pixel_digest,
    prepare_image,
    stage_image,
    target_size,
    view_digest,
)
from gateway.images.source import dct_size
from tests.gateway.imageset import sk

OPTS = ImageOptions(max_bytes=30 * 1024 * 1024, max_pixels=120_000_000)


def encode(img: Image.Image | np.ndarray, fmt: str, **kw: object) -> bytes:
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(p: PreparedImage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(p.jpeg)).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(sk("chelsea"))  # 451x300 RGB


def test_payload_raw_base64_and_data_url() -> None:
    raw = b"\xff\xd8\xff\xe0 jpeg"
    b64 = base64.b64encode(raw).decode()
    assert decode_image_payload(b64) == raw
    assert decode_image_payload(f"data:image/jpeg;base64,{b64}") == raw
    assert decode_image_payload(b64[:8] + "\n" + b64[8:]) == raw


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        ("not base64 at all!", InvalidRequest, "not valid base64"),
        ("QUJDRA=", InvalidRequest, r"not valid base64 \(Incorrect padding"),  # the standard library's words
        ("QUJDRA==é", InvalidRequest, "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", UnsupportedMedia, "text/plain"),
        ("data:image/png,rawbytes", InvalidRequest, "base64"),
        ("", InvalidRequest, "empty"),
    ],
)
def test_payload_refusals(value: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        decode_image_payload(value)


@given(st.integers(32, 20000), st.integers(32, 20000), st.sampled_from([256, 448, 1024, 1280]))
def test_target_size_rules(w: int, h: int, edge: int) -> None:
    tw, th = target_size(w, h, edge)
    assert tw % 32 == 0 and th % 32 == 0
    assert max(tw, th) <= edge
    assert tw <= max(32, w) and th <= max(32, h)  # never upscaled past the source


def test_large_jpeg_to_model_image(photo: np.ndarray) -> None:
    big = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    p = prepare_image(encode(big, "JPEG", quality=90), OPTS)
    assert (p.width, p.height) == (1024, 768)
    assert (p.source_format, p.source_width, p.source_height) == ("JPEG", 4000, 3000)
    assert p.jpeg[:2] == b"\xff\xd8" and p.data_url().startswith("data:image/jpeg;base64,/9j/")
    ref = cv2.resize(big, (1024, 768), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(decoded(p) - ref).mean() < 4
    thumb = Image.open(io.BytesIO(p.thumbnail))
    assert thumb.format == "JPEG" and max(thumb.size) == 256
    assert len(p.digest) == 32 and 0 <= p.phash < 2**64 and p.signature


@pytest.mark.parametrize(
    ("size", "target", "decoded"),
    [
        ((4000, 3000), (1024, 768), (1000, 750)),  # 1/4 and a 2.4% upscale, not 3/8 (1500x1125)
        ((4032, 3024), (1024, 768), (1008, 756)),
        ((3264, 2448), (1024, 768), (1224, 918)),  # 1/4 would fall 20% short: 3/8
        ((2048, 1536), (1024, 768), (1024, 768)),  # 1/2 exactly
        ((4000, 3000), (960, 704), (1000, 750)),  # covers the target: no upscale at all
        ((1024, 768), (1024, 768), (1024, 768)),
    ],
)
def test_jpeg_dct_scale(size: tuple[int, int], target: tuple[int, int], decoded: tuple[int, int]) -> None:
    assert dct_size(size, target) == decoded


def test_digests_are_the_keys_as_stored(photo: np.ndarray) -> None:
    # the artwork's identity in the results store (the model image's pixels) and the exact cache
    # key (the fingerprints' view, the model image's size and the options): neither may drift
    rgb = np.ascontiguousarray(photo[:288, :448])
    want = blake3(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest(16)
    assert pixel_digest(rgb) == want
    p = prepare_image(encode(rgb, "PNG"), OPTS)
    assert p.artwork_digest == want
    proxy = fit(rgb, 256)
    assert proxy.shape == (165, 256, 3)
    view = blake3(repr(((165, 256, 3), (448, 288), False, False)).encode() + proxy.tobytes()).hexdigest(16)
    assert p.digest == view_digest(proxy, (448, 288), OPTS) == view


def test_small_image_is_not_upscaled(photo: np.ndarray) -> None:
    p = prepare_image(encode(photo, "PNG"), OPTS)
    assert (p.width, p.height) == (448, 288)  # 451x300 to multiples of 32, never larger


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_accepted_formats_agree(photo: np.ndarray, fmt: str) -> None:
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    p = prepare_image(encode(photo, fmt, **kw), OPTS)
    assert p.source_format == fmt
    ref = prepare_image(encode(photo, "PNG"), OPTS)
    assert np.abs(decoded(p) - decoded(ref)).mean() < 3


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "ICO"])
def test_other_formats_refused_with_the_accepted_list(photo: np.ndarray, fmt: str) -> None:
    with pytest.raises(UnsupportedMedia, match=rf"{fmt} is not accepted.*JPEG, PNG, WebP, TIFF"):
        prepare_image(encode(photo[:128, :128], fmt), OPTS)


def test_not_an_image() -> None:
    with pytest.raises(UnsupportedMedia, match=r"not an image.*JPEG, PNG, WebP, TIFF"):
        prepare_image(b"hello, this is text and not a picture", OPTS)


def test_truncated_jpeg_is_invalid(photo: np.ndarray) -> None:
    data = encode(photo, "JPEG", quality=90)
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        prepare_image(data[: len(data) // 2], OPTS)


def test_byte_limit(photo: np.ndarray) -> None:
    data = encode(photo, "PNG")
    with pytest.raises(PayloadTooLarge, match=f"{len(data)} bytes; the limit is 1000 bytes"):
        prepare_image(data, ImageOptions(max_bytes=1000, max_pixels=10**8))


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_limit_read_from_the_header_before_decoding() -> None:
    # a 100000 x 100000 header with no pixel data: refused before any decoding is tried
    with pytest.raises(PayloadTooLarge, match=r"10000000000 pixels.*the limit is 120000000 pixels"):
        prepare_image(_png_header_only(100_000, 100_000), OPTS)
    with pytest.raises(PayloadTooLarge, match="limit is 1000 pixels"):
        prepare_image(_png_header_only(100, 100), ImageOptions(max_bytes=10**6, max_pixels=1000))


def test_too_small_image() -> None:
    with pytest.raises(Unprocessable, match="at least 32 pixels"):
        prepare_image(encode(np.zeros((20, 200, 3), np.uint8), "PNG"), OPTS)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow_applies_it(photo: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo, "JPEG", quality=95, exif=exif.tobytes())
    p = prepare_image(data, OPTS)
    ref_img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = ref_img.size
    assert (p.width, p.height) == target_size(w, h, 1024)
    ref = np.asarray(ref_img.resize((p.width, p.height), Image.Resampling.BILINEAR)).astype(np.int16)
    assert np.abs(decoded(p) - ref).mean() < 4


def test_cmyk_jpeg_becomes_rgb(photo: np.ndarray) -> None:
    data = encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    p = prepare_image(data, OPTS)
    ref = prepare_image(encode(photo, "PNG"), OPTS)
    assert np.abs(decoded(p) - decoded(ref)).mean() < 6


def test_16_bit_png_and_tiff(photo: np.ndarray, tmp_path: object) -> None:
    deep = photo[..., ::-1].astype(np.uint16) * 257  # OpenCV writes BGR
    ref = decoded(prepare_image(encode(photo, "PNG"), OPTS))
    for ext in (".png", ".tif"):
        ok, buf = cv2.imencode(ext, deep)
        assert ok
        p = prepare_image(buf.tobytes(), OPTS)
        assert np.abs(decoded(p) - ref).mean() < 2
    gray16 = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", gray16)
    p = prepare_image(buf.tobytes(), OPTS)
    assert 60 < decoded(p).mean() < 200  # scaled to 8 bits, not clipped to white


def test_alpha_and_palette_over_white() -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (200, 30, 30, 255)  # opaque red left, fully transparent right
    p = prepare_image(encode(rgba, "PNG"), OPTS)
    out = decoded(p)
    assert (out[:, 40:] > 245).all()
    assert abs(int(out[:, :20, 0].mean()) - 200) < 8
    pal = Image.fromarray(rgba).convert("P")
    pal.info["transparency"] = pal.getpixel((60, 10))
    out = decoded(prepare_image(encode(pal, "PNG", transparency=pal.info["transparency"]), OPTS))
    assert (out[:, 40:] > 245).all()


def adobe_rgb_profile() -> bytes:
    """A minimal ICC v2 matrix/TRC profile with Adobe RGB (1998) primaries, gamma 2.2."""

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + struct.pack(">iii", *(round(v * 65536) for v in (x, y, z)))

    desc_text = b"Adobe RGB (1998) test\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(desc_text)) + desc_text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.6097, 0.3111, 0.0195)),
        (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)),
        (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"\0\0\0\0", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + xyz(0.9642, 1.0, 0.8249)[8:]
    header += b"\0" * (128 - len(header))
    return header + table + body


def test_adobe_rgb_profile_converted_to_srgb(photo: np.ndarray) -> None:
    icc = adobe_rgb_profile()
    data = encode(photo, "PNG", icc_profile=icc)
    p = prepare_image(data, OPTS)
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    expect = ImageCms.profileToProfile(Image.fromarray(photo), src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert expect is not None
    ref = np.asarray(expect.resize((p.width, p.height), Image.Resampling.BILINEAR)).astype(np.int16)
    plain = decoded(prepare_image(encode(photo, "PNG"), OPTS))
    assert np.abs(decoded(p) - ref).mean() < 3
    assert np.abs(plain - ref).mean() > 6  # the conversion did something


def test_first_frame_of_a_multipage_tiff(photo: np.ndarray) -> None:
    frames = [Image.fromarray(photo), Image.fromarray(np.zeros_like(photo))]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    out = decoded(prepare_image(buf.getvalue(), OPTS))
    assert out.mean() > 50


def test_crop_borders_option(photo: np.ndarray) -> None:
    framed = cv2.copyMakeBorder(photo, 60, 60, 90, 90, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    data = encode(framed, "JPEG", quality=90)
    plain = prepare_image(data, OPTS)
    cropped = prepare_image(data, ImageOptions(max_bytes=10**8, max_pixels=10**8, crop_borders=True))
    assert (plain.width, plain.height) == target_size(631, 420, 1024)
    assert (cropped.width, cropped.height) == target_size(451, 300, 1024)
    # the fingerprints ignore the border either way: exact keys differ, the near match holds
    assert plain.digest != cropped.digest
    assert hamming(plain.phash, cropped.phash) <= 4 and same_artwork(plain.signature, cropped.signature)


def test_small_jpegs_are_keyed_from_a_decode_at_the_proxys_scale(photo: np.ndarray) -> None:
    # a copy up to 4x the model image's pixels: the keys from a DCT-scaled decode, the model image on
    # finish(); a larger one is decoded once, at the model's scale. They find each other.
    big = cv2.resize(photo, (2400, 1600), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(big, (1200, 800), interpolation=cv2.INTER_AREA)
    # so is a dense one (over 2 bits a pixel): its entropy decoding, paid twice on a miss, is most of it
    grain = np.random.default_rng(9).integers(-12, 13, small.shape)
    dense = np.clip(small.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    assert len(encode(dense, "JPEG", quality=97)) * 8 > 2 * 1200 * 800
    keys = {}
    for name, rgb, quality, stage_steps in (
        ("small", small, 90, ["header", "decode", "fingerprint"]),
        ("big", big, 90, ["header", "decode", "resize", "colour", "fingerprint"]),
        ("dense", dense, 97, ["header", "decode", "resize", "colour", "fingerprint"]),
    ):
        steps: dict[str, float] = {}
        staged = stage_image(encode(rgb, "JPEG", quality=quality), OPTS, steps)
        assert list(steps) == stage_steps, name
        assert (staged.keys.width, staged.keys.height) == (1024, 672)
        keys[name] = staged.keys
    for other in ("big", "dense"):
        assert hamming(keys["small"].phash, keys[other].phash) <= 4
        assert same_artwork(keys["small"].signature, keys[other].signature)


@pytest.mark.parametrize("case", ["turned by EXIF", "grayscale"])
def test_keys_from_the_proxys_scale_match_the_full_decodes(photo: np.ndarray, case: str) -> None:
    # the quarter-scale path turns and converts the small view as the full path does the model image
    rgb = cv2.resize(photo, (900, 600), interpolation=cv2.INTER_AREA)
    if case == "grayscale":
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        data, twin = encode(gray, "JPEG", quality=90), encode(gray, "PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # stored turned a quarter to the left, shown upright
        data = encode(np.ascontiguousarray(np.rot90(rgb)), "JPEG", quality=90, exif=exif.tobytes())
        twin = encode(rgb, "PNG")
    steps: dict[str, float] = {}
    keys = stage_image(data, OPTS, steps).keys
    assert "resize" not in steps  # the model image was not made
    want = prepare_image(twin, OPTS)
    assert (keys.width, keys.height) == (want.width, want.height) == (896, 576)
    assert hamming(keys.phash, want.phash) <= 2 and same_artwork(keys.signature, want.signature)


def test_the_border_shortcut_finds_what_the_full_search_finds(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # content_box skips its shrunk copy when no edge could start a border; it must lose none
    import gateway.cache.fingerprint as fp

    rng = np.random.default_rng(5)
    cases = []
    for value in (0, 20, 30, 128, 228, 236, 255):
        for sides in ((12, 0, 0, 0), (0, 9, 30, 0), (5, 5, 5, 5), (0, 0, 0, 0)):
            framed = cv2.copyMakeBorder(photo, *sides, cv2.BORDER_CONSTANT, value=(value,) * 3)
            noisy = np.clip(framed.astype(np.int16) + rng.integers(-6, 7, framed.shape), 0, 255).astype(np.uint8)
            big = cv2.resize(noisy, (noisy.shape[1] * 3, noisy.shape[0] * 3), interpolation=cv2.INTER_NEAREST)
            cases += [framed, noisy, noisy[..., 0], big]
    quick = [fp.content_box(a) for a in cases]
    monkeypatch.setattr(fp, "_may_border", lambda edge, lines: True)
    assert quick == [fp.content_box(a) for a in cases]
    assert sum(box != (0, 0, a.shape[1], a.shape[0]) for box, a in zip(quick, cases, strict=True)) >= 20


def test_glare_correction_flattens_a_shadow(photo: np.ndarray) -> None:
    ramp = np.linspace(0.45, 1.0, photo.shape[1], dtype=np.float32)[None, :, None]
    shaded = (photo * ramp).astype(np.uint8)
    opts = ImageOptions(max_bytes=10**8, max_pixels=10**8, correct_glare=True)
    out = decoded(prepare_image(encode(shaded, "PNG"), opts))
    before = decoded(prepare_image(encode(shaded, "PNG"), OPTS))
    half = out.shape[1] // 2

    def imbalance(a: np.ndarray) -> float:
        return float(a[:, half:].mean() - a[:, :half].mean())

    assert imbalance(out) < 0.5 * imbalance(before)


def test_options_from_settings() -> None:
    s = Settings(max_image_bytes=123, max_image_pixels=456, image_max_edge=512, jpeg_quality=80, crop_borders=True)
    o = ImageOptions.from_settings(s, correct_glare=True)
    assert o == ImageOptions(123, 456, 512, 80, crop_borders=True, correct_glare=True)
    assert ImageOptions.from_settings(s, crop_borders=False).crop_borders is False


async def test_worker_pool_matches_and_carries_errors(photo: np.ndarray) -> None:
    worker = ImageWorker(workers=1)
    try:
        data = encode(photo, "PNG")
        assert await worker.prepare(data, OPTS) == prepare_image(data, OPTS)
        with pytest.raises(UnsupportedMedia, match="GIF"):
            await worker.prepare(encode(photo, "GIF"), OPTS)
    finally:
        worker.close()


@pytest.mark.parametrize(
    "options",
    [OPTS, ImageOptions(max_bytes=OPTS.max_bytes, max_pixels=OPTS.max_pixels, crop_borders=True, jpeg_quality=80)],
    ids=["default", "cropped-q80"],
)
def test_the_two_stages_make_what_prepare_image_makes(photo: np.ndarray, options: ImageOptions) -> None:
    framed = np.pad(photo, ((40, 40), (40, 40), (0, 0)), constant_values=0)  # a border to trim
    for data in (
        encode(photo, "PNG"),
        encode(framed, "JPEG", quality=92),
        prepare_image(encode(photo, "PNG"), OPTS).jpeg,
    ):
        want = prepare_image(data, options)
        steps: dict[str, float] = {}
        staged = stage_image(data, options, steps)
        assert type(staged.keys) is ImageKeys
        assert staged.keys == ImageKeys(**{k: getattr(want, k) for k in ImageKeys.__dataclass_fields__})
        # a small JPEG is fingerprinted from a decode at the proxy's scale: the model image waits for finish()
        proxy_first = data[:2] == b"\xff\xd8" and not options.crop_borders
        model = ["resize", "colour"]
        assert list(steps) == ["header", "decode", *([] if proxy_first else model), "fingerprint"]
        finished: dict[str, float] = {}
        assert staged.finish(finished) == want
        decoded = ["decode", *model] if proxy_first else []
        assert list(finished) == [*decoded, "glare", "encode", "thumbnail", "digest"]
        assert isinstance(want, ImageKeys) and want.data_url().startswith("data:image/jpeg;base64,")
