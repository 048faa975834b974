"""The simulator's decisions without a socket: fault schedules, pacing, config changes."""

from __future__ import annotations

from loadtest.simulator.config import SimConfig
from loadtest.simulator.engine import Simulator

BODY = {"messages": [{"role": "user", "content": "Describe this painting."}], "max_tokens": 20}


def test_fault_rate_picks_every_kth_request_and_count_caps_it() -> None:
    sim = Simulator(SimConfig(fault="503", fault_rate=0.25))
    assert [sim.take_fault() for _ in range(8)] == ["none", "none", "none", "503"] * 2
    sim.apply(SimConfig(fault="503", fault_count=2), touched=frozenset({"fault_count"}))
    assert [sim.take_fault() for _ in range(4)] == ["503", "503", "none", "none"]
    assert sim.public_config()["fault_count"] == 0
    sim.apply(sim.config.model_copy(update={"fault_count": 1}), touched=frozenset({"fault_count"}))
    assert sim.take_fault() == "503"


def test_delays_pace_tokens_with_bounded_deterministic_jitter() -> None:
    sim = Simulator(SimConfig(ttft_ms=100, itl_ms=10, jitter=0.2))
    delays = sim.plan(BODY, drip=False).delays
    assert delays == sim.plan(BODY, drip=False).delays
    assert len(delays) == 20 and 0.08 <= delays[0] <= 0.12
    assert all(0.008 <= d <= 0.012 for d in delays[1:]) and len(set(delays[1:])) > 1
    drip = Simulator(SimConfig(ttft_ms=5, drip_ms=50)).plan(BODY, drip=True).delays
    assert drip == [0.055] + [0.05] * 19
    assert Simulator(SimConfig()).plan(BODY, drip=False).delays == [0.0] * 20


def test_zero_tokens_and_served_names() -> None:
    sim = Simulator(SimConfig(tokens=0, extra_models=["guard"], replies_by_model={"judge": "ok"}, loras={"a": "/a"}))
    plan = sim.plan(BODY, drip=False)
    assert plan.pieces == [] and plan.finish == "stop"
    assert sim.served() == ["qwen-vl", "guard", "judge", "a"]
