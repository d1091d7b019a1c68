"""Branches: a conversation as a tree of messages with one active path. A frontend's session
(send, regenerate, page between alternatives, edit, continue, page back, delete), what goes
upstream, bad input, and every turn path on a branch; real sockets, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import func, select
from test_hardening import assert_problem
from test_transcripts import shape
from test_turn_endings import events_of, wait_for_call

from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.store import Store
from service.tables import branch_table, message_table

Client = httpx.AsyncClient
Headers = dict[str, str]
SYSTEM = {"role": "system", "content": "You are terse."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def create(client: Client, headers: Headers, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def turn(client: Client, headers: Headers, cid: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/v1/conversations/{cid}/turns", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def conversation(client: Client, headers: Headers, cid: str) -> dict[str, Any]:
    got: dict[str, Any] = (await client.get(f"/v1/conversations/{cid}", headers=headers)).json()
    return got


async def listed(
    client: Client, headers: Headers, cid: str, *, limit: int = 100, **params: Any
) -> list[dict[str, Any]]:
    """Every message of a path, page by page."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"/v1/conversations/{cid}/messages", params=query, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        found += body["data"]
        if not body["has_more"]:
            return found
        cursor = body["next_cursor"]


def contents(messages: list[dict[str, Any]]) -> list[Any]:
    return [m["content"] for m in messages]


def pagers(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(m["sibling_index"], m["sibling_count"]) for m in messages]


def history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def sent(upstream: FakeUpstream) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = upstream.requests[-1]["body"]["messages"]
    return messages


