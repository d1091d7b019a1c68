"""Retention and deletion: expiry, the sweeper (complete deletion, small batches, several
processes at once), legal holds, and a receipt for every deletion of a conversation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import serve
from sqlalchemy import func, select, text, update
from test_cli import run

from service.app import create_app
from service.retention import RetentionSweeper
from service.settings import Settings
from service.store import Store, make_engine
from service.tables import (
    branch_table,
    conversation_table,
    deletion_receipt_table,
    idempotency_table,
    message_table,
    turn_table,
    uuid7,
)

Client = httpx.AsyncClient
C = conversation_table.c
PAST = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


async def create(client: Client, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def expire(client: Client, headers: dict[str, str], cid: str, when: str | None) -> None:
    response = await client.patch(
        f"/v1/conversations/{cid}", json={"expires_at": when}, headers=headers
    )
    assert response.status_code == 200, response.text


async def rows_of(store: Store, cid: str) -> dict[str, int]:
    """How many rows of each table belong to the conversation, text index included."""
    ident = uuid.UUID(cid)
    tables = {
        "conversation": select(func.count()).where(C.id == ident),
        "message": select(func.count()).where(message_table.c.conversation_id == ident),
        "branch": select(func.count()).where(branch_table.c.conversation_id == ident),
        "turn": select(func.count()).where(turn_table.c.conversation_id == ident),
        "idempotency_key": select(func.count()).where(idempotency_table.c.conversation_id == ident),
    }
    async with store.engine.connect() as conn:
        counts = {name: (await conn.execute(q)).scalar_one() for name, q in tables.items()}
        if store.dialect == "sqlite":
            counts["search_text"] = (
                await conn.execute(
                    text("SELECT count(*) FROM search_text WHERE search_text MATCH :q"),
                    {"q": f'conv : "{ident}"'},
                )
            ).scalar_one()
    return counts


async def admin_search(client: Client, admin: dict[str, str], q: str) -> list[str]:
    response = await client.get("/admin/conversations", params={"q": q}, headers=admin)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


async def receipts(client: Client, headers: dict[str, str], path: str = "/v1/deletions") -> Any:
    response = await client.get(path, params={"limit": 100}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def key_id(store: Store, tenant: str) -> str:
    return next(str(k.id) for k in await store.list_keys() if k.tenant == tenant)


# ---- expires_at -------------------------------------------------------------------------


async def test_expires_at_is_set_on_create_and_with_patch_and_cleared_with_null(
    client: Client, alice: dict[str, str]
) -> None:
    created = await client.post(
        "/v1/conversations", json={"expires_at": "2030-01-02T03:04:05+02:00"}, headers=alice
    )
    assert created.status_code == 201, created.text
    assert created.json()["expires_at"] == "2030-01-02T01:04:05Z"
    cid = created.json()["id"]
    patched = await client.patch(
        f"/v1/conversations/{cid}", json={"expires_at": "2031-01-01T00:00:00Z"}, headers=alice
    )
    assert patched.json()["expires_at"] == "2031-01-01T00:00:00Z"
    cleared = await client.patch(
        f"/v1/conversations/{cid}", json={"expires_at": None}, headers=alice
    )
    assert "expires_at" not in cleared.json()
    got = await client.get(f"/v1/conversations/{cid}", headers=alice)
    assert "expires_at" not in got.json()
    assert "legal_hold" not in got.json()


@pytest.mark.parametrize(
    "value",
    [
        "2030-01-01T00:00:00",
        "soon",
        "2030-01-01",
        "9999-12-31T23:59:59-23:59",
        "2030-13-01T00:00Z",
        0,  # a number is no instant, though the body's lax conversion would take a Unix time
        1_900_000_000,
    ],
)
async def test_an_expiry_without_a_time_zone_or_out_of_range_is_a_422(
    client: Client, alice: dict[str, str], value: Any
) -> None:
    created = await client.post("/v1/conversations", json={"expires_at": value}, headers=alice)
    assert created.status_code == 422, created.text
    assert created.headers["content-type"].startswith("application/problem+json")
    assert "expires_at" in created.json()["detail"]
    cid = await create(client, alice)
    patched = await client.patch(
        f"/v1/conversations/{cid}", json={"expires_at": value}, headers=alice
    )
    assert patched.status_code == 422, patched.text
    assert "expires_at" not in (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()


# ---- the sweep ------------------------------------------------------------------------


async def test_a_sweep_deletes_expired_conversations_completely(
    client: Client, store: Store, alice: dict[str, str], admin: dict[str, str]
) -> None:
    # An expired conversation with every kind of row: messages on two branches, a turn, idempotent
    # answers (of its creation and of its turn) and text index entries.
    body = {"title": "zebra notes", "messages": [{"role": "user", "content": "okapi one"}]}
    made = await client.post(
        "/v1/conversations", json=body, headers={**alice, "Idempotency-Key": "create-1"}
    )
    cid = made.json()["id"]
    turn = await client.post(
        f"/v1/conversations/{cid}/turns",
        json={"messages": [{"role": "user", "content": "okapi two"}]},
        headers={**alice, "Idempotency-Key": "turn-1"},
    )
    assert turn.status_code == 201, turn.text
    first = made.json()["messages"][0]["id"]
    branched = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"parent_id": first, "messages": [{"role": "user", "content": "okapi three"}]},
        headers=alice,
    )
    assert branched.status_code == 201, branched.text
    kept = await create(
        client, alice, title="zebra kept", messages=[{"role": "user", "content": "okapi kept"}]
    )
    await expire(client, alice, cid, PAST)
    await expire(client, alice, kept, FUTURE)
    before = await rows_of(store, cid)
    assert before["message"] == 4
    assert (before["branch"], before["turn"], before["idempotency_key"]) == (2, 1, 2)
    assert set(await admin_search(client, admin, "okapi")) == {cid, kept}

    counts = await RetentionSweeper(store).sweep()

    assert (counts.conversations, counts.messages, counts.turns) == (1, 4, 1)
    assert set((await rows_of(store, cid)).values()) == {0}
    assert (await rows_of(store, kept))["message"] == 1
    assert await admin_search(client, admin, "okapi") == [kept]
    assert await admin_search(client, admin, "zebra") == [kept]
    assert (await client.get(f"/v1/conversations/{cid}", headers=alice)).status_code == 404
    # The idempotent answer went with it: the same key now creates anew.
    again = await client.post(
        "/v1/conversations", json=body, headers={**alice, "Idempotency-Key": "create-1"}
    )
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != cid
    (receipt,) = await receipts(client, alice)
    assert receipt["conversation_id"] == cid
    assert receipt["kind"] == "retention"
    assert receipt["key_id"] is None
    assert receipt["reason"].startswith("expired at ")
    assert (receipt["message_count"], receipt["turn_count"]) == (4, 1)
    assert not {"okapi", "zebra"} & set(str(receipt).split())
    assert await RetentionSweeper(store).sweep() == type(counts)()  # nothing left


async def test_the_default_age_applies_to_conversations_without_an_expiry(
    client: Client, store: Store, alice: dict[str, str]
) -> None:
    old = await create(client, alice)
    old_but_extended = await create(client, alice)
    young = await create(client, alice)
    await expire(client, alice, old_but_extended, FUTURE)
    long_ago = datetime.now(UTC) - timedelta(days=31)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(conversation_table)
            .where(C.id.in_([uuid.UUID(old), uuid.UUID(old_but_extended)]))
            .values(created_at=long_ago)
        )
    assert (await RetentionSweeper(store).sweep()).conversations == 0  # off by default
    counts = await RetentionSweeper(store, retention_days=30).sweep()
    assert counts.conversations == 1
    (receipt,) = await receipts(client, alice)
    assert receipt["conversation_id"] == old
    assert receipt["reason"] == "older than 30 days"
    for cid in (old_but_extended, young):
        assert (await client.get(f"/v1/conversations/{cid}", headers=alice)).status_code == 200


async def test_a_sweep_works_in_small_batches(store: Store) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    three = [{"role": "user", "content": f"m{i}"} for i in range(3)]
    for _ in range(25):
        await store.create_conversation(
            "batches", title=None, model="m", params={}, metadata={}, messages=[], expires_at=past
        )
    counts = await RetentionSweeper(store, conversations=10).sweep()
    assert (counts.conversations, counts.batches) == (25, 3)
    # A batch also stops short of too many messages (but takes one conversation at least).
    for _ in range(3):
        await store.create_conversation(
            "batches",
            title=None,
            model="m",
            params={},
            metadata={},
            messages=three,
            expires_at=past,
        )
    assert len((await store.sweep_expired(messages=5)).receipts) == 1
    assert len((await store.sweep_expired(messages=6)).receipts) == 2


async def test_a_conversation_with_a_running_turn_waits_for_it(
    client: Client, store: Store, alice: dict[str, str]
) -> None:
    cid = await create(client, alice)
    await expire(client, alice, cid, PAST)
    now = datetime.now(UTC)
    turn = {
        "id": uuid7(),
        "conversation_id": uuid.UUID(cid),
        "status": "running",
        "model": "m",
        "params": {},
        "created_at": now,
        "deadline_at": now + timedelta(minutes=1),
    }
    async with store.engine.begin() as conn:
        await conn.execute(turn_table.insert().values(**turn))
    assert (await store.sweep_expired()).receipts == []
    # A turn whose lease ran out belonged to a process that died: it holds nothing back.
    async with store.engine.begin() as conn:
        await conn.execute(
            update(turn_table).where(turn_table.c.id == turn["id"]).values(deadline_at=now)
        )
    assert [r.conversation_id for r in (await store.sweep_expired()).receipts] == [uuid.UUID(cid)]


# ---- legal hold -------------------------------------------------------------------------


async def test_a_legal_hold_stops_retention_and_every_deletion(
    client: Client, store: Store, alice: dict[str, str], admin: dict[str, str]
) -> None:
    cid = await create(client, alice, messages=[{"role": "user", "content": "evidence"}])
    await expire(client, alice, cid, PAST)
    assert (
        await client.patch(f"/admin/conversations/{cid}", json={"legal_hold": True}, headers=alice)
    ).status_code == 403
    held = await client.patch(
        f"/admin/conversations/{cid}", json={"legal_hold": True}, headers=admin
    )
    assert held.status_code == 200, held.text
    assert (held.json()["legal_hold"], held.json()["tenant"]) == (True, "alice")
    assert (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()["legal_hold"]

    assert (await RetentionSweeper(store).sweep()).conversations == 0
    message_id = (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).json()[
        "data"
    ][0]["id"]
    for response in (
        await client.delete(f"/v1/conversations/{cid}", headers=alice),
        await client.delete(f"/v1/conversations/{cid}/messages/{message_id}", headers=alice),
        await client.delete(f"/admin/conversations/{cid}", headers=admin),
    ):
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "legal_hold"
        assert "legal hold" in response.json()["detail"]
    assert (await rows_of(store, cid))["message"] == 1
    assert await receipts(client, alice) == []

    lifted = await client.patch(
        f"/admin/conversations/{cid}", json={"legal_hold": False}, headers=admin
    )
    assert "legal_hold" not in lifted.json()
    assert (await RetentionSweeper(store).sweep()).conversations == 1
    missing = await client.patch(
        f"/admin/conversations/{uuid7()}", json={"legal_hold": True}, headers=admin
    )
    assert missing.status_code == 404
    bad = await client.patch(
        f"/admin/conversations/{cid}", json={"legal_hold": "yes"}, headers=admin
    )
    assert bad.status_code in (404, 422)


# ---- receipts ---------------------------------------------------------------------------


async def test_every_deletion_leaves_a_receipt_its_tenant_sees(
    client: Client,
    store: Store,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    by_tenant = await create(client, alice, messages=[{"role": "user", "content": "a"}] * 2)
    by_admin = await create(client, alice)
    by_retention = await create(client, alice, expires_at=PAST)
    bobs = await create(client, bob)
    assert (await client.delete(f"/v1/conversations/{by_tenant}", headers=alice)).status_code == 204
    assert (await client.delete(f"/v1/conversations/{bobs}", headers=alice)).status_code == 404
    deleted = await client.delete(
        f"/admin/conversations/{by_admin}",
        headers={**admin, "X-Admin-Reason": "GDPR erasure request 42"},
    )
    assert deleted.status_code == 204, deleted.text
    assert (
        await client.delete(f"/admin/conversations/{by_admin}", headers=admin)
    ).status_code == 404
    await RetentionSweeper(store).sweep()
    assert (await client.delete(f"/v1/conversations/{bobs}", headers=bob)).status_code == 204

    mine = await receipts(client, alice)
    assert [r["conversation_id"] for r in mine] == [by_retention, by_admin, by_tenant]
    retention, admin_receipt, tenant_receipt = mine
    assert tenant_receipt["kind"] == "tenant"
    assert tenant_receipt["key_id"] == await key_id(store, "alice")
    assert (tenant_receipt["message_count"], tenant_receipt["reason"]) == (2, None)
    assert admin_receipt["kind"] == "admin"
    assert admin_receipt["key_id"] == await key_id(store, "ops")
    assert admin_receipt["reason"] == "GDPR erasure request 42"
    assert retention["kind"] == "retention"
    assert {r["tenant"] for r in mine} == {"alice"}
    assert [r["conversation_id"] for r in await receipts(client, bob)] == [bobs]

    everyone = await receipts(client, admin, "/admin/deletions")
    assert len(everyone) == 4
    only_bob = await client.get("/admin/deletions", params={"tenant": "bob"}, headers=admin)
    assert [r["conversation_id"] for r in only_bob.json()["data"]] == [bobs]
    assert (await client.get("/admin/deletions", headers=alice)).status_code == 403
    assert (await client.get("/v1/deletions")).status_code == 401


async def test_receipts_come_in_keyset_pages(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    ids = [await create(client, alice) for _ in range(5)]
    for cid in ids:
        assert (await client.delete(f"/v1/conversations/{cid}", headers=alice)).status_code == 204
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/deletions", params=params, headers=alice)).json()
        seen += [r["conversation_id"] for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
        # Another tenant cannot page through this list with its cursor.
        theirs = await client.get("/v1/deletions", params={"cursor": cursor}, headers=bob)
        assert theirs.status_code == 400
    assert seen == ids[::-1]


async def test_the_sweeper_runs_in_the_server_and_counts_what_it_deletes(
    settings: Settings, store: Store, alice: dict[str, str]
) -> None:
    async with serve(create_app(settings, sweep_every=0.05)) as client:
        cid = await create(client, alice, messages=[{"role": "user", "content": "x"}])
        await expire(client, alice, cid, PAST)
        for _ in range(400):
            if (await client.get(f"/v1/conversations/{cid}", headers=alice)).status_code == 404:
                break
            await asyncio.sleep(0.05)
        assert (await client.get(f"/v1/conversations/{cid}", headers=alice)).status_code == 404
        metrics = (await client.get("/metrics")).text
    assert 'convstore_deleted_total{by="retention",what="conversations"}' in metrics
    assert 'convstore_deleted_total{by="retention",what="messages"}' in metrics


async def test_the_sweep_command_deletes_expired_conversations_now(
    tmp_path: Path, database_url: str, store: Store
) -> None:
    conversation, _ = await store.create_conversation(
        "cli",
        title=None,
        model="m",
        params={},
        metadata={},
        messages=[{"role": "user", "content": "x"}],
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    env = {"CONVSTORE_DATABASE_URL": database_url}
    result = await asyncio.to_thread(run, ["sweep"], tmp_path, env)
    assert "Deleted 1 expired conversation (1 message, 0 turns) in 1 batch." in result.stderr
    assert '"message":"retention deleted 1 conversations' in result.stderr
    assert set((await rows_of(store, str(conversation.id))).values()) == {0}
    again = await asyncio.to_thread(run, ["sweep"], tmp_path, env)
    assert "Deleted 0 expired conversations (0 messages, 0 turns) in 0 batches." in again.stderr


# ---- several processes ------------------------------------------------------------------


@pytest.fixture
async def pg_stores(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one PostgreSQL database, as two server processes have."""
    first, second = Store(make_engine(postgres_url)), Store(make_engine(postgres_url))
    yield first, second
    async with first.engine.begin() as conn:
        for table in ("message", "branch", "turn", "conversation", "deletion_receipt"):
            await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
    await first.engine.dispose()
    await second.engine.dispose()


