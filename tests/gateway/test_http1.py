"""gateway/http1.py against real servers on loopback: raw ``asyncio.start_server`` handlers that write
the bytes themselves (so the framing and the faults are the test's), under both asyncio and uvloop."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from prometheus_client import CollectorRegistry

from gateway import http1
from gateway.breaker import FaultMetrics
from gateway.errors import UpstreamError
from gateway.upstream import Upstream
from tests.servers import free_port, gateway_settings

Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=[asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    def runner(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=request.param) as r:
            r.run(asyncio.wait_for(coro, 30))

    return runner


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Origin"], Awaitable[None]]


class Origin:
    """A raw HTTP server on 127.0.0.1: ``handler`` owns each accepted connection. Counts connections."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)
            self._writers.discard(writer)

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
        """The next request on the connection; None when the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.disconnects += 1
            self.disconnected.set()
            return None
        first, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        self.requests.append((first, headers, body))
        return first, headers, body

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.port = port
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for w in list(self._writers):
            w.transport.abort()  # the handlers' reads end; a handler task is never cancelled
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.wait_closed()
        await asyncio.sleep(0.01)


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def answer_when(gate: asyncio.Event) -> Handler:
    """A handler that reads each request, then answers ``ok()`` once ``gate`` is set."""

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            await gate.wait()
            writer.write(ok())

    return held


async def answer_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
    """Keep-alive: answers every request, echoing the request line."""
    while (req := await origin.read_request(reader)) is not None:
        writer.write(ok(req[0] + b"|" + req[2]))
        await writer.drain()


async def drained(predicate: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


# --- keep-alive and the pool ---


def test_fifty_requests_ride_one_kept_alive_connection(run: Run) -> None:
    async def main() -> None:
        async with Origin(answer_all) as origin:
            client = http1.Client(origin.url + "/v1/", headers={"authorization": "Bearer k"})
            for i in range(50):
                r = await client.request("POST", "/chat", b"n%d" % i)
                assert r.status == 200
                assert await r.read() == b"POST /v1/chat HTTP/1.1|n%d" % i
                r.release()
            assert origin.accepted == 1
            _, headers, _ = origin.requests[0]
            assert headers[b"host"] == f"127.0.0.1:{origin.port}".encode()
            assert headers[b"authorization"] == b"Bearer k" and headers[b"content-length"] == b"2"
            r = await client.get("/models")
            assert await r.read() == b"GET /v1/models HTTP/1.1|" and r.headers == {"content-length": "24"}
            r.release()
            assert b"content-length" not in origin.requests[-1][1]  # a GET without a body says nothing of one
            await client.aclose()

    run(main())


class CountingTransport:
    """Stands in front of a connection's transport and counts the calls that send bytes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def writelines(self, data: Any) -> None:
        self.calls.append("writelines")
        self.inner.writelines(data)

    def write(self, data: Any) -> None:
        self.calls.append("write")
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_head_and_body_leave_in_one_writelines(run: Run) -> None:
    async def main() -> None:
        async with Origin(answer_all) as origin:
            client = http1.Client(origin.url)
            r = await client.post("/", b"first")
            r.release()
            (conn,) = client._conns
            counting = conn.transport = CountingTransport(conn.transport)  # type: ignore[assignment]
            body = b"b" * 100_000
            r = await client.post("/", body)
            assert await r.read() == b"POST / HTTP/1.1|" + body
            r.release()
            assert counting.calls == ["writelines"]
            conn.transport = counting.inner
            await client.aclose()

    run(main())


def test_aclose_fails_the_waiters_and_the_client_works_after(run: Run) -> None:
    gate = asyncio.Event()

    async def main() -> None:
        gate.clear()
        async with Origin(answer_when(gate)) as origin:
            client = http1.Client(origin.url, max_connections=1)
            first = asyncio.create_task(client.post("/", b""))
            waiting = asyncio.create_task(client.post("/", b""))
            await asyncio.sleep(0.05)
            await client.aclose()
            with pytest.raises(http1.ConnectError):
                await waiting
            with pytest.raises(http1.ConnectionBroken):
                await first  # its connection was closed under it
            gate.set()
            r = await client.post("/", b"")
            assert await r.read() == b"ok"
            r.release()
            assert client._slots == 1
            await client.aclose()

    run(main())