async def test_a_frontends_session(
    client: Client, alice: Headers, upstream: FakeUpstream, store: Store
) -> None:
    conv = await create(client, alice, messages=[SYSTEM])
    cid, system = conv["id"], conv["messages"][0]
    assert system["parent_id"] is None
    assert conv["head_id"] == system["id"]

    # Send.
    first = await turn(client, alice, cid, messages=[user("q1")])
    q1 = (await listed(client, alice, cid))[1]
    r1 = first["reply"]
    assert (q1["parent_id"], r1["parent_id"]) == (system["id"], q1["id"])
    assert sent(upstream) == [SYSTEM, user("q1")]

    # Regenerate twice: new assistant siblings; each time exactly the path to q1 goes up.
    r2 = (await turn(client, alice, cid, parent_id=q1["id"]))["reply"]
    assert sent(upstream) == [SYSTEM, user("q1")]
    r3 = (await turn(client, alice, cid, parent_id=q1["id"]))["reply"]
    assert sent(upstream) == [SYSTEM, user("q1")]
    assert [r["parent_id"] for r in (r2, r3)] == [q1["id"]] * 2
    assert [r["seq"] for r in (r1, r2, r3)] == [3, 3, 3]
    assert pagers([r2, r3]) == [(2, 2), (3, 3)]
    path = await listed(client, alice, cid)
    assert [m["id"] for m in path] == [system["id"], q1["id"], r3["id"]]
    assert [m["seq"] for m in path] == [1, 2, 3]
    assert pagers(path) == [(1, 1), (1, 1), (3, 3)]
    got = await conversation(client, alice, cid)
    assert (got["head_id"], got["message_count"]) == (r3["id"], 3)
    siblings = (
        await client.get(f"/v1/conversations/{cid}/messages/{r1['id']}/siblings", headers=alice)
    ).json()
    assert [m["id"] for m in siblings["data"]] == [r1["id"], r2["id"], r3["id"]]
    assert pagers(siblings["data"]) == [(1, 3), (2, 3), (3, 3)]

    # Page to the second alternative.
    switched = await client.patch(
        f"/v1/conversations/{cid}", json={"head_id": r2["id"]}, headers=alice
    )
    assert switched.status_code == 200, switched.text
    assert (switched.json()["head_id"], switched.json()["message_count"]) == (r2["id"], 3)
    path = await listed(client, alice, cid)
    assert [m["id"] for m in path] == [system["id"], q1["id"], r2["id"]]
    assert pagers(path)[-1] == (2, 3)

    # Continue on it: the history is that branch's path, nothing of the others.
    r4 = (await turn(client, alice, cid, messages=[user("q2")]))["reply"]
    on_r2 = [SYSTEM, user("q1"), history([r2])[0], user("q2")]
    assert sent(upstream) == on_r2
    assert r4["content"] == expected_reply(on_r2)
    path = await listed(client, alice, cid)
    assert [m["seq"] for m in path] == [1, 2, 3, 4, 5]
    assert contents(path)[3:] == ["q2", r4["content"]]

    # Edit an earlier message: q1 becomes q1' (a new user sibling) and gets its reply.
    edited = await turn(client, alice, cid, parent_id=system["id"], messages=[user("q1'")])
    assert sent(upstream) == [SYSTEM, user("q1'")]
    path = await listed(client, alice, cid)
    assert contents(path) == ["You are terse.", "q1'", edited["reply"]["content"]]
    assert pagers(path) == [(1, 1), (2, 2), (1, 1)]

    # Continue on that branch.
    r6 = (await turn(client, alice, cid, messages=[user("q3")]))["reply"]
    assert sent(upstream) == [SYSTEM, user("q1'"), history([edited["reply"]])[0], user("q3")]
    q1_edited = path[1]

    # Page back to the first q1: the head follows its newest reply down (r3, a leaf)...
    back = await client.patch(f"/v1/conversations/{cid}", json={"head_id": q1["id"]}, headers=alice)
    assert back.json()["head_id"] == r3["id"]
    # ...and to r2, whose newest leaf is r4 at the end of q2.
    back = await client.patch(f"/v1/conversations/{cid}", json={"head_id": r2["id"]}, headers=alice)
    assert (back.json()["head_id"], back.json()["message_count"]) == (r4["id"], 5)
    # Any path can be read without moving the head.
    other = await listed(client, alice, cid, head=r6["id"])
    assert contents(other)[-2:] == ["q3", r6["content"]]
    assert (await conversation(client, alice, cid))["head_id"] == r4["id"]

    # Delete a branch (the edited one): it and everything below it go; the head stays.
    deleted = await client.delete(
        f"/v1/conversations/{cid}/messages/{q1_edited['id']}", headers=alice
    )
    assert deleted.status_code == 204, deleted.text
    assert (await conversation(client, alice, cid))["head_id"] == r4["id"]
    assert pagers(await listed(client, alice, cid))[1] == (1, 1)
    gone = await client.get(
        f"/v1/conversations/{cid}/messages", params={"head": r6["id"]}, headers=alice
    )
    assert_problem(gone, 404, "not_found")
    # Deleting one on the active path moves the head to its parent.
    await client.delete(f"/v1/conversations/{cid}/messages/{r2['id']}", headers=alice)
    got = await conversation(client, alice, cid)
    assert (got["head_id"], got["message_count"]) == (q1["id"], 2)
    siblings = (
        await client.get(f"/v1/conversations/{cid}/messages/{r1['id']}/siblings", headers=alice)
    ).json()
    assert [m["id"] for m in siblings["data"]] == [r1["id"], r3["id"]]
    assert pagers(siblings["data"]) == [(1, 2), (2, 2)]

    # Export, import, export again: the same tree, the same active path and pagers.
    exported = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    assert exported["version"] == 2
    imported = await client.post("/v1/conversations/import", json=exported, headers=alice)
    assert imported.status_code == 201, imported.text
    copy = imported.json()["id"]
    again = (await client.get(f"/v1/conversations/{copy}/export", headers=alice)).json()
    assert shape(again)[1:] == shape(exported)[1:]
    for field in (contents, pagers):
        assert field(await listed(client, alice, copy)) == field(await listed(client, alice, cid))

    # A branch stores only its own messages: 1 system, 2 user + 1 edited, 4 replies, 1 more.
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(func.count()).where(message_table.c.conversation_id == uuid.UUID(cid))
            )
        ).scalar_one()
        branches = (
            await conn.execute(
                select(func.count()).where(branch_table.c.conversation_id == uuid.UUID(cid))
            )
        ).scalar_one()
    assert rows == 4  # system, q1, r1, r3
    assert branches == 2  # the line, and r3's


