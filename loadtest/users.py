"""The locust users: visitors, curators and bulk clients, each recording what its requests measured.

Imported only in the load-driving child process: importing locust monkey-patches the standard
library for gevent, which must never happen inside the gateway or the test suite.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import IO, Any

import gevent
import orjson
from locust import HttpUser, task

from loadtest.images import ImagePool
from loadtest.metrics import Sample, StreamReader, huayu_cache
from loadtest.profiles import Profile


@dataclass
class RunState:
    """What every user of the process shares; greenlets take turns, so no lock is needed."""

    profile: Profile
    pool: ImagePool
    out: IO[bytes]
    model: str = "qwen-vl"
    api_key: str = ""
    t0: float = field(default_factory=time.perf_counter)
    step: int = -1
    sent: int = 0
    in_flight: int = 0
    stopping: bool = False

    def headers(self, stream: bool) -> dict[str, str]:
        h = {"content-type": "application/json"}
        if stream:
            h["accept-encoding"] = "identity"  # a compressed stream would arrive in bursts
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        return h

    def may_send(self) -> bool:
        return not self.stopping and self.sent < self.profile.max_requests


STATE: RunState | None = None


def state() -> RunState:
    if STATE is None:
        raise RuntimeError("loadtest.users.STATE must be set before users start")
    return STATE


class _Recording(HttpUser):
    abstract = True
    host = "http://127.0.0.1"  # replaced by the Environment's host

    def on_start(self) -> None:
        # users spawned together would otherwise fire together, every pacing period
        gevent.sleep(random.uniform(0, state().profile.pacing_s))

    def chat(self, kind: str, image: str, style: str) -> None:
        st = state()
        body: dict[str, Any] = {
            "model": st.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + image}}],
                }
            ],
            "style": style,
            "language": st.profile.language,
        }
        if st.profile.max_tokens:
            body["max_tokens"] = st.profile.max_tokens
        self._send(kind, "/v1/chat/completions", body, stream=True)

    def predict(self, kind: str, image: str, style: str) -> None:
        st = state()
        body: dict[str, Any] = {"image": image, "style": style, "language": st.profile.language}
        if st.profile.max_tokens:
            body["max_tokens"] = st.profile.max_tokens
        self._send(kind, f"/v1/models/{st.model}:predict", body, stream=False)

    def _send(self, kind: str, path: str, body: dict[str, Any], stream: bool) -> None:
        st = state()
        if not st.may_send():
            gevent.sleep(0.2)
            return
        st.sent += 1
        st.in_flight += 1
        step = st.step
        sent_at = time.perf_counter()
        sample = Sample(kind=kind, step=step, start_s=round(sent_at - st.t0, 4), e2e_ms=0.0, ok=False, stream=stream)
        try:
            response = self.client.post(
                path,
                data=orjson.dumps(body),
                headers=st.headers(stream),
                stream=stream,
                timeout=(10.0, st.profile.request_timeout_s),
                name=f"{kind} {path}",
            )
            sample.status = response.status_code
            if stream and response.status_code == 200:
                reader = StreamReader(sent_at)
                for data in response.iter_content(chunk_size=None):
                    reader.feed(data, time.perf_counter())
                result = reader.close()
                sample.ttft_ms, sample.itl_ms = result.ttft_ms, [round(g, 3) for g in result.itl_ms]
                sample.output_tokens, sample.error = result.output_tokens, result.error
                sample.cached, sample.cache_kind = result.cached, result.cache_kind
            else:
                content = response.content  # read whole: E2E runs to the last byte
                sample.error = _json_fields(sample, content, response.status_code)
        except Exception as e:  # a failed request is a sample, never the end of the user
            sample.error = f"{type(e).__name__}: {e}"[:200]
        sample.e2e_ms = (time.perf_counter() - sent_at) * 1000
        sample.ok = sample.error is None
        st.in_flight -= 1
        st.out.write(sample.to_json() + b"\n")


def _json_fields(sample: Sample, content: bytes | None, status: int) -> str | None:
    """Fills a non-streamed answer's fields in; returns the error, if it was one."""
    try:
        data = orjson.loads(content or b"")
    except orjson.JSONDecodeError:
        data = None
    if status != 200:
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
        return f"HTTP {status}: {message or (content or b'')[:120]!r}"
    if not isinstance(data, dict):
        return "the answer is not a JSON object"
    usage = data.get("usage") or {}
    sample.output_tokens = usage.get("completion_tokens")
    huayu = data.get("huayu") if "huayu" in data else data  # chat answers nest huayu's fields
    if isinstance(huayu, dict) and "cached" in huayu:
        sample.cached, sample.cache_kind = huayu_cache(huayu)
    return None


class Visitor(_Recording):
    """A museum visitor: one artwork, streamed; mostly new images, some already seen (cache hits)."""

    weight = 6

    @task
    def describe(self) -> None:
        st = state()
        image, _ = st.pool.pick(st.profile.repeat_share)
        self.chat("visitor", image, st.profile.styles[0])


class Curator(_Recording):
    """A curator comparing styles: the same artwork in each style in turn, then the next artwork."""

    weight = 2

    def on_start(self) -> None:
        super().on_start()
        self.queue: list[tuple[str, str]] = []

    @task
    def compare(self) -> None:
        st = state()
        if not self.queue:
            image = st.pool.new()
            self.queue = [(image, style) for style in st.profile.styles]
        image, style = self.queue.pop(0)
        self.chat("curator", image, style)


class Bulk(_Recording):
    """A collection being described: new images through the predict route, answers not streamed."""

    weight = 2

    @task
    def describe(self) -> None:
        st = state()
        self.predict("bulk", st.pool.new(), st.profile.styles[0])


USERS: dict[str, type[_Recording]] = {"visitor": Visitor, "curator": Curator, "bulk": Bulk}
