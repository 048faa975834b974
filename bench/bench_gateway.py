"""Gateway overhead: the same load straight to a zero-delay simulator, through huayu, through LiteLLM.

Every path answers from the same simulator (zero delay), so what differs is the proxy in between.
Each process runs alone: simulator, each gateway, LiteLLM's proxy and the load client (aiohttp)
are separate interpreters. Bodies are identical OpenAI chat requests with a ~100 KB base64 image;
huayu's cache is off, so every request reaches the upstream. Rounds rotate the order of the
paths; figures are medians over rounds with their ranges. Targets (issue 10): <= 0.5 ms p50 and
<= 3 ms p99 added, and below LiteLLM's.

    python -m bench.bench_gateway [--rounds 5] [--seconds 2] [--no-litellm] [--no-write] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from bench.run_all import write_section
from gateway.errors import HuayuError
from loadtest.images import painting
from loadtest.simulator import SimConfig, run_in_subprocess
from loadtest.stack import Service, free_port, start_gateway

MASTER_KEY = "sk-huayu-bench"  # LiteLLM refuses to start without one; loopback only


def image_b64(target_bytes: int = 100_000) -> str:
    """A painting with grain, as JPEG, whose base64 is close to ``target_bytes``."""
    rng = np.random.default_rng(7)
    base = np.asarray(Image.open(io.BytesIO(painting(1024, 768, 7))).convert("RGB"), np.int16)
    best = ""
    for grain in range(1, 30):
        noisy = np.clip(base + rng.normal(0, grain, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=85)
        best = base64.b64encode(buf.getvalue()).decode()
        if len(best) >= target_bytes:
            break
    return best


def bodies(image: str, tokens: int) -> dict[str, bytes]:
    message = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + image}}],
    }
    plain = {"model": "qwen-vl", "messages": [message], "max_tokens": tokens}
    stream = plain | {"stream": True, "stream_options": {"include_usage": True}}
    return {
        "plain": orjson.dumps(plain),
        "stream": orjson.dumps(stream),
        "huayu_plain": orjson.dumps(plain | {"cache": False}),
        "huayu_stream": orjson.dumps(stream | {"cache": False}),
    }


def hammer(tmp: Path, url: str, body: bytes, headers: dict[str, str], **spec: Any) -> dict[str, Any]:
    body_file = tmp / f"body-{len(body)}-{hash(body) & 0xFFFF}.json"
    if not body_file.exists():
        body_file.write_bytes(body)
    spec_file = tmp / "spec.json"
    spec_file.write_bytes(orjson.dumps({"url": url, "body_file": str(body_file), "headers": headers, **spec}))
    limit = float(spec.get("seconds", 2)) + 90
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.hammer", str(spec_file)], capture_output=True, timeout=limit, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load client failed: {done.stderr.decode()[-400:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def start_litellm(upstream: str, tmp: Path) -> Service:
    exe = shutil.which("litellm", path=str(Path(sys.executable).parent)) or shutil.which("litellm")
    if exe is None:
        raise RuntimeError("LiteLLM is not installed (pip install -e '.[bench]')")
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: qwen-vl\n    litellm_params:\n"
        f"      model: openai/qwen-vl\n      api_base: {upstream}\n      api_key: none\n"
    )
    port = free_port()
    env = {"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    cmd = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    service = Service("LiteLLM", cmd, f"http://127.0.0.1:{port}", env, log=tmp / "litellm.log")
    service.wait_ready("/health/liveliness", timeout_s=240)
    return service


def start_passthrough(upstream: str, tmp: Path, client: str = "aiohttp") -> Service:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.passthrough", "--port", str(port), "--upstream", upstream, "--client", client]
    log = tmp / f"passthrough-{client}.log"
    service = Service(f"the pass-through ({client})", cmd, f"http://127.0.0.1:{port}", {}, log=log)
    service.wait_ready("/health")
    return service


Path_ = tuple[str, str, dict[str, str], str]  # name, chat URL, headers, body key prefix
STRAIGHT = "straight to the simulator"
STRAIGHT_HUAYU = "straight to the simulator, huayu's upstream request"


def upstream_bodies(sim_url: str, huayu_chat: str, body: dict[str, bytes]) -> dict[str, bytes]:
    """What huayu sends upstream for its plain and its streamed request, as the simulator recorded it:
    the baseline of huayu's added latency is the simulator answering exactly that."""
    out: dict[str, bytes] = {}
    with httpx.Client(timeout=30) as client:
        for kind in ("plain", "stream"):
            client.post(huayu_chat, content=body["huayu_" + kind], headers={"content-type": "application/json"})
            out["upstream_" + kind] = last_request(sim_url)
    return out


