"""Images made in the tests: deterministic, distinct per seed, encoded as real files."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def painting(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A smooth, painting-like RGB image: gradients and blobs that differ per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = [*rng.uniform(0.5, 4, 2).tolist(), rng.uniform(0, 6.28)]
        img[..., c] = 127 + 100 * np.sin(fx * x / width * 6.28 + ph) * np.cos(fy * y / height * 6.28)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        mask = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        img[mask] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 90) -> bytes:
    return encode(painting(width, height, seed), "JPEG", quality=quality)


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