def test_the_pool_never_opens_more_than_its_limit(run: Run) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(ok())

    async def main() -> None:
        async with Origin(slow) as origin:
            client = http1.Client(origin.url, max_connections=3)

            async def one() -> bytes:
                async with await client.post("/", b"x") as r:
                    return await r.read()

            assert await asyncio.gather(*(one() for _ in range(8))) == [b"ok"] * 8
            assert origin.accepted == 3 and origin.max_open == 3
            assert client.open_connections == 3 and client.idle_connections == 3
            await client.aclose()
            assert client.open_connections == 0

    run(main())


def test_a_cancelled_waiter_leaks_no_slot(run: Run) -> None:
    gate = asyncio.Event()

    async def main() -> None:
        gate.clear()
        async with Origin(answer_when(gate)) as origin:
            client = http1.Client(origin.url, max_connections=1)
            first = asyncio.create_task(client.post("/", b"a"))
            waiting = asyncio.create_task(client.post("/", b"b"))
            await asyncio.sleep(0.05)
            waiting.cancel()  # cancelled while queued for the only slot
            with pytest.raises(asyncio.CancelledError):
                await waiting
            gate.set()
            r = await first
            # cancelled just as the connection is handed to it: the connection goes on to the next one
            handed = asyncio.create_task(client.post("/", b"c"))
            third = asyncio.create_task(client.post("/", b"d"))
            await asyncio.sleep(0.02)
            r.release()  # hands the connection to `handed`...
            handed.cancel()  # ...which is cancelled before it runs
            with pytest.raises(asyncio.CancelledError):
                await handed
            r3 = await third
            assert await r3.read() == b"ok"
            r3.release()
            assert origin.accepted == 1 and client.open_connections == 1
            assert client._slots == 1 and not client._waiters
            await client.aclose()

    run(main())


def test_an_idle_connection_the_server_closed_is_never_handed_out(run: Run) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(ok())  # says keep-alive, then closes it while idle (as uvicorn's 5 s timeout does)
            await writer.drain()

    async def main() -> None:
        async with Origin(once) as origin:
            client = http1.Client(origin.url)
            for _ in range(3):
                r = await client.post("/", b"x")
                assert await r.read() == b"ok"
                r.release()
                await drained(lambda: client.idle_connections == 0)  # connection_lost dropped it
            assert origin.accepted == 3
            await client.aclose()

    run(main())


async def _answer_then_drop_the_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, o: Origin) -> None:
    """Answers the first request; reads the second and closes without a byte (the keep-alive race)."""
    if await o.read_request(reader) is None:
        return
    writer.write(ok(orjson.dumps({"choices": [{"message": {"content": "hi"}}]}), b"content-type: application/json\r\n"))
    await writer.drain()
    await o.read_request(reader)


def test_a_kept_alive_connection_closed_under_a_request_is_stale(run: Run) -> None:
    async def main() -> None:
        async with Origin(_answer_then_drop_the_next) as origin:
            client = http1.Client(origin.url)
            r = await client.post("/", b"x")
            await r.read()
            r.release()
            with pytest.raises(http1.StaleConnection) as e:
                await client.post("/", b"y")  # a POST is not sent again here: the caller decides
            assert isinstance(e.value, http1.ConnectError)
            r = await client.get("/")  # a fresh connection answers
            await r.read()
            r.release()
            r = await client.get("/")  # a GET met by the stale connection goes out once more, on a new one
            assert r.status == 200
            await r.read()
            r.release()
            assert origin.accepted == 3
            await client.aclose()

    run(main())


