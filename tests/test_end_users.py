"""End users: a conversation's `user` and `archived`, and the tenant's list filtered by them, by
metadata and by text, in keyset pages; on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from test_hardening import assert_problem

from service.store import ConversationFilter, make_engine
from service.store.records import CONVERSATION_COLUMNS

Client = httpx.AsyncClient
Conversation = dict[str, Any]


async def create(client: Client, headers: dict[str, str], **body: Any) -> Conversation:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: Conversation = response.json()
    return result


async def listed(
    client: Client, headers: dict[str, str], params: list[tuple[str, Any]], *, limit: int = 100
) -> list[str]:
    """The ids of every page of the tenant's list with these parameters, in order."""
    ids: list[str] = []
    cursor = None
    while True:
        page_params = [*params, ("limit", limit)] + ([("cursor", cursor)] if cursor else [])
        response = await client.get("/v1/conversations", params=page_params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        ids += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return ids
        cursor = page["next_cursor"]


async def test_user_and_archived_are_set_changed_and_cleared(
    client: Client, alice: dict[str, str]
) -> None:
    made = await create(client, alice, title="t", user="user-17")
    assert (made["user"], made["archived"]) == ("user-17", False)
    cid = made["id"]
    patched = await client.patch(
        f"/v1/conversations/{cid}", json={"archived": True, "user": "user-18"}, headers=alice
    )
    assert (patched.json()["user"], patched.json()["archived"]) == ("user-18", True)
    got = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert (got["user"], got["archived"], got["title"]) == ("user-18", True, "t")
    cleared = await client.patch(f"/v1/conversations/{cid}", json={"user": None}, headers=alice)
    assert (cleared.json()["user"], cleared.json()["archived"]) == (None, True)
    plain = await create(client, alice)
    assert (plain["user"], plain["archived"]) == (None, False)


async def test_filters_keep_exactly_the_matching_conversations(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    ann = await create(
        client, alice, user="ann", title="Paris trip", metadata={"app": "web", "n": 3}
    )
    ann_old = await create(client, alice, user="ann", title="old", metadata={"app": "ios"})
    await client.patch(f"/v1/conversations/{ann_old['id']}", json={"archived": True}, headers=alice)
    ben = await create(
        client,
        alice,
        user="ben",
        title="groceries",
        metadata={"app": "web", 'odd "key" ü': "yes", "n": "3"},
        messages=[{"role": "user", "content": "a weekend in Paris?"}],
    )
    nobody = await create(client, alice, title="untitled", metadata={"app": ["web"]})
    # Another tenant's conversation of an end user with the same id stays that tenant's.
    await create(client, bob, user="ann", title="Paris", metadata={"app": "web"})

    async def ids(*params: tuple[str, Any]) -> list[str]:
        return await listed(client, alice, list(params))

    assert await ids(("user", "ann")) == [ann_old["id"], ann["id"]]
    assert await ids(("user", "ann"), ("archived", "false")) == [ann["id"]]
    assert await ids(("archived", "true")) == [ann_old["id"]]
    assert await ids(("archived", "false")) == [nobody["id"], ben["id"], ann["id"]]
    assert await ids(("user", "nobody")) == []
    # Metadata matches a key's string value exactly: not a number, not a list holding it.
    assert await ids(("metadata.app", "web")) == [ben["id"], ann["id"]]
    assert await ids(("metadata.n", "3")) == [ben["id"]]
    assert await ids(("metadata.app", "web"), ("metadata.n", "3")) == [ben["id"]]
    assert await ids(('metadata.odd "key" ü', "yes")) == [ben["id"]]
    assert await ids(("metadata.app", "we")) == []
    # Text in titles or messages, the tenant's own only.
    assert await ids(("q", "paris")) == [ben["id"], ann["id"]]
    assert await ids(("q", "paris"), ("user", "ann")) == [ann["id"]]
    assert await ids(("q", "weekend paris")) == [ben["id"]]
    assert await ids() == [nobody["id"], ben["id"], ann_old["id"], ann["id"]]


async def test_keyset_pages_hold_under_every_filter(client: Client, alice: dict[str, str]) -> None:
    """Every combination of filters, paged two and three at a time, gives exactly the matching
    conversations newest first, without repeats, as one page of all would."""
    made: list[Conversation] = []
    for i in range(14):
        body: dict[str, Any] = {
            "title": "blue sky" if i % 3 == 0 else "grey day",
            "metadata": {"app": "web" if i % 2 else "ios"},
        }
        if i % 4:
            body["user"] = f"u{i % 2}"
        conversation = await create(client, alice, **body)
        if i % 5 == 0:
            await client.patch(
                f"/v1/conversations/{conversation['id']}", json={"archived": True}, headers=alice
            )
            conversation["archived"] = True
        made.append(conversation)
    newest_first = list(reversed(made))
    choices: list[list[tuple[str, Any, Callable[[Conversation], bool]] | None]] = [
        [None, ("user", "u1", lambda c: c["user"] == "u1")],
        [None, ("archived", "false", lambda c: not c["archived"])],
        [None, ("metadata.app", "web", lambda c: c["metadata"]["app"] == "web")],
        [None, ("q", "blue", lambda c: c["title"] == "blue sky")],
    ]
    for combination in itertools.product(*choices):
        chosen = [c for c in combination if c is not None]
        params = [(name, value) for name, value, _ in chosen]
        expected = [c["id"] for c in newest_first if all(keep(c) for _, _, keep in chosen)]
        for limit in (2, 3):
            assert await listed(client, alice, params, limit=limit) == expected, params


async def test_a_page_goes_on_where_it_was_while_conversations_are_added(
    client: Client, alice: dict[str, str]
) -> None:
    first = [await create(client, alice, user="pat") for _ in range(4)]
    page = (
        await client.get("/v1/conversations", params={"user": "pat", "limit": 2}, headers=alice)
    ).json()
    await create(client, alice, user="pat")  # newer: before the first page
    rest = (
        await client.get(
            "/v1/conversations",
            params={"user": "pat", "limit": 10, "cursor": page["next_cursor"]},
            headers=alice,
        )
    ).json()
    got = [c["id"] for c in page["data"] + rest["data"]]
    assert got == [c["id"] for c in reversed(first)]


async def test_the_export_takes_the_same_filters(client: Client, alice: dict[str, str]) -> None:
    mine = await create(client, alice, user="dora", title="mine")
    await create(client, alice, user="eli", title="not mine")
    response = await client.get("/v1/export", params={"user": "dora"}, headers=alice)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [t["conversation"]["title"] for t in lines] == ["mine"]
    assert lines[0]["conversation"]["user"] == "dora"
    assert mine["id"] == lines[0]["conversation"]["id"]


async def test_transcripts_and_forks_keep_user_and_archived(
    client: Client, alice: dict[str, str]
) -> None:
    made = await create(client, alice, user="fay", messages=[{"role": "user", "content": "hello"}])
    cid = made["id"]
    await client.patch(f"/v1/conversations/{cid}", json={"archived": True}, headers=alice)
    transcript = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    assert (transcript["conversation"]["user"], transcript["conversation"]["archived"]) == (
        "fay",
        True,
    )
    transcript["conversation"]["id"] = "elsewhere"
    imported = await client.post("/v1/conversations/import", json=transcript, headers=alice)
    assert imported.status_code == 201, imported.text
    assert (imported.json()["user"], imported.json()["archived"]) == ("fay", True)
    fork = await client.post(f"/v1/conversations/{cid}/fork", json={}, headers=alice)
    assert (fork.json()["user"], fork.json()["archived"]) == ("fay", False)


@pytest.mark.parametrize(
    ("params", "code", "says"),
    [
        ({"metadata.": "x"}, "bad_request", "metadata.<key>"),
        ({"metadata." + "k" * 201: "x"}, "bad_request", "metadata.<key>"),
        ({"metadata.app": "x" * 1001}, "bad_request", "metadata.app"),
        ({f"metadata.k{i}": "x" for i in range(11)}, "bad_request", "At most 10"),
        # Declared parameters are checked by their declarations.
        ({"archived": "maybe"}, "validation_error", "archived"),
        ({"user": ""}, "validation_error", "user"),
        ({"user": "u" * 201}, "validation_error", "user"),
        ({"user": "a\x00b"}, "validation_error", "user"),
    ],
)
async def test_bad_filters_are_clear_problems(
    client: Client, alice: dict[str, str], params: dict[str, str], code: str, says: str
) -> None:
    response = await client.get("/v1/conversations", params=params, headers=alice)
    assert says in assert_problem(response, 400, code)["detail"]


async def test_a_metadata_key_twice_is_refused(client: Client, alice: dict[str, str]) -> None:
    response = await client.get(
        "/v1/conversations", params=[("metadata.a", "1"), ("metadata.a", "2")], headers=alice
    )
    assert "twice" in assert_problem(response, 400, "bad_request")["detail"]


@pytest.mark.parametrize("body", [{"user": ""}, {"user": "x" * 201}, {"archived": "yes"}])
async def test_bad_user_or_archived_changes_nothing(
    client: Client, alice: dict[str, str], body: dict[str, Any]
) -> None:
    made = await create(client, alice, user="gil")
    response = await client.patch(f"/v1/conversations/{made['id']}", json=body, headers=alice)
    assert_problem(response, 422, "validation_error")
    got = (await client.get(f"/v1/conversations/{made['id']}", headers=alice)).json()
    assert (got["user"], got["archived"]) == ("gil", False)
    refused = await client.post("/v1/conversations", json={"user": ""}, headers=alice)
    assert_problem(refused, 422, "validation_error")


# The conversation table's indexes that no constraint owns, but the one kept.
_OTHER_INDEXES = """
    SELECT index.relname FROM pg_index AS i
    JOIN pg_class AS index ON index.oid = i.indexrelid
    JOIN pg_class AS owner ON owner.oid = i.indrelid
    WHERE owner.relname = 'conversation' AND index.relname <> :keep
      AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
"""


@pytest.mark.parametrize(
    ("params", "index"),
    [
        ({"metadata": {"app": "web"}}, "search_conversation_metadata"),
        ({"user": "ann"}, "ix_conversation_tenant_end_user"),
    ],
)
async def test_postgresql_finds_them_through_their_indexes(
    postgres_url: str, params: dict[str, Any], index: str
) -> None:
    """The list's query reads like the index's expression, so the planner can use it (told
    not to scan the table, as it would for a table this small, and given no other index to
    choose: between two that fit an empty table equally well its choice is a coin toss)."""
    filters = ConversationFilter(
        # Without a tenant, the metadata's is the only index the planner may use.
        tenant="alice" if "user" in params else None,
        user=params.get("user"),
        metadata=tuple(params.get("metadata", {}).items()),
        dialect="postgresql",
    )
    query = filters.apply(select(*CONVERSATION_COLUMNS))
    engine = make_engine(postgres_url, pool_size=1)

    @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
    def explain(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> Any:
        return ("EXPLAIN " + statement if statement.startswith("SELECT") else statement), parameters

    try:
        async with engine.connect() as conn, conn.begin() as transaction:
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            others = await conn.execute(text(_OTHER_INDEXES), {"keep": index})
            for (name,) in others.all():
                await conn.execute(text(f'DROP INDEX "{name}"'))  # rolled back below
            plan = "\n".join(row[0] for row in await conn.execute(query))
            await transaction.rollback()
    finally:
        await engine.dispose()
    assert index in plan, plan
