"""A tenant never reaches another tenant's data: every route answers 404, as for a missing id."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from service.fake_upstream import FakeUpstream

Client = httpx.AsyncClient


async def test_other_tenants_conversation_is_404_everywhere(
    client: Client, alice: dict[str, str], bob: dict[str, str], upstream: FakeUpstream
) -> None:
    created = await client.post(
        "/v1/conversations",
        json={"title": "secret", "messages": [{"role": "user", "content": "alice only"}]},
        headers=alice,
    )
    cid = created.json()["id"]
    turn = await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=alice)
    assert turn.status_code == 201, turn.text
    turn_id = turn.json()["turn"]["id"]
    missing = str(uuid.uuid4())

    attempts = [
        ("get", "/v1/conversations/{}", None),
        ("patch", "/v1/conversations/{}", {"title": "stolen"}),
        ("get", "/v1/conversations/{}/messages", None),
        (
            "post",
            "/v1/conversations/{}/messages",
            {"messages": [{"role": "user", "content": "inject"}]},
        ),
        ("post", "/v1/conversations/{}/turns", {"messages": [{"role": "user", "content": "x"}]}),
        ("get", f"/v1/conversations/{{}}/turns/{turn_id}", None),
        ("delete", "/v1/conversations/{}", None),
    ]
    calls_before = upstream.calls
    for method, template, body in attempts:
        answers = []
        for conversation in (cid, missing):
            kwargs: dict[str, Any] = {"headers": bob}
            if body is not None:
                kwargs["json"] = body
            response = await getattr(client, method)(template.format(conversation), **kwargs)
            answers.append((response.status_code, response.json()["code"]))
        # Bob cannot tell alice's conversation from one that does not exist.
        assert answers == [(404, "not_found"), (404, "not_found")], (method, template, answers)
    assert upstream.calls == calls_before

    listing = (await client.get("/v1/conversations", headers=bob)).json()
    assert listing["data"] == []
    mine = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert mine["title"] == "secret"
    assert mine["message_count"] == 2
    messages = (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).json()
    assert messages["data"][0]["content"] == "alice only"
    # The turn id of alice's conversation is not found under another conversation either.
    other = await client.post("/v1/conversations", json={}, headers=bob)
    response = await client.get(
        f"/v1/conversations/{other.json()['id']}/turns/{turn_id}", headers=bob
    )
    assert response.status_code == 404
