"""Several server processes on one database: the database alone decides which turn runs.

Real `convstore serve` processes, a real database (SQLite file and PostgreSQL), the fake
upstream over a socket; one test kills a server with SIGKILL in the middle of a turn.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from live import check_conversation, server, turn_until_taken

from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.store import Store

ROOT = Path(__file__).resolve().parent.parent


async def test_two_processes_many_concurrent_turns(
    database_url: str, store: Store, upstream: FakeUpstream
) -> None:
    _, key = await store.create_key("storm")
    headers = {"Authorization": f"Bearer {key}"}
    # Each reply takes a little while, so that turns really overlap.
    upstream.push_fault(Fault(kind="slow", delay=0.03, times=100_000))
    with server(database_url, upstream) as first, server(database_url, upstream) as second:
        urls = [first.url, second.url]
        async with httpx.AsyncClient(timeout=60) as client:
            conversations = []
            for i in range(4):
                created = await client.post(
                    f"{urls[i % 2]}/v1/conversations", json={"title": f"storm {i}"}, headers=headers
                )
                conversations.append(created.json()["id"])
            answers: Counter[int] = Counter()

            async def user(number: int) -> None:
                cid = conversations[number % len(conversations)]
                bases = urls[number % 2 :] + urls[: number % 2]
                await turn_until_taken(client, bases, headers, cid, f"q{number}", answers)

            await asyncio.gather(*(user(n) for n in range(120)))
            assert set(answers) <= {201, 409}, answers
            assert answers[201] >= 60, answers
            replies = 0
            for cid in conversations:
                replies += await check_conversation(client, urls[0], headers, cid)
            # Every 201 is exactly one stored exchange; every 409 stored nothing.
            assert replies == answers[201]


async def test_a_killed_server_loses_nothing_and_the_conversation_recovers(
    database_url: str, store: Store, upstream: FakeUpstream
) -> None:
    _, key = await store.create_key("crash")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as client:
        with server(database_url, upstream, CONVSTORE_TURN_LEASE="8") as victim:
            url = victim.url
            cid = (await client.post(f"{url}/v1/conversations", json={}, headers=headers)).json()[
                "id"
            ]
            appended = await client.post(
                f"{url}/v1/conversations/{cid}/messages",
                json={"messages": [{"role": "system", "content": "acknowledged"}]},
                headers=headers,
            )
            assert appended.status_code == 201
            upstream.push_fault(Fault(kind="hang", delay=60))
            turn = asyncio.create_task(
                client.post(
                    f"{url}/v1/conversations/{cid}/turns",
                    json={"messages": [{"role": "user", "content": "in flight"}]},
                    headers=headers,
                )
            )
            for _ in range(200):
                if upstream.calls:
                    break
                await asyncio.sleep(0.02)
            assert upstream.calls == 1
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(timeout=10)
            with pytest.raises(httpx.TransportError):
                await turn
        upstream.clear()

        with server(database_url, upstream, CONVSTORE_TURN_LEASE="8") as survivor:
            url = survivor.url
            messages = (
                await client.get(f"{url}/v1/conversations/{cid}/messages", headers=headers)
            ).json()["data"]
            assert [(m["role"], m["content"]) for m in messages] == [
                ("system", "acknowledged"),
                ("user", "in flight"),
            ]
            # Until the dead server's lease runs out the turn still counts as running.
            blocked = await client.post(
                f"{url}/v1/conversations/{cid}/turns", json={}, headers=headers
            )
            assert blocked.status_code == 409
            # Once its lease runs out, the next turn frees the conversation and runs.
            for _ in range(100):
                retried = await client.post(
                    f"{url}/v1/conversations/{cid}/turns", json={}, headers=headers
                )
                if retried.status_code != 409:
                    break
                await asyncio.sleep(0.2)
            assert retried.status_code == 201, retried.text
            assert retried.json()["reply"]["content"] == expected_reply(
                [
                    {"role": "system", "content": "acknowledged"},
                    {"role": "user", "content": "in flight"},
                ]
            )
            dead_turn = blocked.json()["running_turn_id"]
            old = (
                await client.get(f"{url}/v1/conversations/{cid}/turns/{dead_turn}", headers=headers)
            ).json()
            assert old["status"] == "failed"
            assert old["error"]["code"] == "abandoned"
