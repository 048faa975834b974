"""Fingerprints of a normalized image: a 64-bit pHash to find near-duplicate candidates, and a
finer signature to verify a candidate before its description is served.

A 64-bit pHash cannot tell apart distinct artworks that share a composition (leaves of one album,
states of one print, a series painted from one sketch): their distances overlap those of
re-encoded copies. The signature keeps a small aligned Lab view of the image, so verification can
compare colour and every region separately, after undoing the small shifts and scale changes a crop
or a resize causes. Both are computed on the image with uniform black/white borders trimmed, so a
copy with a border added matches its original.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

PROXY_EDGE = 256  # the view both fingerprints are computed from (also the review thumbnail)
SIG = 32  # side of the signature's Lab grid
_SIG_VERSION = 1
_HEADER = struct.Struct("<BH")  # version, aspect ratio x 1000

# DCT-II rows (scipy.fftpack.dct's unnormalized convention), only the 8 lowest frequencies
_N = np.arange(32)
_DCT8 = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * _N[None, :] + 1) / 64.0)


@dataclass(frozen=True)
class Fingerprint:
    phash: int
    signature: bytes
    proxy: np.ndarray  # the view both are computed from: at most PROXY_EDGE a side, borders trimmed
    trimmed: bool

    @property
    def thumbnail(self) -> np.ndarray | None:
        """The proxy, when no border was trimmed: it is then the review page's thumbnail."""
        return None if self.trimmed else self.proxy


