"""EventStream, the response of a streamed description: what it does when the caller leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from gateway.api.sse import EventStream


class Events:
    """An endless event source that records how it ended."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(0.01)
                self.sent += 1
                yield b"data: x\n\n"
        finally:
            self.closed = True


def _scope(spec: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": spec}}


async def test_a_caller_gone_under_asgi_2_3_ends_the_stream_and_closes_its_source() -> None:
    events, gone = Events(), asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 4:  # the head and three events, then the caller leaves
            gone.set()

    await asyncio.wait_for(EventStream(events())(_scope("2.3"), receive, send), 5)  # returns, quietly
    assert events.closed and 3 <= events.sent <= 4
    assert sent[0]["type"] == "http.response.start"
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")


async def test_under_asgi_2_4_a_failed_send_is_a_client_disconnect() -> None:
    events = Events()

    async def receive() -> dict[str, Any]:
        raise AssertionError("not asked under 2.4")

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            raise OSError("the caller is gone")

    with pytest.raises(ClientDisconnect):
        await asyncio.wait_for(EventStream(events())(_scope("2.4"), receive, send), 5)
    assert events.closed


async def test_a_stream_cancelled_from_outside_stays_cancelled() -> None:
    # a shutdown cancelling the request is not a caller leaving: the cancellation goes on up
    events = Events()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    task = asyncio.ensure_future(EventStream(events())(_scope("2.3"), receive, send))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events.closed


async def test_a_finished_stream_leaves_no_watcher_behind() -> None:
    async def three() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"data: x\n\n"

    ended = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await ended.wait()  # as uvicorn: the end of the response wakes a pending receive
        return {"type": "http.disconnect"}

    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        bodies.append(message.get("body", b""))
        if message["type"] == "http.response.body" and not message.get("more_body"):
            ended.set()

    before = len(asyncio.all_tasks())
    await EventStream(three())(_scope("2.3"), receive, send)
    await asyncio.sleep(0)
    assert bodies[1:] == [b"data: x\n\n"] * 3 + [b""]
    assert len(asyncio.all_tasks()) == before
    await asyncio.sleep(0.01)  # nothing cancels this task later
