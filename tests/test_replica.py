"""Reads that may lag go to a read replica (CONVSTORE_READ_DATABASE_URL); the rest stay on the
database, so a client always sees its own writes in what it reads back.

A real streaming replica of the local PostgreSQL (tests/postgres_servers.py), started once for
the module; replay is paused on it to show what a client sees while it lags.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import UPSTREAM_KEY, postgres_database
from live import new_tenant_key, serve
from postgres_servers import streaming_replica, with_port
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.app import create_app
from service.fake_upstream import FakeUpstream
from service.migrate import upgrade
from service.settings import Settings


@dataclass(frozen=True)
class Replicated:
    primary: str
    replica: str


async def _scalar(url: str, statement: str, **params: Any) -> Any:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(statement), params)).scalar()
    finally:
        await engine.dispose()


async def caught_up(replicated: Replicated) -> None:
    """Wait until the replica has replayed everything written on the primary so far."""
    lsn = await _scalar(replicated.primary, "SELECT CAST(pg_current_wal_lsn() AS text)")
    deadline = time.monotonic() + 30
    query = "SELECT pg_last_wal_replay_lsn() >= CAST(CAST(:lsn AS text) AS pg_lsn)"
    while not await _scalar(replicated.replica, query, lsn=lsn):
        assert time.monotonic() < deadline, "the replica did not catch up"
        await asyncio.sleep(0.05)


async def replay(replicated: Replicated, *, paused: bool) -> None:
    """Pause or resume the replica's replay of the primary's WAL, and wait until it has."""
    call = "pg_wal_replay_pause" if paused else "pg_wal_replay_resume"
    await _scalar(replicated.replica, f"SELECT {call}()")
    want = "paused" if paused else "not paused"
    deadline = time.monotonic() + 30
    while await _scalar(replicated.replica, "SELECT pg_get_wal_replay_pause_state()") != want:
        assert time.monotonic() < deadline, f"replay is not {want}"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    with streaming_replica() as port:
        for url in postgres_database():
            upgrade(url)
            replicated = Replicated(url, with_port(url, port))
            asyncio.run(caught_up(replicated))
            yield replicated


@pytest.fixture
async def client(
    replicated: Replicated, upstream: FakeUpstream
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=replicated.primary,
        read_database_url=replicated.replica,
        upstream_url=upstream.base_url,
        xai_api_key=UPSTREAM_KEY,
        upstream_timeout=10,
        db_pool_size=3,
        key_cache_ttl=0,
    )
    async with serve(create_app(settings, retry_backoff=0.01)) as http:
        yield http


async def test_while_the_replica_lags_lists_lag_and_reads_of_ones_own_writes_do_not(
    client: httpx.AsyncClient, replicated: Replicated
) -> None:
    alice = await new_tenant_key(replicated.primary)
    admin = await new_tenant_key(replicated.primary, admin=True)
    first = (
        await client.post("/v1/conversations", json={"title": "first walrus"}, headers=alice)
    ).json()
    await caught_up(replicated)

    def listed(page: httpx.Response) -> dict[str, str]:
        return {c["id"]: c["title"] for c in page.json()["data"]}

    assert listed(await client.get("/v1/conversations", headers=alice)) == {
        first["id"]: "first walrus"
    }
    await replay(replicated, paused=True)
    try:
        # Writes go to the primary (the replica refuses them) and answer as usual...
        second = await client.post(
            "/v1/conversations", json={"title": "second walrus"}, headers=alice
        )
        assert second.status_code == 201
        cid = second.json()["id"]
        turn = await client.post(
            f"/v1/conversations/{cid}/turns",
            json={"messages": [{"role": "user", "content": "hello"}]},
            headers=alice,
        )
        assert turn.status_code == 201, turn.text
        renamed = await client.patch(
            f"/v1/conversations/{first['id']}", json={"title": "renamed"}, headers=alice
        )
        assert renamed.json()["title"] == "renamed"
        # ...and reading back what one wrote is read from the primary, so it is all there.
        got = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
        assert got["message_count"] == 2
        messages = (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).json()
        assert [m["role"] for m in messages["data"]] == ["user", "assistant"]
        exported = await client.get(f"/v1/conversations/{cid}/export", headers=alice)
        assert len(exported.json()["messages"]) == 2
        got = (await client.get(f"/v1/conversations/{first['id']}", headers=alice)).json()
        assert got["title"] == "renamed"

        # Lists, search, exports and admin reads come from the replica: as it was.
        assert listed(await client.get("/v1/conversations", headers=alice)) == {
            first["id"]: "first walrus"
        }
        search = await client.get("/admin/conversations", params={"q": "walrus"}, headers=admin)
        assert [c["id"] for c in search.json()["data"]] == [first["id"]]
        export = await client.get("/v1/export", headers=alice)
        assert len(export.text.splitlines()) == 1
        stats_while_behind = (await client.get("/admin/stats", headers=admin)).json()
    finally:
        await replay(replicated, paused=False)
    await caught_up(replicated)
    assert listed(await client.get("/v1/conversations", headers=alice)) == {
        cid: "second walrus",
        first["id"]: "renamed",
    }
    search = await client.get("/admin/conversations", params={"q": "walrus"}, headers=admin)
    assert [c["id"] for c in search.json()["data"]] == [cid]
    stats = (await client.get("/admin/stats", headers=admin)).json()
    assert stats["conversations"] == stats_while_behind["conversations"] + 1
    assert stats["messages"] == stats_while_behind["messages"] + 2
