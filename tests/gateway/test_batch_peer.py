"""A protocol peer for the batch tests: the gateway's predict route and an OpenAI-compatible chat
route, speaking their real shapes, with scripted delays and failures; plus an image host (plain
URLs and a IIIF Image API). It counts every request per item (image, style, language), so a test
can tell how often the batch tool asked for each.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.protocol import PredictResponse
from tests.media import jpeg
from tests.servers import serve


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Scripted:
    status: int
    message: str
    code: str
    headers: dict[str, str] = field(default_factory=dict)


class Peer:
    def __init__(self, images: dict[str, bytes], delay_s: float = 0.0) -> None:
        self.images = images
        self.names = {digest(data): name for name, data in images.items()}
        self.delay_s = delay_s
        self.script: dict[str, list[Scripted]] = {}  # image name -> answers given before success
        self.cached: set[str] = set()
        self.blocked: set[str] = set()
        self.empty: Counter[str] = Counter()  # image name -> answers with no text given before one with text
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.successes: Counter[tuple[str, str, str]] = Counter()
        self.times: dict[tuple[str, str, str], list[float]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.image_paths: list[str] = []
        self.lock = threading.Lock()

    def total(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    def _count(self, key: tuple[str, str, str], body: dict[str, Any]) -> Scripted | None:
        with self.lock:
            self.requests[key] += 1
            self.times.setdefault(key, []).append(asyncio.get_running_loop().time())
            self.bodies.append(body)
            queue = self.script.get(key[0])
            return queue.pop(0) if queue else None

    async def predict(self, request: Request) -> Response:
        body = await request.json()
        data = base64.b64decode(body["image"])
        name = self.names.get(digest(data))
        if name is None:
            return _error(415, "the image is not one the peer knows", "unsupported_media_type")
        key = (name, body.get("style") or "curator", body.get("language") or "zh")
        scripted = self._count(key, body)
        if scripted is not None:
            return _error(scripted.status, scripted.message, scripted.code, scripted.headers)
        await asyncio.sleep(self.delay_s)
        with self.lock:
            self.successes[key] += 1
        title = (body.get("metadata") or {}).get("title", "")
        blocked = name in self.blocked
        with self.lock:
            empty = self.empty[name] > 0
            self.empty[name] -= empty
        answer: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "description": "" if blocked else " \n" if empty else f"{key[1]}/{key[2]} {name} {title}".strip(),
            "style": key[1],
            "style_version": "v-" + key[1],
            "language": key[2],
            "model": "qwen-vl",
            "adapter": None,
            "cached": name in self.cached,
            "cache": {"kind": "exact", "distance": 0} if name in self.cached else None,
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            "latency_ms": 1.5,
            "finish_reason": "stop",
            "safety": {"action": "block" if blocked else "allow", "categories": [], "terms": []},
        }
        return JSONResponse(answer)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        url = body["messages"][1]["content"][0]["image_url"]["url"]
        name = self.names.get(digest(base64.b64decode(url.split(",", 1)[1])))
        if name is None:
            return _error(400, "unknown image", "invalid_request")
        text = body["messages"][1]["content"][1]["text"]
        language = "en" if "museum" in text else "zh"
        key = (name, "direct", language)
        scripted = self._count(key, body)
        if scripted is not None:
            return _error(scripted.status, scripted.message, scripted.code, scripted.headers)
        await asyncio.sleep(self.delay_s)
        with self.lock:
            self.successes[key] += 1
        return JSONResponse(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex,
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"chat {name}"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
            }
        )

    async def image(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self.lock:
            self.image_paths.append(request.url.path)
        if name not in self.images:
            return Response(b"not here", status_code=404)
        return Response(self.images[name], media_type="image/jpeg")

    async def styles(self, request: Request) -> Response:
        data = [{"name": n, "languages": ["zh", "en"]} for n in ("curator", "kids_guide")]
        return JSONResponse({"object": "list", "default": "curator", "data": data})

    def app(self) -> Starlette:
        ok = JSONResponse({"status": "ok"})
        return Starlette(
            routes=[
                Route("/v1/models/{model}:predict", self.predict, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/styles", self.styles),
                Route("/healthz", lambda r: ok),
                Route("/v1/models", lambda r: JSONResponse({"object": "list", "data": [{"id": "qwen-vl"}]})),
                Route("/images/{name}", self.image),
                Route("/iiif/{name}/full/{size}/0/default.jpg", self.image),
            ]
        )


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def make_images(n: int, prefix: str = "art") -> dict[str, bytes]:
    return {f"{prefix}{i:02d}.jpg": jpeg(64, 48, seed=i) for i in range(n)}


@contextmanager
def running(peer: Peer) -> Iterator[str]:
    with serve(peer.app()) as url:
        yield url


def test_the_peer_speaks_the_predict_protocol() -> None:
    import httpx

    images = make_images(1)
    peer = Peer(images)
    peer.blocked.add("art00.jpg")
    with running(peer) as url:
        body = {"image": base64.b64encode(images["art00.jpg"]).decode(), "style": "curator", "language": "en"}
        answer = httpx.post(f"{url}/v1/models/qwen-vl:predict", json=body).json()
    parsed = PredictResponse.model_validate(answer)
    assert parsed.safety.action == "block"
    assert peer.requests[("art00.jpg", "curator", "en")] == 1
