"""Conversations and messages over REST, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.fake_upstream import FakeUpstream
from service.store import Store

Client = httpx.AsyncClient

PARTS = [
    {"type": "text", "text": "What is in this picture?"},
    {
        "type": "image_url",
        "image_url": {"url": "https://example.invalid/cat.png", "detail": "high"},
    },
]


async def create(client: Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def all_messages(client: Client, headers: dict[str, str], cid: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/conversations/{cid}/messages", params={"limit": 100}, headers=headers
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_create_with_initial_messages_in_any_order(
    client: Client, alice: dict[str, str]
) -> None:
    messages = [
        {"role": "user", "content": "first, before any system message"},
        {"role": "system", "content": "Be terse."},
        {"role": "system", "content": PARTS[:1]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                }
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "lookup"},
        {"role": "user", "content": PARTS, "name": "ann"},
    ]
    body = await create(
        client,
        alice,
        title="Mixed",
        params={"temperature": 0.2},
        metadata={"project": "x", "n": [1, 2]},
        messages=messages,
    )
    assert body["title"] == "Mixed"
    assert body["model"] == "grok-4"
    assert body["params"] == {"temperature": 0.2}
    assert body["metadata"] == {"project": "x", "n": [1, 2]}
    assert body["message_count"] == 6
    assert [m["seq"] for m in body["messages"]] == [1, 2, 3, 4, 5, 6]

    stored = await all_messages(client, alice, body["id"])
    assert [m["seq"] for m in stored] == [1, 2, 3, 4, 5, 6]
    for given, got in zip(messages, stored, strict=True):
        for field, value in given.items():
            assert got[field] == value, (field, got)
        assert got["conversation_id"] == body["id"]
        assert got["created_at"].endswith("Z") or "+00:00" in got["created_at"]


async def test_get_patch_delete(client: Client, alice: dict[str, str]) -> None:
    conv = await create(client, alice, title="Old", messages=[{"role": "user", "content": "hi"}])
    cid = conv["id"]
    got = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert got["title"] == "Old"
    assert got["message_count"] == 1

    patched = await client.patch(
        f"/v1/conversations/{cid}",
        json={
            "title": "New",
            "model": "grok-3-mini",
            "params": {"max_tokens": 5},
            "metadata": {"k": "v"},
        },
        headers=alice,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "New"
    assert patched.json()["model"] == "grok-3-mini"
    assert patched.json()["params"] == {"max_tokens": 5}
    assert patched.json()["metadata"] == {"k": "v"}
    assert patched.json()["updated_at"] >= got["updated_at"]

    # Only the named fields change; a null title clears it.
    cleared = await client.patch(f"/v1/conversations/{cid}", json={"title": None}, headers=alice)
    assert cleared.json()["title"] is None
    assert cleared.json()["model"] == "grok-3-mini"

    deleted = await client.delete(f"/v1/conversations/{cid}", headers=alice)
    assert deleted.status_code == 204
    gone = await client.get(f"/v1/conversations/{cid}", headers=alice)
    assert gone.status_code == 404
    assert gone.headers["content-type"].startswith("application/problem+json")
    assert gone.json()["code"] == "not_found"
    assert (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).status_code == 404
    assert (await client.delete(f"/v1/conversations/{cid}", headers=alice)).status_code == 404


async def test_list_newest_first_with_complete_keyset_pages(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    ids = [(await create(client, alice, title=f"c{i}"))["id"] for i in range(7)]
    await create(client, bob, title="not alice's")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/conversations", params=params, headers=alice)).json()
        pages += 1
        seen += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
        # A conversation created mid-way appears on no later page and breaks nothing.
        if pages == 1:
            await create(client, alice, title="late")
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_messages_pages_asc_and_desc(client: Client, alice: dict[str, str]) -> None:
    conv = await create(
        client, alice, messages=[{"role": "user", "content": f"m{i}"} for i in range(1, 26)]
    )
    cid = conv["id"]
    for order, expected in (("asc", list(range(1, 26))), ("desc", list(range(25, 0, -1)))):
        seqs: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 10, "order": order}
            if cursor:
                params["cursor"] = cursor
            page = (
                await client.get(f"/v1/conversations/{cid}/messages", params=params, headers=alice)
            ).json()
            seqs += [m["seq"] for m in page["data"]]
            assert [m["content"] for m in page["data"]] == [
                f"m{s}" for s in seqs[-len(page["data"]) :]
            ]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert seqs == expected
    default = (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).json()
    assert len(default["data"]) == 20


async def test_append_messages(client: Client, alice: dict[str, str]) -> None:
    conv = await create(client, alice, messages=[{"role": "system", "content": "s"}])
    cid = conv["id"]
    response = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={
            "messages": [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a", "reasoning_content": "r"},
            ]
        },
        headers=alice,
    )
    assert response.status_code == 201, response.text
    assert [m["seq"] for m in response.json()["data"]] == [2, 3]
    stored = await all_messages(client, alice, cid)
    assert [(m["seq"], m["role"], m["content"]) for m in stored] == [
        (1, "system", "s"),
        (2, "user", "u"),
        (3, "assistant", "a"),
    ]
    assert stored[2]["reasoning_content"] == "r"
    got = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert got["message_count"] == 3


BAD_MESSAGES = [
    ({"role": "wizard", "content": "x"}, "role"),
    ({"role": "user"}, "content"),
    ({"role": "user", "content": 5}, "content"),
    ({"role": "tool", "content": "x"}, "tool_call_id"),
    ({"role": "user", "content": "x", "seq": 9}, "seq"),
    ({"role": "user", "content": "x", "id": "x"}, "id"),
    ({"role": "user", "content": [{"text": "no type"}]}, "type"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "image_url"),
    ({"role": "assistant"}, "content"),
    ({"content": "no role"}, "role"),
    ("just a string", "object"),
    ({"role": "user", "content": "nul \x00 here"}, "content"),
    ({"role": "user", "content": [{"type": "text", "text": "\x00"}]}, "NUL"),
]


@pytest.mark.parametrize(("message", "mentions"), BAD_MESSAGES)
async def test_bad_messages_are_rejected_and_nothing_is_stored(
    client: Client, alice: dict[str, str], message: Any, mentions: str
) -> None:
    conv = await create(client, alice, messages=[{"role": "user", "content": "keep"}])
    cid = conv["id"]
    good = {"role": "user", "content": "fine"}
    for method, path, body in (
        ("post", "/v1/conversations", {"messages": [good, message]}),
        ("post", f"/v1/conversations/{cid}/messages", {"messages": [good, message]}),
        ("post", f"/v1/conversations/{cid}/turns", {"messages": [good, message]}),
    ):
        response = await getattr(client, method)(path, json=body, headers=alice)
        assert response.status_code == 422, (path, response.text)
        problem = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "validation_error"
        assert problem["status"] == 422
        assert mentions in problem["detail"], problem["detail"]
    assert len(await all_messages(client, alice, cid)) == 1
    listing = (await client.get("/v1/conversations", headers=alice)).json()
    assert [c["id"] for c in listing["data"]] == [cid]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/conversations", {"tenant": "bob"}),
        ("/v1/conversations", {"title": 5}),
        ("/v1/conversations", {"params": {"model": "x"}}),
        ("/v1/conversations", {"params": {"stream": True}}),
        ("/v1/conversations", {"metadata": []}),
        ("/v1/conversations", {"id": "00000000-0000-0000-0000-000000000000"}),
        ("/v1/conversations", {"messages": {"role": "user"}}),
    ],
)
async def test_bad_conversation_bodies(
    client: Client, alice: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"temperature": "hot"}, "got `str` - at `params.temperature`"),
        ({"temperature": 2.5}, "<= 2.0 - at `params.temperature`"),
        ({"top_p": 0}, "> 0.0 - at `params.top_p`"),
        ({"max_tokens": 5.5}, "got `float` - at `params.max_tokens`"),
        ({"max_completion_tokens": -1}, ">= 0 - at `params.max_completion_tokens`"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "length <= 4 - at `params.stop`"),
        ({"tool_choice": "maybe"}, "'maybe' - at `params.tool_choice`"),
        ({"parallel_tool_calls": "yes"}, "got `str` - at `params.parallel_tool_calls`"),
        ({"tools": {"type": "function"}}, "got `object` - at `params.tools`"),
        ({"top_logprobs": 9}, "<= 8 - at `params.top_logprobs`"),
    ],
)
async def test_params_of_a_wrong_type_or_range_are_refused_before_anything_is_stored(
    client: Client,
    alice: dict[str, str],
    upstream: FakeUpstream,
    params: dict[str, Any],
    mentions: str,
) -> None:
    """xAI's documented parameters are checked here, so a turn that could only fail upstream
    is a 422 that stores nothing (not a stored message and a failed turn)."""
    conv = await create(client, alice, params={"temperature": 0.5, "vendor_extra": {"x": 1}})
    assert conv["params"] == {"temperature": 0.5, "vendor_extra": {"x": 1}}  # others pass
    cid = conv["id"]
    user = {"role": "user", "content": "hi"}
    for method, path, body in (
        ("post", "/v1/conversations", {"params": params}),
        ("patch", f"/v1/conversations/{cid}", {"params": params}),
        ("post", f"/v1/conversations/{cid}/turns", {"messages": [user], "params": params}),
    ):
        response = await getattr(client, method)(path, json=body, headers=alice)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] == "validation_error"
        assert mentions in response.json()["detail"], response.json()["detail"]
    assert upstream.calls == 0
    assert await all_messages(client, alice, cid) == []
    got = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert got["params"] == {"temperature": 0.5, "vendor_extra": {"x": 1}}
    listing = (await client.get("/v1/conversations", headers=alice)).json()
    assert [c["id"] for c in listing["data"]] == [cid]


async def test_malformed_json_and_bad_query(client: Client, alice: dict[str, str]) -> None:
    response = await client.post(
        "/v1/conversations",
        content=b"{not json",
        headers={**alice, "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "bad_request"

    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": "many"},
        {"cursor": "%%%"},
        {"cursor": "WzFd"},
    ):
        response = await client.get("/v1/conversations", params=params, headers=alice)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["status"] == 400
        assert "code" in response.json()
    conv = await create(client, alice)
    response = await client.get(
        f"/v1/conversations/{conv['id']}/messages", params={"order": "sideways"}, headers=alice
    )
    assert response.status_code == 400


async def test_unknown_route_and_method_are_problems(client: Client, alice: dict[str, str]) -> None:
    response = await client.get("/v1/nothing-here", headers=alice)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    response = await client.put("/v1/conversations", headers=alice)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    response = await client.get("/v1/conversations/not-a-uuid", headers=alice)
    assert response.status_code in (400, 404)
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_auth_required_and_revoked_keys(
    client: Client, store: Store, alice: dict[str, str]
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ):
        response = await client.get("/v1/conversations", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"
        assert response.headers["content-type"].startswith("application/problem+json")
    record, key = await store.create_key("carol")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/conversations", headers=headers)).status_code == 200
    assert await store.revoke_key(record.id)
    assert (await client.get("/v1/conversations", headers=headers)).status_code == 401


async def test_health_ready_schema_need_no_key(client: Client) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/conversations/{conversation_id}/turns" in schema["paths"]
    assert schema["info"]["title"] == "convstore"
