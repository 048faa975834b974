"""Benchmark of ``huayu batch`` against a plain concurrent OpenAI client, in the same run.

On N generated images, the baseline is the ``openai`` SDK's AsyncOpenAI with N requests and
``--concurrency`` in flight, straight to the model server, carrying the same messages (image
first, then the style's text) and the same sampling. ``huayu batch`` then describes another N
images (distinct, so neither side profits from the server's prefix cache of the other's images)
at the same concurrency: straight to the same server (``--direct``), or through the gateway when
``--gateway`` is given (its cache turned off per request). Target (issue 7): ratio >= 0.9.

    python -m bench.bench_batch --url http://127.0.0.1:8000/v1 [-n 200] [-c 32] [--gateway URL]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

from gateway.batch import BatchConfig, direct_messages, run_batch
from gateway.styles import StyleRegistry
from loadtest.images import painting


def make_set(folder: Path, seeds: range, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"img{seed:05d}.jpg"
        path.write_bytes(painting(size[0], size[1], seed))
        paths.append(path)
    return paths


async def baseline(args: argparse.Namespace, paths: list[Path]) -> tuple[float, int, int]:
    """Seconds, completion tokens and errors of the plain client over ``paths``."""
    style = StyleRegistry.load().get(args.style)
    client = AsyncOpenAI(base_url=args.url, api_key=args.api_key or "none", max_retries=3, timeout=600)
    gate = asyncio.Semaphore(args.concurrency)
    tokens = errors = 0

    async def one(path: Path) -> None:
        nonlocal tokens, errors
        async with gate:
            url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
            messages = direct_messages(style, args.language, url, {}, None)
            try:
                r = await client.chat.completions.create(
                    model=args.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=args.max_tokens or style.sampling.max_tokens,
                    temperature=style.sampling.temperature,
                    top_p=style.sampling.top_p,
                )
            except Exception:
                errors += 1
                return
            tokens += r.usage.completion_tokens if r.usage else 0

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in paths))
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed, tokens, errors


async def batch(args: argparse.Namespace, folder: Path, out: Path) -> tuple[float, int, int]:
    config = BatchConfig(
        input=str(folder),
        out_dir=out,
        styles=(args.style,),
        languages=(args.language,),
        gateway=args.gateway or "",
        direct=None if args.gateway else args.url,
        model=args.model,
        api_key=args.api_key,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        cache=False,
        progress=False,
    )
    t0 = time.perf_counter()
    summary = await run_batch(config)
    return time.perf_counter() - t0, summary.completion_tokens, summary.failed


async def main_async(args: argparse.Namespace) -> None:
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="huayu-bench-") as tmp:
        root = Path(tmp)
        n = args.n
        warm = make_set(root / "warm", range(10**6, 10**6 + min(args.concurrency, 16)), (size[0], size[1]))
        await baseline(args, warm)  # connections, the server's first-request costs
        rows: list[tuple[str, float, int, int]] = []
        for r in range(args.repeat):
            seeds = range(2 * r * n, 2 * r * n + 2 * n)
            base_paths = make_set(root / f"base{r}", seeds[:n], (size[0], size[1]))
            make_set(root / f"batch{r}", seeds[n:], (size[0], size[1]))
            # alternate who goes first, so neither side always meets a warmer server
            order = ["baseline", "batch"] if r % 2 == 0 else ["batch", "baseline"]
            for who in order:
                if who == "baseline":
                    rows.append(("baseline", *await baseline(args, base_paths)))
                else:
                    rows.append(("batch", *await batch(args, root / f"batch{r}", root / f"out{r}")))
    via = f"gateway {args.gateway}" if args.gateway else "direct"
    print(f"{n} images of {args.size}, concurrency {args.concurrency}, server {args.url}, huayu batch via {via}")
    timing = simulator_timing(args.url)
    if timing:
        print(timing)
    print(f"{'run':<10} {'seconds':>8} {'images/s':>9} {'tokens/s':>9} {'errors':>6}")
    for who, secs, tokens, errors in rows:
        print(f"{who:<10} {secs:8.2f} {n / secs:9.2f} {tokens / secs:9.1f} {errors:6d}")
    base = statistics.median(n / s for w, s, _, _ in rows if w == "baseline")
    ours = statistics.median(n / s for w, s, _, _ in rows if w == "batch")
    print(f"median images/s: plain client {base:.2f}, huayu batch {ours:.2f}; ratio {ours / base:.3f} (target >= 0.9)")


def simulator_timing(url: str) -> str:
    """How the server is timed, when it is huayu's simulator (it says so at ``/_sim/config``); else ""."""
    import httpx

    root = url.rstrip("/").removesuffix("/v1")
    try:
        config = httpx.get(root + "/_sim/config", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return ""
    if not isinstance(config, dict) or "ttft_ms" not in config:
        return ""
    return (
        f"the server is huayu's simulator: first token after {config['ttft_ms']:g} ms, then one every "
        f"{config['itl_ms']:g} ms, {config['max_num_seqs'] or 'any number of'} requests generating at once, "
        f"{config['tokens']} tokens an answer"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="OpenAI-compatible base URL of the model server (…/v1)")
    p.add_argument("--gateway", help="send huayu batch through this gateway instead of straight to --url")
    p.add_argument("-n", type=int, default=200, help="images per side (default: %(default)s)")
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="rounds; the medians are compared")
    p.add_argument("--size", default="512x384", help="image size WxH (default: %(default)s)")
    p.add_argument("--model", default="qwen-vl")
    p.add_argument("--api-key", default="")
    p.add_argument("--style", default="curator")
    p.add_argument("--language", default="zh", choices=("zh", "en"))
    p.add_argument("--max-tokens", type=int, help="default: the style's")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
