"""huayu's HTTP/1.1 server (``gateway.server``) on loopback, spoken to with raw sockets and httpx.

The whole gateway suite runs on it too (``tests.servers.serve``); these are the protocol's own cases.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import uvloop

from gateway.server import HIGH_WATER, Server
from tests.servers import free_port, running, until_closed

Scope = dict[str, Any]


class App:
    """A small ASGI app whose paths do what the tests need; it records what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.disconnects = 0
        self.lifespan: list[str] = []
        self.fail_startup = False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": "no database"})
                        return
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        self.seen.append(path)
        if path.startswith(("/echo", "/late-echo")):
            if path.startswith("/late-echo"):
                await asyncio.sleep(2.5)  # busy elsewhere: the body waits, reading paused past HIGH_WATER
            body, parts = b"", 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.disconnects += 1
                    return
                body += message.get("body", b"")
                parts += 1
                if not message.get("more_body"):
                    break
            text = b"%d bytes in %d parts, %s %s" % (len(body), parts, scope["method"].encode(), scope["raw_path"])
            await _answer(send, 200, text)
        elif path == "/last":  # the app closes the connection itself
            headers = [(b"connection", b"close"), (b"content-length", b"4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"last"})
        elif path == "/refuse":  # answers without reading the body
            await _answer(send, 413, b"too large")
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for i in range(3):
                await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/hold":  # streams one part, then waits for the caller to leave
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnects += 1
        elif path == "/two-listeners":  # two tasks wait on receive() at once: both hear the disconnect
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await receive()  # the (empty) body
            heard = await asyncio.gather(receive(), receive())
            self.disconnects += [m["type"] for m in heard].count("http.disconnect")
        elif path == "/slow":
            await asyncio.sleep(0.5)
            await _answer(send, 200, b"slow done")
        elif path == "/boom":
            raise RuntimeError("boom")
        elif path == "/boom-after":  # as Starlette does: its error handler answers, then it re-raises
            await _answer(send, 500, b"handled")
            raise RuntimeError("boom, answered already")
        elif path == "/boom-late":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
            raise RuntimeError("boom after the head")
        else:
            await _answer(send, 200, b"hello " + path.encode())


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _conn(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _read_until(s: socket.socket, marker: bytes, have: bytes = b"") -> bytes:
    data = have
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _responses(s: socket.socket, count: int) -> list[bytes]:
    """``count`` responses with content-length bodies, read off ``s``."""
    data, out = b"", list[bytes]()
    while len(out) < count:
        data = _read_until(s, b"\r\n\r\n", data)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(v) for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k == b"content-length")
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, "closed mid-body"
            rest += chunk
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out


@pytest.fixture
def app() -> App:
    return App()


def test_keep_alive_and_pipelined_requests_are_answered_in_order(app: App) -> None:
    with running(app) as server, _conn(server.port) as s:
        s.sendall(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        [one] = _responses(s, 1)
        assert one.startswith(b"HTTP/1.1 200 OK\r\n") and one.endswith(b"hello /one")
        assert b"\r\ndate: " in one
        # three at once, the middle one slow: the answers keep the order of the requests
        s.sendall(
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        bodies = [r.split(b"\r\n\r\n", 1)[1] for r in _responses(s, 3)]
        assert bodies == [b"hello /a", b"slow done", b"hello /b"]
        s.sendall(b"GET /last HTTP/1.1\r\nhost: x\r\n\r\n")
        last = _read_until(s, b"never")  # read to the end: the app asked for the close
        assert last.endswith(b"\r\n\r\nlast") and last.count(b"connection: close") == 1
    assert app.seen == ["/one", "/a", "/slow", "/b", "/last"]


def test_a_response_head_goes_out_with_its_first_body_bytes(app: App) -> None:
    with running(app) as server, _conn(server.port) as s:
        for _ in range(5):
            s.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
            first = s.recv(65536)  # one write: head and body in the same segment
            assert first.endswith(b"\r\n\r\nhello /x"), first


def test_bodies_chunked_large_and_percent_encoded_paths(app: App) -> None:
    with running(app) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        chunked = client.post("/echo", content=iter([b"ab", b"cde", b"f" * 1000]))
        assert chunked.text.startswith("1005 bytes in")
        size = 3 * HIGH_WATER + 12345  # reading pauses and resumes while the app takes it
        big = client.post("/echo", content=b"z" * size)
        assert big.text.startswith(f"{size} bytes in ")
        assert client.post("/echo%20here?q=1", content=b"").text == "0 bytes in 1 parts, POST /echo%20here"
    assert "/echo here" in app.seen


def test_expect_100_continue_is_answered_when_the_app_reads(app: App) -> None:
    with running(app) as server, _conn(server.port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        interim = _read_until(s, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        [answer] = _responses(s, 1)
        assert answer.endswith(b"5 bytes in 1 parts, POST /echo")


def test_streamed_responses_are_chunked(app: App) -> None:
    with running(app) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        with client.stream("GET", "/stream") as r:
            assert r.headers["transfer-encoding"] == "chunked"
            assert list(r.iter_lines()) == ["part 0", "part 1", "part 2"]
        head = client.head("/x")
        assert head.status_code == 200 and head.headers["content-length"] == "8" and head.content == b""
        assert client.get("/after").text == "hello /after"  # the connection is still in step


def test_malformed_and_oversized_requests_get_an_answer_and_a_close(app: App) -> None:
    with running(app) as server:
        with _conn(server.port) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            answer = _read_until(s, b"never")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in answer
        with _conn(server.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
            answer = _read_until(s, b"never")
            assert answer.startswith(b"HTTP/1.1 431 ") and _error_of(answer)["code"] == "headers_too_large"
        with _conn(server.port) as s:
            # no protocol switch: answered as a plain request, then closed
            s.sendall(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            answer = _read_until(s, b"never")
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"hello /chat")
            assert b"connection: close" in answer
        assert httpx.get(f"http://127.0.0.1:{server.port}/still").text == "hello /still"


def test_app_errors_become_a_500_or_a_cut_response(app: App) -> None:
    with running(app) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        r = client.get("/boom")
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert r.json()["error"]["message"] == "The gateway hit an unexpected error; it has been logged."
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/boom-late")  # 100 bytes promised, none sent: the connection is closed
        assert client.get("/fine").text == "hello /fine"


def test_an_error_raised_after_a_whole_response_keeps_the_connection(app: App) -> None:
    with running(app) as server, _conn(server.port) as s:
        s.sendall(b"GET /boom-after HTTP/1.1\r\nhost: x\r\n\r\nGET /next HTTP/1.1\r\nhost: x\r\n\r\n")
        handled, after = _responses(s, 2)
        assert handled.startswith(b"HTTP/1.1 500 ") and handled.endswith(b"handled")
        assert b"connection: close" not in handled and after.endswith(b"hello /next")


def test_a_response_before_the_body_is_read_leaves_the_connection_usable(app: App) -> None:
    with running(app) as server, _conn(server.port) as s:
        s.sendall(b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n" + b"q" * 200_000)
        [refused] = _responses(s, 1)
        assert refused.startswith(b"HTTP/1.1 413 ")
        s.sendall(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
        [after] = _responses(s, 1)
        assert after.endswith(b"hello /next")


@pytest.mark.parametrize(("path", "listeners"), [("/hold", 1), ("/two-listeners", 2)])
def test_a_caller_gone_mid_response_is_a_disconnect_to_the_app(app: App, path: str, listeners: int) -> None:
    # /two-listeners: two tasks wait on receive() at once, and both must hear it
    with running(app) as server:
        with _conn(server.port) as s:
            s.sendall(b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
            assert b"first" in _read_until(s, b"first")
        deadline = time.monotonic() + 5
        while app.disconnects < listeners:
            assert time.monotonic() < deadline, f"{app.disconnects} of {listeners} receivers heard of the disconnect"
            time.sleep(0.01)


def test_idle_keep_alive_connections_are_closed(app: App) -> None:
    with running(app, keepalive_s=0.2) as server, _conn(server.port) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        _responses(s, 1)
        s.settimeout(5)
        assert s.recv(10) == b""  # closed by the server's sweep
        deadline = time.monotonic() + 5
        while server.connections:  # forgotten once the loop has run connection_lost
            assert time.monotonic() < deadline, "the closed connection is still counted"
            time.sleep(0.01)


def _error_of(answer: bytes) -> dict[str, Any]:
    """The OpenAI-shaped error in a response the server wrote itself."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head
    error: dict[str, Any] = json.loads(body)["error"]
    return error


TIMED_OUT = {"message": "The request did not arrive within 1 s.", "type": "invalid_request_error"}


def test_a_request_head_not_complete_in_time_gets_a_408(app: App) -> None:
    with running(app, read_timeout_s=1.0) as server, _conn(server.port) as s:
        started = time.monotonic()
        s.sendall(b"GET /x HTTP/1.1\r\nhost: x\r\n")
        for _ in range(4):  # trickling keeps bytes coming, but the head is not complete in time
            time.sleep(0.4)
            s.sendall(b"x-slow: 1\r\n")
        answer = until_closed(s)
        assert answer.startswith(b"HTTP/1.1 408 ") and _error_of(answer).items() >= TIMED_OUT.items()
        assert b"connection: close" in answer and time.monotonic() - started < 4
    assert app.seen == []


def test_a_body_that_stops_arriving_gets_a_408_and_the_app_a_disconnect(app: App) -> None:
    with running(app, read_timeout_s=1.0) as server, _conn(server.port) as s:
        started = time.monotonic()
        s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"a" * 10)
        answer = until_closed(s)
        assert answer.startswith(b"HTTP/1.1 408 ") and _error_of(answer).items() >= TIMED_OUT.items()
        assert 1.0 <= time.monotonic() - started < 4
    deadline = time.monotonic() + 5
    while app.disconnects < 1:
        assert time.monotonic() < deadline, "the app did not hear that its request was given up"
        time.sleep(0.01)


def test_a_slow_steady_body_and_a_body_the_app_reads_late_are_not_cut(app: App) -> None:
    with running(app, read_timeout_s=1.0) as server:
        with _conn(server.port) as s:  # each gap under the limit, 2.4 s in all
            s.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 30\r\n\r\n")
            for _ in range(6):
                time.sleep(0.4)
                s.sendall(b"b" * 5)
            [answer] = _responses(s, 1)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"30 bytes in" in answer
        size = 3 * HIGH_WATER  # the app reads it 2.5 s late: meanwhile the server has paused reading
        with _conn(server.port) as s:
            head = b"POST /late-echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size
            sender = threading.Thread(target=s.sendall, args=(head + b"c" * size,))
            sender.start()
            [answer] = _responses(s, 1)
            sender.join(5)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"%d bytes in" % size in answer
    assert app.disconnects == 0


def test_shutdown_lets_requests_in_flight_finish_and_runs_the_lifespan(app: App) -> None:
    got: dict[str, Any] = {}
    with running(app, graceful_s=5) as server:
        assert app.lifespan == ["lifespan.startup"]

        def slow() -> None:
            got["r"] = httpx.get(f"http://127.0.0.1:{server.port}/slow", timeout=10)

        caller = threading.Thread(target=slow)
        caller.start()
        time.sleep(0.2)
        server.stop()
        caller.join(10)
        time.sleep(0.2)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1)
    assert got["r"].status_code == 200 and got["r"].text == "slow done"
    assert got["r"].headers.get("connection") == "close"
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]


def test_a_failed_startup_stops_the_server(app: App) -> None:
    app.fail_startup = True
    server = Server(app, "127.0.0.1", free_port())
    with pytest.raises(RuntimeError, match="no database"):
        uvloop.run(server.serve())
    assert not server.started


async def _no_lifespan(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _answer(send, 200, b"no lifespan here")


def test_an_app_without_a_lifespan_is_served() -> None:
    with running(_no_lifespan) as server:
        assert httpx.get(f"http://127.0.0.1:{server.port}/").text == "no lifespan here"
