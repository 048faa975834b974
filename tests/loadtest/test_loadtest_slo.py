"""The SLO file, each step's checks, goodput and the verdict, on crafted samples."""

from __future__ import annotations

from pathlib import Path

import pytest

import loadtest
from gateway.errors import InvalidRequest
from loadtest.metrics import Sample
from loadtest.slo import Slo, summarize_step, verdict


def visitor(ttft: float, e2e: float = 900.0, ok: bool = True, cached: bool = False, kind: str = "exact") -> Sample:
    return Sample(
        kind="visitor", step=0, start_s=0.0, e2e_ms=e2e, ok=ok, status=200 if ok else 503,
        error=None if ok else "HTTP 503: busy", stream=True, ttft_ms=ttft if ok else None,
        output_tokens=100 if ok else None, cached=cached if ok else None, cache_kind=kind if cached else None,
    )  # fmt: skip


def test_shipped_defaults() -> None:
    slo = Slo.load()
    assert (slo.ttft_p95_ms, slo.cache_hit_p99_ms, slo.error_rate, slo.required_rps) == (500.0, 50.0, 0.001, 2.0)
    h100 = Slo.load(Path(loadtest.__file__).parent / "slo-h100.toml")  # the README's GPU targets
    assert (h100.ttft_p95_ms, h100.required_rps) == (150.0, 4.0)


def test_a_step_within_every_target_passes() -> None:
    samples = [visitor(100.0 + i) for i in range(95)] + [visitor(20.0, e2e=30.0, cached=True) for _ in range(5)]
    step = summarize_step(samples, Slo(), offered_rps=10.0, seconds=10.0)
    assert step["pass"] is True
    assert step["checks"]["ttft_p95_ms"]["pass"] and step["checks"]["cache_hit_p99_ms"]["pass"]
    assert step["goodput_rps"] == 10.0 and step["slo_attainment"] == 1.0
    assert step["cache_hit_rate"] == 0.05 and step["completed_rps"] == 10.0
    assert step["output_tokens"]["total"] == 10_000


def test_slow_first_tokens_fail_the_step_and_lower_goodput() -> None:
    samples = [visitor(100.0) for _ in range(90)] + [visitor(800.0) for _ in range(10)]
    step = summarize_step(samples, Slo(), offered_rps=10.0, seconds=10.0)
    assert step["ttft_ms"]["p95"] == 800.0
    assert step["checks"]["ttft_p95_ms"]["pass"] is False and step["pass"] is False
    assert step["goodput_rps"] == 9.0  # the ten slow ones miss; the others still count


def test_one_error_in_a_hundred_breaks_a_tenth_of_a_percent() -> None:
    samples = [visitor(100.0) for _ in range(99)] + [visitor(0.0, ok=False)]
    step = summarize_step(samples, Slo(), offered_rps=10.0, seconds=10.0)
    assert step["errors"] == 1 and step["checks"]["error_rate"] == {"value": 0.01, "limit": 0.001, "pass": False}
    assert step["error_kinds"] == {"503 HTTP 503: busy": 1}
    assert step["pass"] is False


def test_slow_cache_hits_fail_and_no_hits_is_not_judged() -> None:
    slow_hits = [visitor(100.0) for _ in range(50)] + [visitor(10.0, e2e=80.0, cached=True) for _ in range(3)]
    step = summarize_step(slow_hits, Slo(), offered_rps=5.0, seconds=10.0)
    assert step["checks"]["cache_hit_p99_ms"]["pass"] is False and not step["pass"]
    no_hits = summarize_step([visitor(100.0)], Slo(), offered_rps=1.0, seconds=1.0)
    assert no_hits["checks"]["cache_hit_p99_ms"]["pass"] is None and no_hits["pass"] is True


def test_a_request_that_joined_a_generation_in_flight_is_judged_like_a_miss() -> None:
    # 3 repeats arrived while their image was being described: they waited ~the generation's time
    joined = [visitor(700.0, e2e=750.0, cached=True, kind="coalesced") for _ in range(3)]
    samples = [visitor(100.0) for _ in range(45)] + [visitor(10.0, e2e=20.0, cached=True) for _ in range(2)] + joined
    step = summarize_step(samples, Slo(), offered_rps=5.0, seconds=10.0)
    assert step["cache_hit_e2e_ms"]["n"] == 2 and step["cache_hit_e2e_ms"]["p99"] == 20.0
    assert step["checks"]["cache_hit_p99_ms"]["pass"] is True
    assert step["coalesced_e2e_ms"]["n"] == 3 and step["coalesced_e2e_ms"]["p50"] == 750.0
    assert step["cache_hit_rate"] == 0.04  # 2 of 50
    assert step["ttft_ms"]["p99"] == 700.0  # their first tokens count among the streams'
    assert step["goodput_rps"] == 4.7  # the 3 miss the TTFT target, not the cache-hit one


def test_verdict_needs_every_step_up_to_the_required_rate() -> None:
    slo = Slo(required_rps=4.0)
    steps = [{"offered_rps": r, "pass": ok} for r, ok in ((1.0, True), (2.0, True), (4.0, True), (8.0, False))]
    v = verdict(steps, slo)
    assert v["pass"] is True and v["max_rps_holding_slo"] == 4.0
    steps[1]["pass"] = False
    v = verdict(steps, slo)
    assert v["pass"] is False and v["max_rps_holding_slo"] == 1.0 and "2" in v["reason"]
    assert verdict([{"offered_rps": 8.0, "pass": True}], slo)["pass"] is False  # nothing offered at <= 4 req/s
    assert verdict(steps, Slo(required_rps=0))["pass"] is False  # 0: every step must pass


def test_slo_files_are_read_and_bad_ones_say_what_is_accepted(tmp_path: Path) -> None:
    good = tmp_path / "slo.toml"
    good.write_text("[targets]\nttft_p95_ms = 150\n[verdict]\nrequired_rps = 16\n")
    assert Slo.load(good) == Slo(ttft_p95_ms=150.0, required_rps=16.0)
    for text, words in (
        ("[targets]\nttft_p50_ms = 1\n", "ttft_p95_ms"),
        ("[limits]\nx = 1\n", "[targets]"),
        ("[targets]\nerror_rate = -1\n", ">= 0"),
        ("[targets\n", "Cannot read"),
    ):
        good.write_text(text)
        with pytest.raises(InvalidRequest, match=words.replace("[", r"\[")):
            Slo.load(good)
    with pytest.raises(InvalidRequest, match="Cannot read"):
        Slo.load(tmp_path / "missing.toml")