async def test_the_head_moves_after_each_write(client: Client, alice: Headers) -> None:
    conv = await create(client, alice, messages=[user("a"), user("b")])
    cid, (a, b) = conv["id"], conv["messages"]
    assert [m["parent_id"] for m in (a, b)] == [None, a["id"]]
    # An append after an earlier message forks there; the head is its last message.
    appended = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"parent_id": a["id"], "messages": [user("c"), user("d")]},
        headers=alice,
    )
    assert appended.status_code == 201, appended.text
    c, d = appended.json()["data"]
    assert [(m["seq"], m["parent_id"]) for m in (c, d)] == [(2, a["id"]), (3, c["id"])]
    assert pagers([c, d]) == [(2, 2), (1, 1)]
    got = await conversation(client, alice, cid)
    assert (got["head_id"], got["message_count"]) == (d["id"], 3)
    assert contents(await listed(client, alice, cid)) == ["a", "c", "d"]
    # A null parent is a new first message (the first message edited).
    root = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"parent_id": None, "messages": [user("a2")]},
        headers=alice,
    )
    (a2,) = root.json()["data"]
    assert (a2["seq"], a2["parent_id"], pagers([a2])) == (1, None, [(2, 2)])
    assert contents(await listed(client, alice, cid)) == ["a2"]
    roots = (
        await client.get(f"/v1/conversations/{cid}/messages/{a['id']}/siblings", headers=alice)
    ).json()["data"]
    assert [m["id"] for m in roots] == [a["id"], a2["id"]]
    # Back on the first line, an append goes on after the head as before.
    await client.patch(f"/v1/conversations/{cid}", json={"head_id": b["id"]}, headers=alice)
    more = await client.post(
        f"/v1/conversations/{cid}/messages", json={"messages": [user("e")]}, headers=alice
    )
    (e,) = more.json()["data"]
    assert (e["seq"], e["parent_id"]) == (3, b["id"])
    assert contents(await listed(client, alice, cid)) == ["a", "b", "e"]


async def test_paths_page_by_cursor_along_their_own_head(client: Client, alice: Headers) -> None:
    conv = await create(client, alice, messages=[user(f"m{i}") for i in range(1, 8)])
    cid, line = conv["id"], conv["messages"]
    fork = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"parent_id": line[2]["id"], "messages": [user(f"f{i}") for i in range(4, 10)]},
        headers=alice,
    )
    fork_tip = fork.json()["data"][-1]
    expected = {
        line[-1]["id"]: ["m1", "m2", "m3", "m4", "m5", "m6", "m7"],
        fork_tip["id"]: ["m1", "m2", "m3", "f4", "f5", "f6", "f7", "f8", "f9"],
    }
    for head, texts in expected.items():
        for order, want in (("asc", texts), ("desc", texts[::-1])):
            got = await listed(client, alice, cid, limit=2, head=head, order=order)
            assert contents(got) == want
            assert [m["seq"] for m in got] == sorted(
                range(1, len(want) + 1), reverse=order == "desc"
            )
    # The active path is the fork's now; a cursor keeps to the path it was made for.
    first = (
        await client.get(
            f"/v1/conversations/{cid}/messages",
            params={"limit": 4, "head": line[-1]["id"]},
            headers=alice,
        )
    ).json()
    rest = (
        await client.get(
            f"/v1/conversations/{cid}/messages",
            params={"limit": 10, "cursor": first["next_cursor"]},
            headers=alice,
        )
    ).json()
    assert contents(rest["data"]) == ["m5", "m6", "m7"]
    mixed = await client.get(
        f"/v1/conversations/{cid}/messages",
        params={"cursor": first["next_cursor"], "head": fork_tip["id"]},
        headers=alice,
    )
    assert_problem(mixed, 400, "bad_request")


