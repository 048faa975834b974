"""The benchmark tools: the load client against a real simulator, BENCHMARKS.md sections, profiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from bench.bench_batch import simulator_timing
from bench.bench_cpu import BASELINE
from bench.bench_cpu import main as bench_cpu
from bench.bench_gateway import STRAIGHT, STRAIGHT_HUAYU, tables, top_costs
from bench.bench_server import DIRECT, HUAYU, UVICORN
from bench.bench_server import main as bench_server
from bench.run_all import MODEL_LIKE, modules, section_of, write_section
from loadtest.hammer import main as hammer_main
from loadtest.simulator import SimConfig, run_in_thread


def test_the_load_client_times_streams_and_counts_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"model": "qwen-vl", "stream": True, "messages": [{"role": "user", "content": "Describe it."}]}
    (tmp_path / "body.json").write_bytes(orjson.dumps(body))
    with run_in_thread(SimConfig(ttft_ms=30, tokens=4, fault="503", fault_count=2)) as sim:
        spec = {"url": sim.base_url + "/chat/completions", "body_file": str(tmp_path / "body.json"), "stream": True}
        (tmp_path / "spec.json").write_bytes(orjson.dumps(spec | {"concurrency": 2, "seconds": 0.5}))
        hammer_main([str(tmp_path / "spec.json")])
    figures = orjson.loads(capsys.readouterr().out)
    assert figures["errors"] == {"HTTP 503": 2} and figures["ok"] > 4
    assert figures["ttft_ms"]["p50"] >= 30.0 and figures["e2e_ms"]["p50"] >= figures["ttft_ms"]["p50"]


def test_sections_are_replaced_in_place_and_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_section("bench_a", "A", "first", path)
    write_section("bench_b", "B", "| x |\n|---|\n| 1 |", path)
    write_section("bench_a", "A", "second", path)
    text = path.read_text()
    assert text.startswith("# huayu benchmarks") and "first" not in text
    assert text.index("second") < text.index("| 1 |")  # bench_a kept its place
    assert "cores" in (section_of("bench_a", path) or "")  # stamped with the machine
    assert section_of("bench_c", path) is None


def test_the_runner_finds_the_benchmarks() -> None:
    assert "bench_gateway" in modules()
    assert modules(["gateway"]) == ["bench_gateway"]
    with pytest.raises(SystemExit, match="Unknown benchmarks: bench_nope"):
        modules(["nope"])


def test_huayu_is_measured_against_its_own_upstream_request_and_the_others_against_the_plain_one() -> None:
    def run(p50: float, p99: float, first: float) -> dict[str, list[dict[str, object]]]:
        figures = {"requests": 10, "ok": 10, "rps": 100.0}
        return {
            "c1": [figures | {"e2e_ms": {"p50": p50, "p99": p99}}],
            "c1s": [figures | {"ttft_ms": {"p50": first, "p99": first}}],
            "c32": [figures],
        }

    runs = {
        STRAIGHT: run(0.40, 0.60, 0.40),
        STRAIGHT_HUAYU: run(0.50, 0.70, 0.45),
        "huayu as shipped": run(0.95, 1.70, 1.20),
        "LiteLLM proxy": run(15.40, 24.60, 13.40),
    }
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in tables(runs, {}).splitlines()}
    assert rows["huayu as shipped"][3:5] == ["0.45", "1.00"]  # over the simulator answering huayu's request
    assert rows["huayu as shipped"][6] == "0.75"
    assert rows["LiteLLM proxy"][3:5] == ["15.00", "24.00"]  # over the caller's plain request
    assert rows[STRAIGHT][3] == rows[STRAIGHT_HUAYU][3] == "–"
    assert "huayu as shipped 0.55 / 1.10" in tables(runs, {})  # the plain figure stays in the report


def test_added_latency_pairs_each_round_with_its_baseline_in_the_same_round() -> None:
    def rounds(p50s: list[float]) -> dict[str, list[dict[str, object]]]:
        figures = [{"requests": 10, "ok": 10, "rps": 100.0, "e2e_ms": {"p50": v, "p99": v}} for v in p50s]
        return {"c1": figures, "c1s": [], "c32": figures}

    # the machine drifts between rounds; within a round huayu adds 0.45, 0.45, then 0.70
    runs = {STRAIGHT_HUAYU: rounds([0.40, 0.60, 0.50]), "huayu as shipped": rounds([0.85, 1.05, 1.20])}
    row = next(line for line in tables(runs, {}).splitlines() if line.startswith("| huayu as shipped"))
    assert row.split(" | ")[3] == "0.45"  # not 1.05 - 0.50, the difference of the medians


def test_the_collection_benchmark_runs_against_a_model_like_simulator_and_says_so() -> None:
    with run_in_thread(SimConfig(**MODEL_LIKE)) as sim:  # what make bench gives bench_batch
        said = simulator_timing(sim.base_url)
    assert said == (
        "the server is huayu's simulator: first token after 100 ms, then one every 16 ms, "
        "16 requests generating at once, 64 tokens an answer"
    )
    assert simulator_timing("http://127.0.0.1:9/v1") == ""  # not a simulator (nothing there): nothing said


def test_the_cpu_benchmark_measures_huayu_against_its_own_client(capsys: pytest.CaptureFixture[str]) -> None:
    bench_cpu(["--requests", "20", "--rounds", "1", "--no-write"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()}
    base = float(rows[BASELINE][1].split()[0])
    for name in ("huayu, store off", "huayu as shipped (safety, SQLite store)"):
        cpu, own, ratio = float(rows[name][1].split()[0]), float(rows[name][2]), float(rows[name][3])
        # the figures' own arithmetic; which is larger over 20 requests is the machine's business
        assert cpu > 0 and base > 0 and own == pytest.approx(cpu - base, abs=1)
        assert ratio == pytest.approx(cpu / base, rel=0.05)  # of the figures before they were rounded


def test_the_server_benchmark_alternates_both_servers_and_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    bench_server(["--seconds", "1", "--warmup", "3", "--no-write"])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    counts = {rows[name][1] for name in (HUAYU, UVICORN, DIRECT)}
    assert len(counts) == 1 and int(counts.pop()) > 0  # one request each per turn
    base = float(rows[DIRECT][2])
    for name in (HUAYU, UVICORN):
        assert float(rows[name][4]) == pytest.approx(float(rows[name][2]) - base, abs=0.002)
        assert float(rows[name][5].strip(" |")) > 0
    assert "huayu's server minus uvicorn" in out


def test_top_costs_from_collapsed_stacks() -> None:
    collapsed = "main;serve;decode 60\nmain;serve;encode 30\nmain;idle 10\n"
    text = top_costs(collapsed, lambda f: f)
    lines = text.splitlines()
    assert lines[0] == "100 samples"
    assert lines[2].split() == ["60.0", "60.0", "decode"]
    assert "90.0  serve" in text


def test_the_load_client_sends_its_bodies_in_turn_and_counts_cached_answers(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.bench_cachehit import body, copies
    from gateway.app import create_app
    from tests.servers import gateway_settings, serve

    original, others = copies(2)
    files = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]
    for path, data in zip(files, (body(original), body(others[0]), body(others[1], cache=False)), strict=True):
        path.write_bytes(data)
    with serve(create_app(gateway_settings(sim_url, tmp_path))) as url:
        spec = {"url": url + "/v1/chat/completions", "body_files": [str(f) for f in files], "max_requests": 6}
        (tmp_path / "spec.json").write_bytes(orjson.dumps(spec | {"concurrency": 1, "seconds": 30}))
        hammer_main([str(tmp_path / "spec.json")])
    figures = orjson.loads(capsys.readouterr().out)
    # the original fills the cache, its copy hits it (near), the third asks for no cache; twice round.
    # The cache is filled by a task after the first answer: the first copy may come before it ran.
    assert figures["ok"] == 6 and figures["cached"] in (2, 3)


def test_huayu_bench_runs_from_any_folder(tmp_path: Path) -> None:
    # `make bench` calls the console script: the bench package must be importable without the repo on sys.path
    exe = Path(sys.executable).parent / "huayu"
    done = subprocess.run([str(exe), "bench", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--only" in done.stdout


@pytest.mark.parametrize("client", ["aiohttp", "huayu"])
def test_the_bare_pass_throughs_forward_answers_and_streams_unchanged(client: str) -> None:
    from bench.passthrough import Passthrough
    from tests.servers import serve

    body = {"model": "qwen-vl", "messages": [{"role": "user", "content": "Describe it."}], "max_tokens": 5}
    with run_in_thread(SimConfig(tokens=5)) as sim, serve(Passthrough(sim.base_url, client)) as url:
        straight = httpx.post(sim.base_url + "/chat/completions", json=body, timeout=10).json()
        passed = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
        assert passed.status_code == 200 and passed.headers["content-type"].startswith("application/json")
        assert passed.json()["choices"] == straight["choices"]
        with httpx.stream("POST", url + "/v1/chat/completions", json=body | {"stream": True}, timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 6  # the role, five tokens, the end
