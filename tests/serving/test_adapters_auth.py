"""`huayu adapters` against a model server that asks for an API key (the compose stack's vLLM)."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from gateway.errors import UpstreamError
from serving.adapters import list_adapters

KEY = "vllm-key-of-the-stack"


class _KeyedModels(http.server.BaseHTTPRequestHandler):
    """/v1/models behind a bearer key, as vLLM started with VLLM_API_KEY answers it."""

    def do_GET(self) -> None:
        if self.headers.get("authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"message": "Unauthorized"}})
            return
        models = [
            {"id": "qwen-vl", "root": "/m", "parent": None},
            {"id": "gallery", "root": "/adapters/gallery", "parent": "qwen-vl"},
        ]
        self._send(200, {"object": "list", "data": models})

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("variable", ["VLLM_API_KEY", "HUAYU_UPSTREAM_API_KEY"])
def test_the_model_servers_key_is_sent_from_the_environment(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyedModels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for name in ("VLLM_API_KEY", "HUAYU_UPSTREAM_API_KEY"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(UpstreamError, match="HTTP 401"):
            list_adapters(url)
        monkeypatch.setenv(variable, KEY)
        assert list_adapters(url) == [{"name": "gallery", "path": "/adapters/gallery", "base": "qwen-vl"}]
    finally:
        server.shutdown()
        server.server_close()
