"""``prepare_image``: an upload's bytes to the model-ready JPEG and the keys the cache looks it up by,
readable top to bottom, in two stages: ``stage_image`` as far as the keys (all a cache hit needs),
then ``StagedImage.finish`` for the model image, its JPEG and the thumbnail (a miss)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import pybase64
import simplejpeg
from blake3 import blake3
from PIL import Image

from gateway.cache.fingerprint import PROXY_EDGE, content_box, fingerprint, fit
from gateway.config import Settings
from gateway.errors import InvalidRequest, PayloadTooLarge, Unprocessable
from gateway.images.colour import correct_glare, needs_conversion, to_srgb
from gateway.images.geometry import orient, resize, target_size
from gateway.images.passthrough import strip_model_ready
from gateway.images.source import dct_size, decode, exif_orientation, open_image

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
    """What the description cache looks an image up by, with its sizes: all that a cache hit needs.
    ``digest``, the exact key, hashes the normalized view the fingerprints are made from (see
    ``view_digest``); the model image's own pixels are hashed only for a miss (``artwork_digest``)."""

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
    """The keys, and the model-ready JPEG with the store's thumbnail (only a cache miss needs them).
    ``artwork_digest`` hashes the model image's pixels: the artwork's identity in the results store."""

    artwork_digest: str
    jpeg: bytes
    thumbnail: bytes

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + pybase64.b64encode(self.jpeg).decode("ascii")


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


@dataclass(frozen=True)
class _Header:
    """What the file's header says, checked: nothing is decoded yet."""

    im: Image.Image
    width: int
    height: int
    orientation: int
    icc: object
    target: tuple[int, int]  # the model image's size, as the file lies (before EXIF turns it)

    @property
    def turned(self) -> bool:
        return self.orientation in (5, 6, 7, 8)

    @property
    def aspect(self) -> float:
        """The source's width/height as it is shown (EXIF applied)."""
        w, h = self.width, self.height
        return h / w if self.turned else w / h


@dataclass
class _ModelPixels:
    """The model image's pixels (before the optional lighting correction), and the upload itself
    when it already is the model's JPEG."""

    rgb: np.ndarray
    ready: bytes | None
    aspect: float  # the shown aspect of what the pixels hold, a trimmed border left out


class StagedImage:
    """An upload taken as far as its cache keys (``keys``); ``finish()`` makes the model's image, its
    JPEG and the thumbnail, which a cache hit never needs. A small JPEG was only decoded at the
    fingerprint's scale so far; the rest hold the model image's pixels already."""

    def __init__(
        self,
        keys: ImageKeys,
        data: bytes,
        header: _Header,
        opts: ImageOptions,
        model: _ModelPixels | None,
        proxy: np.ndarray | None,
    ) -> None:
        self.keys = keys
        self._data = data
        self._header = header
        self._opts = opts
        self._model = model
        self._proxy = proxy  # the fingerprint's proxy, the thumbnail when no border was trimmed

    def finish(self, steps: dict[str, float] | None = None) -> PreparedImage:
        lap = _Laps(steps)
        model = self._model or _model_pixels(self._data, self._header, self._opts, lap)
        rgb = correct_glare(model.rgb) if self._opts.correct_glare else model.rgb
        lap("glare")
        # the store's digest in the helper thread while this one encodes (both drop the GIL)
        digesting = _helper().submit(pixel_digest, rgb)
        jpeg = model.ready if model.ready is not None else _encode(rgb, self._opts.jpeg_quality)
        lap("encode")
        corrected = self._opts.correct_glare  # the thumbnail shows what the model was sent
        thumb = self._proxy if self._proxy is not None and not corrected else fit(rgb, THUMBNAIL_EDGE)
        thumbnail = _encode(thumb, THUMBNAIL_QUALITY)
        lap("thumbnail")
        artwork = digesting.result()
        lap("digest")
        keys = {f.name: getattr(self.keys, f.name) for f in fields(ImageKeys)}  # every key, added or not
        return PreparedImage(**keys, artwork_digest=artwork, jpeg=jpeg, thumbnail=thumbnail)