async def test_bad_branch_input_is_a_4xx_and_changes_nothing(
    client: Client, alice: Headers, bob: Headers, upstream: FakeUpstream
) -> None:
    conv = await create(client, alice, messages=[user("mine")])
    cid, mine = conv["id"], conv["messages"][0]
    other = await create(client, alice, messages=[user("other")])
    theirs = await create(client, bob, messages=[user("bob's")])
    strangers = [other["messages"][0]["id"], theirs["messages"][0]["id"], other["id"]]
    base = f"/v1/conversations/{cid}"
    for stranger in strangers:
        for path, body in (
            ("/turns", {"parent_id": stranger}),
            ("/turns", {"parent_id": stranger, "messages": [user("x")]}),
            ("/messages", {"parent_id": stranger, "messages": [user("x")]}),
        ):
            assert_problem(
                await client.post(base + path, json=body, headers=alice), 404, "not_found"
            )
        assert_problem(
            await client.patch(base, json={"head_id": stranger}, headers=alice), 404, "not_found"
        )
        assert_problem(
            await client.get(f"{base}/messages", params={"head": stranger}, headers=alice),
            404,
            "not_found",
        )
        for method in ("GET", "DELETE"):
            path = f"{base}/messages/{stranger}" + ("/siblings" if method == "GET" else "")
            assert_problem(await client.request(method, path, headers=alice), 404, "not_found")
    # Another tenant cannot reach this conversation's messages at all.
    for method, path in (
        ("GET", f"{base}/messages/{mine['id']}/siblings"),
        ("DELETE", f"{base}/messages/{mine['id']}"),
    ):
        assert_problem(await client.request(method, path, headers=bob), 404, "not_found")
    for body in ({"parent_id": "not-a-uuid"}, {"parent_id": 3}):
        answer = await client.post(f"{base}/turns", json=body, headers=alice)
        assert answer.status_code == 422, answer.text
    assert_problem(
        await client.patch(base, json={"head_id": None}, headers=alice), 422, "validation_error"
    )
    # A new first message with no messages to send has nothing to answer.
    assert_problem(
        await client.post(f"{base}/turns", json={"parent_id": None}, headers=alice),
        422,
        "validation_error",
    )
    assert upstream.calls == 0
    assert contents(await listed(client, alice, cid)) == ["mine"]
    got = await conversation(client, alice, cid)
    assert (got["head_id"], got["message_count"]) == (mine["id"], 1)


async def test_while_a_turn_runs_every_branch_write_is_409(
    client: Client, alice: Headers, upstream: FakeUpstream
) -> None:
    conv = await create(client, alice, messages=[user("a"), user("b")])
    cid, (a, b) = conv["id"], conv["messages"]
    base = f"/v1/conversations/{cid}"
    upstream.push_fault(Fault(kind="hang"))
    running = asyncio.create_task(
        client.post(f"{base}/turns", json={"parent_id": a["id"]}, headers=alice)
    )
    await wait_for_call(upstream)
    for answer in (
        await client.post(f"{base}/turns", json={"parent_id": b["id"]}, headers=alice),
        await client.post(
            f"{base}/messages", json={"parent_id": a["id"], "messages": [user("x")]}, headers=alice
        ),
        await client.patch(base, json={"head_id": a["id"]}, headers=alice),
        await client.delete(f"{base}/messages/{b['id']}", headers=alice),
        await client.delete(f"{base}/messages/{a['id']}", headers=alice),
    ):
        assert_problem(answer, 409, "turn_in_progress")
    # Reading any path, and changing the title, go on.
    assert contents(await listed(client, alice, cid, head=a["id"])) == ["a"]
    assert (await client.patch(base, json={"title": "t"}, headers=alice)).status_code == 200
    upstream.release()
    done = await running
    assert done.status_code == 201, done.text
    reply = done.json()["reply"]
    assert (reply["parent_id"], reply["seq"], pagers([reply])) == (a["id"], 2, [(2, 2)])
    assert sent(upstream) == [user("a")]
    assert (await conversation(client, alice, cid))["head_id"] == reply["id"]


async def test_deleting_the_root_leaves_an_empty_conversation(
    client: Client, alice: Headers, upstream: FakeUpstream
) -> None:
    conv = await create(client, alice, messages=[SYSTEM, user("q")])
    cid = conv["id"]
    await turn(client, alice, cid)
    deleted = await client.delete(
        f"/v1/conversations/{cid}/messages/{conv['messages'][0]['id']}", headers=alice
    )
    assert deleted.status_code == 204
    got = await conversation(client, alice, cid)
    assert got["message_count"] == 0
    assert "head_id" not in got
    assert await listed(client, alice, cid) == []
    # The conversation lives on: a turn starts a new first message.
    again = await turn(client, alice, cid, messages=[user("anew")])
    assert sent(upstream) == [user("anew")]
    assert [m["seq"] for m in await listed(client, alice, cid)] == [1, 2]
    assert again["reply"]["seq"] == 2


