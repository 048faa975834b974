"""``huayu loadtest``: step the offered load against a gateway, judge it by the SLO file, write the report.

    huayu loadtest --url http://127.0.0.1:8080 [--profile quick|full|smoke] [--out DIR]
    huayu loadtest --with-simulator            # starts an upstream simulator and a gateway itself

Exit status: 0 when the SLO verdict passes, 1 when it fails, 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.config import DATA_DIR
from gateway.errors import HuayuError, InvalidRequest, UpstreamUnavailable
from loadtest.machine import machine
from loadtest.metrics import Sample
from loadtest.profiles import PROFILES, Profile, get_profile, parse_size, parse_steps, plan_json, with_overrides
from loadtest.report import build_report, markdown, write_report
from loadtest.slo import Slo


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="huayu loadtest", description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the gateway's root URL, e.g. http://127.0.0.1:8080")
    target.add_argument("--with-simulator", action="store_true", help="start a simulator and a gateway for the run")
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="default: %(default)s")
    p.add_argument("--out", type=Path, help="report folder (default: .data/loadtest/<date-time>)")
    p.add_argument("--slo", type=Path, help="an SLO file (default: the shipped loadtest/slo.toml)")
    p.add_argument("--steps", help="offered rates, req/s, separated by commas (default: the profile's)")
    p.add_argument("--step-seconds", type=float, dest="step_s")
    p.add_argument("--warmup-seconds", type=float, dest="warmup_s")
    p.add_argument("--pacing", type=float, dest="pacing_s", help="seconds between two requests of one user")
    p.add_argument("--max-requests", type=int)
    p.add_argument("--timeout", type=float, dest="request_timeout_s", help="seconds one request may take")
    p.add_argument("--styles", help="styles, separated by commas; visitors and bulk use the first")
    p.add_argument("--image-size", help="WIDTHxHEIGHT of the generated artworks (default 512x384)")
    p.add_argument("--max-tokens", type=int, help="default: each style's own")
    p.add_argument("--language", choices=("zh", "en"))
    p.add_argument("--repeat-share", type=float, help="share of visitors re-sending a seen image (default 0.2)")
    p.add_argument("--mix", help="user weights, e.g. visitor=6,curator=2,bulk=2")
    p.add_argument("--model", help="the model name in requests (default: the first the gateway lists in /v1/models)")
    p.add_argument("--api-key", default="", help="sent as a bearer token")
    sim = p.add_argument_group("with --with-simulator")
    sim.add_argument("--sim-ttft-ms", type=float, default=40.0)
    sim.add_argument("--sim-itl-ms", type=float, default=8.0)
    sim.add_argument("--sim-tokens", type=int, default=48)
    return p


def _mix(text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ("visitor", "curator", "bulk") or not value.strip().isdigit():
            raise InvalidRequest(
                f"--mix wants NAME=WEIGHT for visitor, curator, bulk, e.g. visitor=6,bulk=2; got {text!r}."
            )
        weights[name.strip()] = int(value)
    return weights


def profile_from_args(args: argparse.Namespace) -> Profile:
    if args.max_requests is not None and args.max_requests < 1:
        raise InvalidRequest(f"--max-requests must be at least 1, got {args.max_requests}.")
    return with_overrides(
        get_profile(args.profile),
        steps=parse_steps(args.steps) if args.steps else None,
        step_s=args.step_s,
        warmup_s=args.warmup_s,
        pacing_s=args.pacing_s,
        max_requests=args.max_requests,
        request_timeout_s=args.request_timeout_s,
        styles=tuple(s.strip() for s in args.styles.split(",") if s.strip()) if args.styles else None,
        image_size=parse_size(args.image_size) if args.image_size else None,
        max_tokens=args.max_tokens,
        language=args.language,
        repeat_share=args.repeat_share,
        weights=_mix(args.mix) if args.mix else None,
    )


@contextlib.contextmanager
def _target(args: argparse.Namespace, out: Path) -> Iterator[tuple[str, str]]:
    """The gateway's root URL and the model name to ask it for."""
    if args.url:
        url: str = args.url.rstrip("/").removesuffix("/v1")
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"--url wants an http:// or https:// URL, got {args.url!r}.")
        yield url, args.model or _served_model(url, args.api_key)
        return
    from loadtest.simulator import SimConfig, run_in_subprocess
    from loadtest.stack import start_gateway

    config = SimConfig(ttft_ms=args.sim_ttft_ms, itl_ms=args.sim_itl_ms, tokens=args.sim_tokens, jitter=0.2)
    with run_in_subprocess(config) as sim:
        env = {"HUAYU_DATABASE_URL": f"sqlite+aiosqlite:///{(out / 'store.db').resolve()}"}
        with start_gateway(sim.base_url, env, log=out / "gateway.log") as gateway:
            yield gateway.url, args.model or config.model


