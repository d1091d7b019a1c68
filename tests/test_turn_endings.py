"""Every turn ends, and every follower sees the end: a reply the database cannot store, a killed
server, a resumed stream in another process and after completion, a silent upstream, a
shutdown. Real sockets, real `convstore serve` processes where a process must die, on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from live import serve, server
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.settings import Settings
from service.store import Store, make_engine

Client = httpx.AsyncClient
USER = {"role": "user", "content": "tell me something"}


def events_of(raw: str) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of each event in a text/event-stream body; comments are skipped."""
    found = []
    for block in raw.split("\n\n"):
        event_id, name, data = None, None, None
        for line in block.split("\n"):
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if name is not None:
            found.append((event_id, name, data))
    return found


def text_of(events: list[tuple[str | None, str, Any]]) -> str:
    return "".join(d.get("content", "") for _, n, d in events if n == "message.delta")


async def new_conversation(client: Client, base: str, headers: dict[str, str]) -> str:
    created = await client.post(f"{base}/v1/conversations", json={}, headers=headers)
    assert created.status_code == 201, created.text
    cid: str = created.json()["id"]
    return cid


async def wait_for_call(upstream: FakeUpstream, calls: int = 1) -> None:
    for _ in range(500):
        if upstream.calls >= calls:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the upstream was never called")


# ---- a reply the database cannot store --------------------------------------------------

REFUSE_SQLITE = """CREATE TRIGGER refuse_reply BEFORE INSERT ON message
WHEN NEW.role = 'assistant' BEGIN SELECT RAISE(ABORT, 'no room for this reply'); END"""
REFUSE_PG_FUNCTION = """CREATE FUNCTION refuse_reply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'
    USING ERRCODE = 'disk_full'; END $$"""
REFUSE_PG = """CREATE TRIGGER refuse_reply BEFORE INSERT ON message FOR EACH ROW
WHEN (NEW.role = 'assistant') EXECUTE FUNCTION refuse_reply()"""


@pytest.fixture
async def refusing(store: Store) -> AsyncIterator[str]:
    """The database refuses to store any assistant message (PostgreSQL: as a full disk)."""
    statements = [REFUSE_SQLITE] if store.dialect == "sqlite" else [REFUSE_PG_FUNCTION, REFUSE_PG]
    async with store.engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))
    yield store.dialect
    async with store.engine.begin() as conn:
        await conn.execute(
            text("DROP TRIGGER refuse_reply" + ("" if store.dialect == "sqlite" else " ON message"))
        )
        if store.dialect != "sqlite":
            await conn.execute(text("DROP FUNCTION refuse_reply"))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_that_cannot_be_stored_fails_the_turn_and_is_kept(
    client: Client,
    alice: dict[str, str],
    upstream: FakeUpstream,
    refusing: str,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cid = await new_conversation(client, "", alice)
    caplog.set_level(logging.WARNING, "convstore")
    answer = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [USER], "stream": stream}, headers=alice
    )
    expected = expected_reply([USER])
    # PostgreSQL's refusal is a full disk (the database is unavailable); SQLite's, a refusal
    # of that row.
    status = 503 if refusing == "postgresql" else 500
    if stream:
        assert answer.status_code == 201
        events = events_of(answer.text)
        assert [n for _, n, _ in events][-1] == "turn.failed"  # and the stream ended
        assert text_of(events) == expected
        problem = events[-1][2]
        turn_id = problem["turn"]["id"]
    else:
        assert answer.status_code == status, answer.text
        problem = answer.json()
        turn_id = problem["turn_id"]
    assert problem["status"] == status
    assert problem["code"] == "reply_not_stored"
    turn = (await client.get(f"/v1/conversations/{cid}/turns/{turn_id}", headers=alice)).json()
    assert turn["status"] == "failed"
    assert turn["error"]["code"] == "reply_not_stored"
    assert turn["error"]["reply"]["content"] == expected  # the model's reply is not lost
    messages = (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).json()
    assert [m["content"] for m in messages["data"]] == [USER["content"]]  # the input stays
    assert any("could not be stored" in r.getMessage() for r in caplog.records)
    # Followers after the end see the same end, with the reply's text.
    replay = events_of(
        (await client.get(f"/v1/conversations/{cid}/turns/{turn_id}/events", headers=alice)).text
    )
    assert [n for _, n, _ in replay] == ["turn.started", "message.delta", "turn.failed"]
    assert text_of(replay) == expected


