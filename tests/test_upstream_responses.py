"""Turns over xAI's Responses API (``CONVSTORE_UPSTREAM_API=responses``), against the fake
upstream over a real socket, on SQLite and PostgreSQL: requests converted, answers (whole and
streamed) stored as with chat completions, encrypted reasoning kept and sent back, errors mapped
alike; and the conversions of ``service.upstream_responses`` on recorded-style streams."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from live import serve
from test_streaming import messages_of as stored
from test_streaming import parse_events
from test_transcripts import comparable
from test_turns import new_conversation as conversation
from test_turns import turn

from service.app import create_app
from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.settings import Settings, SettingsError
from service.store import Store
from service.upstream import (
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamReplyTooLarge,
    UpstreamStreamCut,
)
from service.upstream_responses import RESPONSES, chat_usage, parse_response, request

Client = httpx.AsyncClient
TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "description": "d", "parameters": {"type": "object"}},
    }
]


@pytest.fixture
async def responses_client(settings: Settings, store: Store) -> AsyncIterator[Client]:
    """A client of the service with the Responses upstream."""
    app = create_app(dataclasses.replace(settings, upstream_api="responses"), retry_backoff=0.01)
    async with serve(app) as http:
        yield http


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def reasoning_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in body["input"] if i.get("type") == "reasoning"]


async def test_a_turn_goes_to_responses_statelessly_and_is_stored_as_a_chat_reply(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    system = {"role": "system", "content": "You are terse."}
    cid = await conversation(responses_client, alice, messages=[system])
    response = await turn(responses_client, alice, cid, messages=[user("What is 2 + 2?")])
    assert response.status_code == 201, response.text
    reply = response.json()["reply"]

    sent = upstream.requests[-1]
    assert sent["body"] == {
        "model": "grok-4",
        "input": [system, user("What is 2 + 2?")],
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }
    assert sent["headers"]["x-grok-conv-id"] == cid
    history = [system, user("What is 2 + 2?")]
    assert reply["content"] == expected_reply(history)
    assert reply["finish_reason"] == "stop"
    assert reply["model"] == "grok-4"
    assert reply["reasoning_encrypted_content"]  # grok-4 reasons, hidden: only encrypted

    # The usage means what it means over chat completions: the same history counts the same.
    chat = httpx.post(
        f"{upstream.base_url}/chat/completions",
        json={"model": "grok-4", "messages": history},
        headers={"Authorization": "Bearer test-key"},
    ).json()["usage"]
    usage = reply["usage"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage[key] == chat[key], key
    assert (
        usage["completion_tokens_details"]["reasoning_tokens"]
        == (chat["completion_tokens_details"]["reasoning_tokens"])
    )
    assert (
        usage["prompt_tokens_details"]["cached_tokens"]
        == (chat["prompt_tokens_details"]["cached_tokens"])
    )
    assert (await stored(responses_client, alice, cid))[-1] == reply


async def test_encrypted_reasoning_is_kept_and_sent_back_before_its_reply(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await conversation(responses_client, alice, model="grok-3-mini")
    first = (await turn(responses_client, alice, cid, messages=[user("first")])).json()["reply"]
    assert first["reasoning_content"] == "Thinking about: first"
    encrypted = first["reasoning_encrypted_content"]
    assert encrypted
    assert reasoning_items(upstream.requests[-1]["body"]) == []

    second = await turn(responses_client, alice, cid, messages=[user("second")])
    assert second.status_code == 201, second.text
    sent = upstream.requests[-1]["body"]["input"]
    assert sent == [
        user("first"),
        {"type": "reasoning", "summary": [], "encrypted_content": encrypted},
        {"role": "assistant", "content": first["content"]},
        user("second"),
    ]
    # The fake refuses encrypted reasoning that did not come back intact, so it did.
    assert second.json()["reply"]["content"] == expected_reply(
        [user("first"), {"role": "assistant", "content": first["content"]}, user("second")]
    )


async def test_altered_encrypted_reasoning_is_an_upstream_rejection(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    tampered = {"role": "assistant", "content": "hi", "reasoning_encrypted_content": "abc.def"}
    cid = await conversation(responses_client, alice, messages=[user("hello"), tampered])
    response = await turn(responses_client, alice, cid, messages=[user("again")])
    assert response.status_code == 502, response.text
    problem = response.json()
    assert problem["code"] == "upstream_error"
    assert problem["upstream_status"] == 400
    assert "Could not decrypt the provided encrypted_content" in problem["detail"]
    assert upstream.calls == 1  # a rejection is not retried
    assert [m["role"] for m in await stored(responses_client, alice, cid)] == [
        "user",
        "assistant",
        "user",
    ]


async def test_a_streamed_turn_relays_text_and_reasoning_and_stores_them(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await conversation(responses_client, alice, model="grok-3-mini")
    response = await turn(
        responses_client, alice, cid, messages=[user("tell me a long story")], stream=True
    )
    assert response.status_code == 201, response.text
    events = parse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "turn.started"
    assert names[-1] == "turn.completed"
    assert set(names[1:-1]) == {"message.delta"}
    deltas = [d for n, d in events if n == "message.delta"]
    content = "".join(d.get("content", "") for d in deltas)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    assert content == expected_reply([user("tell me a long story")])
    assert reasoning == "Thinking about: tell me a long story"
    assert len(deltas) > 4  # in pieces, as the upstream sent them

    sent = upstream.requests[-1]["body"]
    assert sent["stream"] is True
    assert "stream_options" not in sent
    reply = events[-1][1]["reply"]
    assert reply["content"] == content
    assert reply["reasoning_content"] == reasoning
    assert reply["reasoning_encrypted_content"]
    usage = reply["usage"]
    assert usage["total_tokens"] == (
        usage["prompt_tokens"]
        + usage["completion_tokens"]
        + usage["completion_tokens_details"]["reasoning_tokens"]
    )
    assert (await stored(responses_client, alice, cid))[-1] == reply


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_tool_call_round_trip(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream, stream: bool
) -> None:
    cid = await conversation(responses_client, alice, model="grok-3-mini", params={"tools": TOOLS})
    asked = await turn(
        responses_client, alice, cid, messages=[user("please use tool")], stream=stream
    )
    assert asked.status_code == 201, asked.text
    assert upstream.requests[-1]["body"]["tools"] == [
        {"type": "function", "name": "lookup", "description": "d", "parameters": {"type": "object"}}
    ]
    call_reply = (await stored(responses_client, alice, cid))[-1]
    assert call_reply["finish_reason"] == "tool_calls"
    assert call_reply["content"] == ""
    (call,) = call_reply["tool_calls"]
    assert call == {
        "id": call["id"],
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "please use tool"}'},
    }

    result = {"role": "tool", "tool_call_id": call["id"], "content": "42"}
    answered = await turn(responses_client, alice, cid, messages=[result], stream=stream)
    assert answered.status_code == 201, answered.text
    assert upstream.requests[-1]["body"]["input"] == [
        user("please use tool"),
        {
            "type": "reasoning",
            "summary": [],
            "encrypted_content": call_reply["reasoning_encrypted_content"],
        },
        {
            "type": "function_call",
            "call_id": call["id"],
            "name": "lookup",
            "arguments": '{"q": "please use tool"}',
        },
        {"type": "function_call_output", "call_id": call["id"], "output": "42"},
    ]
    final = (await stored(responses_client, alice, cid))[-1]
    assert final["finish_reason"] == "stop"
    chat_history: list[dict[str, Any]] = [
        user("please use tool"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        result,
    ]
    assert final["content"] == expected_reply(chat_history)


async def test_params_take_their_responses_names(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    schema = {"name": "answer", "schema": {"type": "object"}, "strict": True}
    params = {
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 3,
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": schema},
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "parallel_tool_calls": False,
    }
    cid = await conversation(responses_client, alice, model="grok-3-mini")
    response = await turn(
        responses_client, alice, cid, messages=[user("one two three four five")], params=params
    )
    assert response.status_code == 201, response.text
    sent = upstream.requests[-1]["body"]
    assert {k: v for k, v in sent.items() if k not in ("input", "tools")} == {
        "model": "grok-3-mini",
        "temperature": 0.5,
        "top_p": 0.9,
        "max_output_tokens": 3,
        "reasoning": {"effort": "low"},
        "text": {"format": {"type": "json_schema", **schema}},
        "tool_choice": {"type": "function", "name": "lookup"},
        "parallel_tool_calls": False,
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }
    assert response.json()["reply"]["finish_reason"] == "tool_calls"


async def test_a_reply_cut_at_max_output_tokens_finishes_with_length(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await conversation(responses_client, alice, params={"max_tokens": 2})
    for stream in (False, True):
        response = await turn(
            responses_client, alice, cid, messages=[user("a b c d e")], stream=stream
        )
        assert response.status_code == 201, response.text
        reply = (await stored(responses_client, alice, cid))[-1]
        assert reply["finish_reason"] == "length"
        assert reply["content"] == "echo: a"


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="status", status=500, times=10),
        Fault(kind="status", status=429, retry_after=0, times=10),
        Fault(kind="status", status=403, times=10),
        Fault(kind="status", status=404, times=10),
        Fault(kind="garbage", times=10),
    ],
    ids=["500", "429", "403", "404", "garbage"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_upstream_errors_are_answered_as_over_chat_completions(
    client: Client,
    responses_client: Client,
    alice: dict[str, str],
    upstream: FakeUpstream,
    fault: Fault,
    stream: bool,
) -> None:
    answers = []
    for service in (client, responses_client):
        upstream.clear()
        cid = await conversation(service, alice)
        upstream.push_fault(fault)
        response = await turn(service, alice, cid, messages=[user("keep me")], stream=stream)
        if stream:
            name, problem = parse_events(response.text)[-1]
            assert name == "turn.failed"
        else:
            problem = response.json()
        # How a garbled body fails to parse is worded per API; everything else is alike.
        ignored = {"turn_id", "turn", "instance", *(["detail"] if fault.kind == "garbage" else [])}
        answer = {k: v for k, v in problem.items() if k not in ignored}
        answers.append((response.status_code, answer, upstream.calls))
        assert [m["content"] for m in await stored(service, alice, cid)] == ["keep me"]
    chat, responses = answers
    assert responses == chat
    assert responses[1]["code"] in ("upstream_error", "upstream_rate_limited")


async def test_a_cut_stream_fails_the_turn_keeping_what_came(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await conversation(responses_client, alice)
    upstream.push_fault(Fault(kind="drop_stream", after_chunks=2))
    response = await turn(
        responses_client, alice, cid, messages=[user("one two three four")], stream=True
    )
    events = parse_events(response.text)
    assert events[-1][0] == "turn.failed"
    failure = events[-1][1]
    assert failure["code"] == "upstream_error"
    partial = "".join(d.get("content", "") for n, d in events if n == "message.delta")
    assert partial == "echo: one "
    assert failure["turn"]["error"]["partial_content"] == partial
    assert [m["role"] for m in await stored(responses_client, alice, cid)] == ["user"]
    assert upstream.calls == 1


async def test_a_stream_without_usage_still_completes(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await conversation(responses_client, alice)
    upstream.push_fault(Fault(kind="no_usage"))
    response = await turn(responses_client, alice, cid, messages=[user("hi")], stream=True)
    name, completed = parse_events(response.text)[-1]
    assert name == "turn.completed"
    assert "usage" not in completed["reply"]
    assert completed["reply"]["content"] == expected_reply([user("hi")])


async def test_chat_completions_never_sends_encrypted_reasoning(
    client: Client, responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    # A conversation continued over chat completions after the Responses upstream answered.
    cid = await conversation(responses_client, alice, model="grok-3-mini")
    first = (await turn(responses_client, alice, cid, messages=[user("a")])).json()["reply"]
    assert first["reasoning_encrypted_content"]
    response = await turn(client, alice, cid, messages=[user("b")])
    assert response.status_code == 201, response.text
    assert upstream.requests[-1]["body"]["messages"] == [
        user("a"),
        {"role": "assistant", "content": first["content"]},
        user("b"),
    ]
    assert "reasoning_encrypted_content" not in response.json()["reply"]


async def test_encrypted_reasoning_survives_export_and_import(
    responses_client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await conversation(responses_client, alice, model="grok-3-mini")
    reply = (await turn(responses_client, alice, cid, messages=[user("a")])).json()["reply"]
    exported = (await responses_client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    assert (
        exported["messages"][-1]["reasoning_encrypted_content"]
        == (reply["reasoning_encrypted_content"])
    )
    imported = await responses_client.post("/v1/conversations/import", json=exported, headers=alice)
    assert imported.status_code == 201, imported.text
    new_id = imported.json()["id"]
    again = await responses_client.get(f"/v1/conversations/{new_id}/export", headers=alice)
    assert comparable(again.json()) == comparable(exported)

    # What was imported goes back upstream as it came: the fake accepts it only intact.
    more = await turn(responses_client, alice, new_id, messages=[user("b")])
    assert more.status_code == 201, more.text
    assert reasoning_items(upstream.requests[-1]["body"]) == [
        {
            "type": "reasoning",
            "summary": [],
            "encrypted_content": reply["reasoning_encrypted_content"],
        }
    ]


def test_the_setting_chooses_the_upstream_api() -> None:
    assert Settings.from_env({}).upstream_api == "chat_completions"
    assert Settings.from_env({"CONVSTORE_UPSTREAM_API": "responses"}).upstream_api == "responses"
    assert Settings.from_env({"CONVSTORE_UPSTREAM_API": " Responses "}).upstream_api == (
        "responses"
    )
    assert Settings.from_env({"CONVSTORE_UPSTREAM_API": ""}).upstream_api == "chat_completions"
    with pytest.raises(SettingsError, match="CONVSTORE_UPSTREAM_API must be chat_completions"):
        Settings.from_env({"CONVSTORE_UPSTREAM_API": "completions"})


# ---- the conversions, on streams shaped like recorded xAI traffic --------------------------


def sse(*events: dict[str, Any]) -> bytes:
    lines = []
    for number, event in enumerate(events):
        data = httpx.Response(200, json={**event, "sequence_number": number}).content
        lines.append(b"event: " + event.get("type", "error").encode() + b"\ndata: " + data)
    return b"\n\n".join(lines) + b"\n\n"


async def stream_reply(answer: bytes, **client: Any) -> tuple[Any, list[dict[str, str]]]:
    stream = {"content-type": "text/event-stream"}
    transport = httpx.MockTransport(lambda _: httpx.Response(200, headers=stream, content=answer))
    async with httpx.AsyncClient(transport=transport) as http:
        upstream = UpstreamClient(
            http, base_url="http://x/v1", api_key="k", timeout=5, api=RESPONSES, **client
        )
        deltas: list[dict[str, str]] = []

        async def relay(delta: dict[str, str]) -> None:
            deltas.append(delta)

        attempted = await upstream.stream({"model": "m"}, conversation_id="c", on_delta=relay)
        return attempted.reply, deltas


# Figures of a recorded xAI stream (grok-code-fast-1): output_tokens include the reasoning.
USAGE = {
    "input_tokens": 216,
    "input_tokens_details": {"cached_tokens": 192},
    "output_tokens": 831,
    "output_tokens_details": {"reasoning_tokens": 253},
    "total_tokens": 1047,
    "num_sources_used": 0,
    "num_server_side_tools_used": 0,
}
COMPLETED = {
    "type": "response.completed",
    "response": {"model": "grok-code-fast-1", "status": "completed", "output": [], "usage": USAGE},
}


async def test_a_recorded_style_stream_becomes_the_reply() -> None:
    rs = {"id": "rs_1", "type": "reasoning", "status": "in_progress", "summary": []}
    at = {"item_id": "rs_1", "output_index": 0}
    answer = sse(
        {"type": "response.created", "response": {"model": "grok-code-fast-1", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": rs},
        {"type": "response.reasoning_summary_text.delta", **at, "summary_index": 0, "delta": "A"},
        {"type": "response.reasoning_summary_text.delta", **at, "summary_index": 1, "delta": "B"},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {**rs, "status": "completed", "encrypted_content": "SEALED"},
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "delta": "Hi",
        },
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "delta": "!"},
        {
            "type": "response.output_item.done",
            "output_index": 1,
            "item": {
                "id": "msg_1",
                "type": "message",
                "content": [{"type": "output_text", "text": "Hi!"}],
            },
        },
        COMPLETED,
    )
    reply, deltas = await stream_reply(answer)
    assert deltas == [
        {"reasoning_content": "A"},
        {"reasoning_content": "\n\nB"},
        {"content": "Hi"},
        {"content": "!"},
    ]
    assert reply.content == "Hi!"
    assert reply.reasoning_content == "A\n\nB"
    assert reply.reasoning_encrypted_content == "SEALED"
    assert reply.finish_reason == "stop"
    assert reply.model == "grok-code-fast-1"
    assert reply.usage == {
        "prompt_tokens": 216,
        "completion_tokens": 578,
        "total_tokens": 1047,
        "prompt_tokens_details": {"cached_tokens": 192},
        "completion_tokens_details": {"reasoning_tokens": 253},
        "num_sources_used": 0,
        "num_server_side_tools_used": 0,
    }


async def test_items_given_whole_and_arguments_in_pieces_are_put_together() -> None:
    call = {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_9",
        "name": "f",
        "arguments": "",
    }
    at = {"item_id": "fc_1", "output_index": 1}
    message = {"id": "m", "type": "message", "content": [{"type": "output_text", "text": "ok"}]}
    answer = sse(
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.output_item.added", "output_index": 1, "item": call},
        {"type": "response.function_call_arguments.delta", **at, "delta": '{"a"'},
        {"type": "response.function_call_arguments.delta", **at, "delta": ": 1}"},
        {"type": "response.function_call_arguments.done", **at, "arguments": '{"a": 1}'},
        {
            "type": "response.output_item.done",
            "output_index": 1,
            "item": {**call, "arguments": '{"a": 1}'},
        },
        COMPLETED,
    )
    reply, deltas = await stream_reply(answer)
    assert deltas == [{"content": "ok"}]
    assert reply.tool_calls == [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert reply.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (
            {
                "type": "response.failed",
                "response": {"error": {"code": "server_error", "message": "boom"}},
            },
            "boom (server_error)",
        ),
        ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}, "slow down"),
        ({"code": "invalid-argument", "error": "Model x does not exist"}, "Model x does not exist"),
    ],
    ids=["failed", "error-event", "flat"],
)
async def test_errors_in_a_stream_fail_it(event: dict[str, Any], words: str) -> None:
    answer = sse({"type": "response.output_text.delta", "output_index": 0, "delta": "x"}, event)
    with pytest.raises(UpstreamBadResponse, match="reported an error") as raised:
        await stream_reply(answer)
    assert words in str(raised.value)


NAMED_DELTA = b'event: response.output_text.delta\ndata: {"output_index": 0, "delta": "x"}\n\n'


async def test_an_event_named_only_by_its_sse_field_counts() -> None:
    reply, deltas = await stream_reply(NAMED_DELTA + sse(COMPLETED))
    assert (reply.content, deltas) == ("x", [{"content": "x"}])


async def test_a_flat_error_without_an_event_name_fails_the_stream() -> None:
    flat = b'data: {"code": "invalid-argument", "error": "Model x does not exist"}\n\n'
    with pytest.raises(UpstreamBadResponse, match="reported an error: Model x does not exist"):
        await stream_reply(NAMED_DELTA + flat)


async def test_a_stream_that_ends_before_response_completed_is_cut() -> None:
    answer = sse({"type": "response.output_text.delta", "output_index": 0, "delta": "x"})
    with pytest.raises(UpstreamStreamCut, match=r"ended before response\.completed") as raised:
        await stream_reply(answer + b"data: [DONE]\n\n")
    assert raised.value.partial.content == "x"
    assert raised.value.partial.finish_reason is None


async def test_a_streamed_reply_past_the_limit_is_refused() -> None:
    answer = sse(
        {"type": "response.output_text.delta", "output_index": 0, "delta": "x" * 8},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "y" * 8},
        COMPLETED,
    )
    with pytest.raises(UpstreamReplyTooLarge):
        await stream_reply(answer, max_reply_chars=10)


def test_a_whole_response_becomes_the_reply() -> None:
    body = {
        "object": "response",
        "model": "grok-4",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [
            {"type": "reasoning", "summary": [], "encrypted_content": "E"},
            {"type": "message", "content": [{"type": "output_text", "text": "partial"}]},
        ],
        "usage": USAGE,
    }
    reply = parse_response(httpx.Response(200, json=body).content, "grok-4", 100)
    assert (reply.content, reply.finish_reason, reply.reasoning_encrypted_content) == (
        "partial",
        "length",
        "E",
    )
    assert reply.reasoning_content is None
    assert reply.usage == chat_usage(USAGE)
    with pytest.raises(UpstreamBadResponse, match="not a response"):
        parse_response(b'{"choices": []}', "grok-4", 100)
    failed = {"output": [], "status": "failed", "error": {"code": "c", "message": "no"}}
    with pytest.raises(UpstreamBadResponse, match="no"):
        parse_response(httpx.Response(200, json=failed).content, "grok-4", 100)


def test_parts_and_unknown_params_convert_or_pass_through() -> None:
    body = {
        "model": "m",
        "seed": 7,
        "max_tokens": 9,
        "max_completion_tokens": 5,
        "messages": [
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/a.png", "detail": "high"},
                    },
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r"}]},
        ],
    }
    assert request(body, stream=False) == {
        "model": "m",
        "seed": 7,
        "max_output_tokens": 5,
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/a.png", "detail": "high"},
                ],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "a cat"}]},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_text", "text": "r"}],
            },
        ],
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }
