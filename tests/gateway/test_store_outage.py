"""The store through a database outage: records wait and are written once it is back.

The outage is a TCP forwarder in front of the real server that the test closes and reopens
(the shared servers themselves are never stopped); for SQLite, another connection holding the
write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from gateway.errors import ServiceUnavailable
from gateway.store import ResultStore, StoreMetrics
from tests.gateway.test_store import create_database, drop_database, drop_everything, flushed, make_record

SERVERS = {"postgresql": 5432, "mariadb": 3306}


class Forwarder:
    """Forwards 127.0.0.1:<port> to a database server until paused; pausing cuts every connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.pipes: set[asyncio.Task[None]] = set()

    async def resume(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def pause(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in self.links:
            w.transport.abort()
        for t in self.pipes:
            t.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        self.links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


@pytest.fixture(scope="session", params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(backend, URL) of a database of its own on a real server."""
    backend: str = request.param
    name = f"huayu_test_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_database(backend, name))
    yield backend, url
    asyncio.run(drop_database(backend, name))


@pytest.fixture
async def forwarder(server: tuple[str, str]) -> AsyncIterator[tuple[Forwarder, str]]:
    """A forwarder to the server and the store URL that goes through it."""
    backend, url = server
    fw = Forwarder(SERVERS[backend])
    await fw.resume()
    yield fw, make_url(url).set(port=fw.port).render_as_string(hide_password=False)
    await fw.pause()
    await drop_everything(url)


def outage_store(url: str, **kwargs: Any) -> ResultStore:
    return ResultStore(
        url,
        metrics=StoreMetrics(),
        connect_timeout_s=2,
        query_timeout_s=5,
        min_backoff_s=0.05,
        max_backoff_s=0.3,
        **kwargs,
    )


async def wait_for_failures(store: ResultStore, n: int) -> None:
    while (store.metrics.registry.get_sample_value("huayu_store_write_failures_total") or 0) < n:
        await asyncio.sleep(0.02)


async def test_outage_keeps_records_and_writes_them_when_back(forwarder: tuple[Forwarder, str]) -> None:
    fw, url = forwarder
    store = outage_store(url)
    await store.start()
    before = make_record(80)
    store.record(before)
    await flushed(store)

    await fw.pause()
    during = [make_record(81 + i) for i in range(3)]
    for r in during:
        store.record(r)  # returns at once, the database being down
    await asyncio.wait_for(wait_for_failures(store, 2), 20)
    assert store.pending() == 3
    assert store.metrics.registry.get_sample_value("huayu_store_pending") == 3
    with pytest.raises(ServiceUnavailable, match="cannot be reached"):
        await store.list_descriptions()
    with pytest.raises(ServiceUnavailable):
        await store.export("csv")
    ok, why = await store.ready()
    assert not ok and why.startswith("results database unreachable")

    await fw.resume()
    await flushed(store, timeout=20)
    listed = await store.list_descriptions(limit=10)
    assert {d["id"] for d in listed["data"]} == {before.id, *(r.id for r in during)}
    assert store.metrics.registry.get_sample_value("huayu_store_written_total") == 4
    assert store.metrics.registry.get_sample_value("huayu_store_dropped_total", {"reason": "queue_full"}) is None
    assert (await store.ready())[0]
    await store.close()


async def test_database_down_at_start_up(forwarder: tuple[Forwarder, str]) -> None:
    fw, url = forwarder
    await fw.pause()
    store = outage_store(url, close_timeout_s=0.5)
    await store.start()  # the gateway starts anyway; the migrations wait for the database
    recs = [make_record(90), make_record(91)]
    for r in recs:
        store.record(r)
    await asyncio.wait_for(wait_for_failures(store, 1), 20)
    with pytest.raises(ServiceUnavailable):
        await store.get_description(recs[0].id)

    await fw.resume()
    await flushed(store, timeout=20)
    assert (await store.get_description(recs[1].id))["text"] == recs[1].text

    # what cannot be written by close() is counted, not silently lost
    await fw.pause()
    store.record(make_record(92))
    await store.close()
    assert store.metrics.registry.get_sample_value("huayu_store_dropped_total", {"reason": "shutdown"}) == 1


async def test_full_queue_is_counted(forwarder: tuple[Forwarder, str]) -> None:
    fw, url = forwarder
    await fw.pause()
    store = outage_store(url, close_timeout_s=0.2, queue_size=2)
    await store.start()
    for i in range(5):
        store.record(make_record(100 + i))
    assert store.pending() == 2
    assert store.metrics.registry.get_sample_value("huayu_store_dropped_total", {"reason": "queue_full"}) == 3
    await store.close()


@pytest.mark.parametrize(
    ("backend", "bad_text"),
    # neither driver can encode a lone surrogate (a NUL, which PostgreSQL refuses, is taken out before:
    # test_store.py::test_texts_no_database_holds_are_kept_out)
    [("postgresql", "bad\ud800text"), ("sqlite", "bad\ud800text")],
)
async def test_a_refused_record_does_not_hold_up_the_others(backend: str, bad_text: str, tmp_path: Path) -> None:
    # a record the database will never take, however often it is sent
    name = f"huayu_test_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'refused.db'}"
    else:
        url = await create_database(backend, name)
    try:
        store = outage_store(url)
        await store.start()
        good, bad = make_record(110), make_record(111, text=bad_text)
        store.record(bad)
        store.record(good)
        await flushed(store)
        assert (await store.get_description(good.id))["text"] == good.text
        assert store.metrics.registry.get_sample_value("huayu_store_dropped_total", {"reason": "rejected"}) == 1
        await store.close()
    finally:
        if backend != "sqlite":
            await drop_database(backend, name)


async def test_sqlite_locked_by_another_writer_keeps_records_until_it_lets_go(tmp_path: Path) -> None:
    # SQLite's outage: another process holds the write lock past the writer's busy timeout
    path = tmp_path / "locked.db"
    store = ResultStore(  # the writer waits 0.3 s for the lock
        f"sqlite+aiosqlite:///{path}",
        metrics=StoreMetrics(),
        connect_timeout_s=0.1,
        min_backoff_s=0.05,
        max_backoff_s=0.3,
    )
    await store.start()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    recs = [make_record(120), make_record(121)]
    for r in recs:
        store.record(r)
    # more attempts than a refused record gets: a lock is waited out, not taken for a refusal
    await asyncio.wait_for(wait_for_failures(store, 4), 20)
    assert store.pending() == 2
    assert store.metrics.registry.get_sample_value("huayu_store_dropped_total", {"reason": "rejected"}) is None
    other.execute("ROLLBACK")
    other.close()
    await flushed(store, timeout=20)
    assert {d["id"] for d in (await store.list_descriptions())["data"]} == {r.id for r in recs}
    assert store.metrics.registry.get_sample_value("huayu_store_written_total") == 2
    await store.close()
