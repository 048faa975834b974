"""Colour: embedded ICC profiles to sRGB, and the optional lighting correction."""

from __future__ import annotations

import io
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageCms


@lru_cache(maxsize=32)
def icc_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform to sRGB; None when the pixels are to be taken as sRGB as they are."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return None  # already sRGB: converting would only cost time
        dst = ImageCms.createProfile("sRGB")
        return ImageCms.buildTransform(src, dst, mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # a broken or mismatched profile: fall back to treating the pixels as sRGB


def needs_conversion(icc: object, mode: str) -> bool:
    return isinstance(icc, bytes) and bool(icc) and icc_transform(icc, mode) is not None


def to_srgb(arr: np.ndarray, mode: str, icc: object) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    transform = icc_transform(icc, mode) if isinstance(icc, bytes) and icc else None
    if transform is not None:
        try:
            return np.asarray(ImageCms.applyTransform(Image.fromarray(arr, mode), transform))
        except (ImageCms.PyCMSError, ValueError, OSError):
            pass
    if mode == "RGB":
        return np.ascontiguousarray(arr)
    if mode == "L":
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    return np.asarray(Image.fromarray(arr, mode).convert("RGB"))


def correct_glare(rgb: np.ndarray) -> np.ndarray:
    """Flatten uneven lighting (a shadow or a lamp's falloff across a photographed artwork) and
    paint over small specular highlights. Off by default: it changes the artwork's colours."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    light = lab[..., 0].astype(np.float32)
    h, w = light.shape
    # the illumination varies far more slowly than the picture: estimate it from a 16x16 view
    field = cv2.GaussianBlur(cv2.resize(light, (16, 16), interpolation=cv2.INTER_AREA), (0, 0), 3)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
    flat = np.clip(light * (float(field.mean()) / np.maximum(field, 8.0)), 0, 255)
    chroma = np.abs(lab[..., 1].astype(np.int16) - 128) + np.abs(lab[..., 2].astype(np.int16) - 128)
    local = cv2.medianBlur(lab[..., 0], 21)
    # glare: near-white, colourless, much brighter than its surroundings
    glare = ((lab[..., 0] > 230) & (chroma < 16) & (light - local > 35)).astype(np.uint8)
    lab[..., 0] = flat.astype(np.uint8)
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if 0 < glare.mean() < 0.05:
        out = cv2.inpaint(out, cv2.dilate(glare, np.ones((5, 5), np.uint8)), 5, cv2.INPAINT_TELEA)
    return out
