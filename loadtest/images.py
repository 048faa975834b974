"""The artworks a load test sends: painting-like JPEGs made from a seed, distinct per seed.

A run's seeds start from a random offset, so a second run against the same gateway still sends
images its cache has never seen; repeats come only from what this run already sent.
"""

from __future__ import annotations

import base64
import io
import random

import numpy as np
from PIL import Image


def painting(width: int, height: int, seed: int) -> bytes:
    """A smooth picture of gradients and discs, JPEG-encoded; different seeds look different.

    Drawn at a quarter of the size and enlarged: a few milliseconds an image, so the load generator
    spends its CPU on requests, not on pictures.
    """
    rng = np.random.default_rng(seed)
    w, h = max(8, width // 4), max(8, height // 4)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 5.0), rng.uniform(0.5, 5.0), rng.uniform(0, 6.28)
        img[..., c] = 127 + 110 * np.sin(fx * x / w * 6.28 + phase) * np.cos(fy * y / h * 6.28)
    for _ in range(8):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        img[((x - cx) ** 2 + (y - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    small.resize((width, height), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=88)
    return buf.getvalue()


class ImagePool:
    """New images on demand and a memory of those sent, for repeats. One per load-test process."""

    def __init__(self, size: tuple[int, int], seed: int | None = None) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self._next = self.rng.randrange(1, 2**40)
        self.sent: list[str] = []  # base64 of every image sent, oldest first
        self._fresh: list[str] = []

    def _make(self) -> str:
        seed, self._next = self._next, self._next + 1
        return base64.b64encode(painting(self.size[0], self.size[1], seed)).decode()

    def prepare(self, count: int) -> None:
        """Makes ``count`` new images ahead, so that none is drawn while requests are being timed."""
        self._fresh.extend(self._make() for _ in range(count))

    def new(self) -> str:
        data = self._fresh.pop() if self._fresh else self._make()
        self.sent.append(data)
        return data

    def repeat(self) -> str | None:
        """An image sent before, or None if there is none yet."""
        return self.rng.choice(self.sent) if self.sent else None

    def pick(self, repeat_share: float) -> tuple[str, bool]:
        """An image, and whether it is a repeat: repeats with the given share once any was sent."""
        if self.sent and self.rng.random() < repeat_share:
            again = self.repeat()
            if again is not None:
                return again, True
        return self.new(), False
