"""Imports over real sockets on both databases: big ones stall neither the server nor other
writers and are never seen half done, the import limits are refused with 422 and store nothing,
and a failed import leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import func, insert, select

from service.imports import Importer
from service.store import ImportRows, Store
from service.store.records import IMPORTING, C
from service.tables import conversation_table, message_table, utcnow, uuid7

Client = httpx.AsyncClient
STAMP = "2026-11-28T12:00:00Z"
# Before imports left the event loop, checking 20,000 messages against the schema alone held
# it for 3 to 5 s on a 2-core machine.
BIG = 20_000


def transcript(messages: list[dict[str, Any]], source: str = "src-1", **conversation: Any) -> Any:
    return {
        "format": "convstore.transcript",
        "version": 1,
        "conversation": {"id": source, **conversation},
        "messages": messages,
        "turns": [],
    }


def numbered(count: int, content: str = "hello there") -> list[dict[str, Any]]:
    return [
        {
            "seq": i + 1,
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{content} {i}",
            "created_at": STAMP,
        }
        for i in range(count)
    ]


def chatgpt(chats: dict[str, int]) -> list[dict[str, Any]]:
    """A ChatGPT ``conversations.json``: for each id, one branch of that many messages."""
    conversations = []
    for source_id, count in chats.items():
        mapping: dict[str, Any] = {"root": {"id": "root", "message": None, "parent": None}}
        parent = "root"
        for i in range(count):
            mapping[f"n{i}"] = {
                "id": f"n{i}",
                "parent": parent,
                "message": {
                    "id": f"m{i}",
                    "author": {"role": "user" if i % 2 == 0 else "assistant"},
                    "create_time": 1_764_000_000 + i,
                    "content": {"content_type": "text", "parts": [f"part {i}"]},
                },
            }
            parent = f"n{i}"
        conversations.append(
            {
                "conversation_id": source_id,
                "title": source_id,
                "create_time": 1_764_000_000,
                "mapping": mapping,
                "current_node": parent,
            }
        )
    return conversations


async def listed(client: Client, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get("/v1/conversations", params={"limit": 100}, headers=headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def while_importing(
    client: Client, headers: dict[str, str], path: str, body: bytes, writer: dict[str, str]
) -> tuple[httpx.Response, list[float], list[int]]:
    """Send an import and, until it is answered, every 20 ms ask for /health, list the
    conversations, and create one (as ``writer``): how long each of these requests took, and
    the message counts listed. The last latency is the import's own."""
    begun = time.perf_counter()
    request = asyncio.create_task(
        client.post(path, content=body, headers={**headers, "content-type": "application/json"})
    )
    latencies: list[float] = []
    counts: list[int] = []
    while not request.done():
        started = time.perf_counter()
        assert (await client.get("/health")).status_code == 200
        latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        counts += [c["message_count"] for c in await listed(client, headers)]
        latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert (await client.post("/v1/conversations", json={}, headers=writer)).status_code == 201
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    response = await request
    return response, [*latencies, time.perf_counter() - begun], counts


@pytest.mark.parametrize("kind", ["transcript", "chatgpt"])
async def test_health_answers_while_a_big_import_runs_and_no_half_import_is_seen(
    client: Client, alice: dict[str, str], bob: dict[str, str], admin: dict[str, str], kind: str
) -> None:
    if kind == "transcript":
        path, data, made = "/v1/conversations/import", transcript(numbered(BIG)), [BIG]
    else:
        path, data, made = "/v1/conversations/import/chatgpt", chatgpt({"a": BIG, "b": 5}), [BIG, 5]
    response, (*latencies, whole), counts = await while_importing(
        client, alice, path, msgspec.json.encode(data), writer=bob
    )
    assert response.status_code == 201, response.text
    assert len(latencies) >= 9  # the import took a while: the server was asked during it
    # No request waited for the import: each took a small part of its time (a server that
    # ran it in one go would have kept one waiting for most of it, however fast the machine).
    assert max(latencies) < whole / 4, (whole, sorted(latencies)[-5:])
    # A conversation appears whole or not at all.
    assert set(counts) <= set(made)
    assert sorted(c["message_count"] for c in await listed(client, alice)) == sorted(made)
    written = len(latencies) // 3  # one conversation made by bob each round
    stats = (await client.get("/admin/stats", headers=admin)).json()
    assert stats["conversations"] == len(made) + written
    assert stats["messages"] == sum(made)


