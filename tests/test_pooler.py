"""PostgreSQL behind PgBouncer in transaction pooling mode (CONVSTORE_DB_TRANSACTION_POOLER).

A real PgBouncer (tests/postgres_servers.py) with three server connections in front of a new
database; a real `convstore serve` process migrates the database and serves through it, so
many client connections share few server connections and each transaction may land on any.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import postgres_database
from live import check_conversation, new_tenant_key, server, turn_until_taken
from postgres_servers import pgbouncer, with_port
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.store import make_engine

POOL_SIZE = 3  # server connections PgBouncer keeps to the database


@dataclass(frozen=True)
class Bounced:
    direct_url: str  # the database itself
    url: str  # the same database through PgBouncer
    service: str  # the service, serving through PgBouncer


@pytest.fixture(scope="module")
def bounced(fake_upstream: FakeUpstream) -> Iterator[Bounced]:
    for direct in postgres_database():
        with pgbouncer(pool_size=POOL_SIZE) as port:
            url = with_port(direct, port)
            # `convstore serve` migrates the new database through PgBouncer, then serves.
            env = {"CONVSTORE_DB_TRANSACTION_POOLER": "1", "CONVSTORE_DB_POOL_SIZE": "10"}
            with server(url, fake_upstream, **env) as running:
                yield Bounced(direct, url, running.url)


@pytest.fixture
async def client(bounced: Bounced) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bounced.service, timeout=60) as http:
        yield http


async def test_turns_one_after_another(
    client: httpx.AsyncClient, bounced: Bounced, upstream: FakeUpstream
) -> None:
    headers = await new_tenant_key(bounced.url, transaction_pooler=True)
    created = await client.post("/v1/conversations", json={"title": "pooled"}, headers=headers)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    for n in range(3):
        turn = await client.post(
            f"/v1/conversations/{cid}/turns",
            json={"messages": [{"role": "user", "content": f"question {n}"}]},
            headers=headers,
        )
        assert turn.status_code == 201, turn.text
    assert await check_conversation(client, "", headers, cid) == 3
    got = (await client.get(f"/v1/conversations/{cid}", headers=headers)).json()
    assert got["message_count"] == 6


async def test_many_concurrent_turns_share_three_server_connections(
    client: httpx.AsyncClient, bounced: Bounced, upstream: FakeUpstream
) -> None:
    headers = await new_tenant_key(bounced.url, transaction_pooler=True)
    upstream.push_fault(Fault(kind="slow", delay=0.02, times=100_000))
    conversations = []
    for i in range(6):
        created = await client.post("/v1/conversations", json={"title": f"c{i}"}, headers=headers)
        conversations.append(created.json()["id"])
    answers: Counter[int] = Counter()

    async def user(number: int) -> None:
        cid = conversations[number % len(conversations)]
        await turn_until_taken(client, [""], headers, cid, f"q{number}", answers, attempts=200)

    await asyncio.gather(*(user(n) for n in range(36)))
    assert set(answers) <= {201, 409}, answers
    assert answers[201] == 36, answers
    replies = 0
    for cid in conversations:
        replies += await check_conversation(client, "", headers, cid)
    assert replies == 36


async def test_streamed_turn(client: httpx.AsyncClient, bounced: Bounced) -> None:
    headers = await new_tenant_key(bounced.url, transaction_pooler=True)
    cid = (await client.post("/v1/conversations", json={}, headers=headers)).json()["id"]
    question = [{"role": "user", "content": "tell me a long story"}]
    async with client.stream(
        "POST",
        f"/v1/conversations/{cid}/turns",
        json={"messages": question, "stream": True},
        headers=headers,
    ) as response:
        assert response.status_code == 201
        body = "".join([chunk async for chunk in response.aiter_text()])
    assert body.count("event: message.delta") > 3
    assert "event: turn.completed" in body
    messages = (await client.get(f"/v1/conversations/{cid}/messages", headers=headers)).json()
    assert messages["data"][-1]["content"] == expected_reply(question)


async def test_lists_pages_and_search(client: httpx.AsyncClient, bounced: Bounced) -> None:
    headers = await new_tenant_key(bounced.url, transaction_pooler=True)
    admin = await new_tenant_key(bounced.url, admin=True, transaction_pooler=True)
    made = []
    for i in range(7):
        body = {
            "title": f"pooled walrus {i}" if i % 2 else f"pooled otter {i}",
            "user": f"u{i % 3}",
        }
        made.append((await client.post("/v1/conversations", json=body, headers=headers)).json())
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/conversations", params=params, headers=headers)).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [c["id"] for c in reversed(made)]
    walruses = {c["id"] for i, c in enumerate(made) if i % 2}
    found = (await client.get("/admin/conversations", params={"q": "walrus"}, headers=admin)).json()
    assert {c["id"] for c in found["data"]} == walruses
    found = (await client.get("/v1/conversations", params={"q": "walrus"}, headers=headers)).json()
    assert {c["id"] for c in found["data"]} == walruses
    params = {"user": "u1", "metadata.none": "x"}
    found = (await client.get("/v1/conversations", params=params, headers=headers)).json()
    assert found["data"] == []
    found = (await client.get("/v1/conversations", params={"user": "u1"}, headers=headers)).json()
    assert [c["id"] for c in found["data"]] == [made[4]["id"], made[1]["id"]]


async def test_no_prepared_statement_is_left_on_the_server_connections(
    client: httpx.AsyncClient, bounced: Bounced
) -> None:
    headers = await new_tenant_key(bounced.url, transaction_pooler=True)
    for _ in range(5):
        cid = (await client.post("/v1/conversations", json={}, headers=headers)).json()["id"]
        await client.post(
            f"/v1/conversations/{cid}/turns",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        await client.get("/v1/conversations", headers=headers)
    # As many transactions at once as PgBouncer has server connections: each holds one, so
    # together they look at every one of them.
    port = int(bounced.url.rsplit(":", 1)[1].split("/", 1)[0])
    name = bounced.url.rsplit("/", 1)[1]
    probes = [
        await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database=name, statement_cache_size=0
        )
        for _ in range(POOL_SIZE)
    ]
    try:
        transactions = [probe.transaction() for probe in probes]
        for transaction in transactions:
            await transaction.start()
        counts = [
            await probe.fetchval("SELECT count(*) FROM pg_prepared_statements") for probe in probes
        ]
        pids = {await probe.fetchval("SELECT pg_backend_pid()") for probe in probes}
        for transaction in transactions:
            await transaction.rollback()
    finally:
        for probe in probes:
            await probe.close()
    assert len(pids) == POOL_SIZE
    assert counts == [0] * POOL_SIZE


@pytest.mark.parametrize("transaction_pooler", [False, True])
async def test_only_the_setting_makes_asyncpg_work_through_the_pooler(
    bounced: Bounced, transaction_pooler: bool
) -> None:
    """Without the setting, a statement prepared in one transaction is looked for in the next,
    which PgBouncer has put on another server connection; with it, nothing is."""
    engine = make_engine(bounced.url, pool_size=2, transaction_pooler=transaction_pooler)
    statement = text("SELECT count(*) FROM conversation WHERE title = :title")

    async def scenario() -> None:
        async with engine.connect() as first, engine.connect() as second:
            await first.execute(statement, {"title": "x"})
            await first.commit()
            # The second takes the server connection the first prepared its statement on...
            await second.execute(text("SELECT 1"))
            # ...so the first's next transaction runs on another one.
            await first.execute(statement, {"title": "y"})
            await first.commit()
            await second.commit()

    try:
        if transaction_pooler:
            await scenario()
        else:
            with pytest.raises(DBAPIError, match="prepared statement"):
                await scenario()
    finally:
        await engine.dispose()