async def test_two_sweepers_at_once_never_delete_one_conversation_twice(
    pg_stores: tuple[Store, Store],
) -> None:
    first, second = pg_stores
    past = datetime.now(UTC) - timedelta(seconds=1)
    one = [{"role": "user", "content": "x"}]
    for _ in range(300):
        await first.create_conversation(
            "two", title=None, model="m", params={}, metadata={}, messages=one, expires_at=past
        )
    counts = await asyncio.gather(
        *(RetentionSweeper(s, conversations=10, pause=0).sweep() for s in (first, second))
    )
    async with first.engine.connect() as conn:
        deleted = (
            (await conn.execute(select(deletion_receipt_table.c.conversation_id))).scalars().all()
        )
        left = (await conn.execute(select(func.count()).select_from(conversation_table))).scalar()
    assert left == 0
    assert len(deleted) == len(set(deleted)) == 300
    assert sum(c.conversations for c in counts) == 300
    assert sum(c.messages for c in counts) == 300


async def test_a_sweep_skips_conversations_another_transaction_holds(
    pg_stores: tuple[Store, Store],
) -> None:
    """SKIP LOCKED: what another process has locked (a turn starting, another sweeper) is left
    for later, and the sweep neither waits for it nor fails."""
    first, second = pg_stores
    past = datetime.now(UTC) - timedelta(seconds=1)
    ids = [
        (
            await first.create_conversation(
                "held", title=None, model="m", params={}, metadata={}, messages=[], expires_at=past
            )
        )[0].id
        for _ in range(4)
    ]
    async with first.engine.begin() as conn:
        await conn.execute(select(C.id).where(C.id.in_(ids[:2])).with_for_update())
        swept = await asyncio.wait_for(RetentionSweeper(second).sweep(), timeout=60)
        assert swept.conversations == 2
    left = await RetentionSweeper(second).sweep()
    assert left.conversations == 2
