"""``prepare_image``: an upload's bytes to the model-ready JPEG and the keys the cache looks it up by,
readable top to bottom, in two stages: ``stage_image`` as far as the keys (all a cache hit needs),
then ``StagedImage.finish`` for the JPEG and the thumbnail (a miss)."""

from __future__ import annotations

import base64
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import simplejpeg
from blake3 import blake3
from PIL import Image

from gateway.cache.fingerprint import content_box, fingerprint, fit
from gateway.config import Settings
from gateway.errors import InvalidRequest, PayloadTooLarge, Unprocessable
from gateway.images.colour import correct_glare, needs_conversion, to_srgb
from gateway.images.geometry import orient, resize, target_size
from gateway.images.passthrough import strip_model_ready
from gateway.images.source import decode, exif_orientation, open_image

THUMBNAIL_EDGE = 256
THUMBNAIL_QUALITY = 80


@dataclass(frozen=True)
class ImageOptions:
    max_bytes: int
    max_pixels: int
    max_edge: int = 1024
    jpeg_quality: int = 90
    crop_borders: bool = False
    correct_glare: bool = False

    def __post_init__(self) -> None:
        if self.max_edge < 32 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("max_edge must be at least 32 and jpeg_quality within 1..100")

    @classmethod
    def from_settings(
        cls, s: Settings, *, crop_borders: bool | None = None, correct_glare: bool | None = None
    ) -> ImageOptions:
        return cls(
            max_bytes=s.max_image_bytes,
            max_pixels=s.max_image_pixels,
            max_edge=s.image_max_edge,
            jpeg_quality=s.jpeg_quality,
            crop_borders=s.crop_borders if crop_borders is None else crop_borders,
            correct_glare=s.correct_glare if correct_glare is None else correct_glare,
        )


@dataclass(frozen=True)
class ImageKeys:
    """What the description cache looks an image up by, with its sizes: all that a cache hit needs."""

    digest: str
    phash: int
    signature: bytes
    width: int
    height: int
    source_format: str
    source_width: int
    source_height: int


@dataclass(frozen=True)
class PreparedImage(ImageKeys):
    """The keys, and the model-ready JPEG with the store's thumbnail (only a cache miss needs them)."""

    jpeg: bytes
    thumbnail: bytes

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


class _Laps:
    """Seconds per step into ``steps`` when the caller asked for them (the benchmark does)."""

    def __init__(self, steps: dict[str, float] | None) -> None:
        self.steps = steps
        self.last = time.perf_counter() if steps is not None else 0.0

    def __call__(self, name: str) -> None:
        if self.steps is not None:
            now = time.perf_counter()
            self.steps[name] = self.steps.get(name, 0.0) + now - self.last
            self.last = now


def prepare_image(data: bytes, opts: ImageOptions, steps: dict[str, float] | None = None) -> PreparedImage:
    """Both stages at once. ``steps``, when given, receives the seconds spent in each step, by name."""
    return stage_image(data, opts, steps).finish(steps)


class StagedImage:
    """An upload taken as far as its cache keys (``keys``); ``finish()`` makes the model's JPEG and
    the thumbnail from the pixels it holds, which a cache hit never needs (~2 ms of a copy's ~6)."""

    def __init__(
        self, keys: ImageKeys, rgb: np.ndarray, ready: bytes | None, proxy: np.ndarray | None, quality: int
    ) -> None:
        self.keys = keys
        self._rgb = rgb
        self._ready = ready  # the upload itself, when it already is the model's JPEG
        self._proxy = proxy  # the fingerprint's proxy, the thumbnail when no border was trimmed
        self._quality = quality

    def finish(self, steps: dict[str, float] | None = None) -> PreparedImage:
        lap = _Laps(steps)
        jpeg = self._ready if self._ready is not None else _encode(self._rgb, self._quality)
        lap("encode")
        thumbnail = _encode(
            self._proxy if self._proxy is not None else fit(self._rgb, THUMBNAIL_EDGE), THUMBNAIL_QUALITY
        )
        lap("thumbnail")
        keys = {f.name: getattr(self.keys, f.name) for f in fields(ImageKeys)}  # every key, added or not
        return PreparedImage(**keys, jpeg=jpeg, thumbnail=thumbnail)


