"""The simulator's state and decisions: which models it serves, which fault comes next, what to answer.

Everything here runs on the event loop without awaiting, except ``generating``, which holds a slot.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response

from loadtest.simulator.config import SimConfig
from loadtest.simulator.content import ContentError, generate, prompt_tokens, split_tokens
from loadtest.simulator.metrics import SimMetrics


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


class ApiError(Exception):
    """Rendered in vLLM's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.response = json_response(
            {"error": {"message": message, "type": kind, "param": param, "code": status}}, status
        )


@dataclass
class Plan:
    """One accepted chat completion: what to say and how fast."""

    id: str
    model: str
    pieces: list[str]
    finish: str
    prompt: int
    stream: bool
    usage_chunk: bool
    delays: list[float]  # seconds before each token; the first holds the time to first token
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, sent: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt, "total_tokens": self.prompt + sent, "completion_tokens": sent}


@dataclass
class Progress:
    sent: int = 0
    done: bool = False  # False at the end: the request counts as aborted


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.initial = config
        self.metrics = SimMetrics(config.model)
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0
        self.apply(config, reset=True)

    def apply(self, config: SimConfig, reset: bool = False, touched: frozenset[str] = frozenset()) -> None:
        self.config = config
        if reset or "loras" in touched:
            self.loras = dict(config.loras)
        if reset or touched & {"fault", "fault_rate", "fault_count"}:
            self.seen, self.fault_left = 0, config.fault_count  # the k-th count starts again at each change
        if reset or "record_limit" in touched:
            self.requests: deque[Any] = deque([] if reset else self.requests, maxlen=config.record_limit)
        if reset or "max_num_seqs" in touched:
            self.slots = asyncio.Semaphore(config.max_num_seqs) if config.max_num_seqs else None
        if reset:
            self.release = asyncio.Event()  # set to free the requests held by 'hang'

    def public_config(self) -> dict[str, Any]:
        data = self.config.model_dump()
        data.update(loras=self.loras, fault_count=self.fault_left)
        return data

    def served(self) -> list[str]:
        names = [self.config.model, *self.config.extra_models, *self.config.replies_by_model, *self.loras]
        return list(dict.fromkeys(names))

    def take_fault(self) -> str:
        c = self.config
        if c.fault == "none" or self.fault_left == 0:
            return "none"
        n, self.seen = self.seen, self.seen + 1
        if math.floor((n + 1) * c.fault_rate + 1e-9) == math.floor(n * c.fault_rate + 1e-9):
            return "none"
        if self.fault_left is not None:
            self.fault_left -= 1
        return c.fault

    def plan(self, body: dict[str, Any], drip: bool) -> Plan:
        c = self.config
        model = body.get("model") or c.model
        if model not in self.served():
            names = ", ".join(self.served())
            raise ApiError(
                404, "NotFoundError", f"The model `{model}` does not exist. Valid aliases: {names}.", "model"
            )
        if "messages" not in body:
            raise ApiError(400, "BadRequestError", "Field required: 'messages' (a list of chat messages).", "messages")
        try:
            estimate = prompt_tokens(body["messages"], model)
        except ContentError as e:
            raise ApiError(400, "BadRequestError", str(e), "messages") from e
        prompt, seed = estimate.tokens, estimate.seed
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise ApiError(400, "BadRequestError", f"{key} must be a positive integer, got {max_tokens!r}.", key)
        if max_tokens is not None and max_tokens > c.max_model_len:
            msg = f"{key}={max_tokens} cannot be greater than max_model_len={c.max_model_len}. "
            raise ApiError(400, "BadRequestError", msg + "Please request fewer output tokens.", key)
        if prompt > c.max_model_len:
            msg = (
                f"This model's maximum context length is {c.max_model_len} tokens. However, your prompt contains "
                f"{prompt} input tokens, which exceeds this limit even without any output tokens. "
                "Please reduce the length of the input prompt."
            )
            raise ApiError(400, "BadRequestError", msg, "input_tokens")
        room = c.max_model_len - prompt
        limit = room if max_tokens is None else min(max_tokens, room)
        reply = c.replies_by_model.get(model, c.reply)
        scripted = split_tokens(reply) if reply is not None else None
        # tokens=None: a model that never says it is done, so max_tokens (or the context) ends it
        natural = len(scripted) if scripted is not None else (limit + 1 if c.tokens is None else c.tokens)
        n = min(natural, limit)
        pieces = scripted[:n] if scripted is not None else generate(seed, n, estimate.chinese)
        options = body.get("stream_options")
        stream = body.get("stream") is True
        return Plan(
            id=f"chatcmpl-{os.urandom(16).hex()}",
            model=model,
            pieces=pieces,
            finish="length" if natural > limit else "stop",
            prompt=prompt,
            stream=stream,
            usage_chunk=stream and isinstance(options, dict) and options.get("include_usage") is True,
            delays=self._delays(seed, n, drip),
        )

    def _delays(self, seed: int, n: int, drip: bool) -> list[float]:
        c = self.config
        step = c.drip_ms if drip else c.itl_ms
        delays = [(c.ttft_ms + step if drip else c.ttft_ms) / 1000] + [step / 1000] * max(0, n - 1)
        if c.jitter and any(delays):
            rng = random.Random(seed)
            delays = [d * (1 + c.jitter * (2 * rng.random() - 1)) for d in delays]
        return delays

    @asynccontextmanager
    async def generating(self, plan: Plan) -> AsyncIterator[Progress]:
        """Holds a slot while generating and keeps vLLM's gauges and counters."""
        started = time.perf_counter()
        slots = self.slots
        if slots is not None:
            self.waiting += 1
            try:
                await slots.acquire()
            finally:
                self.waiting -= 1
        kv = plan.prompt + len(plan.pieces)
        self.running += 1
        self.kv_tokens += kv
        self.metrics.prompt_tokens += plan.prompt
        progress = Progress()
        try:
            yield progress
        finally:
            self.running -= 1
            self.kv_tokens -= kv
            if slots is not None:
                slots.release()
            reason = plan.finish if progress.done else "abort"
            self.metrics.finished(progress.sent, reason, time.perf_counter() - started)

    def render_metrics(self) -> bytes:
        usage = min(1.0, self.kv_tokens / self.config.kv_cache_tokens)
        return self.metrics.render(self.running, self.waiting, usage)
