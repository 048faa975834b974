"""Sizes and pixel geometry: the model's target size, resizing, EXIF orientation."""

from __future__ import annotations

import cv2
import numpy as np


def target_size(width: int, height: int, max_edge: int) -> tuple[int, int]:
    """Long edge at most ``max_edge``, both sides multiples of 32, never larger than the source."""
    scale = min(1.0, max_edge / max(width, height))
    cap = max_edge // 32 * 32

    def side(n: int) -> int:
        return max(32, min(round(n * scale / 32) * 32, n // 32 * 32, cap))

    return side(width), side(height)


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = arr.shape[:2]
    if (w, h) == size:
        return arr
    # after DCT scaling the remaining factor is under 2, where bilinear is as good as area
    # averaging against a Lanczos reference (41.6 vs 41.8 dB) at a sixth of the cost
    interp = cv2.INTER_LINEAR if w < 2 * size[0] and h < 2 * size[1] else cv2.INTER_AREA
    if w < size[0] or h < size[1]:
        interp = cv2.INTER_CUBIC  # the last few percent after a slightly smaller DCT scale, or a crop
    out = cv2.resize(arr, size, interpolation=interp)
    return out if out.ndim == arr.ndim else out[..., None]


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation, as Pillow's ``ImageOps.exif_transpose`` applies it."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],
        8: lambda x: np.rot90(x, 1),
    }
    op = ops.get(orientation)
    return a if op is None else np.ascontiguousarray(op(a))
