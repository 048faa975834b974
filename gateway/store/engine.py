"""The async engine for a store URL, the migrations run at start-up, and which errors are outages."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from gateway.errors import HuayuError, ServiceUnavailable

ACCEPTED = "sqlite+aiosqlite:///path/to/file.db, postgresql+asyncpg://user@host/db or mysql+aiomysql://user@host/db"

# plain URLs name sync drivers; the store is async, so pick the async driver for the same server
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mariadb+aiomysql": "mysql+aiomysql",
}
# any 64-bit number: one lock name shared by every gateway process migrating the same database
_PG_LOCK = 0x68756179_75000001
_MYSQL_LOCK = "huayu_store_migrations"


class StoreConfigError(HuayuError):
    """The database URL cannot be used (raised at start-up, never for a request)."""

    code = "store_config"


def normalize_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as e:
        raise StoreConfigError(f"The database URL {url!r} is not a valid URL; use one of: {ACCEPTED}.") from e
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise StoreConfigError(
            f"The database URL names {parsed.drivername!r}, which the store does not support; use one of: {ACCEPTED}."
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("mysql") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _json_dumps(value: object) -> str:
    # orjson: several times the standard module's speed on the JSON columns written per description;
    # it writes UTF-8 as it is (not \u escapes), which every backend here stores as UTF-8 (utf8mb4)
    return orjson.dumps(value).decode()


# the JSON columns' (de)serializers, for every backend
_JSON = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def in_memory(url: URL) -> bool:
    """An SQLite database that lives in one connection's memory."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(url: URL, *, connect_timeout_s: float) -> AsyncEngine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        memory = in_memory(url)
        if not memory:
            Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": connect_timeout_s * 3},  # seconds to wait for SQLite's write lock
            **({"poolclass": StaticPool} if memory else {}),
            **_JSON,
        )
        _sqlite_pragmas(engine, wal=not memory)
        return engine
    connect_args: dict[str, object] = (
        {"timeout": connect_timeout_s} if backend == "postgresql" else {"connect_timeout": connect_timeout_s}
    )
    # pre-ping: after an outage the pooled connections are dead; find out before using one
    return create_async_engine(url, pool_pre_ping=True, pool_recycle=1800, connect_args=connect_args, **_JSON)


def _sqlite_pragmas(engine: AsyncEngine, *, wal: bool) -> None:
    from sqlalchemy import event

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: object, _: object) -> None:
        cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cur.execute("PRAGMA foreign_keys=ON")
        if wal:
            # readers (the review page) never wait for the writer, nor it for them
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def is_outage(e: BaseException) -> bool:
    """True when ``e`` means the database cannot be reached now (worth retrying), not a bad statement."""
    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(
        e,
        sa_exc.OperationalError
        | sqlite3.OperationalError  # the SQLite writer's own connection (sqlite_batch.py): locked, I/O
        | sa_exc.InterfaceError
        | sa_exc.DisconnectionError
        | sa_exc.TimeoutError
        | OSError
        | TimeoutError
        | asyncio.TimeoutError,
    )


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "gateway.store:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # held until this transaction ends; other processes wait, then find nothing to do
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
    elif dialect == "mysql":
        connection.execute(text("SELECT GET_LOCK(:n, 60)"), {"n": _MYSQL_LOCK})
    try:
        command.upgrade(alembic_config(connection), "head")
    finally:
        if dialect == "mysql":
            connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": _MYSQL_LOCK})


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent; safe from several processes)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def migrate(url: str) -> str:
    """Run the migrations on ``url`` and return the revision it is at (for ``huayu db upgrade``)."""
    from alembic.migration import MigrationContext

    engine = make_engine(normalize_url(url), connect_timeout_s=10)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            revision = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    except Exception as e:
        if is_outage(e):
            raise ServiceUnavailable(f"The database cannot be reached: {str(e).splitlines()[0][:200]}") from e
        raise
    finally:
        await engine.dispose()
    return str(revision)
