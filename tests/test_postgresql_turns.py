"""PostgreSQL: the connections of a turn's two calls are kept between calls (not given back to
the pool after each), but only while they are in a clean state; and which of a turn's commits
wait for the disk."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from asyncpg.exceptions import InternalClientError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service.errors import NotFound
from service.schemas import Reply
from service.store import PG_BEGIN_TURN, Store, make_engine
from service.tables import utcnow, uuid7


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    """A store whose pool holds 4 connections: the lane keeps up to 2."""
    store = Store(make_engine(postgres_url, pool_size=4))
    yield store
    await store.close()
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await store.engine.dispose()


async def backend(store: Store) -> int:
    async with store.lane.connection() as pg:
        pid: int = await pg.fetchval("SELECT pg_backend_pid()")
        return pid


def checked_out(store: Store) -> int:
    count: int = store.engine.pool.checkedout()  # type: ignore[attr-defined]
    return count


async def new_conversation(store: Store) -> uuid.UUID:
    conversation, _ = await store.create_conversation(
        "t",
        title=None,
        model="grok-4",
        params={},
        metadata={},
        messages=[{"role": "system", "content": "s"}],
    )
    return conversation.id


async def test_turns_reuse_one_kept_connection(store: Store) -> None:
    cid = await new_conversation(store)
    first = await backend(store)
    for n in range(3):
        start = await store.begin_turn(
            "t",
            cid,
            [{"role": "user", "content": f"q{n}"}],
            model=None,
            params=None,
            stream=False,
            lease=60,
        )
        reply = Reply(content=f"a{n}", model="grok-4", finish_reason="stop")
        assert await store.complete_turn(start.turn, reply, latency_ms=1, upstream_ms=1, attempts=1)
    assert await backend(store) == first
    assert store.lane.idle == 1
    # Kept, so checked out of the pool, but not in use.
    assert checked_out(store) == 1
    assert store.connections_in_use() == 0
    rows, _ = await store.list_messages("t", cid, limit=10, cursor=None, descending=False)
    assert [m.content for m in rows] == ["s", "q0", "a0", "q1", "a1", "q2", "a2"]
    await store.delete_conversation("t", cid)


async def test_keeps_at_most_half_the_pool(store: Store) -> None:
    assert store.lane.keep == 2
    async with (
        store.lane.connection(),
        store.lane.connection(),
        store.lane.connection(),
        store.lane.connection(),
    ):
        assert store.connections_in_use() == 4
    assert store.lane.idle == 2
    assert checked_out(store) == 2
    assert store.connections_in_use() == 0


async def test_a_refused_statement_keeps_the_connection(store: Store) -> None:
    first = await backend(store)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with store.lane.connection() as pg:
            await pg.fetchval("SELECT 1 / 0")
    assert store.lane.idle == 1
    assert await backend(store) == first


async def test_a_refused_turn_keeps_the_connection(store: Store) -> None:
    first = await backend(store)
    with pytest.raises(NotFound):
        await store.begin_turn(
            "t",
            uuid.uuid4(),
            [{"role": "user", "content": "q"}],
            model=None,
            params=None,
            stream=False,
            lease=60,
        )
    assert store.lane.idle == 1
    assert await backend(store) == first


async def terminate(postgres_url: str, pid: int) -> None:
    """End a backend as a server restart would, and wait until it is gone (the wait's own
    round trips let this process read the server's goodbye on the terminated connection)."""
    admin = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):
            if not await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            ):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"backend {pid} did not end")
    finally:
        await admin.close()


async def sleeping_call(store: Store) -> asyncio.Task[None]:
    """A lane call that is running on the server (for ten seconds, unless stopped)."""
    started = asyncio.Event()

    async def slow() -> None:
        async with store.lane.connection() as pg:
            started.set()
            await pg.fetchval("SELECT pg_sleep(10)")

    task = asyncio.create_task(slow())
    await started.wait()
    await asyncio.sleep(0.1)
    return task


async def test_a_kept_connection_the_server_closed_is_replaced(
    store: Store, postgres_url: str
) -> None:
    first = await backend(store)
    assert store.lane.idle == 1
    await terminate(postgres_url, first)
    second = await backend(store)  # no error: the closed connection was not used
    assert second != first
    assert store.lane.idle == 1
    assert checked_out(store) == 1


