"""One running turn per conversation, idempotent retries, timeouts and abandoned turns."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from live import TcpRelay, serve
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from test_turn_endings import wait_for_call

from service.app import create_app
from service.fake_upstream import FakeUpstream, Fault
from service.settings import Settings
from service.store import Reply, Store
from service.tables import turn_table, utcnow

Client = httpx.AsyncClient
USER = {"role": "user", "content": "hello"}
USER_TURN = {"messages": [USER]}


async def new_conversation(client: Client, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def messages_of(client: Client, headers: dict[str, str], cid: str) -> list[dict[str, Any]]:
    page = await client.get(
        f"/v1/conversations/{cid}/messages", params={"limit": 100}, headers=headers
    )
    data: list[dict[str, Any]] = page.json()["data"]
    return data


async def expire_lease(store: Store, turn_id: uuid.UUID) -> None:
    """Make a running turn look like its process died: its lease ran out a second ago."""
    async with store.engine.begin() as conn:
        await conn.execute(
            update(turn_table)
            .where(turn_table.c.id == turn_id)
            .values(deadline_at=utcnow() - timedelta(seconds=1))
        )


async def test_turn_or_append_while_a_turn_runs_is_409_without_side_effects(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="hang"))
    first = asyncio.create_task(
        client.post(f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=alice)
    )
    await wait_for_call(upstream)
    assert upstream.calls == 1
    second = await client.post(
        f"/v1/conversations/{cid}/turns",
        json={"messages": [{"role": "user", "content": "me too"}]},
        headers=alice,
    )
    assert second.status_code == 409, second.text
    assert second.json()["code"] == "turn_in_progress"
    appended = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": [{"role": "user", "content": "sneak"}]},
        headers=alice,
    )
    assert appended.status_code == 409
    assert appended.json()["code"] == "turn_in_progress"
    upstream.release()
    done = await first
    assert done.status_code == 201, done.text
    stored = await messages_of(client, alice, cid)
    assert [(m["seq"], m["role"], m["content"]) for m in stored][:1] == [(1, "user", "hello")]
    assert [m["seq"] for m in stored] == [1, 2]
    assert upstream.calls == 1
    conv = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert conv["message_count"] == 2


async def test_concurrent_turns_one_wins(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="slow", delay=0.2, times=20))
    answers = await asyncio.gather(
        *[
            client.post(
                f"/v1/conversations/{cid}/turns",
                json={"messages": [{"role": "user", "content": f"q{i}"}]},
                headers=alice,
            )
            for i in range(8)
        ]
    )
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {201, 409}
    assert codes.count(201) >= 1
    stored = await messages_of(client, alice, cid)
    assert [m["seq"] for m in stored] == list(range(1, 2 * codes.count(201) + 1))
    assert [m["role"] for m in stored] == ["user", "assistant"] * codes.count(201)


async def test_idempotent_turn_calls_upstream_once(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    headers = {**alice, "Idempotency-Key": "turn-1"}
    first = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers
    )
    again = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert upstream.calls == 1
    assert len(await messages_of(client, alice, cid)) == 2

    different = await client.post(
        f"/v1/conversations/{cid}/turns",
        json={"messages": [{"role": "user", "content": "other"}]},
        headers=headers,
    )
    assert different.status_code == 422
    assert different.json()["code"] == "idempotency_key_reused"
    # Keys are per tenant: another tenant's identical key is unrelated.
    assert len(await messages_of(client, alice, cid)) == 2


async def test_idempotent_duplicate_while_running_is_409(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="hang"))
    headers = {**alice, "Idempotency-Key": "slow-1"}
    first = asyncio.create_task(
        client.post(f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers)
    )
    await wait_for_call(upstream)
    duplicate = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "idempotency_key_in_use"
    upstream.release()
    assert (await first).status_code == 201
    assert upstream.calls == 1


async def test_idempotent_create_and_append(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    body = {"title": "once", "messages": [USER]}
    first = await client.post(
        "/v1/conversations", json=body, headers={**alice, "Idempotency-Key": "k"}
    )
    again = await client.post(
        "/v1/conversations", json=body, headers={**alice, "Idempotency-Key": "k"}
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    other = await client.post(
        "/v1/conversations", json=body, headers={**bob, "Idempotency-Key": "k"}
    )
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]
    listing = (await client.get("/v1/conversations", headers=alice)).json()
    assert len(listing["data"]) == 1

    cid = first.json()["id"]
    append = {"messages": [{"role": "assistant", "content": "a"}]}
    for _ in range(2):
        response = await client.post(
            f"/v1/conversations/{cid}/messages",
            json=append,
            headers={**alice, "Idempotency-Key": "append-1"},
        )
        assert response.status_code == 201
    assert len(await messages_of(client, alice, cid)) == 2


async def test_refused_request_releases_its_idempotency_key(
    client: Client, alice: dict[str, str]
) -> None:
    headers = {**alice, "Idempotency-Key": "fix-me"}
    cid = await new_conversation(client, alice)
    bad = await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=headers)
    assert bad.status_code == 422  # nothing to send: no effect, so the key is free again
    fixed = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers
    )
    assert fixed.status_code == 201, fixed.text


async def test_failed_turn_answer_is_replayed_under_its_key(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="status", status=400))
    headers = {**alice, "Idempotency-Key": "doomed"}
    first = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers
    )
    again = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=headers
    )
    assert first.status_code == again.status_code == 502
    assert again.json()["turn_id"] == first.json()["turn_id"]
    assert again.headers["content-type"].startswith("application/problem+json")
    assert upstream.calls == 1


async def test_hung_upstream_gives_504_within_the_timeout(
    settings: Settings, store: Store, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    app = create_app(dataclasses.replace(settings, upstream_timeout=0.5), retry_backoff=0.01)
    async with serve(app) as client:
        cid = await new_conversation(client, alice)
        upstream.push_fault(Fault(kind="hang", delay=30))
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.post(
            f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=alice
        )
        elapsed = loop.time() - started
        assert response.status_code == 504, response.text
        assert response.json()["code"] == "upstream_timeout"
        assert elapsed < 5
        assert [m["role"] for m in await messages_of(client, alice, cid)] == ["user"]


async def test_abandoned_turn_is_recovered(
    client: Client, store: Store, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, messages=[USER])
    # A turn left running by a process that died: its lease has run out.
    start = await store.begin_turn(
        "alice", uuid.UUID(cid), [], model=None, params=None, stream=False, lease=60
    )
    blocked = await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=alice)
    assert blocked.status_code == 409
    await expire_lease(store, start.turn.id)
    response = await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=alice)
    assert response.status_code == 201, response.text
    old = (await client.get(f"/v1/conversations/{cid}/turns/{start.turn.id}", headers=alice)).json()
    assert old["status"] == "failed"
    assert old["error"]["code"] == "abandoned"
    assert [m["role"] for m in await messages_of(client, alice, cid)] == ["user", "assistant"]


async def test_a_turn_declared_abandoned_stores_nothing_when_it_ends(
    client: Client, store: Store, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, messages=[USER])
    # A process stalled past its lease: another takes over the conversation...
    stalled = await store.begin_turn(
        "alice", uuid.UUID(cid), [], model=None, params=None, stream=False, lease=60
    )
    await expire_lease(store, stalled.turn.id)
    taken_over = await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=alice)
    assert taken_over.status_code == 201, taken_over.text
    # ...and when the stalled turn's answer finally arrives, it is not stored, and the seq it
    # took is given back: no gap in the conversation.
    late = Reply(content="too late", model="grok-4", finish_reason="stop")
    assert await store.complete_turn(stalled, late, latency_ms=1, upstream_ms=1, attempts=1) is None
    stored = await messages_of(client, alice, cid)
    assert [(m["seq"], m["role"]) for m in stored] == [(1, "user"), (2, "assistant")]
    conversation = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert conversation["message_count"] == 2
    old = await client.get(f"/v1/conversations/{cid}/turns/{stalled.turn.id}", headers=alice)
    assert old.json()["error"]["code"] == "abandoned"


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_bad_idempotency_keys(client: Client, alice: dict[str, str], key: str) -> None:
    response = await client.post(
        "/v1/conversations", json={}, headers={**alice, "Idempotency-Key": key}
    )
    assert response.status_code == 400
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


async def test_conversation_deleted_while_the_model_answers(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="hang"))
    turn = asyncio.create_task(
        client.post(f"/v1/conversations/{cid}/turns", json={"messages": [USER]}, headers=alice)
    )
    await wait_for_call(upstream)
    assert (await client.delete(f"/v1/conversations/{cid}", headers=alice)).status_code == 204
    upstream.release()
    answer = await turn
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"
    assert (await client.get(f"/v1/conversations/{cid}", headers=alice)).status_code == 404
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_connections_postgresql_closed_are_replaced(
    client: Client, store: Store, alice: dict[str, str]
) -> None:
    """A PostgreSQL restart or ``pg_terminate_backend`` closes the pool's idle connections: the
    next requests get new ones, none fails on a closed one."""
    cid = await new_conversation(client, alice)
    for _ in range(3):
        turn = await client.post(f"/v1/conversations/{cid}/turns", json=USER_TURN, headers=alice)
        assert turn.status_code == 201, turn.text
    async with store.engine.connect() as conn:
        ended = (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        ).scalar_one()
    assert ended >= 1  # the service's idle pooled connections
    await asyncio.sleep(0.2)  # the closed sockets reach the service
    for _ in range(10):
        turn = await client.post(f"/v1/conversations/{cid}/turns", json=USER_TURN, headers=alice)
        assert turn.status_code == 201, turn.text
        listed = await client.get("/v1/conversations", headers=alice)
        assert listed.status_code == 200, listed.text
    assert len(await messages_of(client, alice, cid)) == 26


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_unreachable_database_is_503_with_retry_after_on_every_route(
    database_url: str,
    settings: Settings,
    store: Store,
    alice: dict[str, str],
    admin: dict[str, str],
) -> None:
    url = make_url(database_url)
    relay = TcpRelay(url.host or "127.0.0.1", url.port or 5432)
    relay.up()
    through = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    app = create_app(dataclasses.replace(settings, database_url=through), retry_backoff=0.01)
    with contextlib.closing(relay):
        async with serve(app) as client:
            cid = await new_conversation(client, alice)
            relay.down()  # PostgreSQL stops: its connections close, new ones are refused
            conversation = f"/v1/conversations/{cid}"
            for method, path, body, headers in (
                ("GET", "/v1/conversations", None, alice),
                ("POST", "/v1/conversations", {}, alice),
                ("GET", conversation, None, alice),
                ("PATCH", conversation, {"title": "t"}, alice),
                ("GET", f"{conversation}/messages", None, alice),
                ("POST", f"{conversation}/messages", {"messages": [USER]}, alice),
                ("POST", f"{conversation}/turns", USER_TURN, alice),
                ("GET", f"{conversation}/export", None, alice),
                ("DELETE", conversation, None, alice),
                ("GET", "/admin/conversations", None, admin),
                ("GET", "/admin/stats", None, admin),
                ("GET", "/ready", None, {}),
            ):
                answer = await client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.headers["content-type"].startswith("application/problem+json")
                assert int(answer.headers.get("retry-after", 0)) >= 1, (method, path, answer.text)
            assert (await client.get("/health")).status_code == 200  # the process itself is alive
            relay.up()  # PostgreSQL is back: nothing was written while it was away
            await asyncio.sleep(0.1)
            assert len(await messages_of(client, alice, cid)) == 0
            listed = await client.get("/v1/conversations", headers=alice)
            assert [c["id"] for c in listed.json()["data"]] == [cid]
            assert listed.json()["data"][0]["title"] is None
