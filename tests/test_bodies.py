"""JSON request bodies are decoded strictly on every surface: a value of the wrong JSON type
(``"true"`` for a boolean, ``"5"`` for an integer, ``"null"`` for null) is refused with the
field named and nothing changes; query parameters, strings by nature, are still converted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.fake_upstream import FakeUpstream

Client = httpx.AsyncClient


async def create(client: Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def refused(response: httpx.Response, field: str) -> None:
    """A 422 problem naming ``field``, in its detail and in its one error."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert (problem["status"], problem["code"]) == (422, "validation_error")
    assert [(e["key"], e["source"]) for e in problem["errors"]] == [(field, "body")]
    assert f"({field})" in problem["detail"], problem["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": 5}, "title"),
        ({"metadata": '{"team": "x"}'}, "metadata"),
        ({"params": "null"}, "params"),
        ({"expires_at": 1893456000}, "expires_at"),
        (
            {"context": {"strategy": "truncate", "max_input_tokens": "100"}},
            "context.max_input_tokens",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": 7}]}, "messages[0].name"),
    ],
)
async def test_a_conversation_of_the_wrong_types_is_not_created(
    client: Client, alice: dict[str, str], body: dict[str, Any], field: str
) -> None:
    refused(await client.post("/v1/conversations", json=body, headers=alice), field)
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"archived": "true"}, "archived"),
        ({"archived": 1}, "archived"),
        ({"archived": "false"}, "archived"),
        ({"metadata": "{}"}, "metadata"),
        ({"context": "null"}, "context"),
        ({"title": None, "archived": "0"}, "archived"),
    ],
)
async def test_a_patch_of_the_wrong_types_changes_nothing(
    client: Client, alice: dict[str, str], body: dict[str, Any], field: str
) -> None:
    conv = await create(
        client,
        alice,
        title="kept",
        metadata={"team": "a"},
        context={"strategy": "truncate", "max_input_tokens": 100},
    )
    path = f"/v1/conversations/{conv['id']}"
    if body.get("archived") == "false":
        archived = await client.patch(path, json={"archived": True}, headers=alice)
        assert archived.status_code == 200, archived.text
        conv = archived.json()
    refused(await client.patch(path, json=body, headers=alice), field)
    assert (await client.get(path, headers=alice)).json() == conv


async def test_a_turn_of_the_wrong_types_is_not_taken(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    conv = await create(client, alice, messages=[{"role": "user", "content": "kept"}])
    path = f"/v1/conversations/{conv['id']}"
    say = [{"role": "user", "content": "Hello"}]
    for body, field in (
        ({"messages": say, "stream": "true"}, "stream"),
        ({"messages": say, "stream": 1}, "stream"),
        ({"messages": say, "context": {"max_input_tokens": "50"}}, "context.max_input_tokens"),
        ({"messages": say, "params": "{}"}, "params"),
        ({"messages": say, "parent_id": 5}, "parent_id"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ):
        refused(await client.post(f"{path}/turns", json=body, headers=alice), field)
    refused(
        await client.post(f"{path}/fork", json={"through_seq": "1"}, headers=alice), "through_seq"
    )
    assert upstream.calls == 0
    messages = (await client.get(f"{path}/messages", headers=alice)).json()["data"]
    assert [m["content"] for m in messages] == ["kept"]
    listing = (await client.get("/v1/conversations", headers=alice)).json()["data"]
    assert [c["id"] for c in listing] == [conv["id"]]

    # The same turn with its values typed as JSON types is taken.
    taken = await client.post(
        f"{path}/turns",
        json={"messages": say, "stream": False, "context": {"max_input_tokens": 5000}},
        headers=alice,
    )
    assert taken.status_code == 201, taken.text
    assert upstream.calls == 1


async def test_an_admin_body_of_the_wrong_type_changes_nothing(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    conv = await create(client, alice)
    path = f"/admin/conversations/{conv['id']}"
    for value in ("true", 1, "1", None):
        refused(await client.patch(path, json={"legal_hold": value}, headers=admin), "legal_hold")
    assert (await client.get(f"/v1/conversations/{conv['id']}", headers=alice)).json() == conv
    held = await client.patch(path, json={"legal_hold": True}, headers=admin)
    assert (held.status_code, held.json()["legal_hold"]) == (200, True)


async def test_an_openai_body_of_the_wrong_type_is_an_openai_400(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    base = {"model": "grok-4", "input": "Hello"}
    for extra, param in (
        ({"stream": "true"}, "stream"),
        ({"store": "false"}, "store"),
        ({"temperature": "0.5"}, "temperature"),
        ({"max_output_tokens": "16"}, "max_output_tokens"),
        ({"metadata": "null"}, "metadata"),
    ):
        answer = await client.post("/openai/v1/responses", json={**base, **extra}, headers=alice)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            "validation_error",
        )
        assert param in error["message"]
    made = await client.post("/openai/v1/conversations", json={"metadata": "null"}, headers=alice)
    assert made.status_code == 400, made.text
    assert made.json()["error"]["param"] == "metadata"
    assert upstream.calls == 0
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


async def test_an_integer_is_taken_where_a_number_is_expected(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    answer = await client.post(
        "/openai/v1/responses",
        json={"model": "grok-4", "input": "Hello", "temperature": 1, "top_p": 1},
        headers=alice,
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["temperature"], answer.json()["top_p"]) == (1.0, 1.0)
    sent = upstream.requests[-1]["body"]
    assert (sent["temperature"], sent["top_p"]) == (1.0, 1.0)


async def test_query_parameters_are_still_converted_from_text(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    kept = await create(client, alice, title="kept")
    filed = await create(client, alice, title="filed")
    patched = await client.patch(
        f"/v1/conversations/{filed['id']}", json={"archived": True}, headers=alice
    )
    assert patched.status_code == 200, patched.text
    for query, expected in (
        ({"archived": "true"}, [filed["id"]]),
        ({"archived": "false", "limit": "5"}, [kept["id"]]),
    ):
        listing = await client.get("/v1/conversations", params=query, headers=alice)
        assert listing.status_code == 200, listing.text
        assert [c["id"] for c in listing.json()["data"]] == expected
    admin_listing = await client.get(
        "/admin/conversations", params={"archived": "1", "limit": "1"}, headers=admin
    )
    assert admin_listing.status_code == 200, admin_listing.text
    assert [c["id"] for c in admin_listing.json()["data"]] == [filed["id"]]


async def test_the_key_is_checked_before_the_body(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    conv = await create(client, alice)
    path = f"/v1/conversations/{conv['id']}"
    for headers in ({}, {"Authorization": "Bearer cs_not-a-key"}):
        for method, url, body in (
            ("PATCH", path, {"archived": "true"}),
            ("POST", f"{path}/turns", {"stream": "true"}),
            ("POST", "/v1/conversations", {"expires_at": "0000-00-00T00:00:00Z"}),
        ):
            answer = await client.request(method, url, json=body, headers=headers)
            assert answer.status_code == 401, answer.text
            assert answer.json()["code"] == "unauthorized"
        answer = await client.patch(
            path, content=b"{not json", headers={**headers, "content-type": "application/json"}
        )
        assert answer.status_code == 401, answer.text
        answer = await client.post(
            "/openai/v1/responses", json={"input": "x", "stream": "true"}, headers=headers
        )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["type"] == "authentication_error"
    # A tenant key on an admin route is refused as such, whatever the body.
    answer = await client.patch(
        f"/admin/conversations/{conv['id']}", json={"legal_hold": "true"}, headers=alice
    )
    assert (answer.status_code, answer.json()["code"]) == (403, "forbidden")
    assert upstream.calls == 0
