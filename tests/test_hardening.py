"""Limits with clear answers, and no route that lets one tenant reach another's data."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest

from service.app import MAX_BODY_BYTES
from service.fake_upstream import FakeUpstream
from service.schemas import MAX_JSON_DEPTH, MAX_MESSAGES_PER_REQUEST, MAX_OBJECT_BYTES
from service.store import Store

Client = httpx.AsyncClient
USER = {"role": "user", "content": "hi"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["title"]
    assert problem["detail"]
    return problem


async def test_limits_answer_with_clear_problems(client: Client, alice: dict[str, str]) -> None:
    too_big = b'{"title": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_problem(
        await client.post(
            "/v1/conversations",
            content=too_big,
            headers={**alice, "content-type": "application/json"},
        ),
        413,
        "payload_too_large",
    )
    many = {"messages": [{"role": "user", "content": "m"}] * (MAX_MESSAGES_PER_REQUEST + 1)}
    assert_problem(
        await client.post("/v1/conversations", json=many, headers=alice), 422, "validation_error"
    )
    long_content = {"messages": [{"role": "user", "content": "x" * 1_000_001}]}
    assert_problem(
        await client.post("/v1/conversations", json=long_content, headers=alice),
        422,
        "validation_error",
    )
    big_metadata = {"metadata": {"blob": "x" * MAX_OBJECT_BYTES}}
    problem = assert_problem(
        await client.post("/v1/conversations", json=big_metadata, headers=alice),
        422,
        "validation_error",
    )
    assert "metadata" in problem["detail"]
    assert_problem(
        await client.get("/v1/conversations", params={"limit": 1000}, headers=alice),
        400,
        "validation_error",
    )
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


async def test_turn_limits_belong_to_keys(
    client: Client, store: Store, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    _, key = await store.create_key("alice", turns_per_minute=6)
    limited = {"Authorization": f"Bearer {key}"}
    cid = (await client.post("/v1/conversations", json={}, headers=alice)).json()["id"]

    async def turn(headers: dict[str, str], text: str) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": text}]}
        return await client.post(f"/v1/conversations/{cid}/turns", json=body, headers=headers)

    answers = [await turn(limited, f"q{i}") for i in range(3)]
    assert [a.status_code for a in answers] == [201, 429, 429]  # a burst of one, then 1 per 10 s
    problem = assert_problem(answers[-1], 429, "rate_limited")
    assert "6 a minute" in problem["detail"]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 10
    # Refused turns stored nothing; a key without a limit (the default) is not limited, though
    # it belongs to the same tenant.
    assert [(await turn(alice, f"a{i}")).status_code for i in range(20)] == [201] * 20
    messages = await client.get(f"/v1/conversations/{cid}/messages?limit=100", headers=alice)
    contents = [m["content"] for m in messages.json()["data"] if m["role"] == "user"]
    assert contents == ["q0", *(f"a{i}" for i in range(20))]
    # Lifting the limit takes effect at once (the key cache is off in tests).
    [record] = await store.find_keys(key[:10])
    assert await store.limit_key(record.id, None)
    assert (await turn(limited, "again")).status_code == 201


async def test_framework_errors_are_problems(client: Client, alice: dict[str, str]) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not_found")
    assert_problem(
        await client.delete("/v1/conversations", headers=alice), 405, "method_not_allowed"
    )
    assert_problem(
        await client.post(
            "/v1/conversations",
            content=b"[1,",
            headers={**alice, "content-type": "application/json"},
        ),
        400,
        "bad_request",
    )
    assert_problem(
        await client.post("/v1/conversations", json={"title": 1}, headers=alice),
        422,
        "validation_error",
    )


async def test_no_route_reaches_another_tenants_data(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    cid = (
        await client.post(
            "/v1/conversations",
            json={"title": "alice's", "messages": [{"role": "user", "content": "private"}]},
            headers=alice,
        )
    ).json()["id"]
    turn = await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=alice)
    turn_id = turn.json()["turn"]["id"]
    for method, path, body in [
        ("get", f"/v1/conversations/{cid}/export", None),
        ("get", f"/v1/conversations/{cid}/export?format=markdown", None),
        ("post", f"/v1/conversations/{cid}/fork", {"through_seq": 1}),
        ("get", f"/v1/conversations/{cid}/turns/{turn_id}/events", None),
    ]:
        kwargs: dict[str, Any] = {"headers": bob}
        if body is not None:
            kwargs["json"] = body
        assert_problem(await getattr(client, method)(path, **kwargs), 404, "not_found")
    # Bob's own bulk export and listing hold nothing of alice's.
    assert (await client.get("/v1/export", headers=bob)).text == ""
    assert (await client.get("/v1/conversations", headers=bob)).json()["data"] == []
    # Importing alice's transcript as bob makes bob a copy of his own, not access to hers.
    transcript = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    imported = await client.post("/v1/conversations/import", json=transcript, headers=bob)
    assert imported.status_code == 201
    assert imported.json()["id"] != cid
    assert (await client.get(f"/v1/conversations/{cid}", headers=bob)).status_code == 404
    # Alice's conversation is untouched.
    mine = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert mine["message_count"] == 2
    listing = (await client.get("/v1/conversations", headers=alice)).json()["data"]
    assert [c["id"] for c in listing] == [cid]


@pytest.mark.parametrize(
    "field", ["seq", "id", "tenant", "conversation_id", "turn_id", "created_at"]
)
async def test_clients_cannot_set_server_fields(
    client: Client, alice: dict[str, str], field: str
) -> None:
    value: Any = 7 if field == "seq" else str(uuid.uuid4())
    for body in ({field: value}, {"messages": [{"role": "user", "content": "x", field: value}]}):
        assert_problem(
            await client.post("/v1/conversations", json=body, headers=alice),
            422,
            "validation_error",
        )
    cid = (await client.post("/v1/conversations", json={}, headers=alice)).json()["id"]
    assert_problem(
        await client.patch(f"/v1/conversations/{cid}", json={field: value}, headers=alice),
        422,
        "validation_error",
    )
    assert (
        json.loads((await client.get(f"/v1/conversations/{cid}", headers=alice)).text)[
            "message_count"
        ]
        == 0
    )


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 967, 200_000])
async def test_json_nested_too_deeply_is_422_and_stores_nothing(
    client: Client, alice: dict[str, str], depth: int
) -> None:
    deep = nested_arrays(depth)
    cid = (await client.post("/v1/conversations", json={}, headers=alice)).json()["id"]
    part = b'[{"type": "text", "text": "x", "extra": ' + deep + b"}]"
    attempts = [
        ("POST", "/v1/conversations", b'{"metadata": {"a": ' + deep + b"}}"),
        ("POST", "/v1/conversations", b'{"params": {"a": ' + deep + b"}}"),
        ("PATCH", f"/v1/conversations/{cid}", b'{"metadata": {"a": ' + deep + b"}}"),
        (
            "POST",
            f"/v1/conversations/{cid}/messages",
            b'{"messages": [{"role": "user", "content": ' + part + b"}]}",
        ),
        ("POST", f"/v1/conversations/{cid}/turns", b'{"params": {"a": ' + deep + b"}}"),
    ]
    for method, path, body in attempts:
        answer = await client.request(
            method, path, content=body, headers={**alice, "content-type": "application/json"}
        )
        problem = assert_problem(answer, 422, "validation_error")
        assert "deep" in problem["detail"]
    listed = (await client.get("/v1/conversations", headers=alice)).json()["data"]
    assert [c["id"] for c in listed] == [cid]
    assert listed[0]["metadata"] == {}
    assert listed[0]["message_count"] == 0


async def test_json_nested_up_to_the_limit_is_stored(client: Client, alice: dict[str, str]) -> None:
    value: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH - 1):
        value = [value]
    created = await client.post("/v1/conversations", json={"metadata": {"a": value}}, headers=alice)
    assert created.status_code == 201, created.text
    assert created.json()["metadata"] == {"a": value}


async def test_nul_in_params_or_metadata_is_422(client: Client, alice: dict[str, str]) -> None:
    for body in (
        {"metadata": {"a": "x\u0000y"}},
        {"params": {"user": "\u0000"}},
        {"metadata": {"k\u0000": 1}},
    ):
        assert_problem(
            await client.post("/v1/conversations", json=body, headers=alice),
            422,
            "validation_error",
        )
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


def _unsigned(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


async def test_cursors_are_signed_and_bound_to_their_list(
    client: Client, alice: dict[str, str], bob: dict[str, str], admin: dict[str, str]
) -> None:
    for _ in range(3):
        await client.post("/v1/conversations", json={"messages": [USER] * 3}, headers=alice)
        await client.post("/v1/conversations", json={}, headers=bob)
    first = (await client.get("/v1/conversations?limit=1", headers=alice)).json()
    cid = first["data"][0]["id"]
    good = first["next_cursor"]
    assert (await client.get(f"/v1/conversations?limit=1&cursor={good}", headers=alice)).is_success
    messages = f"/v1/conversations/{cid}/messages"
    message_cursor = (await client.get(f"{messages}?limit=1", headers=alice)).json()["next_cursor"]
    admin_cursor = (await client.get("/admin/conversations?limit=1", headers=admin)).json()[
        "next_cursor"
    ]
    body, _, mac = good.partition(".")
    forged = [
        _unsigned("…", 123),
        _unsigned(2**63),
        _unsigned("9999-12-31T23:59:59+00:00", str(uuid.uuid4())),
        _unsigned("0001-01-01T00:00:00+00:00", str(uuid.uuid4())),
        f"{_unsigned('conversations:alice', 2**63)}.{mac}",  # another payload, a real signature
        f"{body}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}",  # its first character (6 whole bits)
        f"{body}.",
        message_cursor,
        admin_cursor,
        "\u00e9t\u00e9",
    ]
    for cursor in forged:
        for path, headers in (("/v1/conversations", alice), (messages, alice)):
            answer = await client.get(path, params={"cursor": cursor}, headers=headers)
            if cursor == message_cursor and path == messages:
                assert answer.status_code == 200
                continue
            assert_problem(answer, 400, "bad_request")
        answer = await client.get("/admin/conversations", params={"cursor": cursor}, headers=admin)
        if cursor != admin_cursor:
            assert_problem(answer, 400, "bad_request")
    # A tenant's cursor means nothing to another tenant.
    assert_problem(
        await client.get("/v1/conversations", params={"cursor": good}, headers=bob),
        400,
        "bad_request",
    )
    for tampered in (_unsigned(2**63 - 1), _unsigned(2**31)):
        assert_problem(
            await client.get(messages, params={"cursor": tampered}, headers=alice),
            400,
            "bad_request",
        )


async def test_admin_filters_out_of_range_are_400(client: Client, admin: dict[str, str]) -> None:
    for params, code in (
        ({"created_after": "9999-12-31T23:59:59-23:59"}, "bad_request"),
        ({"created_before": "0001-01-01T00:00:00+23:59"}, "bad_request"),
        ({"q": "a\u0000b"}, "validation_error"),
        ({"tenant": "\u0000"}, "validation_error"),
    ):
        for path in ("/admin/conversations", "/admin/export"):
            answer = await client.get(path, params=params, headers=admin)
            assert_problem(answer, 400, code)


async def test_a_bad_host_header_is_never_a_500(client: Client, alice: dict[str, str]) -> None:
    for host in ("x:abc", ":::", "x:99999"):
        for path in ("/v1/conversations/nope", "/v1/nothing", "/v1/conversations"):
            answer = await client.get(path, headers={**alice, "host": host})
            assert answer.status_code < 500, (host, path, answer.text)