# A JPEG up to this many times the model image's pixels, and of at most PROXY_FIRST_MAX_BPP bits a
# pixel, is fingerprinted from a decode at the fingerprint's own scale (1/4 of a 1024-pixel copy),
# and decoded again at the model's only on a miss: a hit skips the inverse DCT and colour conversion
# at full size, the resize and the model image's colour steps (~1.2 ms of a 1024x768 copy here). A
# miss pays the entropy decoding twice, which grows with the file (0.8 ms more at 0.3 bits a pixel,
# 2 ms at 1.5, where a 1024x768 decodes in 1.5 and 3.2 ms); a larger or denser file is decoded
# once, at the model's scale (entropy decoding, the same at every scale, is most of a 12-megapixel
# photo's). Either way the choice depends on the file alone, so its keys are always the same.
PROXY_FIRST_MAX_RATIO = 4
PROXY_FIRST_MAX_BPP = 2.0


# what stage_image tells as soon as it knows them: the exact key (the digest) and the pHash, the keys
# a cache's lookup can start with while the signature is still being made
EarlyKeys = Callable[[str, int], None]


def stage_image(
    data: bytes, opts: ImageOptions, steps: dict[str, float] | None = None, early: EarlyKeys | None = None
) -> StagedImage:
    """The first stage: the upload checked, then decoded as far as its fingerprint and exact key.
    ``early``, when given, hears the digest and the pHash before the signature is made."""
    lap = _Laps(steps)
    header = _read_header(data, opts)
    lap("header")
    model: _ModelPixels | None = None
    view = _proxy_source(data, header, opts)
    lap("decode")
    if view is None:
        model = _model_pixels(data, header, opts, lap)
        view, aspect = model.rgb, model.aspect
        h, w = model.rgb.shape[:2]
    else:
        aspect = header.aspect
        w, h = header.target[::-1] if header.turned else header.target
    digest = ""

    def found(proxy: np.ndarray, phash: int) -> None:
        nonlocal digest
        digest = view_digest(proxy, (w, h), opts)
        if early is not None:
            early(digest, phash)

    fp = fingerprint(view, aspect=aspect, on_phash=found)
    lap("fingerprint")
    keys = ImageKeys(
        digest=digest,
        phash=fp.phash,
        signature=fp.signature,
        width=w,
        height=h,
        source_format=str(header.im.format),
        source_width=header.width,
        source_height=header.height,
    )
    return StagedImage(keys, data, header, opts, model, fp.thumbnail)


def _read_header(data: bytes, opts: ImageOptions) -> _Header:
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
    target = _raw_target(w, h, orientation in (5, 6, 7, 8), opts.max_edge)
    return _Header(im, w, h, orientation, im.info.get("icc_profile"), target)


def _raw_target(w: int, h: int, turned: bool, max_edge: int) -> tuple[int, int]:
    """The model image's size for a source of ``w`` x ``h`` as the file lies: ``target_size`` of it
    as shown (turned by EXIF), turned back."""
    tw, th = target_size(*((h, w) if turned else (w, h)), max_edge)
    return (th, tw) if turned else (tw, th)


