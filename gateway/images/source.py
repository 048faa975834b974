"""The uploaded file: its header read and checked first, then its pixels decoded.

JPEGs are decoded straight at a reduced DCT scale (libjpeg-turbo's M/8 scaling) so a 12-megapixel
photo never exists at full size.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
ACCEPTED_TEXT = "JPEG, PNG, WebP, TIFF"
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# magic numbers of formats we refuse, so the 415 can name what was sent
_SNIFF = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
# How far a JPEG may be decoded below the target and scaled up the rest of the way. Entropy
# decoding costs the same at every scale (~27 ms for a 3 MB 12-megapixel file, all that 1/8
# costs); a smaller scale saves the inverse DCT and the colour conversion. A 4000x3000 photo for a
# 1024x768 target decodes in ~32 ms at 1/4 (1000x750) against ~40 ms at 3/8 (1500x1125, an IDCT
# without SIMD, slower even than 1/2). Against Pillow's Lanczos resize of the full decode, 1/4 plus
# a bicubic 2.4% upscale measured 37.8-39.7 dB on photographs with full-resolution detail, 3/8 plus
# bilinear 39.1-42.0 dB; after the q90 encode the model image is 0.0-0.8 dB further from that
# reference than before (bench_images prints the figure); the encode itself costs more (34-40 dB).
UPSCALE_SLACK = 1.05


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The file's header parsed (nothing decoded yet); a refusal names what was sent."""
    try:
        with warnings.catch_warnings():
            # our own pixel limit decides; Pillow's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"image has too many pixels ({e}); the limit is {max_pixels} pixels") from e
    except UnidentifiedImageError:
        name = next((n for magic, n in _SNIFF if data.startswith(magic)), None)
        if name is None and data[4:12] in (b"ftypheic", b"ftypheix", b"ftypavif", b"ftypmif1"):
            name = "HEIF/AVIF"
        if name is None and data.lstrip()[:5].lower() in (b"<?xml", b"<svg "):
            name = "SVG"
        what = f"image format {name} is not accepted" if name else "the data is not an image in an accepted format"
        raise UnsupportedMedia(f"{what}; accepted formats: {ACCEPTED_TEXT}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidRequest(f"image header is corrupt ({e})") from e


def exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block should not cost the image; Pillow raises many kinds
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def dct_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The size to decode a JPEG of ``size`` at for ``target``: libjpeg-turbo's smallest M/8 scale
    that covers the target, or the power of two below it when that falls short by at most
    ``UPSCALE_SLACK`` (1/8, 1/4 and 1/2 are the fast scales)."""
    w, h = size

    def scaled(m: int) -> tuple[int, int]:
        return math.ceil(w * m / 8), math.ceil(h * m / 8)

    m = next((m for m in range(1, 9) if scaled(m)[0] >= target[0] and scaled(m)[1] >= target[1]), 8)
    if m > 1:
        p = 1 << ((m - 1).bit_length() - 1)  # the largest power of two below m
        pw, ph = scaled(p)
        if pw * UPSCALE_SLACK >= target[0] and ph * UPSCALE_SLACK >= target[1]:
            return pw, ph
    return scaled(m)


def decode(data: bytes, im: Image.Image, target: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Pixels as uint8 (H, W, C) in ``mode`` (RGB, L or CMYK), about ``target`` or larger when the
    source is larger (see ``dct_size``); alpha is flattened over white, 16-bit reduced to 8."""
    least = dct_size(im.size, target) if im.format == "JPEG" else target
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        try:
            space = "RGB" if im.mode == "RGB" else "GRAY"
            return simplejpeg.decode_jpeg(data, colorspace=space, min_width=least[0], min_height=least[1]), im.mode
        except ValueError:
            pass  # libjpeg-turbo refuses what Pillow may still read (or rightly reject) below
    try:
        if im.format == "JPEG":
            im.draft(None, least)
        im.load()
        return _as_array(im)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidRequest(f"image data is truncated or corrupt ({e})") from e


def _as_array(im: Image.Image) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in ("RGB", "L", "CMYK"):
        return np.asarray(im), mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float32)
        top = 65535.0 if mode != "F" else max(float(a.max()), 1e-6)
        return np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L"
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        alpha = rgba[..., 3:4]
        flat = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return flat.astype(np.uint8), "RGB"
    try:
        return np.asarray(im.convert("RGB")), "RGB"
    except (ValueError, OSError) as e:
        raise UnsupportedMedia(f"image mode {mode} cannot be converted to RGB; send 8-bit RGB or grayscale") from e
