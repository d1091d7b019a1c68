"""Streamed turns: relayed and stored exactly, survive a client that leaves, can be re-attached."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from test_turn_endings import wait_for_call

from service.fake_upstream import FakeUpstream, Fault, expected_reply

Client = httpx.AsyncClient


def parse_events(raw: str) -> list[tuple[str, Any]]:
    """(event, data) pairs from a text/event-stream body; comments are skipped."""
    events = []
    for block in raw.split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if name is not None:
            events.append((name, data))
    return events


async def new_conversation(client: Client, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def streamed_turn(
    client: Client, headers: dict[str, str], cid: str, **body: Any
) -> tuple[Any, list[tuple[str, Any]]]:
    response = await client.post(
        f"/v1/conversations/{cid}/turns", json={**body, "stream": True}, headers=headers
    )
    return response, parse_events(response.text)


async def messages_of(client: Client, headers: dict[str, str], cid: str) -> list[dict[str, Any]]:
    page = await client.get(
        f"/v1/conversations/{cid}/messages", params={"limit": 100}, headers=headers
    )
    data: list[dict[str, Any]] = page.json()["data"]
    return data


async def test_streamed_turn_is_relayed_and_stored_exactly(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(
        client, alice, model="grok-3-mini", messages=[{"role": "system", "content": "s"}]
    )
    response, events = await streamed_turn(
        client, alice, cid, messages=[{"role": "user", "content": "tell me a long story"}]
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    # Neither a cache nor a buffering proxy (nginx) may hold the events back.
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    names = [name for name, _ in events]
    assert names[0] == "turn.started"
    assert names[-1] == "turn.completed"
    assert set(names[1:-1]) == {"message.delta"}
    assert len(names) > 4  # really streamed in pieces

    started = events[0][1]
    assert started["turn"]["status"] == "running"
    assert [m["content"] for m in started["messages"]] == ["tell me a long story"]
    content = "".join(d.get("content", "") for n, d in events if n == "message.delta")
    reasoning = "".join(d.get("reasoning_content", "") for n, d in events if n == "message.delta")
    history = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "tell me a long story"},
    ]
    assert content == expected_reply(history)
    assert reasoning

    sent = upstream.requests[-1]["body"]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == history

    completed = events[-1][1]
    assert completed["reply"]["content"] == content
    assert completed["reply"]["reasoning_content"] == reasoning
    assert completed["turn"]["status"] == "completed"
    usage = completed["reply"]["usage"]
    assert usage["total_tokens"] == (
        usage["prompt_tokens"]
        + usage["completion_tokens"]
        + usage["completion_tokens_details"]["reasoning_tokens"]
    )
    stored = await messages_of(client, alice, cid)
    assert stored[-1]["content"] == content
    assert stored[-1]["reasoning_content"] == reasoning
    assert stored[-1]["usage"] == usage
    assert stored[-1]["finish_reason"] == "stop"


async def test_unicode_line_separators_in_a_stream_are_text_not_line_ends(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    # JSON leaves U+2028, U+2029 and U+0085 unescaped; an SSE line ends only at CR or LF.
    text = "one\u2028two\u2029three\x85four"
    cid = await new_conversation(client, alice)
    _, events = await streamed_turn(
        client, alice, cid, messages=[{"role": "user", "content": text}]
    )
    assert events[-1][0] == "turn.completed", events[-1]
    expected = expected_reply([{"role": "user", "content": text}])
    assert events[-1][1]["reply"]["content"] == expected
    assert "".join(d.get("content", "") for n, d in events if n == "message.delta") == expected


async def test_streamed_tool_call_is_stored_whole(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    cid = await new_conversation(client, alice, params={"tools": tools})
    _, events = await streamed_turn(
        client, alice, cid, messages=[{"role": "user", "content": "use tool now"}]
    )
    assert events[-1][0] == "turn.completed"
    reply = events[-1][1]["reply"]
    assert reply["finish_reason"] == "tool_calls"
    assert reply["tool_calls"][0]["function"]["name"] == "lookup"
    assert reply["tool_calls"][0]["type"] == "function"
    stored = await messages_of(client, alice, cid)
    assert stored[-1]["tool_calls"] == reply["tool_calls"]


async def test_stream_cut_by_upstream_fails_the_turn(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="drop_stream", after_chunks=2))
    _, events = await streamed_turn(
        client, alice, cid, messages=[{"role": "user", "content": "one two three four"}]
    )
    assert events[0][0] == "turn.started"
    assert events[-1][0] == "turn.failed"
    failure = events[-1][1]
    assert failure["code"] == "upstream_error"
    assert failure["turn"]["status"] == "failed"
    partial = "".join(d.get("content", "") for n, d in events if n == "message.delta")
    assert failure["turn"]["error"]["partial_content"] == partial
    stored = await messages_of(client, alice, cid)
    # The user message is kept; no partial assistant message enters the history.
    assert [m["role"] for m in stored] == ["user"]
    assert upstream.calls == 1  # a stream that had begun is not retried


async def test_failure_before_the_stream_is_retried(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="status", status=502))
    _, events = await streamed_turn(
        client, alice, cid, messages=[{"role": "user", "content": "hi"}]
    )
    assert events[-1][0] == "turn.completed"
    assert upstream.calls == 2


async def test_errors_before_the_turn_starts_are_plain_problems(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    cid = await new_conversation(client, alice)
    response = await client.post(
        f"/v1/conversations/{cid}/turns", json={"stream": True}, headers=alice
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    response = await client.post(
        f"/v1/conversations/{cid}/turns",
        json={"stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers=bob,
    )
    assert response.status_code == 404


async def test_client_that_leaves_loses_nothing_and_can_reattach(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="slow", delay=0.05))
    text = " ".join(f"w{i}" for i in range(30))
    turn_id = None
    async with client.stream(
        "POST",
        f"/v1/conversations/{cid}/turns",
        json={"stream": True, "messages": [{"role": "user", "content": text}]},
        headers=alice,
    ) as response:
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: ") and turn_id is None:
                turn_id = json.loads(line[6:])["turn"]["id"]
            if line.startswith("event: message.delta"):
                seen += 1
                if seen == 3:
                    break  # the client goes away mid-stream
    assert turn_id is not None

    # Re-attach: everything from the start, then live to the end.
    events = parse_events(
        (await client.get(f"/v1/conversations/{cid}/turns/{turn_id}/events", headers=alice)).text
    )
    assert events[0][0] == "turn.started"
    assert events[-1][0] == "turn.completed"
    content = "".join(d.get("content", "") for n, d in events if n == "message.delta")
    expected = expected_reply([{"role": "user", "content": text}])
    assert content == expected

    for _ in range(100):
        turn = (await client.get(f"/v1/conversations/{cid}/turns/{turn_id}", headers=alice)).json()
        if turn["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert turn["status"] == "completed"
    stored = await messages_of(client, alice, cid)
    assert stored[-1]["content"] == expected

    # After the turn, its events are rebuilt from the database; Last-Event-ID skips ahead.
    later = parse_events(
        (await client.get(f"/v1/conversations/{cid}/turns/{turn_id}/events", headers=alice)).text
    )
    assert [n for n, _ in later] == ["turn.started", "message.delta", "turn.completed"]
    assert later[1][1]["content"] == expected
    tail = parse_events(
        (
            await client.get(
                f"/v1/conversations/{cid}/turns/{turn_id}/events",
                headers={**alice, "Last-Event-ID": f"0.{len(expected)}"},
            )
        ).text
    )
    assert [n for n, _ in tail] == ["turn.completed"]


async def test_following_a_non_streamed_turn_gives_the_same_events(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="hang"))
    turn = asyncio.create_task(
        client.post(
            f"/v1/conversations/{cid}/turns",
            json={"messages": [{"role": "user", "content": "quietly"}]},
            headers=alice,
        )
    )
    await wait_for_call(upstream)
    # The 409 for a concurrent append names the running turn; follow it live.
    busy = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers=alice,
    )
    assert busy.status_code == 409
    turn_id = busy.json()["running_turn_id"]
    follow = asyncio.create_task(
        client.get(f"/v1/conversations/{cid}/turns/{turn_id}/events", headers=alice)
    )
    await asyncio.sleep(0.1)  # most often live; a replay after the end gives the same events
    upstream.release()
    live = parse_events((await follow).text)
    answer = (await turn).json()
    assert answer["turn"]["id"] == turn_id
    assert [name for name, _ in live] == ["turn.started", "turn.completed"]
    assert [m["content"] for m in live[0][1]["messages"]] == ["quietly"]
    assert live[-1][1]["reply"] == answer["reply"]