def content_box(arr: np.ndarray, tol: int = 12, max_frac: float = 0.3) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inside uniform near-black or near-white borders (scans, mounts, added
    frames). Coloured flat areas such as a clear sky are never trimmed."""
    h, w = arr.shape[:2]
    full = (0, 0, w, h)
    if arr.ndim == 3 and arr.shape[2] not in (1, 3):
        return full  # CMYK: black and white are not what the values say; leave it alone
    s = min(1.0, 256 / max(h, w))
    k = 1 if s >= 1 else int(1 / s) + 2  # the source lines the shrunk copy's outermost line is made of
    if not any(_may_border(edge, k) for edge in (arr[:k], arr[-k:], arr[:, :k], arr[:, -k:])):
        return full  # no edge is near black or white: nothing to trim (nearly every image)
    small = cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    px = small.reshape(small.shape[0], small.shape[1], -1).astype(np.int16)
    sh, sw = px.shape[:2]

    def depth(lines: np.ndarray, limit: int) -> int:
        ref = np.median(lines[0], axis=0)
        if not (ref.max() <= 24 or ref.min() >= 232) or ref.max() - ref.min() > 16:
            return 0
        near = (np.abs(lines[:limit] - ref).max(axis=2) <= tol).mean(axis=1) >= 0.97
        return int(limit if near.all() else near.argmin())

    top = depth(px, int(sh * max_frac))
    bottom = depth(px[::-1], int(sh * max_frac))
    left = depth(px.swapaxes(0, 1), int(sw * max_frac))
    right = depth(px.swapaxes(0, 1)[::-1], int(sw * max_frac))
    if top + bottom + left + right == 0:
        return full
    x0, y0 = int(left / s), int(top / s)
    x1, y1 = w - int(right / s), h - int(bottom / s)
    if x1 - x0 < 32 or y1 - y0 < 32:
        return full
    return x0, y0, x1, y1


def _may_border(edge: np.ndarray, lines: int) -> bool:
    """Whether ``depth`` below could find a border along this edge, told from the source lines its
    first shrunk line is made of, without shrinking the image. One line (no shrinking): ``depth``'s
    own test of its median. Several: a median near black in every channel needs, in every channel,
    a pixel that dark among them (an average is at least their minimum); near white likewise."""
    px = edge.reshape(-1, edge.shape[-1]) if edge.ndim == 3 else edge.reshape(-1, 1)
    if not (px.min(axis=0).max() <= 24 or px.max(axis=0).min() >= 232):
        return False
    if lines == 1:  # the median itself, now that it may be (a tenth of the cost of the above)
        ref = np.median(px, axis=0)
        return bool((ref.max() <= 24 or ref.min() >= 232) and ref.max() - ref.min() <= 16)
    return True


def fingerprint(
    rgb: np.ndarray, aspect: float | None = None, on_phash: Callable[[np.ndarray, int], None] | None = None
) -> Fingerprint:
    """``aspect``: the source's width/height; the model image's sides are rounded to multiples of
    32, which distorts small images by up to a few percent. ``on_phash``, when given, is called
    with the proxy and the pHash before the signature is made (a third of the work is left then)."""
    h, w = rgb.shape[:2]
    proxy = fit(rgb, PROXY_EDGE)
    # borders are found on the proxy (one resize fewer) and cut from the full image
    px0, py0, px1, py1 = content_box(proxy)
    trimmed = (px0, py0, px1, py1) != (0, 0, proxy.shape[1], proxy.shape[0])
    sx, sy = w / proxy.shape[1], h / proxy.shape[0]
    x0, y0, x1, y1 = round(px0 * sx), round(py0 * sy), round(px1 * sx), round(py1 * sy)
    true_aspect = (aspect or w / h) * ((x1 - x0) / w) / ((y1 - y0) / h)
    if trimmed:  # shave the ringing that JPEG leaves along a border's edge
        mx, my = (x1 - x0) // 64, (y1 - y0) // 64
        proxy = fit(rgb[y0 + my : y1 - my, x0 + mx : x1 - mx], PROXY_EDGE)
    proxy = np.ascontiguousarray(proxy)
    phash = phash64(Image.fromarray(proxy))
    if on_phash is not None:
        on_phash(proxy, phash)
    return Fingerprint(phash=phash, signature=signature(proxy, true_aspect), proxy=proxy, trimmed=trimmed)


def fit(rgb: np.ndarray, edge: int) -> np.ndarray:
    """Shrunk (area averaging) so the long edge is at most ``edge``; never enlarged."""
    h, w = rgb.shape[:2]
    s = min(1.0, edge / max(h, w))
    if s >= 1:
        return rgb
    size = (max(1, round(w * s)), max(1, round(h * s)))
    # halve while the result stays at least the target: linear interpolation at exactly half size
    # averages each 2x2 block, so this is area averaging (rounded at each step), ~6x faster than
    # INTER_AREA's general path (a 1024x768 model image to 256x192: 0.18 ms instead of 1.2)
    while h % 2 == 0 and w % 2 == 0 and w // 2 >= size[0] and h // 2 >= size[1]:
        h, w = h // 2, w // 2
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    if (w, h) == size:
        return rgb
    if rgb.dtype == np.uint8:
        # at a fractional scale INTER_AREA's float path is ~1.4x faster than its uint8 one, and
        # rounded back it gives the same bytes (0.50 ms instead of 0.72 for 448x336 to 256x192)
        out: np.ndarray = cv2.convertScaleAbs(cv2.resize(rgb.astype(np.float32), size, interpolation=cv2.INTER_AREA))
        return out
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def phash64(img: Image.Image) -> int:
    """Bit for bit ``int(str(imagehash.phash(img)), 16)``: same grayscale conversion, same Lanczos
    resize, the DCT as a matrix product instead of scipy's FFT."""
    pixels = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = _DCT8 @ pixels @ _DCT8.T
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