async def test_a_pooled_connection_the_server_closed_is_replaced(
    store: Store, postgres_url: str
) -> None:
    async def pooled_backend() -> int:
        async with store.engine.connect() as conn:
            pid: int = await conn.scalar(text("SELECT pg_backend_pid()"))
            return pid

    first = await pooled_backend()
    await terminate(postgres_url, first)
    assert await pooled_backend() != first  # no error: replaced at checkout
    assert checked_out(store) == 0


async def test_a_connection_broken_during_a_call_is_closed_not_kept(
    store: Store, postgres_url: str
) -> None:
    first = await backend(store)
    task = await sleeping_call(store)
    await terminate(postgres_url, first)
    # Which error the call meets depends on when asyncpg reads the server's goodbye.
    broken = (asyncpg.PostgresError, asyncpg.InterfaceError, InternalClientError, OSError)
    with pytest.raises(broken):
        await task
    assert store.lane.idle == 0
    assert checked_out(store) == 0
    assert await backend(store) != first  # a new connection, which works


async def test_a_connection_left_in_a_transaction_is_closed(store: Store) -> None:
    first = await backend(store)
    async with store.lane.connection() as pg:
        await pg.execute("BEGIN")
    assert store.lane.idle == 0
    assert checked_out(store) == 0
    assert await backend(store) != first


async def test_a_call_cancelled_midway_is_closed(store: Store) -> None:
    first = await backend(store)
    task = await sleeping_call(store)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.lane.idle == 0
    assert checked_out(store) == 0
    assert await backend(store) != first


async def test_close_gives_kept_connections_back(store: Store) -> None:
    await backend(store)
    assert checked_out(store) == 1
    await store.close()
    assert store.lane.idle == 0
    assert checked_out(store) == 0


async def test_nothing_is_kept_without_a_pool(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url, poolclass=NullPool)
    store = Store(engine)
    try:
        assert store.lane.keep == 0
        first = await backend(store)
        assert store.lane.idle == 0
        assert await backend(store) != first
    finally:
        await store.close()
        await engine.dispose()


@pytest.mark.parametrize(("stream", "waits"), [(False, "off"), (True, "on")])
async def test_only_a_streamed_turn_waits_for_the_disk_to_start(
    store: Store, stream: bool, waits: str
) -> None:
    # A non-streamed turn is answered only after a later commit of its own, which flushes the
    # log up to its first one; a streamed turn tells its client at once (turn.started).
    cid = await new_conversation(store)
    now = utcnow()
    message = [[uuid7()], ["user"], ['"q"'], [None], [None], [None], [None], [None], [None]]
    async with store.lane.connection() as pg:
        transaction = pg.transaction()
        await transaction.start()
        try:
            rows = await pg.fetch(
                PG_BEGIN_TURN, cid, "t", now, now, uuid7(), None, None, None, stream,
                *message, [None], [now], 0,
            )  # fmt: skip
            assert [r["o_entry"] for r in rows[1:]] == [
                '{"role":"system","content":"s"}',
                '{"role":"user","content":"q"}',
            ]
            assert await pg.fetchval("SHOW synchronous_commit") == waits
        finally:
            await transaction.rollback()
        assert await pg.fetchval("SHOW synchronous_commit") == "on"
    await store.delete_conversation("t", cid)


async def test_a_completed_turn_is_on_disk_when_answered(store: Store) -> None:
    cid = await new_conversation(store)
    start = await store.begin_turn(
        "t", cid, [{"role": "user", "content": "q"}], model=None, params=None, stream=False,
        lease=60,
    )  # fmt: skip
    async with store.lane.connection() as pg:
        written = await pg.fetchval("SELECT pg_current_wal_insert_lsn()")
    reply = Reply(content="a", model="grok-4", finish_reason="stop")
    assert await store.complete_turn(start.turn, reply, latency_ms=1, upstream_ms=1, attempts=1)
    async with store.lane.connection() as pg:
        # Flushed up to the turn's input, and beyond (the reply's commit waited for the disk).
        assert await pg.fetchval("SELECT pg_current_wal_flush_lsn() > $1", written)
    await store.delete_conversation("t", cid)