TOO_LONG = "x" * 1_000_001
LIMITS = [
    (transcript(numbered(100_001, "")), "$.messages", 100_000),
    (
        transcript([{"seq": 1, "role": "user", "content": TOO_LONG}]),
        "$.messages[0].content",
        1_000_000,
    ),
    (
        transcript([{"seq": 1, "role": "user", "content": [{"type": "text", "text": TOO_LONG}]}]),
        "$.messages[0].content[0].text",
        1_000_000,
    ),
    (
        transcript(
            [{"seq": 1, "role": "assistant", "content": "a", "reasoning_content": TOO_LONG}]
        ),
        "$.messages[0].reasoning_content",
        1_000_000,
    ),
]


@pytest.mark.parametrize(("body", "where", "limit"), LIMITS)
async def test_past_an_import_limit_is_422_naming_it_and_stores_nothing(
    client: Client, alice: dict[str, str], body: Any, where: str, limit: int
) -> None:
    response = await client.post("/v1/conversations/import", json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "invalid_transcript"
    assert problem["errors"][0]["path"] == where
    assert problem["errors"][0]["limit"] == limit
    assert f"{limit:,}" in problem["detail"]
    assert where in problem["detail"]
    assert await listed(client, alice) == []


async def test_a_60_mb_message_is_refused(client: Client, alice: dict[str, str]) -> None:
    body = transcript([{"seq": 1, "role": "user", "content": "x" * 60_000_000}])
    response = await client.post("/v1/conversations/import", json=body, headers=alice)
    assert response.status_code == 422, response.text[:500]
    assert response.json()["errors"] == [
        {
            "path": "$.messages[0].content",
            "message": "is 60,000,000 characters long; at most 1,000,000 are allowed",
            "limit": 1_000_000,
        }
    ]
    assert await listed(client, alice) == []


async def test_up_to_the_limits_is_imported(client: Client, alice: dict[str, str]) -> None:
    body = transcript([{"seq": 1, "role": "user", "content": "x" * 1_000_000}])
    response = await client.post("/v1/conversations/import", json=body, headers=alice)
    assert response.status_code == 201, response.text[:500]


DEEP: Any = "deep"
for _ in range(33):
    DEEP = [DEEP]
IMAGE_NUL = [{"type": "image_url", "image_url": {"url": "\u0000"}}]


@pytest.mark.parametrize(
    ("conversation", "messages", "where"),
    [
        ({"metadata": {"a": "x\u0000y"}}, [], "$.conversation.metadata"),
        ({"params": {"k\u0000": 1}}, [], "$.conversation.params"),
        ({}, [{"seq": 1, "role": "user", "content": "a\u0000"}], "$.messages[0].content"),
        ({}, [{"seq": 1, "role": "user", "content": IMAGE_NUL}], "$.messages[0].content"),
        ({"title": "\u0000"}, [], "$.conversation.title"),
        ({"metadata": {"a": DEEP}}, [], "$.conversation.metadata"),
    ],
)
async def test_nul_and_deep_nesting_are_refused_as_everywhere(
    client: Client, alice: dict[str, str], conversation: Any, messages: Any, where: str
) -> None:
    body = transcript(messages, **conversation)
    response = await client.post("/v1/conversations/import", json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert [e["path"] for e in response.json()["errors"]] == [where]
    assert await listed(client, alice) == []


async def test_bodies_that_are_not_json_are_400(client: Client, alice: dict[str, str]) -> None:
    for path in ("/v1/conversations/import", "/v1/conversations/import/chatgpt"):
        for body in (b"{broken", b"", b"[" * 100_000 + b"]" * 100_000):
            response = await client.post(
                path, content=body, headers={**alice, "content-type": "application/json"}
            )
            assert response.status_code in (400, 422), response.text
            assert response.headers["content-type"] == "application/problem+json"
    assert await listed(client, alice) == []


async def test_an_export_imports_its_good_conversations_and_lists_the_refused(
    client: Client, alice: dict[str, str]
) -> None:
    data = chatgpt({"fine": 3, "long": 3})
    data[1]["mapping"]["n1"]["message"]["content"]["parts"] = ["y" * 1_000_001]
    response = await client.post("/v1/conversations/import/chatgpt", json=data, headers=alice)
    assert response.status_code == 201, response.text
    summary = response.json()
    assert [c["source_id"] for c in summary["data"]] == ["chatgpt:fine"]
    (refused,) = summary["refused"]
    assert refused["source_id"] == "chatgpt:long"
    assert refused["title"] == "long"
    assert refused["problem_count"] == 1
    assert refused["problems"] == [
        {
            "path": "$.messages[1].content",
            "message": "is 1,000,001 characters long; at most 1,000,000 are allowed",
            "limit": 1_000_000,
        }
    ]
    assert "1,000,000" in refused["detail"]
    assert [c["source_id"] for c in await listed(client, alice)] == ["chatgpt:fine"]
    # Sent again: the good one was imported before, the long one is refused again.
    again = (await client.post("/v1/conversations/import/chatgpt", json=data, headers=alice)).json()
    assert again["data"] == []
    assert again["already_imported"] == ["chatgpt:fine"]
    assert [r["source_id"] for r in again["refused"]] == ["chatgpt:long"]


def rows(count: int, source: str = "store-src") -> ImportRows:
    now = utcnow()
    conversation = {
        "title": "t",
        "model": "grok-4",
        "params": {},
        "metadata": {},
        "created_at": now,
        "updated_at": now,
        "source_id": source,
    }
    messages = [
        {
            "id": i + 1,
            "parent_id": i or None,
            "role": "user",
            "content": f"m{i}",
            "turn_id": None,
            "created_at": now,
        }
        for i in range(count)
    ]
    return ImportRows(conversation, messages, [])


async def counts(store: Store) -> tuple[int, int]:
    async with store.engine.connect() as conn:
        conversations = (
            await conn.execute(select(func.count()).select_from(conversation_table))
        ).scalar()
        messages = (await conn.execute(select(func.count()).select_from(message_table))).scalar()
    return int(conversations or 0), int(messages or 0)


async def test_a_failed_import_leaves_nothing_behind(store: Store) -> None:
    broken = rows(2_500)
    broken.messages[2_200]["role"] = "wizard"  # refused by the database, in a later batch
    with pytest.raises(Exception, match="role"):
        await store.import_conversation("alice", broken)
    assert await counts(store) == (0, 0)
    # The same source imports once it is right.
    created = await store.import_conversation("alice", rows(2_500))
    assert created.message_count == 2_500
    assert await counts(store) == (1, 2_500)


async def test_an_import_left_by_a_stopped_process_is_deleted_by_the_next(store: Store) -> None:
    left = uuid7()
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(conversation_table).values(
                id=left,
                tenant=IMPORTING,
                model="grok-4",
                params={},
                metadata={},
                message_count=0,
                created_at=utcnow() - timedelta(hours=2),
                updated_at=utcnow() - timedelta(hours=2),
            )
        )
    await store.import_conversation("alice", rows(3))
    async with store.engine.connect() as conn:
        tenants = (await conn.execute(select(C.tenant))).scalars().all()
    assert tenants == ["alice"]


async def test_full_collections_are_deferred_only_while_imports_run(store: Store) -> None:
    before = gc.get_threshold()
    importer = Importer(store, default_model="grok-4")
    body = msgspec.json.encode(transcript(numbered(10)))
    await asyncio.gather(importer.transcript("alice", body), importer.transcript("bob", body))
    assert gc.get_threshold() == before


async def test_the_api_holds_text_parts_to_the_content_limit_too(
    client: Client, alice: dict[str, str]
) -> None:
    """What the API stores, an export holds and an import takes back."""
    for size, status in ((1_000_000, 201), (1_000_001, 422)):
        parts = [{"type": "text", "text": "x" * size}]
        response = await client.post(
            "/v1/conversations",
            json={"messages": [{"role": "user", "content": parts}]},
            headers=alice,
        )
        assert response.status_code == status, response.text[:300]
    assert "1,000,000" in response.json()["detail"]
    (conversation,) = await listed(client, alice)
    exported = await client.get(f"/v1/conversations/{conversation['id']}/export", headers=alice)
    again = await client.post("/v1/conversations/import", content=exported.content, headers=alice)
    assert again.status_code == 201, again.text[:300]