def _served_model(url: str, api_key: str) -> str:
    """The first model the gateway at ``url`` lists (its base model comes first). Refuses a URL where
    nothing answers HTTP: a run against nothing would only measure connection errors."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        listed = httpx.get(url + "/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise UpstreamUnavailable(
            f"Nothing answers HTTP at {url} ({type(e).__name__}: {e}). Start the gateway first "
            "(`make run` serves one at http://127.0.0.1:8080), pass the URL of a running one "
            "(`make loadtest URL=...`, `huayu loadtest --url ...`), or use --with-simulator."
        ) from None
    try:
        model = listed.json()["data"][0]["id"]
    except (ValueError, LookupError, TypeError):
        model = None
    if listed.status_code != 200 or not isinstance(model, str):
        raise UpstreamUnavailable(
            f"{url}/v1/models answered {listed.status_code} without a model list "
            f"({listed.text[:200]!r}); name the model with --model."
        )
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; returns the report (also written under ``args.out``)."""
    profile = profile_from_args(args)
    slo = Slo.load(args.slo)
    out: Path = args.out or DATA_DIR / "loadtest" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with _target(args, out) as (url, model), tempfile.TemporaryDirectory(prefix="huayu-loadtest-") as tmp:
        samples_path, steps_path = out / "samples.jsonl", Path(tmp) / "steps.json"
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_bytes(plan_json(url, profile, samples_path, steps_path, model, args.api_key))
        limit = profile.deadline_s() + 60 + 0.1 * profile.expected_requests()  # images are made first
        try:
            done = subprocess.run([sys.executable, "-m", "loadtest.drive", str(plan_path)], timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise UpstreamUnavailable(f"The load driver did not finish within {limit:g} s.") from None
        if done.returncode != 0 or not steps_path.exists():
            raise UpstreamUnavailable(f"The load driver failed (exit code {done.returncode}); see its output above.")
        steps = orjson.loads(steps_path.read_bytes())
    samples = [Sample.from_json(line) for line in samples_path.read_bytes().splitlines() if line.strip()]
    meta = {
        "url": "simulator + gateway (started for the run)" if args.with_simulator else url,
        "model": model,
        "profile": profile.name,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "requests_sent": steps["sent"],
        "requests_cut_at_deadline": steps["cut"],
        "settings": {
            "steps": list(profile.steps),
            "step_s": profile.step_s,
            "warmup_s": profile.warmup_s,
            "pacing_s": profile.pacing_s,
            "weights": profile.weights,
            "repeat_share": profile.repeat_share,
            "styles": list(profile.styles),
            "image_size": list(profile.image_size),
            "max_tokens": profile.max_tokens,
        },
    }
    report = build_report(samples, steps["windows"], slo, meta)
    paths = write_report(report, out)
    report["files"] = {k: str(v) for k, v in paths.items()}
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = run(args)
    except HuayuError as e:
        print(f"huayu loadtest: {e}", file=sys.stderr)
        return 2
    print(markdown(report))
    print("report: " + ", ".join(report["files"].values()))
    return 0 if report["verdict"]["pass"] else 1
