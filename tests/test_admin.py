"""The admin API: every tenant's conversations, text search, detail, stats and export."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.fake_upstream import FakeUpstream, Fault

Client = httpx.AsyncClient


async def create(client: Client, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def admin_ids(client: Client, admin: dict[str, str], **params: Any) -> list[str]:
    response = await client.get(
        "/admin/conversations", params={"limit": 100, **params}, headers=admin
    )
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


async def test_tenant_keys_get_403_and_no_key_401(client: Client, alice: dict[str, str]) -> None:
    for path in ("/admin/conversations", "/admin/stats", "/admin/export"):
        response = await client.get(path, headers=alice)
        assert response.status_code == 403, path
        assert response.json()["code"] == "forbidden"
        assert (await client.get(path)).status_code == 401


async def test_list_across_tenants_with_filters(
    client: Client, alice: dict[str, str], bob: dict[str, str], admin: dict[str, str]
) -> None:
    a1 = await create(client, alice, title="alpha", model="grok-4")
    b1 = await create(client, bob, title="beta", model="grok-3-mini")
    a2 = await create(client, alice, title="gamma", model="grok-3-mini")
    assert await admin_ids(client, admin) == [a2, b1, a1]
    assert await admin_ids(client, admin, tenant="alice") == [a2, a1]
    assert await admin_ids(client, admin, model="grok-3-mini") == [a2, b1]
    listing = (await client.get("/admin/conversations", headers=admin)).json()
    assert {c["tenant"] for c in listing["data"]} == {"alice", "bob"}

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert await admin_ids(client, admin, created_after=future) == []
    assert await admin_ids(client, admin, created_before=past) == []
    assert len(await admin_ids(client, admin, created_after=past, created_before=future)) == 3
    for wrong in ("soon", "0.5", "1700000000", "2026-02-30", "2026-01-01T25:00"):
        bad = await client.get(
            "/admin/conversations", params={"created_after": wrong}, headers=admin
        )
        assert bad.status_code == 400, (wrong, bad.text)
        assert "created_after" in bad.json()["detail"], bad.text
    # A date alone is its midnight, a time without an offset is UTC.
    today = datetime.now(UTC).date()
    assert len(await admin_ids(client, admin, created_after=today.isoformat())) == 3
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert await admin_ids(client, admin, created_after=f"{tomorrow}T00:00") == []
    assert len(await admin_ids(client, admin, created_before=f"{tomorrow} 00:00:00")) == 3
    backwards = await client.get(
        "/admin/conversations",
        params={"created_after": future, "created_before": past},
        headers=admin,
    )
    assert backwards.status_code == 400


async def test_keyset_pages_stay_correct_while_rows_are_added(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    ids = [await create(client, alice, title=f"c{i}") for i in range(5)]
    first = (await client.get("/admin/conversations", params={"limit": 2}, headers=admin)).json()
    await create(client, alice, title="newcomer")
    rest = (
        await client.get(
            "/admin/conversations",
            params={"limit": 10, "cursor": first["next_cursor"]},
            headers=admin,
        )
    ).json()
    seen = [c["id"] for c in first["data"] + rest["data"]]
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("giraffe", {"zoo"}),
        ("GIRAFFE", {"zoo"}),
        ("quarterly", {"report"}),
        ("revenue grew", {"report"}),
        ("revenue quarterly", set()),  # words must meet in the title or in one message
        ("revenue giraffe", set()),
        ("Zürich", {"travel"}),
        ("image caption", {"parts"}),
        ("nothing-like-this", set()),
        ('"quoted" OR evil', set()),
    ],
)
async def test_text_search_in_titles_and_messages(
    client: Client,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
    q: str,
    expected: set[str],
) -> None:
    ids = {
        "zoo": await create(
            client,
            alice,
            title="Animals",
            messages=[{"role": "user", "content": "Tell me about the giraffe"}],
        ),
        "report": await create(
            client,
            bob,
            title="Quarterly report",
            messages=[{"role": "assistant", "content": "Revenue grew."}],
        ),
        "travel": await create(
            client, alice, title="Trip", messages=[{"role": "user", "content": "Trains to Zürich?"}]
        ),
        "parts": await create(
            client,
            bob,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "an image caption"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x.invalid/giraffe-not-text.png"},
                        },
                    ],
                }
            ],
        ),
    }
    found = set(await admin_ids(client, admin, q=q))
    assert found == {ids[name] for name in expected}


async def test_search_sees_renamed_titles_and_forgets_deleted(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    cid = await create(client, alice, title="old name")
    await client.patch(f"/v1/conversations/{cid}", json={"title": "brand new"}, headers=alice)
    assert await admin_ids(client, admin, q="brand") == [cid]
    assert await admin_ids(client, admin, q="old") == []
    await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": [{"role": "user", "content": "appended words"}]},
        headers=alice,
    )
    assert await admin_ids(client, admin, q="appended") == [cid]
    await client.delete(f"/v1/conversations/{cid}", headers=alice)
    assert await admin_ids(client, admin, q="appended") == []


async def test_search_forgets_deleted_messages(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    """Deleting a message (and what lies below it) takes its words out of the text index: no
    search finds the conversation by them any more, while its other messages still count."""
    cid = await create(
        client,
        alice,
        messages=[
            {"role": "user", "content": "keep these words"},
            {"role": "assistant", "content": [{"type": "text", "text": "zebra stripes"}]},
            {"role": "user", "content": "giraffe spots"},
        ],
    )
    other = await create(client, alice, messages=[{"role": "user", "content": "zebra crossing"}])
    listed = await client.get(f"/v1/conversations/{cid}/messages", headers=alice)
    second = listed.json()["data"][1]["id"]

    async def tenant_ids(q: str) -> list[str]:
        found = await client.get("/v1/conversations", params={"q": q}, headers=alice)
        assert found.status_code == 200, found.text
        return [c["id"] for c in found.json()["data"]]

    assert set(await admin_ids(client, admin, q="zebra")) == {cid, other}
    deleted = await client.delete(f"/v1/conversations/{cid}/messages/{second}", headers=alice)
    assert deleted.status_code == 204, deleted.text
    for q in ("zebra", "stripes", "giraffe"):
        assert await admin_ids(client, admin, q=q) == ([other] if q == "zebra" else [])
        assert await tenant_ids(q) == ([other] if q == "zebra" else [])
    assert await admin_ids(client, admin, q="keep words") == [cid]
    assert await tenant_ids("keep") == [cid]
    # Words said again are found again.
    again = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": [{"role": "user", "content": "giraffe again"}]},
        headers=alice,
    )
    assert again.status_code == 201, again.text
    assert await admin_ids(client, admin, q="giraffe") == [cid]
    assert await admin_ids(client, admin, q="spots") == []


async def test_detail_failed_filter_and_stats(
    client: Client,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
    upstream: FakeUpstream,
) -> None:
    good = await create(client, alice, model="grok-3-mini")
    bad = await create(client, bob, model="grok-4")
    ok = await client.post(
        f"/v1/conversations/{good}/turns",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=alice,
    )
    assert ok.status_code == 201
    upstream.push_fault(Fault(kind="status", status=400))
    failed = await client.post(
        f"/v1/conversations/{bad}/turns",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=bob,
    )
    assert failed.status_code == 502

    assert await admin_ids(client, admin, status="failed") == [bad]
    assert await admin_ids(client, admin, status="completed") == [good]

    detail = (await client.get(f"/admin/conversations/{bad}", headers=admin)).json()
    assert detail["conversation"]["tenant"] == "bob"
    assert [m["role"] for m in detail["messages"]] == ["user"]
    (turn,) = detail["turns"]
    assert turn["status"] == "failed"
    assert turn["error"]["upstream_status"] == 400
    assert turn["latency_ms"] >= 0

    stats = (await client.get("/admin/stats", headers=admin)).json()
    assert stats["conversations"] == 2
    assert stats["messages"] == 3
    assert stats["turns"] == {"running": 0, "completed": 1, "failed": 1}
    usage = ok.json()["reply"]["usage"]
    by_model = {m["model"]: m for m in stats["tokens_by_model"]}
    assert by_model["grok-3-mini"]["total_tokens"] == usage["total_tokens"]
    assert by_model["grok-4"]["total_tokens"] == 0
    by_tenant = {t["tenant"]: t for t in stats["tokens_by_tenant"]}
    assert by_tenant["alice"]["total_tokens"] == usage["total_tokens"]
    (today,) = stats["by_day"]
    assert today["turns"] == 2
    assert today["day"] == datetime.now(UTC).date().isoformat()

    missing = await client.get(
        "/admin/conversations/00000000-0000-0000-0000-000000000000", headers=admin
    )
    assert missing.status_code == 404


async def test_admin_export_with_filters(
    client: Client, alice: dict[str, str], bob: dict[str, str], admin: dict[str, str]
) -> None:
    a = await create(client, alice, title="a", messages=[{"role": "user", "content": "x"}])
    b = await create(client, bob, title="b")
    everything = (await client.get("/admin/export", headers=admin)).text.splitlines()
    assert [json.loads(line)["conversation"]["id"] for line in everything] == [a, b]
    only_bob = (
        await client.get("/admin/export", params={"tenant": "bob"}, headers=admin)
    ).text.splitlines()
    assert [json.loads(line)["conversation"]["id"] for line in only_bob] == [b]
    one = await client.get(f"/admin/conversations/{a}/export", headers=admin)
    assert one.json()["messages"][0]["content"] == "x"


async def test_detail_returns_the_whole_tree(
    client: httpx.AsyncClient, alice: dict[str, str], admin: dict[str, str]
) -> None:
    created = await client.post(
        "/v1/conversations", json={"messages": [{"role": "user", "content": "q"}]}, headers=alice
    )
    cid, question = created.json()["id"], created.json()["messages"][0]
    answers = []
    for text in ("a", "b"):
        appended = await client.post(
            f"/v1/conversations/{cid}/messages",
            json={
                "parent_id": question["id"],
                "messages": [{"role": "assistant", "content": text}],
            },
            headers=alice,
        )
        answers.append(appended.json()["data"][0])
    detail = (await client.get(f"/admin/conversations/{cid}", headers=admin)).json()
    assert detail["conversation"]["head_id"] == answers[1]["id"]
    assert detail["conversation"]["message_count"] == 2
    assert [(m["id"], m["parent_id"], m["seq"]) for m in detail["messages"]] == [
        (question["id"], None, 1),
        (answers[0]["id"], question["id"], 2),
        (answers[1]["id"], question["id"], 2),
    ]
    stats = (await client.get("/admin/stats", headers=admin)).json()
    assert stats["messages"] == 3  # every branch's


async def test_imported_turns_are_not_this_deployments_usage(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    cid = await create(client, alice, model="grok-4")
    turn = await client.post(
        f"/v1/conversations/{cid}/turns",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=alice,
    )
    assert turn.status_code == 201, turn.text
    tokens = turn.json()["reply"]["usage"]["total_tokens"]
    transcript = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    imported = await client.post("/v1/conversations/import", json=transcript, headers=alice)
    assert imported.status_code == 201, imported.text

    stats = (await client.get("/admin/stats", headers=admin)).json()
    assert stats["conversations"] == 2
    assert stats["messages"] == 4
    assert stats["turns"] == {"running": 0, "completed": 1, "failed": 0}
    assert stats["imported_turns"] == 1
    assert stats["tokens_by_model"] == [{"model": "grok-4", "turns": 1, "total_tokens": tokens}]
    assert stats["tokens_by_tenant"] == [{"tenant": "alice", "turns": 1, "total_tokens": tokens}]
    assert [(d["turns"], d["total_tokens"]) for d in stats["by_day"]] == [(1, tokens)]
