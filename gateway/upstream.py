"""The client of the model server: one pool of HTTP/1.1 connections (gateway/http1.py), its errors
mapped to the hierarchy."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway import http1
from gateway.breaker import CircuitBreaker, FaultMetrics
from gateway.config import Settings
from gateway.errors import HuayuError, UpstreamError, UpstreamTimeout, UpstreamUnavailable

# the model server is overloaded or restarting: worth another try, the request never started
_RETRY_STATUS = frozenset({502, 503})


def _upstream_message(status: int, content: bytes) -> str:
    """vLLM answers ``{"error": {"message": ...}}`` (or, older, ``{"message": ...}``)."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content.decode("utf-8", "replace").strip()
        return text[:500] or f"HTTP {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return str(data["detail"])
    return f"HTTP {status}"


def map_status(status: int, content: bytes) -> HuayuError:
    message = _upstream_message(status, content)
    if status in (502, 503):
        return UpstreamUnavailable(f"The model server is unavailable: {message}")
    if status == 504:
        return UpstreamTimeout(f"The model server timed out: {message}")
    if 400 <= status < 500:
        # the model server judged the request itself: pass its status and words through
        kind = "context_length_exceeded" if "context" in message.lower() and "length" in message.lower() else None
        return UpstreamError(message, status=status, code=kind or "upstream_rejected")
    return UpstreamError(f"The model server failed: {message}", status=502)


