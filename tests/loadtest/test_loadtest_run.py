"""A short real load test against the simulator behind a real gateway, and the command's bad input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.app import create_app
from gateway.config import Settings
from loadtest import loadtest_main
from loadtest.metrics import Sample
from loadtest.simulator import SimConfig, run_in_thread
from tests.servers import serve


def test_a_short_run_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    with run_in_thread(SimConfig(ttft_ms=20, itl_ms=2, tokens=12)) as sim:
        settings = Settings(upstream_url=sim.base_url, database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
        with serve(create_app(settings)) as url:
            argv = ["--url", url, "--profile", "smoke", "--steps", "2,4", "--step-seconds", "1.5"]
            code = loadtest_main([*argv, "--warmup-seconds", "0.5", "--out", str(out)])
    report = orjson.loads((out / "report.json").read_bytes())
    assert code == (0 if report["verdict"]["pass"] else 1)
    assert [s["offered_rps"] for s in report["steps"]] == [2.0, 4.0]
    for step in report["steps"]:
        assert step["requests"] > 0 and step["errors"] == 0, step["error_kinds"]
        for key in ("ttft_ms", "e2e_ms", "cache_hit_e2e_ms", "tpot_ms", "itl_ms"):
            assert set(step[key]) >= {"p50", "p95", "p99"}
        assert set(step["checks"]) == {"ttft_p95_ms", "cache_hit_p99_ms", "error_rate"}
        assert step["output_tokens"]["total"] > 0 and step["completed_rps"] > 0
    assert report["slo"]["ttft_p95_ms"] == 500.0 and "max_rps_holding_slo" in report["verdict"]
    samples = [Sample.from_json(line) for line in (out / "samples.jsonl").read_bytes().splitlines()]
    assert {s.kind for s in samples} >= {"visitor", "bulk"}
    done = [s for s in samples if s.ok]
    assert all(s.cached is not None and s.output_tokens for s in done)  # huayu's fields, read from each answer
    assert all(s.ttft_ms is not None for s in done if s.stream)
    # the simulator's own time to first token is a floor for every answer it generated (a repeat
    # answered from the cache comes sooner: at 1.5 s a step those can be half of a step's samples)
    generated = [s.ttft_ms for s in done if s.stream and not s.cached]
    assert generated and all(t is not None and t >= 20.0 for t in generated)
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "# huayu load test" in (out / "report.md").read_text() and "report.md" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--url", "ftp://host"], "http:// or https://"),
        (["--url", "http://127.0.0.1:9", "--steps", "1,x"], "--steps wants"),
        (["--url", "http://127.0.0.1:9", "--image-size", "big"], "WIDTHxHEIGHT"),
        (["--url", "http://127.0.0.1:9", "--mix", "tourist=3"], "visitor, curator, bulk"),
        (["--url", "http://127.0.0.1:9", "--pacing", "0"], "must be positive"),
    ],
)
def test_bad_options_end_with_a_message(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert loadtest_main(argv) == 2
    assert words in capsys.readouterr().err


def test_an_unreachable_gateway_is_a_failed_run(tmp_path: Path) -> None:
    argv = ["--url", "http://127.0.0.1:9", "--profile", "smoke", "--steps", "2", "--step-seconds", "1"]
    assert loadtest_main([*argv, "--warmup-seconds", "0", "--out", str(tmp_path)]) == 1
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    step = report["steps"][0]
    assert step["errors"] == step["requests"] > 0 and step["checks"]["error_rate"]["pass"] is False
    assert report["verdict"]["pass"] is False
