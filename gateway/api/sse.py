"""The response of a streamed description: server-sent events, ended when the caller leaves.

Starlette's StreamingResponse does the same under a server that speaks ASGI 2.3 (uvicorn): it
watches for the disconnect in an anyio task group, set up for every stream before its first byte
(~50 us here). This one watches in a plain asyncio task that cancels the streaming task when the
caller has gone, so the generator's ``finally`` runs and the model server's stream is closed (vLLM
aborts the generation), as before. Under ASGI 2.4 a send to a gone caller raises instead, and no
watcher is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def _stream(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # ended early in a send (not where the source waits): close the source now, not at its
            # collection, so the model server's stream is closed with it
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        if tuple(int(p) for p in spec.split(".")) >= (2, 4):
            try:
                await self._stream(send)
            except OSError:
                raise ClientDisconnect() from None
            return
        me = asyncio.current_task()
        assert me is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:  # gone before the end: stop the stream where it waits
                state["gone"] = True
                me.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self._stream(send)
        except asyncio.CancelledError:
            if not state["gone"] or me.cancelling() > 1:
                raise  # cancelled from outside too (shutdown): that goes on
            me.uncancel()  # the caller's leaving ends the stream, and this response, quietly
        finally:
            state["done"] = True
            watcher.cancel()
            if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
                raise RuntimeError("the disconnect watcher failed") from watcher.exception()
