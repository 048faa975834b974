"""The floor of bench_gateway: a Python proxy that does nothing but forward the bytes.

uvicorn (uvloop, httptools) and one aiohttp session, as huayu uses them: it reads the body, posts
it unchanged to the upstream and returns the answer (streams pass through chunk by chunk). No
parsing, no image, no checks. What it adds over the straight path is what any Python ASGI proxy
pays on this machine before doing any work of its own.

    python -m bench.passthrough --port 8090 --upstream http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send


class Passthrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

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
        assert self.session is not None
        url = self.upstream + scope["path"].removeprefix("/v1")
        headers = {"content-type": "application/json"}
        async with self.session.post(url, data=b"".join(chunks), headers=headers) as r:
            kind = r.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", kind)]})
            async for data in r.content.iter_any():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
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
    args = ap.parse_args(argv)
    uvicorn.run(Passthrough(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
