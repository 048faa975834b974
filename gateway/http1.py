"""A lean HTTP/1.1 client for one origin (the model server): ``asyncio.Protocol`` and httptools' parser.

Why not aiohttp or httpx: on the gateway's hot path every microsecond of client work is added latency,
and a general client does much that one origin never needs (cookies, redirects, proxies, automatic
headers, layers of stream readers). Here a request is one ``transport.writelines`` of the head and the
body, one future awaited for the response head (with one timer for its timeout), and a bytearray the
body lands in: no task and no thread per request (a host name, not an IP address, is resolved in the
loop's resolver thread at most every five minutes).

- ``Client(url)``: a pool of keep-alive connections to the URL's origin. The warmest idle connection is
  taken first (LIFO); at most ``max_connections`` are open, callers beyond wait in FIFO order (a
  cancelled waiter hands on whatever it was given). An idle connection is closed after ``keepalive_s``
  (checked when taken, and by one timer while any are idle); one the server closed while idle is
  dropped at once (``connection_lost``) and never handed out.
- ``Response``: ``status``, ``headers`` (lower-case names), ``await read()``, ``await readline()`` (for
  SSE; ``b""`` at the end), ``release()`` (back to the pool if the body has fully arrived, else closed),
  ``close()`` (always closed: how an abandoned stream tells the server to stop). Bodies framed by
  content-length, chunked (httptools decodes it) or the end of the connection. Reading pauses while more
  than ``high_water`` bytes wait unread.
- Errors: ``HTTPError`` and below. ``ConnectError`` means the request was not answered (no connection, or
  a kept-alive one the server had closed before any byte of the response: ``StaleConnection``) and may be
  sent again; the others come after the request went out.

Not here, as the model server needs none of it: chunked uploads, HEAD (its response would be read as
having the body its content-length names), pipelining, and backpressure on writes (a request body is
handed to the transport whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl as _ssl
from collections import deque
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Client",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionBroken",
    "FirstByteTimeout",
    "HTTPError",
    "LineTooLong",
    "MalformedResponse",
    "ReadTimeout",
    "Response",
    "StaleConnection",
]


class HTTPError(Exception):
    """Everything this client raises (besides a caller's cancellation)."""


class ConnectError(HTTPError):
    """The request was not answered: no connection could be made (refused, DNS, TLS), or the kept-alive
    connection it went out on was closed by the server before any byte of a response. Safe to send again."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No connection within the connect timeout."""


class StaleConnection(ConnectError):
    """A kept-alive connection the server had closed (the request met its close): nothing was answered."""


class FirstByteTimeout(HTTPError, TimeoutError):
    """The response's status line and headers did not arrive in time."""


class ReadTimeout(HTTPError, TimeoutError):
    """Nothing more of the body arrived within the read timeout."""


class ConnectionBroken(HTTPError):
    """The connection was lost after the request went out: before the response head
    (``before_head``) or in the middle of its body."""

    def __init__(self, message: str, *, before_head: bool = False) -> None:
        super().__init__(message)
        self.before_head = before_head


class MalformedResponse(HTTPError):
    """The server's bytes are not HTTP/1.1 (httptools' ``HttpParserError``)."""


class LineTooLong(MalformedResponse, ValueError):
    """``readline()`` found no line end within its limit."""


_DEFAULT: Final[Any] = object()  # "the client's setting" (None means no limit)
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_DNS_TTL_S: Final = 300.0


class _Conn(asyncio.Protocol):
    """One connection and the state of the response in flight on it (a connection carries one at a time)."""

    __slots__ = (
        "_buf",
        "_complete",
        "_exc",
        "_got_bytes",
        "_head_done",
        "_headers",
        "_informational",
        "_keep_alive",
        "_paused",
        "_reused",
        "_scan",
        "_waiter",
        "active",
        "closed",
        "idle_since",
        "loop",
        "parser",
        "pool",
        "status",
        "transport",
    )

    def __init__(self, pool: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.active = False  # a request is out on it, its response not yet released
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._exc: HTTPError | None = None
        self.status = 0
        self._head_done = self._complete = self._paused = self._got_bytes = False
        self._informational = self._reused = self._keep_alive = False
        self._scan = 0

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self._complete:
            # bytes nobody asked for (or after the response): the connection is no longer in step
            self.close()
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(MalformedResponse(f"malformed response from the server ({e})"))
            self.close()
            self._wake()
            return
        if self._head_done or self._exc is not None:
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # let the transport close: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._gone(self)
        if self.active and not self._complete and self._exc is None:
            if self._head_done and exc is None and self._until_close():
                self._complete = True  # the end of a body framed by the end of the connection (not kept alive)
            elif not self._got_bytes and self._reused:
                self._exc = StaleConnection("the server had closed the kept-alive connection")
            elif not self._head_done:
                why = f" ({exc!r})" if exc else ""
                self._exc = ConnectionBroken(
                    f"the server closed the connection before answering{why}", before_head=True
                )
            else:
                why = f" ({exc!r})" if exc else ""
                self._exc = ConnectionBroken(f"the connection broke in the middle of the response body{why}")
        self._wake()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request: the parser stops, the connection closes
            raise MalformedResponse("more than one response to a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 103 Early Hints and the like: the real head comes next
            self._headers = []
            return
        self.status = status
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        buf = self._buf
        buf += body
        if not self._paused and len(buf) > self.pool.high_water:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is over
        self._complete = True

    # --- the client's side ---

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: HTTPError) -> None:
        if self._exc is None and not self._complete:
            self._exc = exc

    def _until_close(self) -> bool:
        for name, _ in self._headers:
            n = name.lower()
            if n == b"content-length" or n == b"transfer-encoding":
                return False
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._gone(self)
            with contextlib.suppress(RuntimeError):  # its loop is gone (a pool outliving it): nothing to close
                self.transport.close()

    def reusable(self) -> bool:
        return (
            self._complete
            and self._exc is None
            and not self.closed
            and self._keep_alive
            and not self.transport.is_closing()
        )

    async def send(
        self, head: bytes, body: bytes, reused: bool, first_byte: float | None, read_timeout: float | None
    ) -> Response:
        self.active = True
        self._reused = reused
        self._head_done = self._complete = self._got_bytes = self._informational = self._keep_alive = False
        self.status = 0
        self._exc = None
        self._headers = []
        try:
            self.transport.writelines((head, body) if body else (head,))
        except (RuntimeError, OSError) as e:  # the transport closed under it (uvloop raises, asyncio does not)
            self.close()
            if reused:
                raise StaleConnection(f"the kept-alive connection was closed ({e!r})") from e
            raise ConnectionBroken(
                f"the connection closed before the request went out ({e!r})", before_head=True
            ) from e
        loop = self.loop
        fut = self._waiter = loop.create_future()
        timer = None if first_byte is None else loop.call_later(first_byte, self._head_timeout, fut, first_byte)
        try:
            await fut
        except BaseException:
            self.close()  # cancelled or timed out waiting: the server must not keep working on it
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if not self._head_done:
            exc = self._exc or ConnectionBroken("the connection closed before the response", before_head=True)
            self.close()
            raise exc
        return Response(self, read_timeout)

    def _head_timeout(self, fut: asyncio.Future[None], seconds: float) -> None:
        if not fut.done():
            fut.set_exception(FirstByteTimeout(f"no response head within {seconds:g} s"))

    def _read_timeout(self, fut: asyncio.Future[None], seconds: float) -> None:
        if not fut.done():
            fut.set_exception(ReadTimeout(f"nothing of the body for {seconds:g} s"))

    async def wait(self, timeout: float | None) -> None:
        """Until more of the body, its end, or an error; ReadTimeout after ``timeout`` seconds of silence."""
        loop = self.loop
        fut = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._read_timeout, fut, timeout)
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def drained(self) -> None:
        if self._paused and len(self._buf) <= self.pool.low_water:
            self.resume()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if not self.closed:
                self.transport.resume_reading()


class Response:
    """A response whose head has arrived; its body is read with ``read()`` or line by line with
    ``readline()``. End it with ``release()`` or ``close()`` (or ``async with``): a response neither
    released nor closed keeps its connection, and its slot of the pool, for good."""

    __slots__ = ("_conn", "_content", "_raw", "_read_timeout", "status")

    def __init__(self, conn: _Conn, read_timeout: float | None) -> None:
        self._conn: _Conn | None = conn
        self.status: int = conn.status
        self._raw = conn._headers
        self._read_timeout = read_timeout
        self._content: bytes | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; a repeated header's values joined with ", "."""
        out: dict[str, str] = {}
        for name, value in self._raw:
            n, v = name.decode("latin-1").lower(), value.decode("latin-1")
            out[n] = f"{out[n]}, {v}" if n in out else v
        return out

    async def read(self) -> bytes:
        """The whole body (the same bytes again on a later call)."""
        if self._content is not None:
            return self._content
        conn = self._conn
        if conn is None:
            raise HTTPError("the response was released before its body was read")
        buf = conn._buf
        if conn._complete:  # the common case: it all came with the head
            data = bytes(buf)
            buf.clear()
        else:
            parts: list[bytes] = []
            while True:
                if buf:
                    parts.append(bytes(buf))
                    buf.clear()
                    conn.drained()
                if conn._complete:
                    break
                if conn._exc is not None:
                    raise conn._exc
                await conn.wait(self._read_timeout)
            data = b"".join(parts)
        self._content = data
        return data

    async def readline(self, limit: int = 1 << 20) -> bytes:
        """The next line with its ``\\n``; the rest of the body if it ends without one; ``b""`` at the end.
        LineTooLong (a ValueError) past ``limit`` bytes without a line end."""
        conn = self._conn
        if conn is None:
            return b""
        buf = conn._buf
        while True:
            i = buf.find(b"\n", conn._scan)
            if i >= 0:
                if i >= limit:
                    raise LineTooLong(f"a line longer than {limit} bytes")
                line = bytes(buf[: i + 1])
                del buf[: i + 1]
                conn._scan = 0
                if conn._paused:
                    conn.drained()
                return line
            if len(buf) > limit:
                raise LineTooLong(f"a line longer than {limit} bytes")
            conn._scan = len(buf)
            if conn._complete:
                line = bytes(buf)
                buf.clear()
                conn._scan = 0
                return line
            if conn._exc is not None:
                raise conn._exc
            conn.resume()  # the line needs more bytes than the high-water mark: read on regardless
            await conn.wait(self._read_timeout)

    def release(self) -> None:
        """Back to the pool if the whole body has arrived on a keep-alive connection; otherwise closed."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.pool._put(conn)

    def close(self) -> None:
        """Closes the connection, whatever its state."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, et: object, exc: object, tb: object) -> None:
        if exc is None:
            self.release()
        else:
            self.close()


class Client:
    """A pool of HTTP/1.1 connections to the origin of ``url``; ``url``'s path prefixes every request's.

    Timeouts in seconds, None for no limit: ``connect_timeout`` to open a connection (TCP and TLS),
    ``first_byte_timeout`` until a response's head, ``read_timeout`` for each wait on more of its body.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 100,
        connect_timeout: float | None = 5.0,
        first_byte_timeout: float | None = None,
        read_timeout: float | None = None,
        keepalive_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        ssl_context: _ssl.SSLContext | None = None,
        high_water: int = 1 << 20,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        default_port = 443 if self.tls else 80
        self.port = parts.port or default_port
        self.prefix = parts.path.rstrip("/")
        self._prefix = self.prefix.encode()
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.read_timeout = read_timeout
        self.keepalive_s = keepalive_s
        self.high_water = high_water
        self.low_water = high_water // 4
        self._ssl: _ssl.SSLContext | None = (ssl_context or _ssl.create_default_context()) if self.tls else None
        try:
            ipaddress.ip_address(self.host)
            self._numeric = True
        except ValueError:
            self._numeric = False
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == default_port else f"{host}:{self.port}"
        lines = [f"host: {authority}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._fixed = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: deque[_Conn] = deque()  # oldest on the left, warmest on the right
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._conns: set[_Conn] = set()
        self._slots = 0  # connections open or opening, and slots handed to waiters
        self._sweeper: asyncio.TimerHandle | None = None
        self._addrs: list[tuple[int, str, int]] = []
        self._starts: dict[tuple[str, str], bytes] = {}
        self._addrs_until = 0.0

    # --- requests ---

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        first_byte_timeout: float | None = _DEFAULT,
        read_timeout: float | None = _DEFAULT,
    ) -> Response:
        """Sends ``method`` ``prefix + path`` with ``body`` (its content-length) and returns the response
        once its head has arrived. A GET met by a stale kept-alive connection is sent once more."""
        head = self._starts.get((method, path)) or self._start(method, path)
        if headers:
            head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        again = method in _IDEMPOTENT
        head = head + b"\r\n" if not body and again else b"%scontent-length: %d\r\n\r\n" % (head, len(body))
        first_byte = self.first_byte_timeout if first_byte_timeout is _DEFAULT else first_byte_timeout
        read = self.read_timeout if read_timeout is _DEFAULT else read_timeout
        while True:
            conn = self._take_idle() if self._idle else None  # the common case, without a coroutine
            if conn is not None:
                reused = True
            else:
                conn, reused = await self._acquire()
            try:
                return await conn.send(head, body, reused, first_byte, read)
            except StaleConnection:
                if not again:
                    raise
                again = False

    def _start(self, method: str, path: str) -> bytes:
        """The request line and the fixed headers, kept for the next request to the same path."""
        start = b"%s %s%s HTTP/1.1\r\n%s" % (method.encode(), self._prefix, path.encode(), self._fixed)
        if len(self._starts) >= 64:
            self._starts.clear()
        self._starts[(method, path)] = start
        return start

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: bytes, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    # --- the pool ---

    def _take_idle(self) -> _Conn | None:
        """The warmest idle connection still good; the ones past their keep-alive are closed on the way."""
        loop = asyncio.get_running_loop()
        idle = self._idle
        now = loop.time()
        while idle:
            conn = idle.pop()
            if (
                not conn.closed
                and now - conn.idle_since < self.keepalive_s
                and conn.loop is loop
                and not conn.transport.is_closing()
            ):
                conn.active = True
                return conn
            conn.close()
        return None

    async def _acquire(self) -> tuple[_Conn, bool]:
        loop = asyncio.get_running_loop()
        while True:
            if self._idle and (conn := self._take_idle()) is not None:
                return conn, True
            if self._slots < self.max_connections:
                self._slots += 1
                return await self._open(loop), False
            fut: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(fut)
            try:
                got = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # handed something as the cancellation came: pass it on
                    given = fut.result()
                    if given is None:
                        self._free_slot()
                    else:
                        self._put(given)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                raise
            if got is None:  # a slot: open a connection on it
                return await self._open(loop), False
            if not got.closed and not got.transport.is_closing():
                return got, True
            got.close()
            # closed between the handing and now: its slot went on already; queue again

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        """A new connection on a slot already counted; the slot is freed if it fails."""
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    conn = await self._connect(loop)
                if conn.closed:  # the server hung up (or spoke first) before this task resumed
                    raise ConnectionResetError("the connection closed as it opened")
            except TimeoutError as e:
                raise ConnectTimeout(f"no connection to {self.host}:{self.port} within {self.connect_timeout} s") from e
            except OSError as e:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
                raise ConnectError(f"cannot connect to {self.host}:{self.port} ({e!r})") from e
        except BaseException:
            self._free_slot()
            raise
        conn.active = True
        self._conns.add(conn)
        return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        def factory() -> _Conn:
            return _Conn(self, loop)

        ctx, name = self._ssl, (self.host if self._ssl is not None else None)
        if self._numeric:
            _, conn = await loop.create_connection(factory, self.host, self.port, ssl=ctx, server_hostname=name)
            return conn
        if not self._addrs or loop.time() > self._addrs_until:  # a resolver thread only every few minutes
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addrs = [(family, str(addr[0]), int(addr[1])) for family, _, _, _, addr in infos]
            self._addrs_until = loop.time() + _DNS_TTL_S
        error: OSError = OSError(f"{self.host} resolved to no address")
        for family, ip, port in list(self._addrs):
            try:
                _, conn = await loop.create_connection(factory, ip, port, family=family, ssl=ctx, server_hostname=name)
            except OSError as e:
                error = e
                continue
            return conn
        self._addrs = []  # resolve again next time
        raise error

    def _put(self, conn: _Conn) -> None:
        """A response is done with ``conn``: to the first waiter, to the idle stack, or closed."""
        conn.active = False
        if not conn.reusable():
            conn.close()
            return
        if conn._buf:  # released with its body arrived but not read: the connection is still in step
            conn._buf.clear()
            conn._scan = 0
        conn.resume()
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                conn.active = True
                w.set_result(conn)
                return
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.keepalive_s, self._sweep)

    def _gone(self, conn: _Conn) -> None:
        """``conn`` closed (by us or the server): its slot is free. Called once per connection."""
        if conn in self._conns:
            self._conns.discard(conn)
            if not conn.active:
                with contextlib.suppress(ValueError):
                    self._idle.remove(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)  # the slot passes to it
                return
        self._slots -= 1

    def _sweep(self) -> None:
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        now = loop.time()
        while idle and now - idle[0].idle_since >= self.keepalive_s:
            idle.popleft().close()
        if idle:
            self._sweeper = loop.call_at(idle[0].idle_since + self.keepalive_s, self._sweep)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def aclose(self) -> None:
        """Closes every connection, in use or idle; waiting callers get a ConnectError. The client may be
        used again afterwards (it opens new connections)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        waiters, self._waiters = self._waiters, deque()
        for w in waiters:
            if not w.done():
                w.set_exception(ConnectError("the client was closed"))
        self._idle.clear()
        for conn in list(self._conns):
            conn.close()
        await asyncio.sleep(0)  # let the transports report connection_lost