def stage_image(data: bytes, opts: ImageOptions, steps: dict[str, float] | None = None) -> StagedImage:
    """The first stage: the upload checked, decoded, resized, converted, fingerprinted and hashed."""
    lap = _Laps(steps)
    if len(data) > opts.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {opts.max_bytes} bytes")
    if not data:
        raise InvalidRequest("image is empty")
    im = open_image(data, opts.max_pixels)
    w, h = im.size
    if w * h > opts.max_pixels:
        raise PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {opts.max_pixels} pixels")
    if min(w, h) < 32:
        raise Unprocessable(f"image is {w}x{h} pixels; each side must be at least 32 pixels")
    orientation = exif_orientation(im)
    turned = orientation in (5, 6, 7, 8)
    tw, th = target_size(*((h, w) if turned else (w, h)), opts.max_edge)
    raw_target = (th, tw) if turned else (tw, th)
    icc = im.info.get("icc_profile")
    ready = _model_ready(data, im, opts, orientation, raw_target)
    lap("header")

    pixels = _decode_strictly(ready) if ready is not None else None
    if pixels is None:
        ready = None
        arr, mode = decode(data, im, raw_target)
    else:
        arr, mode = pixels, "RGB"
    lap("decode")
    aspect = w / h
    if opts.crop_borders:
        x0, y0, x1, y1 = content_box(arr)
        if (x1 - x0, y1 - y0) != (arr.shape[1], arr.shape[0]):
            sx, sy = w / arr.shape[1], h / arr.shape[0]
            arr = arr[y0:y1, x0:x1]
            cw, ch = max(32, round((x1 - x0) * sx)), max(32, round((y1 - y0) * sy))
            aspect = cw / ch
            tw, th = target_size(*((ch, cw) if turned else (cw, ch)), opts.max_edge)
            raw_target = (th, tw) if turned else (tw, th)
    arr = resize(arr, raw_target)
    lap("resize")
    rgb = orient(to_srgb(arr, mode, icc), orientation)
    if opts.correct_glare:
        rgb = correct_glare(rgb)
    lap("colour")

    # the digest in a second thread while this one fingerprints (neither writes to the pixels)
    digesting = _helper().submit(pixel_digest, rgb)
    fp = fingerprint(rgb, aspect=1 / aspect if turned else aspect)
    lap("fingerprint")
    digest = digesting.result()
    lap("digest")  # what is left of it once the fingerprint is done
    keys = ImageKeys(
        digest=digest,
        phash=fp.phash,
        signature=fp.signature,
        width=rgb.shape[1],
        height=rgb.shape[0],
        source_format=str(im.format),
        source_width=w,
        source_height=h,
    )
    return StagedImage(keys, rgb, ready, fp.thumbnail, opts.jpeg_quality)


@functools.cache
def _helper() -> ThreadPoolExecutor:
    """A thread beside the one preparing images, for the digest: BLAKE3 hashes without the GIL, on the
    other core while this one fingerprints. Measured on 200 copies of the cache-hit benchmark (2
    cores): fingerprint and digest p50 2.81 -> 2.21 ms, p99 5.30 -> 4.23. Started after the proxy
    instead, the digest gained less (p50 2.39); the pHash in this thread too gained nothing (its NumPy
    steps and the signature's take turns with the GIL). Under load both cores are busy anyway; the
    work is the same."""
    return ThreadPoolExecutor(1, thread_name_prefix="huayu-image-helper")


def _model_ready(
    data: bytes, im: Image.Image, opts: ImageOptions, orientation: int, size: tuple[int, int]
) -> bytes | None:
    """The upload itself, stripped of its metadata, when it already is the model's JPEG: nothing to
    resize, turn, convert or correct."""
    if opts.crop_borders or opts.correct_glare or orientation != 1:
        return None
    if im.format != "JPEG" or im.mode != "RGB" or size != im.size:
        return None
    if needs_conversion(im.info.get("icc_profile"), "RGB"):
        return None
    return strip_model_ready(data, opts.jpeg_quality)


def _decode_strictly(jpeg: bytes) -> np.ndarray | None:
    """The bytes the model will get, decoded strictly: any recoverable error (which a lenient
    decoder would pass over) sends the upload down the re-encoding path instead."""
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
    except ValueError:
        return None
    return pixels


def _encode(rgb: np.ndarray, quality: int) -> bytes:
    # simplejpeg takes RGB as it is; OpenCV's encoder wants BGR, a copy of the image first
    out: bytes = simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality, "RGB", "420")
    return out


def pixel_digest(rgb: np.ndarray) -> str:
    """The exact cache key: the normalized pixels and their shape, hashed where they lie (building
    one bytes object of them copied 2.4 MB twice, which cost as much as the hashing itself).
    BLAKE3, 128 bits: 2.4 MB in ~0.4 ms on one core here, where SHA-256 (with the SHA extensions)
    took ~1.3 ms and BLAKE2b ~3.5. A cryptographic hash, because artworks are stored by this key
    across tenants: two images that collide would share a stored artwork."""
    h = blake3(repr(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest(16)
