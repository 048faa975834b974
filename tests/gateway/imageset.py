"""The measured image set: real photographs shipped with scikit-image, the copies of each that the
cache must recognise, and distinct look-alike artworks that it must not confuse with them.

``group`` names the artwork: samples of one group must match each other, samples of different
groups must never be served for each other.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata

PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "moon",
    "page",
    "rocket",
    "retina",
    "hubble_deep_field",
    "brick",
    "gravel",
    "immunohistochemistry",
    "cell",
    "clock",
    "text",
)


@dataclass(frozen=True)
class Sample:
    name: str
    group: str
    kind: str  # original | copy | lookalike
    data: bytes


def encode(rgb: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        kw.setdefault("compress_level", 1)  # zlib's default level costs seconds over the whole set
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def sk(name: str) -> np.ndarray:
    """A scikit-image sample image by name (the loaders are untyped)."""
    return np.asarray(getattr(skdata, name)())


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = np.dstack([a] * 3)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


@cache
def photos() -> dict[str, np.ndarray]:
    out = {name: _rgb(getattr(skdata, name)()) for name in PHOTOS}
    stereo: Any = skdata.stereo_motorcycle
    left, right, _ = stereo()
    out["motorcycle"] = _rgb(left)
    out["motorcycle_right"] = _rgb(right)  # the other eye: a different photograph of one scene
    return out


def _resize(a: np.ndarray, f: float) -> np.ndarray:
    h, w = a.shape[:2]
    return np.asarray(cv2.resize(a, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA))


def _crop(a: np.ndarray, frac: float, corner: bool = False) -> np.ndarray:
    h, w = a.shape[:2]
    dy, dx = round(h * frac), round(w * frac)
    return np.asarray(a[dy:, dx:] if corner else a[dy // 2 : h - dy // 2, dx // 2 : w - dx // 2])


def _bright(a: np.ndarray, f: float) -> np.ndarray:
    out: np.ndarray = np.clip(a.astype(np.float32) * f, 0, 255).astype(np.uint8)
    return out


def _border(a: np.ndarray, frac: float, value: int) -> np.ndarray:
    p = round(max(a.shape[:2]) * frac)
    return cv2.copyMakeBorder(a, p, p, p, p, cv2.BORDER_CONSTANT, value=(value, value, value))


def copies(a: np.ndarray) -> dict[str, bytes]:
    """Variants of one artwork that must be answered from its cache entry."""
    return {
        "jpeg50": encode(a, "JPEG", quality=50),
        "jpeg70": encode(a, "JPEG", quality=70),
        "jpeg95": encode(a, "JPEG", quality=95),
        "resize50": encode(_resize(a, 0.5), "JPEG", quality=90),
        "resize70": encode(_resize(a, 0.7), "JPEG", quality=90),
        "resize90": encode(_resize(a, 0.9)),
        "crop2": encode(_crop(a, 0.02), "JPEG", quality=90),
        "crop5": encode(_crop(a, 0.05), "JPEG", quality=90),
        "crop5corner": encode(_crop(a, 0.05, corner=True), "JPEG", quality=90),
        "bright+10": encode(_bright(a, 1.1), "JPEG", quality=90),
        "bright-10": encode(_bright(a, 0.9), "JPEG", quality=90),
        "border_white": encode(_border(a, 0.06, 255), "JPEG", quality=90),
        "border_black": encode(_border(a, 0.04, 0), "WEBP", quality=90),
        "mixed": encode(_bright(_crop(_resize(a, 0.6), 0.03), 1.05), "JPEG", quality=60),
    }


def _hue(a: np.ndarray, shift: int) -> np.ndarray:
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _tint(a: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    gray = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    return np.clip(gray * np.array(rgb, np.float32), 0, 255).astype(np.uint8)


def _patch(a: np.ndarray, box: tuple[float, float, float, float], fill: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    x0, y0, x1, y1 = round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)
    out = a.copy()
    out[y0:y1, x0:x1] = cv2.resize(fill, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return out


def lookalikes(name: str, a: np.ndarray) -> dict[str, np.ndarray]:
    """Distinct artworks sharing ``a``'s composition: a series coloured from one sketch, later
    states of one print, a reversed print."""
    h, w = a.shape[:2]
    colourful = float(np.std(a.astype(np.int16) - a.mean(axis=2, keepdims=True))) > 8
    out: dict[str, np.ndarray] = {}
    if colourful:
        out["hue90"] = _hue(a, 45)
        out["hue180"] = _hue(a, 90)
        out["hue270"] = _hue(a, 135)
    else:
        out["sepia"] = _tint(a, (1.0, 0.85, 0.62))
        out["cyanotype"] = _tint(a, (0.45, 0.7, 1.0))
    hatch = np.full((64, 64, 3), 235, np.uint8)
    for i in range(0, 64, 6):
        cv2.line(hatch, (i, 0), (0, i), (30, 30, 30), 1)
        cv2.line(hatch, (63, i), (i, 63), (30, 30, 30), 1)
    out["state_hatched"] = _patch(a, (0.55, 0.1, 0.9, 0.45), hatch)
    figure = a.copy()
    centre = (w // 3, 2 * h // 3)
    ink = (40, 25, 20) if a[centre[1] - h // 8 : centre[1] + h // 8, w // 4 : w // 2].mean() > 110 else (235, 225, 200)
    cv2.ellipse(figure, centre, (w // 9, h // 6), 15, 0, 360, ink, -1)
    out["state_figure"] = figure
    out["state_erased"] = _patch(a, (0.1, 0.55, 0.45, 0.9), np.full((8, 8, 3), (240, 236, 225), np.uint8))
    out["reversed"] = np.ascontiguousarray(a[:, ::-1])
    return out


def album_leaves(inner: list[np.ndarray]) -> list[np.ndarray]:
    """Leaves of one album: one patterned mount (not trimmable), a faint painting on each leaf."""
    rng = np.random.default_rng(7)
    mount = np.full((720, 560, 3), (226, 214, 188), np.float32)
    mount += rng.normal(0, 6, mount.shape[:2])[..., None]
    mount = np.clip(mount, 0, 255).astype(np.uint8)
    cv2.rectangle(mount, (60, 60), (500, 660), (120, 90, 60), 3)
    cv2.putText(mount, "ALBUM", (215, 700), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (90, 40, 30), 2)
    leaves = []
    for img in inner:
        leaf = mount.copy()
        painting = cv2.resize(img, (280, 340), interpolation=cv2.INTER_AREA).astype(np.float32)
        # faded ink on silk: low contrast around the mount's tone
        faded = 0.35 * painting + 0.65 * np.array((210, 196, 170), np.float32)
        leaf[180:520, 140:420] = faded.astype(np.uint8)
        leaves.append(leaf)
    return leaves


@cache
def build() -> tuple[Sample, ...]:
    samples: list[Sample] = []
    pics = photos()
    for name, a in pics.items():
        samples.append(Sample(f"{name}/original", name, "original", encode(a)))
        if name == "motorcycle_right":
            continue
        samples += [Sample(f"{name}/{k}", name, "copy", v) for k, v in copies(a).items()]
        for k, v in lookalikes(name, a).items():
            group = f"{name}~{k}"
            samples.append(Sample(group, group, "lookalike", encode(v)))
            samples.append(Sample(f"{group}/jpeg70", group, "copy", encode(v, "JPEG", quality=70)))
    inner = [pics[n] for n in ("astronaut", "chelsea", "coffee", "camera", "rocket", "clock")]
    for i, leaf in enumerate(album_leaves(inner)):
        group = f"album/leaf{i}"
        samples.append(Sample(group, group, "lookalike", encode(leaf)))
        samples.append(Sample(f"{group}/jpeg70", group, "copy", encode(leaf, "JPEG", quality=70)))
    return tuple(samples)
