"""Image pipeline figures, one core, with baselines measured in the same run.

    python -m bench.bench_images [--runs 15]

1. A 12-megapixel JPEG to the model-ready image: ``prepare_image`` against plain Pillow
   open + LANCZOS resize (what a naive gateway does).
2. pHash: ``phash64`` (and the whole fingerprint step) against ``imagehash.phash``, with how often
   the two agree bit for bit.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import cv2
import imagehash
import numpy as np
from PIL import Image
from skimage import data as skdata

from gateway.cache.fingerprint import fingerprint, phash64
from gateway.images import ImageOptions, prepare_image

OPTS = ImageOptions(max_bytes=64 << 20, max_pixels=200_000_000)


def sk(name: str) -> np.ndarray:
    """A scikit-image sample photograph by name (its loaders are untyped)."""
    return np.asarray(getattr(skdata, name)())


def timed(fn: Callable[[], object], runs: int) -> np.ndarray:
    fn()  # warm caches and lazy imports
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out) * 1000


def row(name: str, ms: np.ndarray, base: np.ndarray | None = None) -> None:
    ratio = f"  {np.median(ms) / np.median(base):5.2f}x baseline" if base is not None else ""
    print(f"  {name:<44} p50 {np.median(ms):8.2f} ms  p90 {np.percentile(ms, 90):8.2f} ms{ratio}")


def twelve_megapixel_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    big = cv2.resize(sk("astronaut"), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    # sensor-like noise: a phone photo's entropy, which is what the JPEG decoder pays for
    big = np.clip(big.astype(np.int16) + rng.integers(-10, 11, big.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def bench_preprocess(runs: int) -> None:
    data = twelve_megapixel_jpeg()
    print(f"12-megapixel JPEG (4000x3000, {len(data) / 1e6:.1f} MB) to a 1024x768 model-ready JPEG, one core:")
    base = timed(
        lambda: Image.open(io.BytesIO(data)).convert("RGB").resize((1024, 768), Image.Resampling.LANCZOS), runs
    )
    row("baseline: Pillow open + LANCZOS resize", base)
    row("Pillow decode alone (full size)", timed(lambda: Image.open(io.BytesIO(data)).load(), runs), base)
    row("prepare_image (decode..JPEG, digest, pHash, sig.)", timed(lambda: prepare_image(data, OPTS), runs), base)
    mid = prepare_image(data, OPTS).jpeg
    row("prepare_image of a 1024x768 JPEG (a cache hit's)", timed(lambda: prepare_image(mid, OPTS), runs), base)


def bench_phash(runs: int) -> None:
    photos = [sk("astronaut"), sk("chelsea"), sk("coffee"), sk("rocket"), sk("camera"), sk("moon")]
    models = []
    for p in photos:
        rgb = np.dstack([p] * 3) if p.ndim == 2 else p
        big = cv2.resize(rgb, (1024, 768), interpolation=cv2.INTER_CUBIC)
        models.append(np.ascontiguousarray(big))
    pil_models = [Image.fromarray(m) for m in models]
    proxies = [Image.fromarray(cv2.resize(m, (256, 192), interpolation=cv2.INTER_AREA)) for m in models]
    n = len(models)
    print(f"\npHash of a 1024x768 model image, per image (mean over {n} photos):")
    base = timed(lambda: [imagehash.phash(im) for im in pil_models], runs) / n
    row("baseline: imagehash.phash(model image)", base)
    row("imagehash.phash(256-pixel proxy)", timed(lambda: [imagehash.phash(p) for p in proxies], runs) / n, base)
    row("phash64(256-pixel proxy)", timed(lambda: [phash64(p) for p in proxies], runs) / n, base)
    row(
        "fingerprint(model image): trim, proxy, pHash, sig.",
        timed(lambda: [fingerprint(m) for m in models], runs) / n,
        base,
    )
    same = sum(phash64(p) == int(str(imagehash.phash(p)), 16) for p in proxies)
    gaps = [
        (fingerprint(m).phash ^ int(str(imagehash.phash(pm)), 16)).bit_count()
        for m, pm in zip(models, pil_models, strict=True)
    ]
    print(f"  phash64 == imagehash.phash on the same image: {same}/{n}")
    print(f"  proxy pHash vs imagehash.phash of the full model image, Hamming distances: {gaps}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core: the gateway runs one such process per core
    bench_preprocess(args.runs)
    bench_phash(args.runs)


if __name__ == "__main__":
    main()
