"""``huayu batch``: the command line of the batch job. Exit 0 when every item is done, 1 when
some failed (listed in failures.jsonl), 2 for a bad invocation, 130 when interrupted."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
from pathlib import Path

from rich.console import Console

from gateway.batch.model import LANGUAGES, BatchConfig, BatchSummary
from gateway.batch.progress import print_plan, print_summary
from gateway.batch.runner import run_batch
from gateway.errors import HuayuError, InvalidRequest

EPILOG = """\
input: a folder of images; a CSV manifest with a header (a path, url or image column, plus
title, artist, year, medium, dimensions, collection; other columns are kept as extra); or a
IIIF Presentation manifest (v2 or v3), as a file or an http(s) URL.

The output folder holds results.jsonl (the journal: run again to resume; finished items are
never requested again), results.csv (UTF-8 with BOM), annotations.json (IIIF Web Annotations)
and failures.jsonl.
"""


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huayu batch",
        description="Describe a whole collection, resumably, in one or more styles and languages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="folder, CSV file, IIIF manifest file or http(s) URL of a manifest")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (also the resume state)")
    p.add_argument("-s", "--style", action="append", type=_csv_list, help="style(s), repeatable or comma-separated "
                   "(default: curator)")  # fmt: skip
    p.add_argument("-l", "--language", action="append", type=_csv_list,
                   help=f"language(s): {', '.join(LANGUAGES)} or both (default: zh)")  # fmt: skip
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gateway", default=os.environ.get("HUAYU_GATEWAY_URL", "http://127.0.0.1:8080"),
                       help="the gateway's base URL (default: %(default)s, or $HUAYU_GATEWAY_URL)")  # fmt: skip
    where.add_argument("--direct", metavar="URL", help="send straight to an OpenAI-compatible model server (vLLM) "
                       "instead: no cache, filter or store")  # fmt: skip
    p.add_argument("--model", default="qwen-vl", help="model name (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("HUAYU_API_KEY", ""), help="bearer key ($HUAYU_API_KEY)")
    p.add_argument("-c", "--concurrency", type=int, default=32, help="requests in flight (default: %(default)s)")
    p.add_argument("--priority", type=int, help="request priority; lower runs first (default: 10 through the "
                   "gateway, not sent with --direct)")  # fmt: skip
    p.add_argument("--prompt", help="an extra request added to every prompt, inside the style")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--no-cache", action="store_true", help="ask the gateway not to answer from its cache")
    p.add_argument("--retries", type=int, default=4, help="tries after the first, with backoff (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (default: %(default)s)")
    p.add_argument("--max-image-mb", type=float, default=30.0, help="largest image read (default: %(default)s MiB)")
    p.add_argument("--iiif-size", default="!1024,1024", help="IIIF Image API size to fetch (default: %(default)s)")
    p.add_argument("--styles-dir", type=Path, help="extra style files, for --direct")
    p.add_argument("--limit", type=int, help="describe at most this many items in this run")
    p.add_argument("--dry-run", action="store_true", help="show what would run; send nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _mib(value: float) -> int:
    if not (value > 0 and math.isfinite(value)):  # NaN and infinity: int() would raise on them
        raise InvalidRequest(f"--max-image-mb must be more than 0 (got {value:g}).", param="max_image_mb")
    return max(1, int(value * 1024 * 1024))


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    styles = tuple(dict.fromkeys(s for group in args.style or [["curator"]] for s in group))
    languages: list[str] = []
    for group in args.language or [["zh"]]:
        for lang in group:
            languages.extend(LANGUAGES if lang in ("both", "all") else [lang])
    return BatchConfig(
        input=args.input,
        out_dir=args.out,
        styles=styles,
        languages=tuple(dict.fromkeys(languages)),
        gateway=args.gateway,
        direct=args.direct,
        model=args.model,
        api_key=args.api_key,
        concurrency=args.concurrency,
        priority=args.priority,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        cache=not args.no_cache,
        retries=args.retries,
        request_timeout_s=args.timeout,
        max_image_bytes=_mib(args.max_image_mb),
        iiif_size=args.iiif_size,
        styles_dir=args.styles_dir,
        limit=args.limit,
        dry_run=args.dry_run,
        progress=not args.no_progress,
    )


def batch_main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help exits 0, a bad option 2: returned, not raised
        return e.code if isinstance(e.code, int) else 2
    err = Console(stderr=True, soft_wrap=True)
    try:
        config = config_from_args(args)
        summary = asyncio.run(_run(config, err))
    except HuayuError as e:
        err.print(f"huayu batch: error: {e.message}", markup=False, highlight=False)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("huayu batch: interrupted; what finished is saved: run the same command again to resume.")
        return 130
    out = Console(soft_wrap=True)
    (print_plan if config.dry_run else print_summary)(summary, out)
    return summary.exit_code


async def _run(config: BatchConfig, console: Console) -> BatchSummary:
    # SIGTERM (a scheduler stopping the job) ends the run as Ctrl-C does: the journal is synced
    # and the outputs rebuilt before the process goes
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    handled = False
    if task is not None:
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
            handled = True
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread, or no signals here (Windows): SIGTERM keeps its default
    try:
        return await run_batch(config, console)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(batch_main())
