"""Audited admin access: every admin read of a conversation's messages (admin API, web pages,
admin export) is recorded with the admin key, the time, the way and the reason; tenants list
the reads of their own conversations, admins every read; a reason may be made mandatory."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from live import serve
from test_web import COOKIE, send, session_of

from service.app import create_app
from service.settings import Settings
from service.store import Store

Client = httpx.AsyncClient


async def create(client: Client, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def reads(
    client: Client, headers: dict[str, str], path: str = "/v1/audit", **params: Any
) -> Any:
    response = await client.get(path, params={"limit": 100, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def admin_key_id(store: Store) -> str:
    return next(str(k.id) for k in await store.list_keys() if k.is_admin)


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
async def strict(settings: Settings, store: Store) -> AsyncIterator[Client]:
    """A client of a service that requires a reason for every admin read."""
    required = dataclasses.replace(settings, admin_reason_required=True)
    async with serve(create_app(required)) as http:
        yield http


async def test_admin_api_reads_are_recorded_and_their_tenant_sees_them(
    client: Client,
    store: Store,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    cid = await create(client, alice, messages=[{"role": "user", "content": "private"}])
    bobs = await create(client, bob)
    assert await reads(client, alice) == []
    # Lists and stats show no messages: they are not recorded.
    assert (await client.get("/admin/conversations", headers=admin)).status_code == 200
    assert (await client.get("/admin/stats", headers=admin)).status_code == 200
    assert await reads(client, admin, "/admin/audit") == []

    reason = "Support ticket 1234: Zürich"
    detail = await client.get(
        f"/admin/conversations/{cid}",
        headers={**admin, "X-Admin-Reason": reason.encode()},
    )
    assert detail.status_code == 200, detail.text
    exported = await client.get(f"/admin/conversations/{cid}/export", headers=admin)
    assert exported.status_code == 200

    mine = await reads(client, alice)
    assert [(r["via"], r["reason"]) for r in mine] == [("api", None), ("api", reason)]
    assert {r["conversation_id"] for r in mine} == {cid}
    assert {r["key_id"] for r in mine} == {await admin_key_id(store)}
    assert {r["tenant"] for r in mine} == {"alice"}
    newest = datetime.fromisoformat(mine[0]["read_at"])
    assert datetime.now(UTC) - newest < timedelta(minutes=5)
    assert await reads(client, bob) == []  # tenant isolation
    assert await reads(client, admin, "/admin/audit", tenant="bob") == []
    assert len(await reads(client, admin, "/admin/audit")) == 2
    assert len(await reads(client, admin, "/admin/audit", conversation_id=cid)) == 2
    assert await reads(client, alice, conversation_id=bobs) == []
    # A missing conversation is a 404 and leaves no record.
    missing = await client.get(f"/admin/conversations/{bobs[:-4]}0000", headers=admin)
    assert missing.status_code == 404
    assert len(await reads(client, admin, "/admin/audit")) == 2
    assert (await client.get("/admin/audit", headers=alice)).status_code == 403
    assert (await client.get("/v1/audit")).status_code == 401

    # The record outlives the conversation.
    assert (await client.delete(f"/v1/conversations/{cid}", headers=alice)).status_code == 204
    assert len(await reads(client, alice)) == 2


async def test_an_admin_export_records_one_read_per_conversation(
    client: Client, alice: dict[str, str], bob: dict[str, str], admin: dict[str, str]
) -> None:
    ids = [await create(client, alice) for _ in range(3)]
    bobs = await create(client, bob)
    exported = await client.get(
        "/admin/export", params={"tenant": "alice"}, headers={**admin, "X-Admin-Reason": "audit"}
    )
    assert exported.status_code == 200
    assert len(exported.text.splitlines()) == 3
    mine = await reads(client, alice)
    assert sorted(r["conversation_id"] for r in mine) == sorted(ids)
    assert {(r["via"], r["reason"]) for r in mine} == {("export", "audit")}
    assert await reads(client, bob) == []
    # A tenant's own export is no admin read.
    assert (await client.get("/v1/export", headers=bob)).status_code == 200
    assert await reads(client, bob, conversation_id=bobs) == []


async def test_audit_lists_come_in_keyset_pages(
    client: Client, alice: dict[str, str], bob: dict[str, str], admin: dict[str, str]
) -> None:
    cid = await create(client, alice)
    for i in range(5):
        response = await client.get(
            f"/admin/conversations/{cid}", headers={**admin, "X-Admin-Reason": f"r{i}"}
        )
        assert response.status_code == 200
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/audit", params=params, headers=alice)).json()
        seen += [r["reason"] for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
        theirs = await client.get("/v1/audit", params={"cursor": cursor}, headers=bob)
        assert theirs.status_code == 400
    assert seen == ["r4", "r3", "r2", "r1", "r0"]


async def test_a_required_reason_refuses_reads_without_one(
    strict: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    cid = await create(strict, alice, messages=[{"role": "user", "content": "private"}])
    for path in (
        f"/admin/conversations/{cid}",
        f"/admin/conversations/{cid}/export",
        "/admin/export",
    ):
        for headers in (admin, {**admin, "X-Admin-Reason": ""}):
            refused = await strict.get(path, headers=headers)
            assert refused.status_code == 400, path
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "admin_reason_required"
            assert "X-Admin-Reason" in refused.json()["detail"]
        assert (await strict.get(path, headers=alice)).status_code == 403  # the key comes first
    deleted = await strict.delete(f"/admin/conversations/{cid}", headers=admin)
    assert deleted.status_code == 400
    assert await reads(strict, alice) == []
    too_long = await strict.get(
        f"/admin/conversations/{cid}", headers={**admin, "X-Admin-Reason": "x" * 501}
    )
    assert too_long.status_code == 400
    assert too_long.json()["code"] == "bad_admin_reason"
    # Reads that show no messages need no reason.
    assert (await strict.get("/admin/conversations", headers=admin)).status_code == 200
    assert (await strict.get("/admin/audit", headers=admin)).status_code == 200
    given = await strict.get(
        f"/admin/conversations/{cid}", headers={**admin, "X-Admin-Reason": "ticket 9"}
    )
    assert given.status_code == 200
    assert [r["reason"] for r in await reads(strict, alice)] == ["ticket 9"]


async def test_web_page_reads_are_recorded(
    client: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    cid = await create(client, alice, messages=[{"role": "user", "content": "private words"}])
    session = {COOKIE: await session_of(client, bearer(admin))}
    listing = await send(client, "GET", "/admin/", cookies=session)
    assert listing.status_code == 200
    assert await reads(client, alice) == []
    page = await send(client, "GET", f"/admin/c/{cid}", cookies=session)
    assert page.status_code == 200
    assert "private words" in page.text
    raw = await send(client, "GET", f"/admin/c/{cid}/m/1", cookies=session)
    assert raw.status_code == 200
    download = await send(client, "GET", f"/admin/c/{cid}/download?reason=backup", cookies=session)
    assert download.status_code == 200
    assert [(r["via"], r["reason"]) for r in await reads(client, alice)] == [
        ("page", "backup"),
        ("page", None),
        ("page", None),
    ]


async def test_the_web_page_asks_for_a_required_reason_and_carries_it_on(
    strict: Client, alice: dict[str, str], admin: dict[str, str]
) -> None:
    first = await create(strict, alice, messages=[{"role": "user", "content": "private words"}])
    session = {COOKIE: await session_of(strict, bearer(admin))}
    asked = await send(strict, "GET", f"/admin/c/{first}", cookies=session)
    assert asked.status_code == 200
    assert 'id="reason-form"' in asked.text
    assert 'name="reason"' in asked.text
    assert "private words" not in asked.text
    assert await reads(strict, alice) == []
    for path in (f"/admin/c/{first}/m/1", f"/admin/c/{first}/download"):
        refused = await send(strict, "GET", path, cookies=session)
        assert refused.status_code == 400
        assert "reason" in refused.text

    shown = await send(strict, "GET", f"/admin/c/{first}?reason=Ticket+77", cookies=session)
    assert shown.status_code == 200
    assert "private words" in shown.text
    # The page's links carry the reason on, so reading on needs no second form.
    links = re.findall(r'href="([^"]+)"', shown.text)
    raw_link = next(link for link in links if "/m/1" in link)
    download_link = next(link for link in links if "/download" in link)
    assert "reason=Ticket+77" in raw_link
    assert "reason=Ticket+77" in download_link
    for link in (raw_link, download_link):
        assert (await send(strict, "GET", link.replace("&amp;", "&"), cookies=session)).is_success
    assert [(r["via"], r["reason"]) for r in await reads(strict, alice)] == [
        ("page", "Ticket 77")
    ] * 3