class Upstream:
    """On the gateway's own HTTP/1.1 client (gateway/http1.py), not aiohttp or httpx: a request is one
    write of its head and body and one awaited future, and a uvicorn pass-through forwarding a 100 KB
    body adds about half the latency with it that it adds with aiohttp. One pool, shared by every
    request; its connections belong to the running loop that opened them."""

    def __init__(self, settings: Settings, *, metrics: FaultMetrics | None = None) -> None:
        self.settings = settings
        self.faults = metrics or FaultMetrics()
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s, metrics=self.faults)
        self.root = settings.upstream_url.rstrip("/")
        headers = {"content-type": "application/json"}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        # the pool is the origin's; the paths carry the base path (the health check is outside the API's)
        url = urlsplit(self.root)
        base = url.path.rstrip("/")
        self._chat = base + "/chat/completions"
        self._models = base + "/models"
        self._health = (base[: -len("/v1")] if base.endswith("/v1") else base) + "/health"
        self._health_url = f"{url.scheme}://{url.netloc}{self._health}"  # for the messages
        self.client = http1.Client(
            f"{url.scheme}://{url.netloc}",
            max_connections=settings.upstream_max_connections,
            connect_timeout=settings.connect_timeout_s,
            # until the response headers; also the most any one wait for more of a body may take (a
            # stream's gaps are bounded by read_timeout_s as well)
            first_byte_timeout=settings.first_byte_timeout_s,
            read_timeout=settings.first_byte_timeout_s,
            # vLLM's server (uvicorn) closes a connection idle for 5 s: one kept longer would meet
            # that close mid-request now and then, a retry and a breaker failure for nothing
            keepalive_s=4.0,
            headers=headers,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _send(self, path: str, body: dict[str, Any], read_timeout: float | None = None) -> http1.Response:
        """The response with its headers read and its body not yet. Failures before the first byte
        (no connection, 502/503) are retried with jittered backoff; nothing after it ever is."""
        content = orjson.dumps(body)
        attempt = 0
        while True:
            self.breaker.before()
            try:
                response = await self._attempt(path, content, read_timeout)
            except asyncio.CancelledError:
                self.breaker.release()
                raise
            except _Retryable as e:
                self.breaker.failure()
                error, reason = e.error, e.reason
            except HuayuError:
                self.breaker.failure()
                raise
            else:
                status = response.status
                if status < 400:
                    self.breaker.success()
                    return response
                error = map_status(status, await _read_error(response))
                if status < 500:
                    self.breaker.success()  # the caller's fault: the server itself is fine
                    raise error
                self.breaker.failure()
                if status not in _RETRY_STATUS:
                    raise error
                reason = str(status)
            if attempt >= self.settings.upstream_retries:
                raise error
            attempt += 1
            self.faults.retries.labels(reason).inc()
            delay = min(2.0, self.settings.upstream_retry_backoff_s * 2 ** (attempt - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # jitter: many callers' retries spread out

    async def _attempt(self, path: str, content: bytes, read_timeout: float | None) -> http1.Response:
        try:
            if read_timeout is None:  # the client's own (the first-byte bound)
                return await self.client.request("POST", path, content)
            return await self.client.request("POST", path, content, read_timeout=read_timeout)
        except http1.ConnectTimeout as e:
            err = UpstreamUnavailable(f"Could not connect to the model server in time ({e!r}).")
            raise _Retryable(err, "connect") from e
        except http1.FirstByteTimeout as e:  # no headers in time
            raise UpstreamTimeout(
                f"The model server did not answer within {self.settings.first_byte_timeout_s:g} s."
            ) from e
        except (http1.ConnectError, http1.ConnectionBroken) as e:
            # refused, reset, or a kept-alive connection the server had closed: the request never ran
            # (a ConnectionBroken here came before any response head)
            err = UpstreamUnavailable(f"The model server is unreachable ({type(e).__name__}).")
            raise _Retryable(err, "connect") from e
        except http1.HTTPError as e:
            raise UpstreamError(f"The model server sent a malformed response ({type(e).__name__}).") from e

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send(self._chat, body)
        try:
            content = await response.read()
        except TimeoutError as e:
            raise UpstreamTimeout(
                f"The model server stopped sending its answer for {self.settings.first_byte_timeout_s:g} s."
            ) from e
        except http1.HTTPError as e:
            raise UpstreamError(f"The connection to the model server broke mid-answer ({type(e).__name__}).") from e
        finally:
            response.release()
        try:
            data: dict[str, Any] = orjson.loads(content)
        except orjson.JSONDecodeError as e:
            raise UpstreamError("The model server sent a response that is not JSON.") from e
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yields the parsed SSE chunks. Raises before the first chunk, or mid-stream as UpstreamError."""
        gap = self.settings.read_timeout_s
        # the client's timeout bounds each wait for more bytes, never the yield: the consumer's time
        # is not the server's silence (and costs nothing when a line is already there)
        response = await self._send(self._chat, body, read_timeout=gap)
        finished = False
        try:
            while True:
                line = await response.readline()
                if not line:
                    break
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    finished = True
                    return
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError as e:
                    raise UpstreamError("The model server sent a malformed stream chunk.") from e
                if "error" in chunk and "choices" not in chunk:
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise UpstreamError(f"The model server failed mid-stream: {msg}")
                yield chunk
            raise UpstreamError("The model server ended the stream before it was complete.")
        except TimeoutError as e:
            raise UpstreamTimeout(f"The model server sent nothing for {gap:g} s in the middle of a stream.") from e
        except ValueError as e:  # a line past the reader's limit (LineTooLong): not an SSE stream we can follow
            raise UpstreamError(f"The model server sent a malformed stream ({e}).") from e
        except http1.HTTPError as e:
            raise UpstreamError(f"The connection to the model server broke mid-stream ({type(e).__name__}).") from e
        finally:
            if finished:
                response.release()
            else:
                response.close()  # stopped early (withheld, caller gone): closing tells vLLM to abort

    async def models(self) -> list[dict[str, Any]]:
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):  # all of it, answer included
                response = await self.client.request("GET", self._models, first_byte_timeout=None, read_timeout=None)
                try:
                    status, content = response.status, await response.read()
                finally:
                    response.release()
        except (http1.HTTPError, TimeoutError) as e:
            raise UpstreamUnavailable(f"The model server is unreachable ({type(e).__name__}).") from e
        if status >= 400:
            raise map_status(status, content)
        data = orjson.loads(content).get("data", [])
        return list(data)

    async def ready(self) -> tuple[bool, str, float]:
        """Whether the model server answers its health check; the reason; the seconds it took."""
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                response = await self.client.request("GET", self._health, first_byte_timeout=None)
                response.release()  # the status is the answer; a body not yet arrived closes the connection
        except (http1.HTTPError, TimeoutError) as e:
            reason = f"model server unreachable at {self._health_url} ({type(e).__name__})"
            return False, reason, time.perf_counter() - t0
        ok = response.status == 200
        reason = "ok" if ok else f"model server health answered HTTP {response.status}"
        return ok, reason, time.perf_counter() - t0


class _Retryable(Exception):
    def __init__(self, error: HuayuError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


async def _read_error(response: http1.Response) -> bytes:
    try:
        return await response.read()
    except (http1.HTTPError, TimeoutError):
        return b""
    finally:
        response.release()