_PI32 = np.float32(np.pi)
_BINS_PER_RADIAN = np.float32(8 / np.pi)
_BLOCK_BASE = ((np.arange(128) // 32)[:, None] * 4 + (np.arange(128) // 32)[None, :]) * 8  # block x 8 bins


def _orientations(proxy: np.ndarray) -> np.ndarray:
    """Per block of a 4x4 grid, the distribution of edge orientations (8 bins, uint8 summing to
    ~255): what tells hatching from lettering or one texture from another, detail the coarse grid
    has averaged away."""
    gray = cv2.resize(cv2.cvtColor(proxy, cv2.COLOR_RGB2GRAY), (128, 128), interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    mag, ang = cv2.cartToPolar(gx, gy)
    # the outermost pixels carry the frame's edge, or what is left of a trimmed border
    mag[:3] = mag[-3:] = mag[:, :3] = mag[:, -3:] = 0
    # orientation modulo pi, in float32 as before: ang - pi is exact on [pi, 2pi) (Sterbenz), and
    # a fraction of np.mod's cost on floats (0.14 ms here)
    np.subtract(ang, _PI32, out=ang, where=ang >= _PI32)
    bins = (ang * _BINS_PER_RADIAN).astype(np.int32) % 8
    hist = np.bincount((_BLOCK_BASE + bins).ravel(), weights=mag.ravel(), minlength=128).reshape(16, 8)
    total = hist.sum(axis=1, keepdims=True)
    shares = np.round(255 * hist / np.maximum(total, 1e-6)).astype(np.uint8)
    # edge energy per block, log-scaled: a smooth moon and a gravel bed differ here first
    energy = np.clip(np.round(16 * np.log2(1 + total[:, 0] / 1024)), 0, 255).astype(np.uint8)
    return np.concatenate([shares.ravel(), energy])


def signature(proxy: np.ndarray, aspect: float) -> bytes:
    grid = cv2.resize(proxy, (SIG, SIG), interpolation=cv2.INTER_AREA)
    head = _HEADER.pack(_SIG_VERSION, min(65535, round(1000 * aspect)))
    return head + grid.tobytes() + _orientations(proxy).tobytes()


_GRID = SIG * SIG * 3
_Unpacked = tuple[float, np.ndarray, np.ndarray, np.ndarray]  # aspect, blurred grid, orientations, energy


def _unpack(sig: bytes) -> _Unpacked | None:
    if len(sig) != _HEADER.size + _GRID + 144:
        return None
    version, aspect = _HEADER.unpack_from(sig)
    if version != _SIG_VERSION:
        return None
    grid = np.frombuffer(sig, np.uint8, count=_GRID, offset=_HEADER.size).reshape(SIG, SIG, 3).astype(np.float32)
    tail = np.frombuffer(sig, np.uint8, offset=_HEADER.size + _GRID).astype(np.float32)
    return aspect / 1000.0, cv2.GaussianBlur(grid, (0, 0), 0.8), tail[:128].reshape(16, 8) / 255, tail[128:] / 16


_LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)
_SUM = np.ones((1, 3), np.float32)


def _planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luma standardized (brightness and contrast changes cancel) and chromaticity r, g: the
    share of each channel in the sum, which a brightness change leaves as it is."""
    luma = cv2.transform(rgb, _LUMA)  # OpenCV's per-pixel matrix: NumPy's small ops cost 3x here
    mean, std = cv2.meanStdDev(luma)
    luma = (luma - np.float32(mean[0, 0])) / np.float32(max(float(std[0, 0]), 4.0))
    scale = np.float32(100.0) / (cv2.transform(rgb, _SUM) + np.float32(30.0))
    return luma, (rgb[..., :2] + np.float32(10.0)) * scale[..., None]


def _zoom(x: np.ndarray, size: int) -> np.ndarray:
    """Scale about the centre to ``size`` and back to the grid's side (crop or reflect-pad)."""
    if size == SIG:
        return x
    r = cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR)
    if size > SIG:
        o = (size - SIG) // 2
        return r[o : o + SIG, o : o + SIG]
    p = (SIG - size) // 2
    return cv2.copyMakeBorder(r, p, SIG - size - p, p, SIG - size - p, cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class Comparison:
    aspect: float  # |log| of the aspect ratios' quotient
    luma: float  # worst block's mean luma difference, in standard deviations
    colour: float  # worst block's mean chromaticity difference, in percent
    texture: float  # worst block's edge-orientation distribution difference (total variation, 0..1)
    energy: float  # worst block's edge-energy difference, log2 of the quotient


_IN = slice(4, SIG - 4)  # the inner grid: what a 5% crop or a small shift keeps


def compare(a: bytes, b: bytes) -> Comparison | None:
    """Align ``b`` to ``a`` (shifts up to 6%, scale +-6%), then compare them block by block."""
    ua, ub = _unpack(a), _unpack(b)
    if ua is None or ub is None:
        return None
    aspect, texture, energy = _unaligned(ua, ub)
    luma, colour = _aligned(ua, b)
    return Comparison(aspect, luma, colour, texture, energy)


def _unaligned(ua: _Unpacked, ub: _Unpacked) -> tuple[float, float, float]:
    """aspect, texture, energy: what needs no alignment, a small fraction of the cost."""
    # orientation shares mean nothing in a flat block: judge them where either side has edges
    edged = np.maximum(ua[3], ub[3]) >= 1.0
    texture = 0.5 * np.abs(ua[2] - ub[2]).sum(axis=1)
    texture = float(texture[edged].max()) if edged.any() else 0.0
    energy = float(np.abs(ua[3] - ub[3]).max())  # log2 of the energies' quotient
    aspect = abs(float(np.log(ua[0] / ub[0])))
    return aspect, texture, energy


_SIZES = (SIG - 2, SIG, SIG + 2)  # the candidate's scales tried: 6% smaller, as it is, 6% larger


@dataclass(frozen=True)
class _Zoomed:
    """A candidate's side of the alignment, which depends on it alone: its luma and chromaticity
    planes at each scale tried, cut to the 28x28 area the 24x24 windows slide over."""

    luma: np.ndarray  # (3, 28, 28)
    colour: np.ndarray  # (3, 28, 28, 2)
    windows: np.ndarray  # (3, 5, 5, 24, 24): a view of ``luma``, every window the alignment tries


@functools.lru_cache(maxsize=512)  # ~30 KB each: the artworks being asked for again keep theirs
def _zoomed(sig: bytes) -> _Zoomed | None:
    ub = _unpack(sig)
    if ub is None:
        return None
    planes = [_planes(_zoom(ub[1], size)) for size in _SIZES]
    luma = np.stack([lb[2:-2, 2:-2] for lb, _ in planes])
    n = SIG - 8
    windows = np.lib.stride_tricks.sliding_window_view(luma, (n, n), axis=(1, 2))
    return _Zoomed(luma, np.stack([cb[2:-2, 2:-2] for _, cb in planes]), windows)


def _aligned(ua: _Unpacked, b: bytes) -> tuple[float, float]:
    """luma, colour: after the alignment that minimizes the luma difference (the scales and the
    shifts up to 2 cells each way, all in one pass)."""
    zb = _zoomed(b)
    assert zb is not None  # _unpack(b) succeeded before this is asked
    la, ca = _planes(ua[1])
    inner = la[_IN, _IN]
    n = SIG - 8
    diff = zb.windows - inner  # contiguous: summed along one axis it costs half of a mean over two
    err = np.abs(diff, out=diff).reshape(*diff.shape[:3], n * n).sum(axis=3)
    s, i, j = np.unravel_index(int(err.argmin()), err.shape)  # the first minimum: the smallest scale wins ties
    lb_in = zb.luma[s, i : i + n, j : j + n]
    cb_in = zb.colour[s, i : i + n, j : j + n]
    k = n // 4
    luma = np.abs(inner - lb_in).reshape(4, k, 4, k).mean(axis=(1, 3))
    colour = np.abs(ca[_IN, _IN] - cb_in).sum(axis=2).reshape(4, k, 4, k).mean(axis=(1, 3))
    return float(luma.max()), float(colour.max())


# Thresholds measured on the image set in tests/gateway/imageset.py (see test_cache_imageset.py):
# every copy of an artwork but some 5% one-corner crops passes, no distinct look-alike does.
MAX_ASPECT = 0.1
MAX_LUMA = 0.7
MAX_COLOUR = 4.0
MAX_TEXTURE = 0.45
MAX_ENERGY = 1.0


def same_artwork(a: bytes, b: bytes) -> bool:
    """Whether two signatures show the same artwork; an unreadable signature never matches.
    The tests are those on ``compare``'s figures, the cheap ones first: a candidate that fails
    one of them is turned down without the alignment, nearly all of the cost (a fifth of the
    look-alikes within D in the image set)."""
    ua, ub = _unpack(a), _unpack(b)
    if ua is None or ub is None:
        return False
    aspect, texture, energy = _unaligned(ua, ub)
    if not (aspect <= MAX_ASPECT and texture <= MAX_TEXTURE and energy <= MAX_ENERGY):  # NaN fails too
        return False
    luma, colour = _aligned(ua, b)
    return luma <= MAX_LUMA and colour <= MAX_COLOUR
