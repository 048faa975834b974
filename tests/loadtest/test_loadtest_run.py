"""A short real load test against the simulator behind a real gateway, and the command's bad input."""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
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
    # a model name of its own, as `make run` serves the tiny model: the run asks the gateway for it
    with run_in_thread(SimConfig(ttft_ms=20, itl_ms=2, tokens=12, model="qwen-vl-small")) as sim:
        store = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        settings = Settings(upstream_url=sim.base_url, upstream_model="qwen-vl-small", database_url=store)
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
    assert report["meta"]["model"] == "qwen-vl-small"
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


def test_a_url_where_nothing_answers_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    argv = ["--url", f"http://127.0.0.1:{port}", "--profile", "smoke", "--steps", "2", "--step-seconds", "1"]
    assert loadtest_main([*argv, "--warmup-seconds", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"Nothing answers HTTP at http://127.0.0.1:{port}" in err and "make run" in err
    assert not (tmp_path / "report.json").exists()


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A server that answers every request with a 503."""

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"error": {"message": "down for maintenance", "type": "unavailable"}}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_without_a_model_list_needs_the_model_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _refusing_server() as url:
        assert loadtest_main(["--url", url, "--profile", "smoke", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "/v1/models answered 503 without a model list" in err and "--model" in err


def test_a_gateway_answering_only_errors_is_a_failed_run(tmp_path: Path) -> None:
    with _refusing_server() as url:
        argv = ["--url", url, "--model", "qwen-vl", "--profile", "smoke", "--steps", "2", "--step-seconds", "1"]
        assert loadtest_main([*argv, "--warmup-seconds", "0", "--out", str(tmp_path)]) == 1
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    step = report["steps"][0]
    assert step["errors"] == step["requests"] > 0 and step["checks"]["error_rate"]["pass"] is False
    assert report["verdict"]["pass"] is False


@pytest.mark.parametrize(
    ("make_args", "command"),
    [
        ([], "huayu loadtest --url http://127.0.0.1:8080"),
        (["URL=http://10.0.0.5:80", "ARGS=--profile full"], "huayu loadtest --url http://10.0.0.5:80 --profile full"),
    ],
)
def test_make_loadtest_targets_the_local_gateway_unless_told(make_args: list[str], command: str) -> None:
    root = Path(__file__).resolve().parents[2]
    dry = subprocess.run(
        ["make", "-n", "loadtest", *make_args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert any(line.strip().endswith(command) for line in dry.stdout.splitlines()), dry.stdout