async def test_turn_paths_on_a_branch(
    client: Client, alice: Headers, upstream: FakeUpstream
) -> None:
    """Streaming, idempotency, failure and retry, and following a turn's events, on a branch
    exactly as on a line."""
    conv = await create(client, alice, messages=[SYSTEM, user("q")])
    cid, q = conv["id"], conv["messages"][1]
    base = f"/v1/conversations/{cid}"
    r1 = (await turn(client, alice, cid))["reply"]

    # A streamed regenerate.
    streamed = await client.post(
        f"{base}/turns", json={"parent_id": q["id"], "stream": True}, headers=alice
    )
    events = events_of(streamed.text)
    assert events[0][1] == "turn.started"
    assert events[-1][1] == "turn.completed"
    r2 = events[-1][2]["reply"]
    assert (r2["parent_id"], r2["seq"], pagers([r2])) == (q["id"], 3, [(2, 2)])
    assert sent(upstream) == [SYSTEM, user("q")]
    # Its events, followed after the end, rebuild the same reply.
    followed = events_of(
        (await client.get(f"{base}/turns/{events[0][2]['turn']['id']}/events", headers=alice)).text
    )
    assert followed[-1][2]["reply"] == r2

    # Idempotent: the same regenerate sent twice makes one reply.
    key = {**alice, "Idempotency-Key": "regen-1"}
    once = await client.post(f"{base}/turns", json={"parent_id": q["id"]}, headers=key)
    twice = await client.post(f"{base}/turns", json={"parent_id": q["id"]}, headers=key)
    assert once.json() == twice.json()
    assert twice.headers["idempotent-replayed"] == "true"
    siblings = (await client.get(f"{base}/messages/{r1['id']}/siblings", headers=alice)).json()
    assert len(siblings["data"]) == 3

    # A regenerate the upstream fails stores nothing and leaves the head; sent again, it works.
    head = (await conversation(client, alice, cid))["head_id"]
    upstream.push_fault(Fault(kind="status", status=400))
    failed = await client.post(f"{base}/turns", json={"parent_id": q["id"]}, headers=alice)
    assert_problem(failed, 502, "upstream_error")
    assert (await conversation(client, alice, cid))["head_id"] == head
    siblings = (await client.get(f"{base}/messages/{r1['id']}/siblings", headers=alice)).json()
    assert len(siblings["data"]) == 3
    retried = await turn(client, alice, cid, parent_id=q["id"])
    assert pagers([retried["reply"]]) == [(4, 4)]

    # An edit whose reply fails keeps the edited message (as a turn keeps its input) and
    # makes it the head: a retry with no messages answers it.
    upstream.push_fault(Fault(kind="status", status=400))
    failed = await client.post(
        f"{base}/turns",
        json={"parent_id": conv["messages"][0]["id"], "messages": [user("q'")]},
        headers=alice,
    )
    assert_problem(failed, 502, "upstream_error")
    path = await listed(client, alice, cid)
    assert contents(path) == ["You are terse.", "q'"]
    answered = await turn(client, alice, cid)
    assert sent(upstream) == [SYSTEM, user("q'")]
    assert answered["reply"]["parent_id"] == path[-1]["id"]


async def test_fork_copies_the_active_path(client: Client, alice: Headers) -> None:
    conv = await create(client, alice, messages=[user("a"), user("b"), user("c")])
    cid, a = conv["id"], conv["messages"][0]
    await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"parent_id": a["id"], "messages": [user("b2"), user("c2"), user("d2")]},
        headers=alice,
    )
    for body, texts in (
        ({}, ["a", "b2", "c2", "d2"]),
        ({"through_seq": 2}, ["a", "b2"]),
        ({"through_seq": 0}, []),
    ):
        forked = await client.post(f"/v1/conversations/{cid}/fork", json=body, headers=alice)
        assert forked.status_code == 201, forked.text
        copy = await listed(client, alice, forked.json()["id"])
        assert contents(copy) == texts
        assert [m["parent_id"] for m in copy[1:]] == [m["id"] for m in copy[:-1]]
        assert forked.json()["message_count"] == len(texts)
    assert_problem(
        await client.post(f"/v1/conversations/{cid}/fork", json={"through_seq": 5}, headers=alice),
        422,
        "validation_error",
    )
