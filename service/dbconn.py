"""The connections a turn's two transactions run on, beside the engine's pool.

A turn is the service's hot path: two short transactions around every model call. Through
SQLAlchemy's async engine each statement pays for the engine's plumbing (on SQLite, two or three
handoffs between threads); these hand each transaction to the driver directly:

- PostgreSQL: ``DriverLane`` keeps the asyncpg connections of the turn calls between calls.
- SQLite: ``SqliteThread`` runs a whole transaction as one call into a thread that owns a
  sqlite3 connection.

Both stand beside the engine's pool, which serves every other statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from service.errors import ServiceError

_T = TypeVar("_T")

# Every SQLite connection of the service: write-ahead log (readers never wait for the writer),
# commits that reach the disk at checkpoints, 30 s of waiting for the write lock, and foreign
# keys enforced (ON DELETE CASCADE).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
)


class DriverLane:
    """The asyncpg connections of a turn's two calls, kept between calls rather than given back
    to the engine's pool after each.

    A checkout through SQLAlchemy and its return cost about 80 µs of CPU each (a Connection
    object, a greenlet each way, the reset on return), and twice that in wall time on a busy
    machine: half a millisecond a turn, as much as a database call. Here a connection that
    finished a call waits in a list for the next one, up to half the pool's size of them (they
    count as checked out of the pool, and ``Store.connections_in_use`` leaves them out). Only a
    connection in a clean state is kept: one that broke, was cancelled mid-call or was left in
    a transaction is closed. A pool that keeps nothing (NullPool) gets nothing kept here either.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._pool = engine.sync_engine.pool
        size = self._pool.size() if isinstance(self._pool, QueuePool) else 0
        self.keep = max(1, size // 2) if size else 0
        self._idle: list[PoolProxiedConnection] = []

    @property
    def idle(self) -> int:
        """Connections waiting here for a call."""
        return len(self._idle)

    def checked_out(self) -> int:
        """Connections checked out of the pool, by the store or anything else."""
        return self._pool.checkedout() if isinstance(self._pool, QueuePool) else 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        kept = self._kept()
        held = kept if kept is not None else await greenlet_spawn(self._pool.connect)
        pg: asyncpg.Connection = held.driver_connection
        try:
            yield pg
        except BaseException as exc:
            if not _reusable_after(exc):
                held.invalidate()  # closed at once (no round trip), and never used again
            raise
        finally:
            if held.dbapi_connection is not None:
                if pg.is_closed() or pg.is_in_transaction():
                    held.invalidate()
                elif len(self._idle) < self.keep:
                    self._idle.append(held)
                else:
                    await greenlet_spawn(held.close)

    def _kept(self) -> PoolProxiedConnection | None:
        """A kept connection still open: one the server closed meanwhile (a restart, an
        administrator's ``pg_terminate_backend``), which asyncpg notices as it happens, is
        dropped rather than failing the call that would get it."""
        while self._idle:
            held = self._idle.pop()
            driver: asyncpg.Connection | None = held.driver_connection
            if driver is not None and not driver.is_closed():
                return held
            held.invalidate()
        return None

    async def close(self) -> None:
        """Give every kept connection back to the pool."""
        while self._idle:
            await greenlet_spawn(self._idle.pop().close)


def replace_closed_connections(engine: AsyncEngine) -> None:
    """Have the engine's pool (asyncpg) replace at checkout a connection the server closed while
    it waited in the pool, instead of handing it to a request that would fail on it. asyncpg
    notices a closed socket as it happens, so the check costs no round trip (unlike
    ``pool_pre_ping``); a connection that breaks unnoticed still fails its first statement."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        driver = record.driver_connection
        if driver is not None and driver.is_closed():
            raise DisconnectionError("the server closed this connection")  # the pool retries


def _reusable_after(exc: BaseException) -> bool:
    """Whether a connection can serve another call after ``exc`` ended one: only if the server
    refused a statement and kept the session (an ERROR, not a FATAL one), or the store turned
    such a refusal into an answer. A connection error, a cancellation (asyncpg may still be
    waiting for the cancelled statement's answer) or anything unforeseen closes it."""
    if isinstance(exc, ServiceError):
        return True
    return (
        isinstance(exc, asyncpg.PostgresError)
        and (getattr(exc, "severity_en", None) or getattr(exc, "severity", None)) == "ERROR"
    )


class SqliteThread:
    """One sqlite3 connection in a thread of its own; each transaction is handed to it whole, as
    one function, and its result handed back.

    Through aiosqlite every statement crosses between the event loop and aiosqlite's thread two
    or three times (execute, fetch, close): a turn's first transaction, seven statements, took
    3.3 ms where the same statements take 0.4 ms in one thread. Here a transaction crosses once
    each way. The sqlite3 module lets go of the GIL while SQLite works, so the event loop runs
    meanwhile. The connection is opened on first use; a function that is started runs to its
    end even if its caller is cancelled (as a statement sent to PostgreSQL does).
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)``, in the thread; it owns its transaction (BEGIN … COMMIT)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="convstore-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._db is None:
            self._db = sqlite3.connect(self.database, isolation_level=None, timeout=30)
            for pragma in SQLITE_PRAGMAS:
                self._db.execute(pragma)
        return work(self._db)

    async def close(self) -> None:
        """Close the connection and let the thread end."""
        if self._executor is None:
            return
        if self._db is not None:
            await self.run(lambda db: db.close())
            self._db = None
        self._executor.shutdown(wait=False)
        self._executor = None
