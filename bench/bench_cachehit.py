"""Cache hits end to end through the gateway: a 1024-pixel artwork asked for again.

One gateway process per cache backend (in-process, Redis), each in front of a zero-delay
simulator, the load client in a process of its own. The artwork is described once (a miss, which
fills the cache); then it comes back:
- the same upload again (the same bytes): the gateway's image memo, then an exact hit;
- other copies of it (each re-encoded at another JPEG quality, some resized or brightened, more
  copies than the memo holds): decoded and fingerprinted every time, then a near hit;
and, as the baseline in the same run, requests that skip the cache (``"cache": false``) and reach
the simulator. Closed loop c=1 gives p50/p99; open loop at rising rates gives p99 under load.
Targets: a cache hit p99 <= 10 ms end to end (issue 4); cache-hit p99 < 50 ms in the SLO (issue 10).

    python -m bench.bench_cachehit [--seconds 5] [--copies 400] [--no-redis] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from bench.bench_gateway import hammer
from bench.run_all import write_section
from loadtest.images import painting
from loadtest.simulator import SimConfig, run_in_subprocess
from loadtest.stack import Service, start_gateway

# open-loop rates per kind of request: a copy costs a decode and a fingerprint, a repeat almost nothing
RATES = {"memo": [50, 100, 200, 400], "copies": [25, 50, 100]}


def copies(n: int) -> tuple[bytes, list[bytes]]:
    """The original 1024x768 JPEG and ``n`` distinct copies of the same artwork."""
    base = np.asarray(Image.open(io.BytesIO(painting(1024, 768, 11))).convert("RGB"))
    original = _jpeg(base, 90)
    rng = np.random.default_rng(3)
    out: list[bytes] = []
    seen = {original}
    while len(out) < n:
        img = base
        if rng.random() < 0.3:  # a brightness change of a few percent
            img = np.clip(img.astype(np.int16) + int(rng.integers(-8, 9)), 0, 255).astype(np.uint8)
        if rng.random() < 0.3:  # a smaller copy, as a web page would serve it
            w = int(rng.integers(700, 1000)) // 32 * 32
            img = np.asarray(Image.fromarray(img).resize((w, w * 3 // 4), Image.Resampling.LANCZOS))
        data = _jpeg(img, int(rng.integers(60, 96)))
        if data not in seen:
            seen.add(data)
            out.append(data)
    return original, out


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def body(image: bytes, cache: bool = True) -> bytes:
    import base64

    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    return orjson.dumps({"model": "qwen-vl", "messages": [message], "max_tokens": 16, "cache": cache})


def measure(tmp: Path, gw: Service, name: str, paths: list[Path], rates: list[int], seconds: float) -> str:
    url = gw.url + "/v1/chat/completions"
    spec: dict[str, Any] = {"body_files": [str(p) for p in paths]}
    c1 = _hammer(tmp, url, spec | {"concurrency": 1, "seconds": seconds, "warmup": 5})
    hits = f"{c1['cached']}/{c1['ok']}" if "baseline" not in name else "–"
    loads = []
    for rate in rates:
        f = _hammer(tmp, url, spec | {"rate": rate, "seconds": seconds, "warmup": 5})
        p99 = f["e2e_ms"]["p99"]
        ok = p99 is not None and not f["errors"]
        loads.append(f"{rate}/s: {p99:.1f}" if ok else f"{rate}/s: errors {f['errors']}")
    row = f"| {name} | {c1['e2e_ms']['p50']:.2f} | {c1['e2e_ms']['p99']:.2f} | {hits} | {'; '.join(loads)} |"
    print(row, flush=True)
    return row


def _hammer(tmp: Path, url: str, spec: dict[str, Any]) -> dict[str, Any]:
    # hammer() takes one body file; a list of them goes through its spec
    first = Path(spec["body_files"][0])
    return hammer(tmp, url, first.read_bytes(), {}, **spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="per figure (c=1 near hits: ~150 a second, so p99 is the 8th slowest)",
    )
    ap.add_argument("--copies", type=int, default=400, help="distinct copies (more than the image memo holds)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    original, others = copies(args.copies)
    print(f"bench_cachehit: a 1024x768 artwork ({len(original) // 1000} KB), {len(others)} copies", flush=True)
    backends = [("in-process", {"HUAYU_CACHE_BACKEND": "memory"})]
    # keys of this run alone: entries left by other runs in the same scope would be verified too
    prefix = f"huayu-bench:{os.getpid()}:{int(time.time())}:"
    if not args.no_redis:
        redis_env = {"HUAYU_CACHE_BACKEND": "redis", "HUAYU_REDIS_URL": args.redis, "HUAYU_REDIS_CACHE_PREFIX": prefix}
        backends.append(("Redis", redis_env))
    tables = []
    with (
        tempfile.TemporaryDirectory(prefix="huayu-bench-") as tmpdir,
        run_in_subprocess(SimConfig(tokens=16, max_model_len=16384)) as sim,
    ):
        tmp = Path(tmpdir)
        seconds = args.seconds
        miss = [_write(tmp, "miss", body(original, cache=False))]
        same = [_write(tmp, "same", body(original))]
        copy_files = [_write(tmp, f"copy{i}", body(img)) for i, img in enumerate(others)]
        for label, env in backends:
            rows = []
            common = {"HUAYU_LOG_LEVEL": "warning", "HUAYU_STORE_ENABLED": "false", "HUAYU_CACHE_TTL_S": "900"}
            # the copies go to a gateway without the image memo: the load client cycles through them,
            # and every one must be decoded, as a stranger's copy would be
            for memo in ("256", "0"):
                gw = start_gateway(
                    sim.base_url, common | env | {"HUAYU_IMAGE_MEMO_ENTRIES": memo}, log=tmp / f"gw-{label}-{memo}.log"
                )
                try:
                    # a miss fills the cache (the put is asynchronous)
                    _hammer(tmp, gw.url + "/v1/chat/completions", {"body_files": [str(same[0])], "max_requests": 1})
                    time.sleep(0.5)
                    print(f"  {label} cache, image memo {memo}:", flush=True)
                    if memo != "0":
                        rows.append(measure(tmp, gw, "miss (cache off), the baseline", miss, RATES["memo"], seconds))
                        rows.append(measure(tmp, gw, "the same upload again: exact hit", same, RATES["memo"], seconds))
                    else:
                        name = "another copy each time: decoded, near hit"
                        rows.append(measure(tmp, gw, name, copy_files, RATES["copies"], seconds))
                finally:
                    gw.stop()
                    if env.get("HUAYU_CACHE_BACKEND") == "redis":
                        _forget(args.redis, prefix)
            head = (
                f"**{label} cache**\n\n| request | c=1 p50 ms | c=1 p99 ms | cache hits (c=1) | "
                "open loop: p99 ms at each rate |\n|---|---:|---:|---:|---|"
            )
            tables.append(head + "\n" + "\n".join(rows))
    text = (
        f"A 1024x768 artwork ({len(original) // 1000} KB JPEG) described once, then asked for again through "
        f"huayu (safety on, store off) in front of a zero-delay simulator; {args.seconds:g} s per figure, one "
        f"load-client process. Copies: {len(others)} distinct re-encodings (JPEG quality 60-95, some resized or "
        "brightened), sent to a gateway with the image memo off, so each is decoded and fingerprinted. "
        "Open loop: requests on a fixed schedule, latency from the scheduled start. "
        f"Target: cache-hit p99 <= 10 ms. {os.cpu_count()} cores shared by the gateway, the simulator and the "
        "load client.\n\n" + "\n\n".join(tables)
    )
    print(text)
    if not args.no_write:
        write_section("bench_cachehit", "Cache hits end to end", text)


def _forget(url: str, prefix: str) -> None:
    """Deletes this run's cache keys (each gateway starts from an empty cache)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / f"{name}.json"
    path.write_bytes(data)
    return path


if __name__ == "__main__":
    main()
