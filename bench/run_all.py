"""``huayu bench`` / ``make bench``: every ``bench/bench_*.py`` in turn, and BENCHMARKS.md kept up to date.

Each module runs in its own process (a benchmark must not inherit another's threads, caches or
warm pools): its ``main()`` is called there, or, lacking one, it runs as ``python -m bench.<name>``.
A module that writes its own section of BENCHMARKS.md (through :func:`write_section`) keeps it;
for any other, the runner records what it printed. Modules that need a model server get a simulator's
URL, timed like a 24 GB card (``MODEL_LIKE``): a collection run is bound by the model, and against a
zero-delay server ``huayu batch`` would only be racing its own image work.

    python -m bench.run_all [--only gateway,safety] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import time
from pathlib import Path

from loadtest.machine import machine

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = """# huayu benchmarks

Written by `make bench` (`python -m bench.run_all`); each section is rewritten by its own benchmark.
Every figure comes with its baseline measured in the same run, on the machine named in its section.
GPU figures and how to take them: the README's "GPU benchmarks" section.
"""

# modules that need an OpenAI-compatible upstream: the argument list, "{upstream}" replaced by its URL
NEEDS_UPSTREAM: dict[str, list[str]] = {"bench_batch": ["--url", "{upstream}"]}
# their upstream: Qwen3-VL-8B on a 24 GB card as the arithmetic and the H200 measurement put it
# (README, GPU benchmarks): ~16 requests decoding at once, ~16 ms a token, prefill with the image
# ~100 ms (61 ms measured on an H200, eager); answers of 64 tokens, so a run takes seconds, not minutes
MODEL_LIKE = {"ttft_ms": 100.0, "itl_ms": 16.0, "max_num_seqs": 16, "tokens": 64}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, title: str, body: str, path: Path | None = None) -> None:
    """Replaces (or appends) the section ``name`` of BENCHMARKS.md, stamped with the machine and date."""
    path = path or BENCHMARKS
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    start, end = _markers(name)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    section = f"{start}\n## {title} (`{name}`)\n\n_{stamp} · {machine()}_\n\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def section_of(name: str, path: Path | None = None) -> str | None:
    path = path or BENCHMARKS
    if not path.exists():
        return None
    start, end = _markers(name)
    found = re.search(re.escape(start) + r".*?" + re.escape(end), path.read_text(encoding="utf-8"), re.S)
    return found.group(0) if found else None


def modules(only: list[str] | None = None) -> list[str]:
    names = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    if only:
        wanted = {o if o.startswith("bench_") else f"bench_{o}" for o in only}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"Unknown benchmarks: {', '.join(sorted(unknown))}; there are: {', '.join(names)}.")
        names = [n for n in names if n in wanted]
    return names


def _command(name: str, args: list[str]) -> list[str]:
    """Calls the module's ``main()`` where it has one (guarded by ``__main__`` or not), else runs it."""
    source = (ROOT / "bench" / f"{name}.py").read_text(encoding="utf-8")
    if re.search(r"^def main\(", source, re.M):
        call = f"import sys; from bench.{name} import main; sys.argv[1:] = {args!r}; r = main(); "
        call += "sys.exit(r if isinstance(r, int) else 0)"
        return [sys.executable, "-c", call]
    return [sys.executable, "-m", f"bench.{name}", *args]


def run_one(name: str, upstream: str | None, write: bool, timeout_s: float) -> bool:
    args = [a.replace("{upstream}", upstream or "") for a in NEEDS_UPSTREAM.get(name, [])]
    if name == "bench_gateway" and not write:
        args.append("--no-write")
    before = section_of(name)
    print(f"\n=== {name} {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    proc = subprocess.Popen(
        _command(name, args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # echoed as it comes: a long benchmark shows its progress
        print(line, end="", flush=True)
        lines.append(line)
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        lines.append(f"[killed after {timeout_s:g} s]\n")
    seconds = time.perf_counter() - t0
    ok = code == 0
    print(f"=== {name}: {'ok' if ok else f'FAILED (exit code {code})'} in {seconds:.0f} s", flush=True)
    if write and (section_of(name) == before or not ok):
        status = "" if ok else f"**Failed** (exit code {code}); its output:\n\n"
        write_section(name, name.removeprefix("bench_"), status + "```\n" + "".join(lines).strip() + "\n```")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="benchmarks to run, separated by commas (e.g. gateway,safety)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one benchmark may take")
    args = ap.parse_args(argv)
    names = modules(args.only.split(",") if args.only else None)
    from loadtest.simulator import SimConfig, run_in_subprocess

    failed = []
    with run_in_subprocess(SimConfig(max_model_len=16384, **MODEL_LIKE)) as sim:
        for name in names:
            upstream = sim.base_url if name in NEEDS_UPSTREAM else None
            if not run_one(name, upstream, not args.no_write, args.timeout):
                failed.append(name)
    print(
        f"\n{len(names) - len(failed)} of {len(names)} benchmarks ran"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
