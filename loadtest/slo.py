"""The SLO file, each step's figures against it, goodput, and the run's verdict.

A step passes when every target that has data holds; a target with no data in a step (no stream,
no cache hit) is reported as not judged rather than passed or failed. Goodput counts requests that
met every per-request threshold; errors always count as misses.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import InvalidRequest
from loadtest.metrics import Sample, percentile

DEFAULT_SLO = "slo.toml"


@dataclass(frozen=True)
class Slo:
    ttft_p95_ms: float = 500.0
    cache_hit_p99_ms: float = 50.0
    error_rate: float = 0.001
    required_rps: float = 2.0

    @classmethod
    def load(cls, path: Path | None = None) -> Slo:
        """Reads an SLO file; None reads the shipped defaults."""
        try:
            if path is None:
                text = resources.files("loadtest").joinpath(DEFAULT_SLO).read_text(encoding="utf-8")
            else:
                text = Path(path).read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidRequest(f"Cannot read the SLO file {path}: {e}.", param="slo") from e
        return cls.from_dict(data, str(path or DEFAULT_SLO))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "SLO") -> Slo:
        allowed = {"targets": {"ttft_p95_ms", "cache_hit_p99_ms", "error_rate"}, "verdict": {"required_rps"}}
        values: dict[str, float] = {}
        for table, body in data.items():
            if table not in allowed or not isinstance(body, dict):
                raise InvalidRequest(f"{source}: unknown table [{table}]; accepted: [targets], [verdict].")
            for key, value in body.items():
                if key not in allowed[table]:
                    names = ", ".join(sorted(allowed[table]))
                    raise InvalidRequest(f"{source}: unknown key {table}.{key}; accepted: {names}.")
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise InvalidRequest(f"{source}: {table}.{key} must be a number >= 0, got {value!r}.")
                values[key] = float(value)
        return cls(**values)

    def request_ok(self, s: Sample) -> bool:
        """Whether one request met every per-request threshold (the goodput criterion)."""
        if not s.ok:
            return False
        if s.stream and (s.ttft_ms is None or s.ttft_ms > self.ttft_p95_ms):
            return False
        return not (s.cache_hit and s.e2e_ms > self.cache_hit_p99_ms)


def _pcts(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": _round(percentile(values, q)) for q in (50, 95, 99)}


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def summarize_step(samples: Sequence[Sample], slo: Slo, offered_rps: float, seconds: float) -> dict[str, Any]:
    """Every figure of one load step, and its checks against the SLO."""
    done = [s for s in samples if s.ok]
    streams = [s for s in done if s.stream and s.ttft_ms is not None]
    hits = [s for s in done if s.cache_hit]
    joined = [s for s in done if s.coalesced]  # waited for an identical request's generation
    misses = [s for s in done if s.cached is False]
    tpots = [t for s in done if (t := s.tpot_ms) is not None]
    tokens = [s.output_tokens for s in done if s.output_tokens is not None]
    n = len(samples)
    errors = n - len(done)
    error_rate = errors / n if n else 0.0
    good = sum(1 for s in samples if slo.request_ok(s))
    ttft = _pcts([s.ttft_ms for s in streams if s.ttft_ms is not None])
    hit_e2e = _pcts([s.e2e_ms for s in hits])
    checks = {
        "ttft_p95_ms": _check(ttft["p95"], slo.ttft_p95_ms),
        "cache_hit_p99_ms": _check(hit_e2e["p99"], slo.cache_hit_p99_ms),
        "error_rate": _check(error_rate if n else None, slo.error_rate),
    }
    judged = [c["pass"] for c in checks.values() if c["pass"] is not None]
    kinds: dict[str, int] = {}
    for s in samples:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    error_kinds: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = f"{s.status} {s.error or ''}".strip()[:120]
            error_kinds[key] = error_kinds.get(key, 0) + 1
    return {
        "offered_rps": offered_rps,
        "seconds": round(seconds, 3),
        "requests": n,
        "completed": len(done),
        "errors": errors,
        "error_rate": round(error_rate, 6),
        "completed_rps": round(len(done) / seconds, 3) if seconds else 0.0,
        "goodput_rps": round(good / seconds, 3) if seconds else 0.0,
        "slo_attainment": round(good / n, 4) if n else None,
        "by_kind": kinds,
        "error_kinds": error_kinds,
        "ttft_ms": ttft | {"n": len(streams)},
        "e2e_ms": _pcts([s.e2e_ms for s in done]) | {"n": len(done)},
        "cache_hit_e2e_ms": hit_e2e | {"n": len(hits)},
        "cache_miss_e2e_ms": _pcts([s.e2e_ms for s in misses]) | {"n": len(misses)},
        "coalesced_e2e_ms": _pcts([s.e2e_ms for s in joined]) | {"n": len(joined)},
        "cache_hit_rate": round(len(hits) / known, 4) if (known := len(hits) + len(joined) + len(misses)) else None,
        "tpot_ms": _pcts(tpots) | {"n": len(tpots)},
        "itl_ms": _pcts([g for s in done for g in s.itl_ms]),
        "output_tokens": {"total": sum(tokens), "mean": _round(sum(tokens) / len(tokens)) if tokens else None},
        "output_tokens_per_s": round(sum(tokens) / seconds, 2) if seconds else 0.0,
        "checks": checks,
        "pass": bool(judged) and all(judged),
    }


def _check(value: float | None, limit: float) -> dict[str, Any]:
    # the SLO says "p95 < 500 ms": strictly below, for latencies and the error rate alike
    if value is None:
        return {"value": None, "limit": limit, "pass": None}
    return {"value": round(value, 6), "limit": limit, "pass": value < limit}


def verdict(steps: Sequence[dict[str, Any]], slo: Slo) -> dict[str, Any]:
    """The run's verdict and the highest offered rate up to which every step held the SLO."""
    ordered = sorted(steps, key=lambda s: s["offered_rps"])
    holding = 0.0
    for step in ordered:
        if not step["pass"]:
            break
        holding = step["offered_rps"]
    required = [s for s in ordered if slo.required_rps == 0 or s["offered_rps"] <= slo.required_rps]
    if not required:
        passed, why = False, f"no step was offered at or below the required {slo.required_rps:g} req/s"
    else:
        failed = [s["offered_rps"] for s in required if not s["pass"]]
        passed = not failed
        scope = "every step" if slo.required_rps == 0 else f"every step up to {slo.required_rps:g} req/s"
        why = f"{scope} met the SLO" if passed else f"steps at {', '.join(f'{r:g}' for r in failed)} req/s missed it"
    return {"pass": passed, "reason": why, "max_rps_holding_slo": holding, "required_rps": slo.required_rps}