def test_upstream_retries_a_request_that_met_a_stale_connection(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Origin(_answer_then_drop_the_next) as origin:
            settings = gateway_settings(origin.url, tmp_path, upstream_retries=2, upstream_retry_backoff_s=0.01)
            registry = CollectorRegistry()
            upstream = Upstream(settings, metrics=FaultMetrics(registry))
            for _ in range(2):
                data = await upstream.chat({"model": "m", "messages": []})
                assert data["choices"][0]["message"]["content"] == "hi"
            assert origin.accepted == 2 and len(origin.requests) == 3
            assert origin.requests[0][0] == b"POST /v1/chat/completions HTTP/1.1"
            assert registry.get_sample_value("huayu_upstream_retries_total", {"reason": "connect"}) == 1
            await upstream.aclose()

    run(main())


def test_idle_connections_past_the_keepalive_are_closed(run: Run) -> None:
    async def main() -> None:
        async with Origin(answer_all) as origin:
            client = http1.Client(origin.url, keepalive_s=0.2)
            r = await client.post("/", b"")
            r.release()
            assert client.idle_connections == 1
            await asyncio.wait_for(origin.disconnected.wait(), 2)  # the sweep closed it, unasked
            assert client.idle_connections == 0 and client.open_connections == 0
            r = await client.post("/", b"")
            r.release()
            assert origin.accepted == 2
            await client.aclose()

    run(main())


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_response_that_will_not_keep_alive_is_not_reused(run: Run, head: bytes) -> None:
    async def stays_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(head + b"ok")  # and leaves the socket open: the client must not trust it

    async def main() -> None:
        async with Origin(stays_open) as origin:
            client = http1.Client(origin.url)
            for _ in range(2):
                r = await client.post("/", b"")
                assert await r.read() == b"ok"
                r.release()
            assert origin.accepted == 2 and client.idle_connections == 0
            await client.aclose()

    run(main())


# --- framing ---


def test_a_chunked_body(run: Run) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with Origin(chunked) as origin:
            client = http1.Client(origin.url)
            for _ in range(2):
                r = await client.post("/", b"")
                assert r.headers["transfer-encoding"] == "chunked"
                assert await r.read() == b"hello chunked world"
                assert await r.read() == b"hello chunked world"  # the same bytes again
                r.release()
            assert origin.accepted == 1
            await client.aclose()

    run(main())


def test_a_body_read_until_the_connection_closes(run: Run) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst ")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"second")

    async def main() -> None:
        async with Origin(until_close) as origin:
            client = http1.Client(origin.url)
            for _ in range(2):
                r = await client.post("/", b"")
                assert await r.read() == b"first second"
                r.release()
            assert origin.accepted == 2
            await client.aclose()

    run(main())


def test_informational_responses_are_skipped(run: Run) -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + ok())

    async def main() -> None:
        async with Origin(hints) as origin:
            client = http1.Client(origin.url)
            for _ in range(2):
                r = await client.post("/", b"")
                assert r.status == 200 and "link" not in r.headers
                assert await r.read() == b"ok"
                r.release()
            assert origin.accepted == 1
            await client.aclose()

    run(main())


def test_bytes_past_the_response_close_the_connection(run: Run) -> None:
    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(ok() + ok(b"zz"))  # a second response nobody asked for, in the same segment

    async def main() -> None:
        async with Origin(extra) as origin:
            client = http1.Client(origin.url)
            for _ in range(2):
                r = await client.post("/", b"")
                assert await r.read() == b"ok"
                r.release()
            assert origin.accepted == 2  # out of step: never reused
            await client.aclose()

    run(main())


# --- SSE lines ---

EVENTS = [b'data: {"i": %d, "text": "%s"}\n' % (i, b"x" * (i * 37 % 300)) for i in range(40)]


