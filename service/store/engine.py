"""The database engine and what every part of the store shares: connections, transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from sqlalchemy import Select, event, select, tuple_
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from service.errors import NotFound
from service.store.records import C, Cursors
from service.tables import secret_table

# Every SQLite connection of the service: write-ahead log (readers never wait for the writer),
# commits that reach the disk at checkpoints, 30 s of waiting for the write lock, and foreign
# keys enforced (ON DELETE CASCADE).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
)


def json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# asyncpg behind a pooler in transaction mode (PgBouncer's pool_mode=transaction): each
# transaction may run on another server connection, so a statement prepared under a name in
# one transaction is missing ("prepared statement ... does not exist") or a name is taken
# ("already exists") in the next. No statement cache (SQLAlchemy's nor asyncpg's own), and
# every statement the unnamed one: SQLAlchemy's documented hook for naming statements, given
# the empty name. Its documented recipe of unique names works too, but leaves each statement
# prepared on the server connection until PgBouncer runs DISCARD ALL, which in transaction
# mode it does only with server_reset_query_always; the unnamed statement is replaced by the
# next one, so nothing piles up whatever the pooler's settings.
TRANSACTION_POOLER_CONNECT_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: "",
}


def make_engine(
    database_url: str, *, pool_size: int = 20, transaction_pooler: bool = False
) -> AsyncEngine:
    """An engine tuned for the service: WAL and a busy timeout on SQLite, pooling on PostgreSQL.

    On SQLite, transactions begun on ``StoreBase.writer`` start with ``BEGIN IMMEDIATE``, so two
    writers queue on the database lock instead of failing with "database is locked". With
    ``transaction_pooler``, PostgreSQL statements are never prepared under a name, so the URL
    may lead to PgBouncer in transaction mode.
    """
    url = make_url(database_url)
    options: dict[str, Any] = {
        "json_serializer": json_dumps,
        "json_deserializer": msgspec.json.decode,
        "pool_size": pool_size,
        "max_overflow": pool_size,
    }
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30}, **options)
        _tune_sqlite(engine)
        return engine
    if transaction_pooler:
        options["connect_args"] = TRANSACTION_POOLER_CONNECT_ARGS
    engine = create_async_engine(url, **options)
    _replace_closed_connections(engine)
    return engine


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Own the transaction boundaries (pysqlite's implicit BEGIN gets them wrong).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("convstore_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _replace_closed_connections(engine: AsyncEngine) -> None:
    """Have the pool replace, at checkout, a PostgreSQL connection the server closed while it
    waited (a restart, ``pg_terminate_backend``), instead of handing it to a request that would
    fail on it: SQLAlchemy's documented pessimistic disconnect handling, raising
    ``DisconnectionError`` from the checkout event. asyncpg notices a closed socket as it
    happens, so the check costs no round trip (``pool_pre_ping`` costs one per checkout)."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        driver = record.driver_connection
        if driver is not None and driver.is_closed():
            raise DisconnectionError("the server closed this connection")  # the pool retries


class StoreBase:
    """The engine, and the two kinds of transaction every part of the store uses.

    With ``read_engine`` (a streaming replica of the database), the reads that say they may
    lag go to it; everything else, writes and the reads a client expects to show its own
    writes, go to ``engine``."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.reader = read_engine or engine
        self.writer = engine.execution_options(convstore_write=True)
        self._cursors: Cursors | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that writes (on SQLite it takes the write lock at once)."""
        async with self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self, *, may_lag: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection to read with: the database's, or with ``may_lag`` the read replica's
        if there is one, for reads that need not show a write made a moment ago (lists,
        search, exports, admin reads, stats): they may be behind by the replica's lag."""
        async with (self.reader if may_lag else self.engine).connect() as conn:
            yield conn

    async def _conversation_page(
        self, query: Select[Any], *, scope: str, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """A keyset page of the conversations ``query`` selects (with their ``created_at`` and
        ``id``), newest first, from where a cursor signed for ``scope`` says; a read that may
        lag."""
        cursors = await self.cursors()
        if cursor:
            created, ident = cursors.created(scope, cursor)
            query = query.where(tuple_(C.created_at, C.id) < tuple_(created, ident))
        query = query.order_by(C.created_at.desc(), C.id.desc()).limit(limit + 1)
        async with self._read(may_lag=True) as conn:
            rows = (await conn.execute(query)).all()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = cursors.encode(scope, rows[-1].created_at, rows[-1].id)
        return list(rows), next_cursor

    async def _owned(self, conn: AsyncConnection, tenant: str, conversation_id: uuid.UUID) -> None:
        """Raise ``NotFound`` unless the tenant has this conversation."""
        found = (
            await conn.execute(select(C.id).where(C.id == conversation_id, C.tenant == tenant))
        ).first()
        if found is None:
            raise NotFound("No conversation has this id.")

    async def cursors(self) -> Cursors:
        """The signer of list cursors, with the database's key (read once, then kept)."""
        if self._cursors is None:
            async with self._read() as conn:
                value = (
                    await conn.execute(
                        select(secret_table.c.value).where(secret_table.c.name == "cursor")
                    )
                ).scalar_one()
            self._cursors = Cursors(bytes.fromhex(value))
        return self._cursors

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))

    def connections_in_use(self) -> int:
        """Database connections checked out of the pool."""
        pool = self.engine.sync_engine.pool
        return pool.checkedout() if isinstance(pool, QueuePool) else 0

    async def close(self) -> None:
        """Nothing is kept beside the engine's pool; the engine's owner disposes of it."""
