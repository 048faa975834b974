"""The subset of vLLM's Prometheus series the simulator exports, under vLLM's names, labels and buckets.

Written by hand rather than with prometheus_client: its locks and label lookups cost more per request
than the whole zero-delay answer, and the simulator must never be the slow side of a benchmark.
"""

from __future__ import annotations

from bisect import bisect_left

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's own bucket edges (vllm/v1/metrics/buckets.py), so dashboards read the simulator like the real thing
TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
)
TTFT_BUCKETS += (40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
)
E2E_BUCKETS += (480.0, 960.0, 1920.0, 7680.0)


class Histogram:
    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.buckets = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def render(self, labels: str) -> list[str]:
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        total = 0
        for edge, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            le = "+Inf" if edge == float("inf") else repr(float(edge))
            lines.append(f'{self.name}_bucket{{{labels},le="{le}"}} {total}')
        lines += [f"{self.name}_count{{{labels}}} {total}", f"{self.name}_sum{{{labels}}} {self.sum!r}"]
        return lines


class SimMetrics:
    content_type = CONTENT_TYPE

    def __init__(self, model: str) -> None:
        escaped = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        self.labels = f'model_name="{escaped}",engine="0"'
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {}
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", E2E_BUCKETS
        )

    def finished(self, tokens: int, reason: str, seconds: float) -> None:
        self.generation_tokens += tokens
        self.e2e.observe(seconds)
        self.success[reason] = self.success.get(reason, 0) + 1

    def render(self, running: int, waiting: int, kv_usage: float) -> bytes:
        labels = self.labels
        lines: list[str] = []

        def series(name: str, kind: str, doc: str, value: float) -> None:
            lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {float(value)!r}"])

        series("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", running)
        series("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", waiting)
        series("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv_usage)
        series("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", self.prompt_tokens)
        series(
            "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", self.generation_tokens
        )
        lines += ["# HELP vllm:request_success_total Count of successfully processed requests."]
        lines += ["# TYPE vllm:request_success_total counter"]
        for reason, count in sorted(self.success.items()):
            lines.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(count)!r}')
        lines += self.ttft.render(labels) + self.e2e.render(labels)
        return ("\n".join(lines) + "\n").encode()