def test_readline_across_chunks_and_segments(run: Run) -> None:
    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            stream = b"".join(e + b"\n" for e in EVENTS) + b"data: [DONE]\n\n"
            # chunks of odd sizes: lines split across chunks
            for a, b in itertools.pairwise([*range(0, len(stream), 97), len(stream)]):
                piece = stream[a:b]
                frame = b"%x\r\n%s\r\n" % (len(piece), piece)
                # and each chunk's frame across two TCP segments
                writer.write(frame[: len(frame) // 2])
                await writer.drain()
                await asyncio.sleep(0.001)
                writer.write(frame[len(frame) // 2 :])
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with Origin(sse) as origin:
            client = http1.Client(origin.url, high_water=512)  # flow control in play too
            for _ in range(2):
                r = await client.post("/", b"")
                lines = []
                while line := await r.readline():
                    lines.append(line)
                assert lines == [x for e in EVENTS for x in (e, b"\n")] + [b"data: [DONE]\n", b"\n"]
                assert await r.readline() == b""
                r.release()
            assert origin.accepted == 1
            await client.aclose()

    run(main())


def test_a_line_past_the_limit_is_a_value_error(run: Run) -> None:
    async def long_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            body = b"data: short\n" + b"y" * 5000 + b"\n"
            writer.write(ok(body))
            await reader.read()

    async def main() -> None:
        async with Origin(long_line) as origin:
            client = http1.Client(origin.url)
            r = await client.post("/", b"")
            assert await r.readline(limit=1000) == b"data: short\n"
            with pytest.raises(ValueError, match="longer than 1000"):
                await r.readline(limit=1000)
            r.close()
            await client.aclose()

    run(main())


def test_a_line_arriving_slowly_past_the_limit(run: Run) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            for _ in range(50):
                writer.write(b"z" * 100)
                await writer.drain()
                await asyncio.sleep(0.002)
            await reader.read()

    async def main() -> None:
        async with Origin(drip) as origin:
            client = http1.Client(origin.url, high_water=256)  # paused below the limit: read on regardless
            r = await client.post("/", b"")
            with pytest.raises(http1.LineTooLong):
                await r.readline(limit=1500)
            r.close()
            await client.aclose()

    run(main())


# --- faults ---


def test_the_first_byte_timeout(run: Run) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        await origin.read_request(reader)
        await origin.read_request(reader)  # and sees the client leave

    async def main() -> None:
        async with Origin(silent) as origin:
            client = http1.Client(origin.url, first_byte_timeout=10)
            with pytest.raises(http1.FirstByteTimeout) as e:
                await client.post("/", b"x", first_byte_timeout=0.2)
            assert isinstance(e.value, TimeoutError)
            await asyncio.wait_for(origin.disconnected.wait(), 2)  # the connection was closed
            assert client.open_connections == 0
            await client.aclose()

    run(main())


def test_a_reset_mid_body(run: Run) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"data: a\n" + b"b" * 92)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()  # RST

    async def main() -> None:
        async with Origin(reset) as origin:
            client = http1.Client(origin.url)
            r = await client.post("/", b"")
            with pytest.raises(http1.ConnectionBroken) as e:
                await r.read()
            assert not e.value.before_head
            r.release()
            r = await client.post("/", b"")
            assert await r.readline() == b"data: a\n"
            with pytest.raises(http1.ConnectionBroken):
                await r.readline()
            r.close()
            assert origin.accepted == 2 and client.open_connections == 0
            await client.aclose()

    run(main())


def test_a_fresh_connection_closed_before_the_head(run: Run) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        await origin.read_request(reader)

    async def main() -> None:
        async with Origin(hang_up) as origin:
            client = http1.Client(origin.url)
            with pytest.raises(http1.ConnectionBroken) as e:
                await client.post("/", b"")
            assert e.value.before_head and not isinstance(e.value, http1.ConnectError)
            await client.aclose()

    run(main())


@pytest.mark.parametrize(
    "answer", [b"HTTP/1.1 abc OK\r\n\r\n", b"HELLO\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"]
)
def test_a_malformed_response(run: Run, answer: bytes) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(answer)
            await reader.read()

    async def main() -> None:
        async with Origin(garbage) as origin:
            client = http1.Client(origin.url)
            with pytest.raises(http1.MalformedResponse):
                await client.post("/", b"")
            assert client.open_connections == 0
            await client.aclose()

    run(main())


def test_release_before_the_body_arrived_closes(run: Run) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"-whole")

    async def main() -> None:
        async with Origin(half) as origin:
            client = http1.Client(origin.url)
            r = await client.post("/", b"")
            r.release()  # the body is still coming: the connection cannot carry another request
            await asyncio.wait_for(origin.disconnected.wait(), 2)
            r = await client.post("/", b"")
            assert await r.read() == b"half-whole"
            r.release()
            assert origin.accepted == 2 and client.idle_connections == 1
            await client.aclose()

    run(main())


def test_close_mid_stream_is_seen_by_the_server(run: Run) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            sent = asyncio.create_task(origin.read_request(reader))  # returns None when the client leaves
            while not sent.done():
                writer.write(b"8\r\ndata: x\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)

    async def main() -> None:
        async with Origin(endless) as origin:
            client = http1.Client(origin.url)
            r = await client.post("/", b"")
            assert await r.readline() == b"data: x\n"
            r.close()
            await asyncio.wait_for(origin.disconnected.wait(), 2)
            assert client.open_connections == 0
            await client.aclose()

    run(main())


def test_flow_control_pauses_an_unread_body(run: Run) -> None:
    big = bytes(range(256)) * 16384  # 4 MiB

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while await origin.read_request(reader) is not None:
            writer.write(ok(big))
            await writer.drain()

    async def main() -> None:
        async with Origin(large) as origin:
            client = http1.Client(origin.url, high_water=64 * 1024)
            r = await client.post("/", b"")
            await asyncio.sleep(0.2)
            (conn,) = client._conns
            assert conn._paused and len(conn._buf) < 1024 * 1024  # not all 4 MiB sit in the client
            assert await r.read() == big
            r.release()
            r = await client.post("/", b"")
            assert await r.read() == big
            r.release()
            assert origin.accepted == 1
            await client.aclose()

    run(main())


def test_connection_refused(run: Run) -> None:
    async def main() -> None:
        client = http1.Client(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(http1.ConnectError):
            await client.post("/", b"")
        assert client._slots == 0
        await client.aclose()

    run(main())


# --- TLS ---


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certificate)
    return ctx


def test_https(run: Run, certificate: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with Origin(answer_all, tls=_server_tls(certificate)) as origin:
            trust = ssl.create_default_context(cafile=str(certificate[0]))
            # by name: resolved (::1 may come first and be refused: the next address is tried)
            client = http1.Client(f"https://localhost:{origin.port}/api", ssl_context=trust)
            for _ in range(3):
                r = await client.post("/x", b"tls")
                assert await r.read() == b"POST /api/x HTTP/1.1|tls"
                r.release()
            assert origin.accepted == 1
            assert origin.requests[0][1][b"host"] == f"localhost:{origin.port}".encode()
            await client.aclose()

            untrusted = http1.Client(origin.url)  # the system's roots do not know this certificate
            with pytest.raises(http1.ConnectError):
                await untrusted.post("/", b"")
            await untrusted.aclose()

    run(main())


def test_a_handshake_that_never_ends_is_a_connect_timeout(run: Run) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        await reader.read()  # TCP accepted, the TLS handshake never answered

    async def main() -> None:
        async with Origin(mute) as origin:
            client = http1.Client(f"https://127.0.0.1:{origin.port}", connect_timeout=0.2)
            with pytest.raises(http1.ConnectTimeout) as e:
                await client.post("/", b"")
            assert isinstance(e.value, http1.ConnectError) and isinstance(e.value, TimeoutError)
            assert client._slots == 0
            await client.aclose()

    run(main())


# --- through Upstream ---


def test_upstream_maps_a_line_past_the_limit_to_a_malformed_stream(run: Run, tmp_path: Path) -> None:
    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        if await origin.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: " + b"q" * (1 << 21))
            await writer.drain()
            await origin.read_request(reader)

    async def main() -> None:
        async with Origin(huge) as origin:
            upstream = Upstream(gateway_settings(origin.url, tmp_path))
            with pytest.raises(UpstreamError, match="malformed stream"):
                async for _ in upstream.stream({"stream": True}):
                    pass
            await asyncio.wait_for(origin.disconnected.wait(), 2)  # closed: the server may stop
            await upstream.aclose()

    run(main())


def test_upstream_ready_and_models(run: Run, tmp_path: Path) -> None:
    async def meta(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        while (req := await origin.read_request(reader)) is not None:
            if req[0].startswith(b"GET /health "):
                writer.write(ok(b""))
            elif req[0].startswith(b"GET /v1/models "):
                writer.write(ok(orjson.dumps({"data": [{"id": "qwen-vl"}]})))
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    async def main() -> None:
        async with Origin(meta) as origin:
            upstream = Upstream(gateway_settings(origin.url, tmp_path))
            ok_, reason, _ = await upstream.ready()
            assert ok_ and reason == "ok"
            assert await upstream.models() == [{"id": "qwen-vl"}]
            assert origin.accepted == 1
            await upstream.aclose()
            down = Upstream(gateway_settings(f"http://127.0.0.1:{free_port()}", tmp_path))
            ok_, reason, _ = await down.ready()
            assert not ok_ and "unreachable" in reason and "/health" in reason
            await down.aclose()

    run(main())
