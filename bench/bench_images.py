"""Image pipeline figures, one core, with baselines measured in the same run.

    python -m bench.bench_images [--runs 15]

1. A 12-megapixel JPEG to the model-ready image: ``prepare_image`` against plain Pillow
   open + LANCZOS resize (what a naive gateway does), with the time of each step and the result's
   PSNR against that baseline's image; then a 1024x768 JPEG (a repeat upload before its cache hit),
   one already model-ready (sent on as it is) and one that is not (re-encoded).
2. pHash: ``phash64`` (and the whole fingerprint step) against ``imagehash.phash``, with how often
   the two agree bit for bit.
3. The worker pool, two processes: a model-ready 1024x768 JPEG through ``ImageWorker`` against
   ``ProcessPoolExecutor`` (what it replaced) and a direct call, p50/p99, one at a time and two at a
   time; and the longest the event loop stalls while a 36 MB upload goes through each pool.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

import cv2
import imagehash
import numpy as np
import simplejpeg
from PIL import Image
from skimage import data as skdata

from gateway.cache.fingerprint import fingerprint, phash64
from gateway.images import ImageOptions, ImageWorker, PreparedImage, prepare_image

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
    print(f"  {name:<50} p50 {np.median(ms):8.2f} ms  p90 {np.percentile(ms, 90):8.2f} ms{ratio}")


def twelve_megapixel_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    big = cv2.resize(sk("astronaut"), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    # sensor-like noise: a phone photo's entropy, which is what the JPEG decoder pays for
    big = np.clip(big.astype(np.int16) + rng.integers(-10, 11, big.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def mosaic_jpeg() -> bytes:
    """4000x3000 of photographs tiled at their own resolution: full-resolution detail, which the
    upscaled astronaut lacks and which is what a resize's quality shows on."""
    names = ["astronaut", "coffee", "chelsea", "rocket", "brick", "gravel", "immunohistochemistry", "camera"]
    tiles = [np.dstack([t] * 3) if t.ndim == 2 else t[..., :3] for t in map(sk, names)]
    out = np.zeros((3000, 4000, 3), np.uint8)
    k = 0
    for y in range(0, 3000, 300):  # 300: the smallest photo's height
        for x in range(0, 4000, 300):
            part = out[y : y + 300, x : x + 300]
            part[:] = tiles[k % len(tiles)][: part.shape[0], : part.shape[1]]
            k += 1
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def quality(data: bytes, p: PreparedImage, label: str) -> None:
    """PSNR of the model image against Pillow's LANCZOS resize of the full decode."""
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((p.width, p.height), Image.Resampling.LANCZOS))
    again = simplejpeg.decode_jpeg(simplejpeg.encode_jpeg(ref, OPTS.jpeg_quality, "RGB", "420"))
    print(
        f"    {label}: PSNR against LANCZOS of the full decode {psnr(pixels(p.jpeg), ref):.2f} dB"
        f" (that reference itself after a q{OPTS.jpeg_quality} encode: {psnr(again, ref):.2f} dB)"
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * float(np.log10(255**2 / max(mse, 1e-12)))


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def prepare_steps(data: bytes, runs: int, base: np.ndarray, label: str) -> PreparedImage:
    """``prepare_image`` timed as a whole, and the p50 of each of its steps."""
    prepare_image(data, OPTS)
    steps: list[dict[str, float]] = []
    totals = []
    for _ in range(runs):
        s: dict[str, float] = {}
        t = time.perf_counter()
        prepare_image(data, OPTS, s)
        totals.append(time.perf_counter() - t)
        steps.append(s)
    row(label, np.array(totals) * 1000, base)
    names = list(steps[0])
    parts = [f"{n} {np.median([s.get(n, 0.0) for s in steps]) * 1000:.2f}" for n in names]
    print(f"    steps, p50 ms: {', '.join(parts)}")
    return prepare_image(data, OPTS)


def bench_preprocess(runs: int) -> None:
    data = twelve_megapixel_jpeg()
    print(f"12-megapixel JPEG (4000x3000, {len(data) / 1e6:.1f} MB) to a 1024x768 model-ready JPEG, one core:")

    def lanczos() -> Image.Image:
        return Image.open(io.BytesIO(data)).convert("RGB").resize((1024, 768), Image.Resampling.LANCZOS)

    base = timed(lanczos, runs)
    row("baseline: Pillow open + LANCZOS resize", base)
    row("Pillow decode alone (full size)", timed(lambda: Image.open(io.BytesIO(data)).load(), runs), base)
    p = prepare_steps(data, runs, base, "prepare_image (decode..JPEG, digest, pHash, sig.)")
    quality(data, p, "this photo")
    tiled = mosaic_jpeg()
    quality(tiled, prepare_image(tiled, OPTS), "photographs tiled at full resolution")
    ready = p.jpeg
    prepare_steps(ready, runs, base, "1024x768 JPEG, model-ready: sent on as it is")
    q95 = io.BytesIO()
    Image.open(io.BytesIO(ready)).save(q95, "JPEG", quality=95)
    prepare_steps(q95.getvalue(), runs, base, "1024x768 JPEG at q95: re-encoded")


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


def _one_thread() -> None:
    cv2.setNumThreads(1)


async def _latencies(call: Callable[[], Awaitable[object]], n: int, at_once: int) -> list[float]:
    """Seconds per call: ``at_once`` callers, each making its calls one after another."""
    out: list[float] = []

    async def caller() -> None:
        for _ in range(n // at_once):
            t = time.perf_counter()
            await call()
            out.append(time.perf_counter() - t)

    await asyncio.gather(*(caller() for _ in range(at_once)))
    return out


async def _largest_stall(call: Callable[[], Awaitable[object]], runs: int = 3) -> float:
    """Seconds of the longest gap between the ticks of a 1 ms timer while ``call`` runs ``runs`` times."""
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    for _ in range(runs):
        await call()
    done = True
    await tick
    return max(gaps)


async def _pool_figures(data: bytes, big: bytes, n: int, workers: int) -> tuple[dict[str, list[float]], list[float]]:
    loop = asyncio.get_running_loop()
    pool = ImageWorker(workers)
    ctx = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread)

    def calls(upload: bytes) -> dict[str, Callable[[], Awaitable[object]]]:
        return {
            "ImageWorker": lambda: pool.prepare(upload, OPTS),
            "baseline: ProcessPoolExecutor": lambda: loop.run_in_executor(executor, prepare_image, upload, OPTS),
        }

    times: dict[str, list[float]] = {"direct call, no pool": []}
    try:
        await pool.warm()
        for call in calls(data).values():  # start the executor's processes; warm both
            await asyncio.gather(*(call() for _ in range(4 * workers)))
        # in rounds, each way in turn, so that whatever else the machine does falls on all of them alike
        rounds = 5
        for _ in range(rounds):
            for at_once in (1, 2):
                for name, call in calls(data).items():
                    times.setdefault(f"{name}, {at_once} at a time", []).extend(
                        await _latencies(call, n // rounds, at_once)
                    )
            for _ in range(n // rounds):
                t = time.perf_counter()
                prepare_image(data, OPTS)
                times["direct call, no pool"].append(time.perf_counter() - t)
        stalls = [await _largest_stall(call) for call in calls(big).values()]
    finally:
        pool.close()
        executor.shutdown()
    return times, stalls


def bench_pool(n: int, workers: int = 2) -> None:
    ready = prepare_image(twelve_megapixel_jpeg(), OPTS).jpeg
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, "PNG", compress_level=1)
    print(f"\nThe worker pool, a model-ready 1024x768 JPEG, {workers} workers, {n} prepares each:")
    times, stalls = asyncio.run(_pool_figures(ready, big.getvalue(), n, workers))
    for name, seconds in times.items():
        ms = np.array(seconds) * 1000
        print(f"  {name:<50} p50 {np.median(ms):8.2f} ms  p99 {np.percentile(ms, 99):8.2f} ms")
    print(
        f"  longest event-loop stall while a {len(big.getvalue()) / 1e6:.0f} MB PNG goes through:"
        f" ImageWorker {stalls[0] * 1000:.1f} ms, baseline {stalls[1] * 1000:.1f} ms (a 1 ms timer's gaps)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--prepares", type=int, default=200, help="calls per way in the worker pool figures")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core: the gateway runs one such process per core
    bench_preprocess(args.runs)
    bench_phash(args.runs)
    bench_pool(args.prepares)


if __name__ == "__main__":
    main()
