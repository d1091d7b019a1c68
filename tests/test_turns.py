"""The turn loop against the fake xAI upstream over a real socket, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live import stored_messages
from strategies import messages

from service.fake_upstream import FakeUpstream, Fault, expected_reply

Client = httpx.AsyncClient


async def new_conversation(client: Client, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    cid: str = response.json()["id"]
    return cid


async def turn(client: Client, headers: dict[str, str], cid: str, **body: Any) -> Any:
    return await client.post(f"/v1/conversations/{cid}/turns", json=body, headers=headers)


def as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message as the upstream should receive it."""
    sent = {"role": message["role"], "content": message["content"]}
    for field in ("name", "tool_calls", "tool_call_id"):
        if message.get(field) is not None:
            sent[field] = message[field]
    return sent


async def test_seed_example_system_and_user_get_a_stored_reply(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(
        client,
        alice,
        messages=[{"role": "system", "content": "You are a PhD-level mathematician."}],
    )
    response = await turn(
        client, alice, cid, messages=[{"role": "user", "content": "What is 2 + 2?"}]
    )
    assert response.status_code == 201, response.text
    body = response.json()
    sent = upstream.requests[-1]
    history = [
        {"role": "system", "content": "You are a PhD-level mathematician."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    assert sent["body"]["messages"] == history
    assert sent["body"]["model"] == "grok-4"
    assert "stream" not in sent["body"]
    assert sent["headers"]["x-grok-conv-id"] == cid
    assert sent["headers"]["authorization"] == "Bearer test-key"

    reply = body["reply"]
    assert reply["role"] == "assistant"
    assert reply["seq"] == 3
    assert reply["content"] == expected_reply(history)
    assert reply["model"] == "grok-4"
    assert reply["finish_reason"] == "stop"
    assert reply["turn_id"] == body["turn"]["id"]
    assert body["turn"]["status"] == "completed"
    assert body["turn"]["conversation_id"] == cid
    assert body["turn"]["latency_ms"] >= 0
    assert body["turn"]["completed_at"] is not None

    stored = await stored_messages(client, alice, cid)
    assert [m["role"] for m in stored] == ["system", "user", "assistant"]
    assert stored[-1] == reply
    got_turn = await client.get(
        f"/v1/conversations/{cid}/turns/{body['turn']['id']}", headers=alice
    )
    assert got_turn.json() == body["turn"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stored=st.lists(messages(), min_size=1, max_size=6), sent=st.lists(messages(), max_size=3))
async def test_history_goes_upstream_byte_for_byte_as_stored(
    client: Client,
    alice: dict[str, str],
    upstream: FakeUpstream,
    stored: list[dict[str, Any]],
    sent: list[dict[str, Any]],
) -> None:
    # The database writes the history's JSON itself: any character, parts, names, tool calls
    # and null content must reach the upstream exactly as they were stored.
    cid = await new_conversation(client, alice, messages=stored)
    response = await turn(client, alice, cid, messages=sent)
    assert response.status_code == 201, response.text
    history = [as_sent(m) for m in await stored_messages(client, alice, cid)][:-1]
    assert history == [as_sent(m) for m in stored + sent]
    assert upstream.requests[-1]["body"]["messages"] == history


async def test_history_rebuilt_exactly_over_several_turns(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, messages=[{"role": "system", "content": "s"}])
    for i in range(5):
        response = await turn(
            client, alice, cid, messages=[{"role": "user", "content": f"question {i}"}]
        )
        assert response.status_code == 201, response.text
        stored = await stored_messages(client, alice, cid)
        # What went upstream is exactly the stored history before the reply, in seq order.
        assert upstream.requests[-1]["body"]["messages"] == [as_sent(m) for m in stored[:-1]]
        assert stored[-1]["content"] == expected_reply([as_sent(m) for m in stored[:-1]])
    assert [m["seq"] for m in stored] == list(range(1, 12))
    assert [m["role"] for m in stored] == ["system"] + ["user", "assistant"] * 5


@pytest.mark.parametrize(
    "history",
    [
        [
            {"role": "system", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "user", "content": "d"},
        ],
        [
            {"role": "user", "content": "c"},
            {"role": "user", "content": "d"},
            {"role": "system", "content": "last"},
        ],
        [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "ok"}],
        [
            {"role": "user", "content": "x"},
            {"role": "system", "content": "y"},
            {"role": "user", "content": "z"},
            {"role": "system", "content": "w"},
        ],
    ],
    ids=["several-system", "system-last", "assistant-first", "interleaved"],
)
async def test_free_role_order_goes_upstream_as_stored(
    client: Client, alice: dict[str, str], upstream: FakeUpstream, history: list[dict[str, Any]]
) -> None:
    cid = await new_conversation(client, alice, messages=history[:-1])
    response = await turn(client, alice, cid, messages=history[-1:])
    assert response.status_code == 201, response.text
    assert upstream.requests[-1]["body"]["messages"] == history
    assert response.json()["reply"]["content"] == expected_reply(history)


async def test_content_parts_and_names_are_kept_exactly(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    parts = [
        {"type": "text", "text": "Describe ☃ this"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        },
    ]
    cid = await new_conversation(
        client, alice, messages=[{"role": "system", "content": [{"type": "text", "text": "sys"}]}]
    )
    response = await turn(
        client, alice, cid, messages=[{"role": "user", "content": parts, "name": "ann"}]
    )
    assert response.status_code == 201, response.text
    sent = upstream.requests[-1]["body"]["messages"]
    assert sent[1] == {"role": "user", "content": parts, "name": "ann"}
    stored = await stored_messages(client, alice, cid)
    assert stored[1]["content"] == parts
    assert stored[1]["name"] == "ann"


async def test_tool_call_round_trip(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    cid = await new_conversation(client, alice, params={"tools": tools})
    first = await turn(
        client, alice, cid, messages=[{"role": "user", "content": "please use tool for Paris"}]
    )
    assert first.status_code == 201, first.text
    reply = first.json()["reply"]
    assert reply["finish_reason"] == "tool_calls"
    assert upstream.requests[-1]["body"]["tools"] == tools
    (call,) = reply["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"

    second = await turn(
        client,
        alice,
        cid,
        messages=[
            {"role": "tool", "content": '{"temp": 21}', "tool_call_id": call["id"]},
        ],
    )
    assert second.status_code == 201, second.text
    sent = upstream.requests[-1]["body"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": reply["content"],
        "tool_calls": reply["tool_calls"],
    }
    assert sent[2] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": call["id"]}
    assert second.json()["reply"]["finish_reason"] == "stop"


async def test_reasoning_and_usage_are_stored(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, model="grok-3-mini")
    response = await turn(client, alice, cid, messages=[{"role": "user", "content": "think"}])
    assert response.status_code == 201, response.text
    reply = response.json()["reply"]
    usage = reply["usage"]
    assert reply["reasoning_content"]
    assert reply["model"] == "grok-3-mini"
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] + reasoning
    assert response.json()["turn"]["usage"] == usage
    stored = await stored_messages(client, alice, cid)
    assert stored[-1]["usage"] == usage
    assert stored[-1]["reasoning_content"] == reply["reasoning_content"]
    # Reasoning is kept but not sent back: the next turn sends role and content only.
    await turn(client, alice, cid, messages=[{"role": "user", "content": "again"}])
    assert "reasoning_content" not in upstream.requests[-1]["body"]["messages"][1]


async def test_turn_overrides_model_and_params(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(
        client, alice, model="grok-3", params={"temperature": 0.1, "top_p": 0.5}
    )
    response = await turn(
        client,
        alice,
        cid,
        model="grok-4.3",
        params={"temperature": 0.9},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert response.status_code == 201, response.text
    sent = upstream.requests[-1]["body"]
    assert sent["model"] == "grok-4.3"
    assert sent["temperature"] == 0.9
    assert sent["top_p"] == 0.5
    assert response.json()["turn"]["model"] == "grok-4.3"
    assert response.json()["turn"]["params"] == {"temperature": 0.9, "top_p": 0.5}
    # The conversation's own defaults are unchanged.
    conv = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert conv["model"] == "grok-3"
    assert conv["params"] == {"temperature": 0.1, "top_p": 0.5}


async def test_turn_params_are_merged_exactly_whatever_they_hold(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    # Strings that need escaping, in keys and values (NUL is refused: see test_hardening); the
    # conversation's params change between turns.
    cid = await new_conversation(client, alice, params={"user": 'a\u0001b"', "z\u001f": 1})
    for round_ in range(2):
        params = {"seed": round_, "k\u2028\U0001f600\\": {"nested": [None, 1.5, "\n"]}}
        response = await turn(
            client, alice, cid, params=params, messages=[{"role": "user", "content": "hi"}]
        )
        assert response.status_code == 201, response.text
        conv = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
        expected = {**conv["params"], **params}
        turn_id = response.json()["turn"]["id"]
        stored = await client.get(f"/v1/conversations/{cid}/turns/{turn_id}", headers=alice)
        assert response.json()["turn"]["params"] == stored.json()["params"] == expected
        sent = upstream.requests[-1]["body"]
        assert {k: sent[k] for k in expected} == expected
        patched = await client.patch(
            f"/v1/conversations/{cid}", json={"params": {"top_p": 0.5}}, headers=alice
        )
        assert patched.status_code == 200, patched.text


async def test_turn_on_empty_conversation_is_rejected(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    response = await turn(client, alice, cid)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert upstream.calls == 0
    conv = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert conv["message_count"] == 0


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault(kind="status", status=500, times=10), 502, "upstream_error"),
        (Fault(kind="status", status=503, times=10), 502, "upstream_error"),
        (Fault(kind="status", status=429, retry_after=0, times=10), 429, "upstream_rate_limited"),
        (Fault(kind="status", status=403, times=10), 502, "upstream_error"),
        (Fault(kind="garbage", times=10), 502, "upstream_error"),
    ],
    ids=["500", "503", "429", "403", "garbage"],
)
async def test_upstream_failure_keeps_the_user_message(
    client: Client,
    alice: dict[str, str],
    upstream: FakeUpstream,
    fault: Fault,
    status: int,
    code: str,
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(fault)
    response = await turn(client, alice, cid, messages=[{"role": "user", "content": "keep me"}])
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == code
    if status == 429:
        assert int(response.headers["retry-after"]) >= 1
    stored = await stored_messages(client, alice, cid)
    assert [(m["role"], m["content"]) for m in stored] == [("user", "keep me")]
    failed = (
        await client.get(f"/v1/conversations/{cid}/turns/{problem['turn_id']}", headers=alice)
    ).json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == code
    assert failed["completed_at"] is not None

    # Retrying the turn is a turn with no messages; the conversation is usable again.
    upstream.clear()
    retry = await turn(client, alice, cid)
    assert retry.status_code == 201, retry.text
    assert upstream.requests[-1]["body"]["messages"] == [{"role": "user", "content": "keep me"}]
    stored = await stored_messages(client, alice, cid)
    assert [m["role"] for m in stored] == ["user", "assistant"]


async def test_upstream_rejection_explains_with_upstreams_message(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, model="grok-4", params={"presence_penalty": 1})
    response = await turn(client, alice, cid, messages=[{"role": "user", "content": "x"}])
    assert response.status_code == 502, response.text
    problem = response.json()
    assert problem["upstream_status"] == 400
    assert "presencePenalty" in problem["detail"]
    assert upstream.calls == 1  # a rejection is never retried


async def test_transient_failure_is_retried_then_succeeds(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    upstream.push_fault(Fault(kind="status", status=503, times=1))
    response = await turn(client, alice, cid, messages=[{"role": "user", "content": "x"}])
    assert response.status_code == 201, response.text
    assert upstream.calls == 2
