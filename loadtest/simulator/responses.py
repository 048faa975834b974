"""Answers that drive the ASGI channel themselves: paced generations, dropped connections, hung requests.

They subclass Response only to fit Starlette's routing; each writes its own messages, which is what
lets a stream coalesce chunks due at the same instant, or stop before its end to simulate a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from loadtest.simulator.engine import ApiError, Plan, Progress, Simulator

# uvicorn awaits the app in the request's own task, so a flag set here is still set when it logs
_DROPPING: ContextVar[bool] = ContextVar("simulator_dropping", default=False)


class _QuietIntendedDrops(logging.Filter):
    """uvicorn logs an ERROR for every response left incomplete; for an injected reset that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DROPPING.get() and "without completing response" in record.getMessage())


def quiet_intended_drops() -> None:
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietIntendedDrops) for f in server_log.filters):
        server_log.addFilter(_QuietIntendedDrops())


def _chunk(plan: Plan, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    body = {"id": plan.id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model}
    return b"data: " + orjson.dumps({**body, "choices": [choice]}) + b"\n\n"


def _completion(plan: Plan) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(plan.pieces), "refusal": None, "tool_calls": []}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish, "stop_reason": None}
    return {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [choice],
        "usage": plan.usage(len(plan.pieces)),
        "prompt_logprobs": None,
    }


async def _pause(seconds: float, gone: asyncio.Event) -> bool:
    """Sleeps, ending early when the client has gone; True if it has."""
    if seconds <= 0:
        return gone.is_set()
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _watch(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


class Generation(Response):
    """Sends a plan paced by its delays, stream or not; ``drop_after`` cuts the connection mid-way."""

    def __init__(self, sim: Simulator, plan: Plan, drop_after: int | None = None) -> None:
        self.sim, self.plan, self.drop_after = sim, plan, drop_after
        self.released = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        watchers: list[asyncio.Task[None]] = []
        if any(self.plan.delays):
            # listeners cost tasks: only worth it when there is time for the client to leave, or for a
            # reset or shutdown to cut a long generation short instead of waiting it out
            watchers = [asyncio.create_task(_watch(receive, gone)), asyncio.create_task(self._release(gone))]
        try:
            async with self.sim.generating(self.plan) as progress:
                if self.plan.stream:
                    await self._stream(send, gone, progress)
                else:
                    await self._whole(scope, receive, send, gone, progress)
        finally:
            for task in watchers:
                task.cancel()

    async def _release(self, gone: asyncio.Event) -> None:
        await self.sim.release.wait()
        self.released = True
        gone.set()

    async def _whole(self, scope: Scope, receive: Receive, send: Send, gone: asyncio.Event, progress: Progress) -> None:
        if await _pause(sum(self.plan.delays), gone):
            if self.released:
                msg = "The generation was cut short by a reset or shutdown of the simulator."
                await ApiError(503, "ServiceUnavailableError", msg).response(scope, receive, send)
            return
        self.sim.metrics.ttft.observe(self.plan.delays[0])
        body = orjson.dumps(_completion(self.plan))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.drop_after is not None:
            # returning before the body is complete makes the server close the socket: a reset to the client
            _DROPPING.set(True)
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            return
        progress.sent, progress.done = len(self.plan.pieces), True
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, send: Send, gone: asyncio.Event, progress: Progress) -> None:
        plan = self.plan
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        started = time.perf_counter()
        head = _chunk(plan, {"content": ""})
        cut = head.index(b'""}')
        prefix, suffix = head[:cut], head[cut + 2 :]  # a chunk is prefix + JSON string + suffix: no dict per token
        pending: list[bytes] = []  # chunks due at the same instant leave in one write
        last = len(plan.pieces) - 1
        for i, piece in enumerate(plan.pieces):
            if plan.delays[i] > 0 and pending:
                await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                pending.clear()
            if await _pause(plan.delays[i], gone):
                _DROPPING.set(self.released)  # cut by a reset or shutdown: the client sees a broken stream
                return
            if i == self.drop_after:
                break
            if i == 0:
                self.sim.metrics.ttft.observe(time.perf_counter() - started)
                pending.append(_chunk(plan, {"role": "assistant", "content": ""}))
            if i == last:
                pending.append(_chunk(plan, {"content": piece}, plan.finish))
            else:
                pending += (prefix, orjson.dumps(piece), suffix)
            progress.sent += 1
        if last < 0:  # nothing to say: vLLM still sends the role and the finish reason
            if await _pause(plan.delays[0], gone):
                return
            pending += [_chunk(plan, {"role": "assistant", "content": ""}), _chunk(plan, {"content": ""}, plan.finish)]
        if self.drop_after is not None:
            # headers and a few chunks went out; returning before the end makes the server drop the socket
            _DROPPING.set(True)
            await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
            return
        if plan.usage_chunk:
            usage = {"id": plan.id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model}
            pending.append(b"data: " + orjson.dumps({**usage, "choices": [], "usage": plan.usage(progress.sent)}))
            pending.append(b"\n\n")
        pending.append(b"data: [DONE]\n\n")
        progress.done = True
        await send({"type": "http.response.body", "body": b"".join(pending)})


class Hang(Response):
    """Accepts the request and never answers, until the client leaves or the simulator is reset."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        waits = [asyncio.create_task(_watch(receive, gone)), asyncio.create_task(self.sim.release.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if not gone.is_set():
            msg = "The request was held by the 'hang' fault and released by a reset."
            await ApiError(503, "ServiceUnavailableError", msg).response(scope, receive, send)


def fault_error(fault: str) -> Response:
    if fault == "503":
        msg = "The model server is overloaded (simulated fault 503). Retry later."
        return ApiError(503, "ServiceUnavailableError", msg).response
    return ApiError(500, "InternalServerError", "The engine failed (simulated fault 500).").response


async def read_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "BadRequestError", f"The request body is not valid JSON: {e}.") from e
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequestError", "The request body must be a JSON object.")
    return body