def last_request(sim_url: str) -> bytes:
    """The body of the last chat request the simulator at ``sim_url`` (its root) received."""
    sent = httpx.get(sim_url + "/_sim/requests", params={"limit": 1}, timeout=30).json()["data"]
    if not sent:
        raise RuntimeError("the simulator recorded no request")
    return orjson.dumps(sent[-1])


def measure(tmp: Path, paths: list[Path_], body: dict[str, bytes], rounds: int, seconds: float) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p[0]: {"c1": [], "c1s": [], "c32": []} for p in paths}
    for r in range(rounds):
        order = paths[r % len(paths) :] + paths[: r % len(paths)]
        for name, url, headers, prefix in order:
            runs[name]["c1"].append(
                hammer(tmp, url, body[prefix + "plain"], headers, concurrency=1, seconds=seconds, warmup=20)
            )
            runs[name]["c1s"].append(
                hammer(
                    tmp, url, body[prefix + "stream"], headers, concurrency=1, seconds=seconds, warmup=5, stream=True
                )
            )
            runs[name]["c32"].append(
                hammer(tmp, url, body[prefix + "plain"], headers, concurrency=32, seconds=seconds, warmup=2)
            )
            print(
                f"  round {r + 1} {name}: c=1 p50 {runs[name]['c1'][-1]['e2e_ms']['p50']:.2f} ms, "
                f"c=32 {runs[name]['c32'][-1]['rps']:.0f} req/s",
                flush=True,
            )
    return runs


def slo_rate(
    tmp: Path, url: str, headers: dict[str, str], body: bytes, rates: Sequence[float], seconds: float
) -> tuple[float, list[str]]:
    """The highest open-loop rate whose streams keep TTFT p95 < 500 ms and errors < 0.1%."""
    best, notes = 0.0, []
    for rate in rates:
        f = hammer(tmp, url, body, headers, rate=rate, seconds=seconds, warmup=5, stream=True)
        p95 = f["ttft_ms"]["p95"]
        ok = p95 is not None and p95 < 500 and f["error_rate"] < 0.001
        notes.append(f"{rate:g}/s: TTFT p95 {p95 if p95 is None else round(p95, 1)} ms, errors {f['error_rate']:.2%}")
        if not ok:
            break
        best = rate
    return best, notes


