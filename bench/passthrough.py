"""The floor of bench_gateway: a Python proxy that does nothing but forward the bytes.

A server and an HTTP client: it reads the body, posts it unchanged to the upstream and returns the
answer (streams pass through as they come). No parsing, no image, no checks. With ``--client
aiohttp`` (one aiohttp session, on uvicorn with uvloop and httptools) it is what a plain Python ASGI
proxy pays on this machine; with ``--client huayu`` (huayu's own HTTP/1.1 pool, ``gateway.http1``,
on huayu's own server, ``gateway.server``) it is the floor of huayu's own stack, under which huayu's
work per request is the rest.

    python -m bench.passthrough --port 8090 --upstream http://127.0.0.1:8000/v1 [--client huayu]
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send

from gateway import http1, server


class Passthrough:
    def __init__(self, upstream: str, client: str = "aiohttp") -> None:
        self.upstream = upstream.rstrip("/")
        self.client = client
        self.session: aiohttp.ClientSession | None = None
        self.pool: http1.Client | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == "/health":
            await _answer(send, 200, b"ok", b"text/plain")
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"].removeprefix("/v1")
        if self.pool is not None:
            await self._forward_http1(self.pool, path, b"".join(chunks), send)
            return
        assert self.session is not None
        headers = {"content-type": "application/json"}
        async with self.session.post(self.upstream + path, data=b"".join(chunks), headers=headers) as r:
            kind = r.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", kind)]})
            async for data in r.content.iter_any():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _forward_http1(pool: http1.Client, path: str, body: bytes, send: Send) -> None:
        async with await pool.post(path, body, headers={"content-type": "application/json"}) as r:
            kind = r.headers.get("content-type", "application/json")
            await send(
                {"type": "http.response.start", "status": r.status, "headers": [(b"content-type", kind.encode())]}
            )
            if not kind.startswith("text/event-stream"):
                await send({"type": "http.response.body", "body": await r.read()})
                return
            while line := await r.readline():  # an event's lines as they come
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.client == "huayu":
                    self.pool = http1.Client(self.upstream)
                else:
                    self.session = aiohttp.ClientSession()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                if self.pool is not None:
                    await self.pool.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Send, status: int, body: bytes, kind: bytes) -> None:
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="the upstream's OpenAI base URL, …/v1")
    ap.add_argument("--client", choices=["aiohttp", "huayu"], default="aiohttp")
    args = ap.parse_args(argv)
    app = Passthrough(args.upstream, args.client)
    if args.client == "huayu":
        server.run(app, "127.0.0.1", args.port)
    else:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
