"""Starting the simulator as a child process, from its command line, and its throughput figure."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from loadtest.simulator import SimConfig, run_in_subprocess
from loadtest.simulator.run import _parser, config_from_args
from loadtest.simulator.selftest import selftest

EN = [{"role": "user", "content": "Describe this painting."}]


def test_flags_build_the_config() -> None:
    args = _parser().parse_args(
        [
            *("--model", "m", "--tokens", "9", "--fault", "drip", "--extra-model", "g", "--lora", "ink=/a/ink"),
            *("--config-json", '{"ttft_ms": 7, "tokens": 3}'),
        ]
    )
    config = config_from_args(args)
    assert (config.model, config.tokens, config.fault, config.ttft_ms) == ("m", 9, "drip", 7)
    assert config.extra_models == ["g"] and config.loras == {"ink": "/a/ink"}


def test_bad_flags_exit_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.simulator", "--fault", "explode"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "fault" in done.stderr and "503" in done.stderr  # says what is accepted


def test_subprocess_serves_and_stops() -> None:
    with run_in_subprocess(SimConfig(model="base", fault="503", fault_count=1)) as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        first = httpx.post(sim.base_url + "/chat/completions", json={"model": "base", "messages": EN})
        second = httpx.post(sim.base_url + "/chat/completions", json={"model": "base", "messages": EN})
        assert (first.status_code, second.status_code) == (503, 200)
        assert sim.requests(limit=5)[0]["model"] == "base"
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/health")


def test_selftest_prints_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    selftest(SimConfig(), seconds=0.5, concurrency=8)
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    assert "req/s" in out and "baseline" in out