def _med(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def baseline_of(name: str) -> str | None:
    """The row a path's added latency is measured against: huayu's against the simulator answering
    huayu's own upstream request, the others' against the caller's plain request; None for the two
    baselines themselves."""
    if name in (STRAIGHT, STRAIGHT_HUAYU):
        return None
    return STRAIGHT_HUAYU if name.startswith("huayu") else STRAIGHT


def tables(runs: dict[str, Any], rates: dict[str, tuple[float, list[str]]]) -> str:
    def pick(name: str, phase: str, key: str, q: str) -> list[float]:
        return [float(x[key][q]) for x in runs[name][phase] if x[key][q] is not None]

    def added(name: str, base: str | None, phase: str, key: str, q: str) -> str:
        """The median over rounds of the path's figure minus its baseline's in the same round: each
        round measures both a few seconds apart, so the machine's drift between rounds cancels."""
        if base is None:
            return "–"
        mine, theirs = runs[name][phase], runs[base][phase]
        pairs = [(a[key][q], b[key][q]) for a, b in zip(mine, theirs, strict=False)]
        diffs = [float(a) - float(b) for a, b in pairs if a is not None and b is not None]
        return f"{statistics.median(diffs):.2f}" if diffs else "–"

    lines = [
        "| path | c=1 p50 ms | c=1 p99 ms | added p50 ms | added p99 ms | stream first chunk p50 ms "
        "| added first chunk p50 ms | c=32 req/s | highest rate holding the SLO | errors |",
        "|---|---|---|---:|---:|---|---:|---|---:|---:|",
    ]
    over_plain: list[str] = []
    for name in runs:
        base = baseline_of(name)
        p50, p99 = pick(name, "c1", "e2e_ms", "p50"), pick(name, "c1", "e2e_ms", "p99")
        s50 = pick(name, "c1s", "ttft_ms", "p50")
        rps = [float(x["rps"]) for x in runs[name]["c32"]]
        errs = sum(x["requests"] - x["ok"] for ph in runs[name].values() for x in ph)
        rate = rates.get(name)
        a50, a99 = added(name, base, "c1", "e2e_ms", "p50"), added(name, base, "c1", "e2e_ms", "p99")
        a_first = added(name, base, "c1s", "ttft_ms", "p50")
        lines.append(
            f"| {name} | {_med(p50)} | {_med(p99)} | {a50} | {a99} | {_med(s50)} | {a_first} "
            f"| {_med(rps).replace('.00', '')} | {_rate(rate)} | {errs} |"
        )
        if base == STRAIGHT_HUAYU and STRAIGHT in runs:
            plain50, plain99 = (
                added(name, STRAIGHT, "c1", "e2e_ms", "p50"),
                added(name, STRAIGHT, "c1", "e2e_ms", "p99"),
            )
            over_plain.append(f"{name} {plain50} / {plain99}")
    if over_plain:
        lines += ["", "Over the caller's plain request instead (p50 / p99 ms): " + "; ".join(over_plain) + "."]
    return "\n".join(lines)


def _rate(found: tuple[float, list[str]] | None) -> str:
    if found is None:
        return "–"
    best = found[0]
    # every step held: the limit lies above the ladder
    return f"≥ {best:g} req/s (top of the ladder)" if best == RATES[-1] else f"{best:g} req/s"


RATES = [10, 20, 40, 80, 160, 320, 640]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--tokens", type=int, default=16, help="tokens each answer streams")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--no-slo", action="store_true", help="skip the open-loop search for the highest rate")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    ap.add_argument("--profile", type=Path, help="py-spy the shipped gateway under c=32; write the top costs here")
    args = ap.parse_args(argv)
    image = image_b64()
    body = bodies(image, args.tokens)
    print(
        f"bench_gateway: image {len(image) / 1000:.0f} KB base64, {args.tokens} tokens an answer, "
        f"{args.rounds} rounds x {args.seconds:g} s, on {os.cpu_count()} cores",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="huayu-bench-") as tmpdir,
        run_in_subprocess(SimConfig(tokens=args.tokens, max_model_len=16384)) as sim,
    ):
        tmp = Path(tmpdir)
        started: list[Service] = []
        try:
            lite_note = ""
            lite: Service | None = None
            if not args.no_litellm:
                try:
                    lite = start_litellm(sim.base_url, tmp)
                    started.append(lite)
                except (RuntimeError, HuayuError) as e:
                    lite_note = f"LiteLLM not measured: {e}"
                    print(lite_note, flush=True)
            common = {"HUAYU_CACHE_BACKEND": "off", "HUAYU_SAFETY_ENABLED": "true", "HUAYU_LOG_LEVEL": "warning"}
            shipped = start_gateway(
                sim.base_url,
                common | {"HUAYU_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'store.db'}"},
                log=tmp / "gw1.log",
            )
            started.append(shipped)
            no_store = start_gateway(sim.base_url, common | {"HUAYU_STORE_ENABLED": "false"}, log=tmp / "gw2.log")
            started.append(no_store)
            floor = start_passthrough(sim.base_url, tmp)
            started.append(floor)
            own_floor = start_passthrough(sim.base_url, tmp, client="huayu")
            started.append(own_floor)
            chat = "/v1/chat/completions"
            body |= upstream_bodies(sim.url, shipped.url + chat, body)
            paths: list[Path_] = [
                (STRAIGHT, sim.url + chat, {}, ""),
                (STRAIGHT_HUAYU, sim.url + chat, {}, "upstream_"),
                ("huayu as shipped (safety, store)", shipped.url + chat, {}, "huayu_"),
                ("huayu, store off", no_store.url + chat, {}, "huayu_"),
                ("bare Python pass-through (the floor)", floor.url + chat, {}, ""),
                ("bare pass-through on huayu's HTTP client (its stack's floor)", own_floor.url + chat, {}, ""),
            ]
            if lite is not None:
                paths.append(("LiteLLM 1.110.2 proxy", lite.url + chat, {"authorization": f"Bearer {MASTER_KEY}"}, ""))
            runs = measure(tmp, paths, body, args.rounds, args.seconds)
            rates: dict[str, tuple[float, list[str]]] = {}
            if not args.no_slo:
                for name, url, headers, prefix in paths:
                    if name == STRAIGHT_HUAYU:
                        continue  # the simulator's own limit is the first row's
                    rates[name] = slo_rate(tmp, url, headers, body[prefix + "stream"], RATES, args.seconds)
                    print(f"  SLO search {name}: " + "; ".join(rates[name][1]), flush=True)
            if args.profile:
                profile_gateway(tmp, shipped, body["huayu_plain"], args.profile)
        finally:
            for service in reversed(started):
                service.stop()
    table = tables(runs, rates)
    print(table)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = (
        f"Closed loop, one client process (aiohttp); {args.rounds} rounds of {args.seconds:g} s per figure, "
        f"medians (min–max over rounds). Image {len(image) / 1000:.0f} KB base64 in every body; huayu's cache off. "
        "Added = the median over rounds of the path's figure minus its baseline's in the same round: "
        "for huayu the simulator answering huayu's own "
        "upstream request (its style prompt makes the simulator write a longer, Chinese answer, which costs the "
        "simulator time that is not the gateway's), for the others the caller's plain request. "
        "The highest rate: open loop, "
        "streams, TTFT p95 < 500 ms and errors < 0.1%, rates doubling from 10 req/s. "
        "Targets: added ≤ 0.5 ms p50 and ≤ 3 ms p99, and below LiteLLM's. The bare pass-throughs "
        "(`bench/passthrough.py`: forwarding the bytes, no work) are the floors: aiohttp on uvicorn, what a "
        "plain Python proxy pays here; huayu's own HTTP client (`gateway/http1.py`) on huayu's own server "
        "(`gateway/server.py`), the floor of huayu's stack, so huayu's own work per request is its figure "
        "minus that one. "
        f"Load average at the end (1, 5, 15 min): {load}; other work on the machine widens the ranges.\n\n" + table
    )
    if lite_note:
        text += f"\n\n{lite_note}"
    if not args.no_write:
        write_section("bench_gateway", "Gateway overhead", text)


def profile_gateway(tmp: Path, gateway: Service, body: bytes, out: Path) -> None:
    """Samples the gateway process with py-spy under a c=32 load; writes the top self-time functions."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed; no profile", flush=True)
        return
    raw = tmp / "profile.txt"
    rec = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(gateway.proc.pid),
            "--duration",
            "6",
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hammer(tmp, gateway.url + "/v1/chat/completions", body, {}, concurrency=32, seconds=7)
    rec.wait(30)
    out.write_text(top_costs(raw.read_text() if raw.exists() else "", lambda f: f))
    print(f"profile written to {out}", flush=True)


def top_costs(collapsed: str, name: Callable[[str], str], top: int = 25) -> str:
    """Self and inclusive sample shares per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        own[name(frames[-1])] = own.get(name(frames[-1]), 0) + n
        for f in set(frames):
            incl[name(f)] = incl.get(name(f), 0) + n
    if not total:
        return "no samples\n"
    rows = [f"{total} samples", "self %  incl %  function"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"{100 * n / total:6.1f}  {100 * incl[f] / total:6.1f}  {f}")
    rows += ["", "by inclusive share:"]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]:
        rows.append(f"{100 * n / total:6.1f}  {f}")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