def _proxy_source(data: bytes, header: _Header, opts: ImageOptions) -> np.ndarray | None:
    """A small JPEG decoded at the smallest DCT scale that covers the fingerprint's proxy, in sRGB
    and turned as shown; None for the rest (decoded at the model's scale instead), and when borders
    are to be cropped (the model image's size, one of the keys, then depends on the full decode)."""
    im, (w, h), (tw, th) = header.im, (header.width, header.height), header.target
    if im.format != "JPEG" or im.mode not in ("RGB", "L") or opts.crop_borders:
        return None
    if w * h > PROXY_FIRST_MAX_RATIO * tw * th or 8 * len(data) > PROXY_FIRST_MAX_BPP * w * h:
        return None
    s = min(1.0, PROXY_EDGE / max(w, h))
    least = dct_size((w, h), (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))
    try:
        space = "RGB" if im.mode == "RGB" else "GRAY"
        arr = simplejpeg.decode_jpeg(data, colorspace=space, min_width=least[0], min_height=least[1])
    except ValueError:
        return None  # libjpeg-turbo refuses what Pillow may still read: the model's path decides
    # the rest of the way to the proxy's size: bilinear, as for the model image (a factor under 2
    # after DCT scaling); the fingerprint's area averaging at such a fraction cost ~0.8 ms here
    ah, aw = arr.shape[:2]
    s = min(1.0, PROXY_EDGE / max(aw, ah))
    arr = resize(arr, (max(1, round(aw * s)), max(1, round(ah * s))))
    return orient(to_srgb(arr, im.mode, header.icc), header.orientation)


def _model_pixels(data: bytes, header: _Header, opts: ImageOptions, lap: _Laps) -> _ModelPixels:
    """The upload decoded, trimmed (the option), resized to the model's size, in sRGB and turned."""
    im, orientation, raw_target = header.im, header.orientation, header.target
    ready = _model_ready(data, im, opts, orientation, raw_target)
    pixels = _decode_strictly(ready) if ready is not None else None
    if pixels is None:
        ready = None
        arr, mode = decode(data, im, raw_target)
    else:
        arr, mode = pixels, "RGB"
    lap("decode")
    w, h = header.width, header.height
    aspect = w / h
    if opts.crop_borders:
        x0, y0, x1, y1 = content_box(arr)
        if (x1 - x0, y1 - y0) != (arr.shape[1], arr.shape[0]):
            sx, sy = w / arr.shape[1], h / arr.shape[0]
            arr = arr[y0:y1, x0:x1]
            cw, ch = max(32, round((x1 - x0) * sx)), max(32, round((y1 - y0) * sy))
            aspect = cw / ch
            raw_target = _raw_target(cw, ch, header.turned, opts.max_edge)
    arr = resize(arr, raw_target)
    lap("resize")
    rgb = orient(to_srgb(arr, mode, header.icc), orientation)
    lap("colour")
    return _ModelPixels(rgb, ready, 1 / aspect if header.turned else aspect)


@functools.cache
def _helper() -> ThreadPoolExecutor:
    """A thread beside the one preparing images, for the store's digest of the model image: BLAKE3
    hashes without the GIL, on the other core while this one encodes the JPEG."""
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


def view_digest(proxy: np.ndarray, size: tuple[int, int], opts: ImageOptions) -> str:
    """The exact cache key: the normalized view the fingerprints are made from (sRGB, turned as
    shown, borders trimmed, at most 256 pixels a side), with the model image's size and the options
    that change its pixels. Two uploads with the same key show the same picture at that scale; their
    model images may still differ in fine detail, so the store keys artworks by ``pixel_digest``.
    Hashing the view instead of the model image lets a hit skip the model image altogether."""
    h = blake3(repr((proxy.shape, size, opts.crop_borders, opts.correct_glare)).encode())
    h.update(np.ascontiguousarray(proxy).data)
    return h.hexdigest(16)


def pixel_digest(rgb: np.ndarray) -> str:
    """The artwork's key in the results store: the model image's pixels and their shape, hashed
    where they lie (building one bytes object of them copied 2.4 MB twice, which cost as much as
    the hashing itself).
    BLAKE3, 128 bits: 2.4 MB in ~0.4 ms on one core here, where SHA-256 (with the SHA extensions)
    took ~1.3 ms and BLAKE2b ~3.5. A cryptographic hash, because artworks are stored by this key
    across tenants: two images that collide would share a stored artwork."""
    h = blake3(repr(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest(16)