async def stream_until(
    client: httpx.AsyncClient,
    url: str,
    ask: dict[str, Any],
    headers: dict[str, str],
    *,
    deltas: int,
) -> list[tuple[str | None, str, Any]]:
    """A streamed turn's events until ``deltas`` deltas have come; then the client hangs up."""
    seen: list[tuple[str | None, str, Any]] = []
    body = {"messages": [ask], "stream": True}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            complete, _, buffer = buffer.rpartition("\n\n")
            seen += events_of(complete)
            if sum(n == "message.delta" for _, n, _ in seen) >= deltas:
                break
    return seen


def compact_pages(database_url: str) -> int:
    """The pages a SQLite database needs, once the free pages earlier tests left are given back
    (a cap at its page count would leave them free to write in)."""
    with contextlib.closing(sqlite3.connect(make_url(database_url).database or "")) as db:
        db.execute("VACUUM")
        pages: int = db.execute("PRAGMA page_count").fetchone()[0]
        return pages


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_full_sqlite_disk_fails_the_turn_with_503(
    database_url: str, settings: Settings, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    """SQLite's own full-database error (SQLITE_FULL); PostgreSQL's failure is simulated above."""
    engine = make_engine(database_url, pool_size=2)
    full = {"pages": 0}

    @event.listens_for(engine.sync_engine, "begin")
    def _cap(conn: Any) -> None:
        if full["pages"]:
            conn.exec_driver_sql(f"PRAGMA max_page_count = {full['pages']}")

    big = {"role": "user", "content": "x " * 200_000}
    try:
        async with serve(create_app(settings, engine=engine, retry_backoff=0.01)) as client:
            cid = await new_conversation(client, "", alice)
            # Time to cap the database while the model answers, even on a busy machine.
            upstream.push_fault(Fault(kind="slow", delay=3))
            turn = asyncio.create_task(
                client.post(
                    f"/v1/conversations/{cid}/turns", json={"messages": [big]}, headers=alice
                )
            )
            await wait_for_call(upstream)
            full["pages"] = compact_pages(database_url)
            answer = await turn
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "reply_not_stored"
            assert "retry-after" in answer.headers
            full["pages"] = 0
            stored = (
                await client.get(
                    f"/v1/conversations/{cid}/turns/{answer.json()['turn_id']}", headers=alice
                )
            ).json()
            assert stored["status"] == "failed"
            assert stored["error"]["code"] == "reply_not_stored"
    finally:
        await engine.dispose()


# ---- a silent upstream --------------------------------------------------------------------


async def test_streams_and_followers_send_keepalives_while_the_model_is_silent(
    settings: Settings, store: Store, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    async with serve(create_app(settings, retry_backoff=0.01, keepalive=0.2)) as client:
        cid = await new_conversation(client, "", alice)
        upstream.push_fault(Fault(kind="hang", delay=1.2))
        chunks: list[str] = []
        follower: asyncio.Task[str] | None = None
        async with client.stream(
            "POST",
            f"/v1/conversations/{cid}/turns",
            json={"messages": [USER], "stream": True},
            headers=alice,
        ) as response:
            async for chunk in response.aiter_text():
                chunks.append(chunk)
                if follower is None and '"turn"' in chunk:
                    turn_id = events_of(chunk)[0][2]["turn"]["id"]
                    follower = asyncio.create_task(
                        client.get(f"/v1/conversations/{cid}/turns/{turn_id}/events", headers=alice)
                    )
        body = "".join(chunks)
        assert follower is not None
        followed = (await follower).text
    for stream in (body, followed):
        before_first_delta = stream.split("event: message.delta")[0]
        assert before_first_delta.count(": keep-alive") >= 3, stream[:300]
        assert text_of(events_of(stream)) == expected_reply([USER])


# ---- resuming, in another process and after the end ----------------------------------------


async def test_a_stream_resumes_exactly_in_another_process_and_after_the_end(
    database_url: str, store: Store, upstream: FakeUpstream
) -> None:
    _, key = await store.create_key("resume")
    headers = {"Authorization": f"Bearer {key}"}
    ask = {"role": "user", "content": " ".join(f"word{i}" for i in range(30))}
    expected = expected_reply([ask])
    with server(database_url, upstream) as first, server(database_url, upstream) as second:
        async with httpx.AsyncClient(timeout=60) as client:
            cid = await new_conversation(client, first.url, headers)
            upstream.push_fault(Fault(kind="slow", delay=0.05))
            url = f"{first.url}/v1/conversations/{cid}/turns"
            seen = await stream_until(client, url, ask, headers, deltas=4)  # then it drops
            turn_id = seen[0][2]["turn"]["id"]
            last_id = seen[-1][0]
            assert last_id is not None
            assert last_id != "0"
            have = text_of(seen)
            assert 0 < len(have) < len(expected)
            url = f"/v1/conversations/{cid}/turns/{turn_id}/events"

            # Another process, while the turn still runs in the first: the rest, then the end.
            elsewhere = events_of(
                (
                    await client.get(
                        second.url + url, headers={**headers, "Last-Event-ID": last_id}
                    )
                ).text
            )
            assert [n for _, n, _ in elsewhere][-1] == "turn.completed"
            assert "turn.started" not in [n for _, n, _ in elsewhere]
            assert have + text_of(elsewhere) == expected

            # After the end, from either process, from any id handed out: exactly the rest.
            for base in (first.url, second.url):
                for index, (event_id, _, _) in enumerate(seen):
                    after = events_of(
                        (
                            await client.get(
                                base + url, headers={**headers, "Last-Event-ID": event_id or ""}
                            )
                        ).text
                    )
                    assert text_of(seen[: index + 1]) + text_of(after) == expected
                    assert after[-1][1] == "turn.completed"
                resumed = events_of(
                    (
                        await client.get(base + url, headers={**headers, "Last-Event-ID": last_id})
                    ).text
                )
                assert have + text_of(resumed) == expected
                assert [e[0] for e in resumed][-1] == "end"
                finished = await client.get(base + url, headers={**headers, "Last-Event-ID": "end"})
                assert finished.status_code == 204  # EventSource stops reconnecting
                nonsense = await client.get(base + url, headers={**headers, "Last-Event-ID": "x"})
                assert nonsense.status_code == 400


async def test_a_live_resume_in_the_same_process_gives_exactly_the_rest(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    ask = {"role": "user", "content": " ".join(f"w{i}" for i in range(40))}
    cid = await new_conversation(client, "", alice)
    upstream.push_fault(Fault(kind="slow", delay=0.05))
    seen = await stream_until(client, f"/v1/conversations/{cid}/turns", ask, alice, deltas=3)
    turn_id = seen[0][2]["turn"]["id"]
    rest = events_of(
        (
            await client.get(
                f"/v1/conversations/{cid}/turns/{turn_id}/events",
                headers={**alice, "Last-Event-ID": seen[-1][0] or ""},
            )
        ).text
    )
    assert text_of(seen) + text_of(rest) == expected_reply([ask])
    assert rest[-1][1] == "turn.completed"
    assert len(rest) > 2  # still live: delta by delta


# ---- a killed server ----------------------------------------------------------------------


async def test_after_a_kill_followers_and_idempotent_retries_see_the_turn_end(
    database_url: str, store: Store, upstream: FakeUpstream
) -> None:
    _, key = await store.create_key("crash")
    headers = {"Authorization": f"Bearer {key}"}
    # Long enough to outlast a server's start on a busy machine.
    lease = {"CONVSTORE_TURN_LEASE": "8"}
    async with httpx.AsyncClient(timeout=60) as client:
        with server(database_url, upstream, **lease) as victim:
            streamed_cid = await new_conversation(client, victim.url, headers)
            plain_cid = await new_conversation(client, victim.url, headers)
            upstream.push_fault(Fault(kind="hang", delay=60, times=2))
            streamed_body = {"messages": [USER], "stream": True}
            started = await client.send(
                client.build_request(
                    "POST",
                    f"{victim.url}/v1/conversations/{streamed_cid}/turns",
                    json=streamed_body,
                    headers={**headers, "Idempotency-Key": "stream-1"},
                ),
                stream=True,
            )
            first_event = await started.aiter_text().__anext__()
            streamed_turn = events_of(first_event)[0][2]["turn"]["id"]
            plain = asyncio.create_task(
                client.post(
                    f"{victim.url}/v1/conversations/{plain_cid}/turns",
                    json={"messages": [USER]},
                    headers={**headers, "Idempotency-Key": "plain-1"},
                )
            )
            await wait_for_call(upstream, 2)
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(timeout=10)
            with pytest.raises(httpx.TransportError):
                await plain
            await started.aclose()
        upstream.clear()

        with server(database_url, upstream, **lease) as survivor:
            url = survivor.url
            # While the dead server's lease lasts: 409s that say when to come back.
            busy = await client.post(
                f"{url}/v1/conversations/{plain_cid}/turns", json={}, headers=headers
            )
            assert busy.status_code == 409
            assert 1 <= int(busy.headers["retry-after"]) <= 8
            # A follower waits, then sees the turn end as abandoned.
            followed = events_of(
                (
                    await client.get(
                        f"{url}/v1/conversations/{streamed_cid}/turns/{streamed_turn}/events",
                        headers=headers,
                    )
                ).text
            )
            assert [n for _, n, _ in followed] == ["turn.started", "turn.failed"]
            assert followed[-1][2]["code"] == "abandoned"
            # The streamed request, sent again with its key: the same turn's end, not a new turn.
            again = await client.post(
                f"{url}/v1/conversations/{streamed_cid}/turns",
                json=streamed_body,
                headers={**headers, "Idempotency-Key": "stream-1"},
            )
            assert again.status_code == 201
            assert again.headers["idempotent-replayed"] == "true"
            replayed = events_of(again.text)
            assert replayed[0][2]["turn"]["id"] == streamed_turn
            assert replayed[-1][1] == "turn.failed"
            # The non-streamed one: within a lease its key answers the abandoned turn.
            for _ in range(100):
                retried = await client.post(
                    f"{url}/v1/conversations/{plain_cid}/turns",
                    json={"messages": [USER]},
                    headers={**headers, "Idempotency-Key": "plain-1"},
                )
                if retried.status_code != 409:
                    break
                assert retried.json()["code"] == "idempotency_key_in_use"
                assert "retry-after" in retried.headers
                await asyncio.sleep(0.2)
            assert retried.status_code == 503, retried.text
            assert retried.json()["code"] == "abandoned"
            assert retried.headers["idempotent-replayed"] == "true"
            # Nothing ran twice: one user message in each conversation.
            for cid in (streamed_cid, plain_cid):
                page = (
                    await client.get(f"{url}/v1/conversations/{cid}/messages", headers=headers)
                ).json()
                assert [m["role"] for m in page["data"]] == ["user"]


# ---- shutdown -----------------------------------------------------------------------------


async def test_a_second_ctrl_c_ends_running_turns_truthfully_and_quietly(
    database_url: str, store: Store, upstream: FakeUpstream
) -> None:
    _, key = await store.create_key("stop")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as client:
        with server(database_url, upstream) as running:
            cid = await new_conversation(client, running.url, headers)
            upstream.push_fault(Fault(kind="hang", delay=60))
            response = await client.send(
                client.build_request(
                    "POST",
                    f"{running.url}/v1/conversations/{cid}/turns",
                    json={"messages": [USER], "stream": True},
                    headers=headers,
                ),
                stream=True,
            )
            chunks = response.aiter_text()
            turn_id = events_of(await chunks.__anext__())[0][2]["turn"]["id"]
            await wait_for_call(upstream)
            running.process.send_signal(signal.SIGINT)
            await asyncio.sleep(0.5)
            running.process.send_signal(signal.SIGINT)
            rest = ""
            try:
                async for chunk in chunks:
                    rest += chunk
            except httpx.TransportError:
                pass
            assert running.process.wait(timeout=20) is not None
        # The server's output had no traceback (checked by `server`); the turn says what happened.
    turn = await store.get_turn("stop", uuid.UUID(cid), uuid.UUID(turn_id))
    assert turn.status == "failed"
    assert turn.error["code"] == "interrupted"
    assert "stopped" in turn.error["detail"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_full_sqlite_disk_is_503_with_retry_after_on_writes(
    database_url: str, settings: Settings, alice: dict[str, str]
) -> None:
    """Any write that does not fit answers 503 database_unavailable, changing nothing."""
    engine = make_engine(database_url, pool_size=2)
    full = {"pages": 0}

    @event.listens_for(engine.sync_engine, "begin")
    def _cap(conn: Any) -> None:
        if full["pages"]:
            conn.exec_driver_sql(f"PRAGMA max_page_count = {full['pages']}")

    big = [{"role": "user", "content": "x " * 200_000}]
    try:
        async with serve(create_app(settings, engine=engine, retry_backoff=0.01)) as client:
            cid = await new_conversation(client, "", alice)
            full["pages"] = compact_pages(database_url)
            for method, path, body in (
                ("POST", "/v1/conversations", {"messages": big}),
                ("POST", f"/v1/conversations/{cid}/messages", {"messages": big}),
            ):
                answer = await client.request(method, path, json=body, headers=alice)
                assert answer.status_code == 503, (path, answer.text)
                assert answer.json()["code"] == "database_unavailable"
                assert int(answer.headers["retry-after"]) >= 1
            full["pages"] = 0
            listed = (await client.get("/v1/conversations", headers=alice)).json()["data"]
            assert [(c["id"], c["message_count"]) for c in listed] == [(cid, 0)]
    finally:
        await engine.dispose()
