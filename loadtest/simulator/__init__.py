"""An OpenAI-compatible stand-in for vLLM serving Qwen3-VL, for the gateway's tests and load tests only.

It answers like vLLM (shapes, error bodies, limits, metric names) with deterministic text, paced by a
configurable time to first token and inter-token latency, and injects faults on demand: a 503 or 500,
a request that never gets headers, a stream cut mid-way, a token drip. Plain Starlette handlers and
prebuilt byte chunks keep it cheap enough never to be the bottleneck of a gateway overhead benchmark.

Never the default upstream of ``make run``: start it with ``python -m loadtest.simulator`` or, in
tests, with :func:`run_in_thread` / :func:`run_in_subprocess`.
"""

from loadtest.simulator.app import create_app
from loadtest.simulator.config import SimConfig
from loadtest.simulator.run import RunningSim, main, run_in_subprocess, run_in_thread

__all__ = ["RunningSim", "SimConfig", "create_app", "main", "run_in_subprocess", "run_in_thread"]
