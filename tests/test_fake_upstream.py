"""The fake xAI upstream, over a real socket: shapes, quirks and injected faults."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.fake_upstream import (
    MODELS,
    FakeUpstream,
    Fault,
    expected_digest,
    expected_reply,
)

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is two plus two?"},
]
USAGE_KEYS = {
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "num_sources_used",
    "cost_in_usd_ticks",
}
TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_keys=[KEY]) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstream) -> Iterator[FakeUpstream]:
    server.clear()
    yield server
    server.clear()


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=5) as http:
        yield http


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "grok-3")
    body.setdefault("messages", HISTORY)
    return client.post("/chat/completions", json=body)


def parse_sse(raw: str) -> tuple[list[str], list[Any]]:
    """(comment lines, events) of an SSE body; an event is a decoded chunk or "[DONE]"."""
    comments, events = [], []
    for block in raw.split("\n\n"):
        if not block:
            continue
        assert "\n" not in block, block  # one line per event
        if block.startswith(":"):
            comments.append(block)
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return comments, events


def stream(client: httpx.Client, **body: Any) -> tuple[list[str], list[Any]]:
    body.setdefault("stream_options", {"include_usage": True})
    response = chat(client, stream=True, **body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


def assert_usage(usage: dict[str, Any], *, reasoning: bool) -> None:
    assert set(usage) == USAGE_KEYS
    details = usage["completion_tokens_details"]
    assert usage["total_tokens"] == (
        usage["prompt_tokens"] + usage["completion_tokens"] + details["reasoning_tokens"]
    )
    assert (details["reasoning_tokens"] > 0) is reasoning
    assert details["audio_tokens"] == details["accepted_prediction_tokens"] == 0
    assert details["rejected_prediction_tokens"] == 0
    prompt = usage["prompt_tokens_details"]
    assert set(prompt) == {"text_tokens", "audio_tokens", "image_tokens", "cached_tokens"}
    assert usage["prompt_tokens"] == prompt["text_tokens"] + prompt["image_tokens"]
    assert 0 <= prompt["cached_tokens"] <= prompt["text_tokens"]
    assert usage["num_sources_used"] == 0
    assert isinstance(usage["cost_in_usd_ticks"], int)
    assert usage["cost_in_usd_ticks"] > 0


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "error"}
    return body


# -- replies ----------------------------------------------------------------------------------


def test_reply_shape_and_usage_of_a_reasoning_model(client: httpx.Client) -> None:
    before = int(time.time())
    response = chat(client, model="grok-3-mini")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    ]
    assert re.fullmatch(r"[0-9a-f-]{36}_us-east-1", body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert before <= body["created"] <= time.time() + 1
    assert body["model"] == "grok-3-mini"
    assert body["system_fingerprint"].startswith("fp_")
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message == {
        "role": "assistant",
        "content": expected_reply(HISTORY),
        "reasoning_content": "Thinking about: What is two plus two?",
        "refusal": None,
    }
    assert_usage(body["usage"], reasoning=True)
    assert body["usage"]["completion_tokens"] == len(message["content"].split())


def test_non_reasoning_model_has_no_reasoning(client: httpx.Client) -> None:
    body = chat(client, model="grok-3").json()
    message = body["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert "tool_calls" not in message
    assert message["refusal"] is None
    assert_usage(body["usage"], reasoning=False)
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_reasoning_can_be_switched_off() -> None:
    with (
        FakeUpstream(api_keys=[KEY], reasoning=False) as fake,
        httpx.Client(base_url=fake.base_url, headers=AUTH) as http,
    ):
        body = chat(http, model="grok-3-mini").json()
    assert "reasoning_content" not in body["choices"][0]["message"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_reply_is_a_function_of_the_exact_history(client: httpx.Client) -> None:
    first = chat(client).json()["choices"][0]["message"]["content"]
    again = chat(client).json()["choices"][0]["message"]["content"]
    assert first == again == expected_reply(HISTORY)
    digest = expected_digest(HISTORY)
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert first == f"echo: What is two plus two? [n=2 h={digest}]"

    # Key order does not matter; any change to the content does.
    reordered = [{"content": m["content"], "role": m["role"]} for m in HISTORY]
    assert expected_digest(reordered) == digest
    edited = [HISTORY[0], {"role": "user", "content": "What is two plus three?"}]
    assert expected_digest(edited) != digest
    longer = [*HISTORY, {"role": "assistant", "content": "4"}]
    reply = chat(client, messages=longer).json()["choices"][0]["message"]["content"]
    assert reply == expected_reply(longer)
    assert "[n=3 " in reply
    assert reply != first


def test_text_of_content_parts_is_joined(client: httpx.Client) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
                {"type": "text", "text": "this"},
            ],
        }
    ]
    body = chat(client, model="grok-4.3", messages=messages).json()
    assert body["choices"][0]["message"]["content"] == expected_reply(messages)
    assert body["choices"][0]["message"]["content"].startswith("echo: look at this [n=1 ")
    assert body["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    assert_usage(body["usage"], reasoning=True)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "user first"}],
        [
            {"role": "system", "content": "one"},
            {"role": "system", "content": "two"},
            {"role": "user", "content": "hi"},
        ],
        [{"role": "user", "content": "hi"}, {"role": "system", "content": "system last"}],
        [{"role": "assistant", "content": "assistant first"}, {"role": "user", "content": "q"}],
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        ],
        [{"role": "function", "name": "f", "content": "legacy"}],
    ],
    ids=["user-first", "two-systems", "system-last", "assistant-first", "tool-turn", "function"],
)
def test_any_role_order_is_accepted(
    client: httpx.Client, fake: FakeUpstream, messages: list[dict[str, Any]]
) -> None:
    response = chat(client, messages=messages)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == expected_reply(messages)
    assert fake.requests[-1]["body"]["messages"] == messages


def test_requests_are_recorded_with_their_headers(client: httpx.Client, fake: FakeUpstream) -> None:
    response = client.post(
        "/chat/completions",
        json={"model": "grok-4", "messages": HISTORY, "temperature": 0.5},
        headers={"X-Grok-Conv-Id": "conv-42"},
    )
    assert response.status_code == 200
    assert fake.calls == 1
    [sent] = fake.requests
    assert sent["body"] == {"model": "grok-4", "messages": HISTORY, "temperature": 0.5}
    assert sent["headers"]["x-grok-conv-id"] == "conv-42"
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    chat(client, model="nope")  # refused requests are counted and recorded too
    assert fake.calls == 2
    assert fake.requests[-1]["body"]["model"] == "nope"


def test_recorded_requests_are_capped() -> None:
    with (
        FakeUpstream(api_keys=[KEY], max_recorded=3) as fake,
        httpx.Client(base_url=fake.base_url, headers=AUTH) as http,
    ):
        for i in range(5):
            chat(http, messages=[{"role": "user", "content": f"q{i}"}])
    assert fake.calls == 5
    assert [r["body"]["messages"][0]["content"] for r in fake.requests] == ["q2", "q3", "q4"]


def test_tool_call_reply(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "please use tool to find it"}]
    body = chat(client, model="grok-3", messages=messages, tools=TOOLS).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == ""
    [call] = message["tool_calls"]
    assert re.fullmatch(r"call_\d{8}", call["id"])
    assert call["type"] == "function"
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"q": "please use tool to find it"}
    assert_usage(body["usage"], reasoning=False)
    # Deterministic too: the same history gets the same call id.
    again = chat(client, model="grok-3", messages=messages, tools=TOOLS).json()
    assert again["choices"][0]["message"]["tool_calls"] == [call]


def test_tool_choice_decides_whether_a_tool_is_called(client: httpx.Client) -> None:
    plain = [{"role": "user", "content": "hello"}]
    asked = [{"role": "user", "content": "use tool"}]
    named = {"type": "function", "function": {"name": "other"}}

    def finish(**body: Any) -> tuple[str, Any]:
        choice = chat(client, tools=TOOLS, **body).json()["choices"][0]
        return choice["finish_reason"], choice["message"].get("tool_calls")

    assert finish(messages=plain) == ("stop", None)
    assert finish(messages=plain, tool_choice="required")[0] == "tool_calls"
    reason, calls = finish(messages=plain, tool_choice=named)
    assert reason == "tool_calls"
    assert calls[0]["function"]["name"] == "other"
    assert finish(messages=asked, tool_choice="none") == ("stop", None)
    # Without tools, "use tool" is just text.
    body = chat(client, messages=asked).json()
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_truncates_with_finish_reason_length(client: httpx.Client, field: str) -> None:
    body = chat(client, **{field: 3}).json()
    content = body["choices"][0]["message"]["content"]
    assert content == "echo: What is"
    assert content == expected_reply(HISTORY, max_tokens=3)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    roomy = chat(client, **{field: 1000}).json()
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["choices"][0]["message"]["content"] == expected_reply(HISTORY)


# -- streaming --------------------------------------------------------------------------------


def test_stream_chunks_come_in_the_upstreams_order(client: httpx.Client) -> None:
    comments, events = stream(client, model="grok-code-fast-1")
    assert comments == [": keepalive"]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "grok-code-fast-1" for c in chunks)
    assert all(c["system_fingerprint"].startswith("fp_") for c in chunks)
    assert all(isinstance(c["created"], int) for c in chunks)

    *deltas, finish, usage = chunks
    # 1: role on the first delta, with the first reasoning piece.
    assert deltas[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "reasoning_content" in deltas[0]["choices"][0]["delta"]
    assert all("role" not in d["choices"][0]["delta"] for d in deltas[1:])
    # 2/3: reasoning (with empty deltas), then content, with no finish_reason key at all.
    kinds = []
    for chunk in deltas:
        [choice] = chunk["choices"]
        assert set(choice) == {"index", "delta"}
        assert "usage" not in chunk
        delta = choice["delta"]
        kinds.append("content" if "content" in delta else "reasoning" if delta else "empty")
    assert "empty" in kinds
    first_content = kinds.index("content")
    assert set(kinds[:first_content]) == {"reasoning", "empty"}
    assert set(kinds[first_content:]) == {"content"}
    assert kinds.count("content") > 3  # really in pieces
    # 5: the finish chunk.
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert "usage" not in finish
    # 6: the usage chunk, with no choices.
    assert usage["choices"] == []
    assert_usage(usage["usage"], reasoning=True)


def test_streamed_reply_matches_the_non_streamed_one(client: httpx.Client) -> None:
    _, events = stream(client, model="grok-3-mini")
    deltas = [c["choices"][0]["delta"] for c in events[:-2] if c["choices"]]
    whole = chat(client, model="grok-3-mini").json()
    message = whole["choices"][0]["message"]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert events[-2]["usage"] == whole["usage"]


def test_stream_of_a_non_reasoning_model_starts_with_content(client: httpx.Client) -> None:
    _, events = stream(client, model="grok-3")
    first = events[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    assert expected_reply(HISTORY).startswith(first["content"])
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in events[:-2])
    assert events[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_stream_without_include_usage_has_no_usage(client: httpx.Client) -> None:
    _, events = stream(client, stream_options=None)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in events[:-1])


def test_streamed_tool_call_arrives_whole(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "use tool"}]
    _, events = stream(client, model="grok-3-mini", messages=messages, tools=TOOLS)
    calls = [c for c in events[:-1] if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert len(calls) == 1
    [call] = calls[0]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0
    assert call["type"] == "function"
    assert call["function"]["name"] == "lookup"
    assert re.fullmatch(r"call_\d{8}", call["id"])
    assert events[-3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-2])
    assert content == ""


def test_stream_chunk_size_groups_words() -> None:
    with (
        FakeUpstream(api_keys=[KEY], chunk_size=3, keepalive=False) as fake,
        httpx.Client(base_url=fake.base_url, headers=AUTH) as http,
    ):
        comments, events = stream(http)
    assert comments == []
    pieces = [c["choices"][0]["delta"]["content"] for c in events[:-3]]
    assert "".join(pieces) == expected_reply(HISTORY)
    assert len(pieces) == -(-len(expected_reply(HISTORY).split()) // 3)


def test_legacy_usage_repeats_role_and_cumulative_usage() -> None:
    with (
        FakeUpstream(api_keys=[KEY], legacy_usage=True) as fake,
        httpx.Client(base_url=fake.base_url, headers=AUTH) as http,
    ):
        _, events = stream(http, model="grok-3-mini", stream_options=None)
        whole = chat(http, model="grok-3-mini").json()
    chunks = events[:-1]
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    totals = [c["usage"]["total_tokens"] for c in chunks]
    assert totals == sorted(totals)
    assert totals[0] < totals[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == whole["usage"]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic dGVzdA==", "test-key"])
def test_missing_or_malformed_auth_is_401(fake: FakeUpstream, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = httpx.post(
        fake.base_url + "/chat/completions",
        json={"model": "grok-3", "messages": HISTORY},
        headers=headers,
    )
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"


def test_unknown_key_is_400_with_the_key_masked(fake: FakeUpstream) -> None:
    for path in ("/chat/completions", "/models"):
        response = httpx.request(
            "POST" if path == "/chat/completions" else "GET",
            fake.base_url + path,
            json={"model": "grok-3", "messages": HISTORY},
            headers={"Authorization": "Bearer xai-0123456789gA"},
        )
        assert response.status_code == 400
        assert error_of(response) == {
            "code": "Client specified an invalid argument",
            "error": "Incorrect API key provided: xa***gA. You can obtain an API key from "
            "https://console.x.ai.",
        }


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = chat(client, model="grok-9000")
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "not-found"
    assert error["error"].startswith("The model grok-9000 does not exist or your team ")


@pytest.mark.parametrize(
    ("model", "params", "name"),
    [
        ("grok-4", {"presence_penalty": 1}, "presencePenalty"),
        ("grok-3-mini", {"frequency_penalty": 0.5}, "frequencyPenalty"),
        ("grok-4.3", {"stop": ["x"]}, "stop"),
        ("grok-4-1-fast-reasoning", {"stop": "x"}, "stop"),
        ("grok-3", {"presence_penalty": 1}, "presencePenalty"),
        ("grok-4.20-0309-reasoning", {"reasoning_effort": "low"}, "reasoningEffort"),
        ("grok-4.20-0309-non-reasoning", {"reasoning_effort": "low"}, "reasoningEffort"),
        ("grok-3", {"reasoning_effort": "high"}, "reasoningEffort"),
        ("grok-4-0709", {"reasoning_effort": "high"}, "reasoningEffort"),
        ("grok-code-fast-1", {"reasoning_effort": "high"}, "reasoningEffort"),
    ],
)
def test_unsupported_parameter_is_400(
    client: httpx.Client, model: str, params: dict[str, Any], name: str
) -> None:
    response = chat(client, model=model, **params)
    assert response.status_code == 400
    assert error_of(response) == {
        "code": "invalid-argument",
        "error": f"Model {model} does not support parameter {name}.",
    }


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("grok-3", {"frequency_penalty": 0.5, "stop": ["zz"]}),
        ("grok-3-mini", {"reasoning_effort": "low"}),
        ("grok-4.3", {"reasoning_effort": "none"}),
        ("grok-4-fast-non-reasoning", {"presence_penalty": 1}),
    ],
)
def test_supported_parameters_pass(
    client: httpx.Client, model: str, params: dict[str, Any]
) -> None:
    response = chat(client, model=model, **params)
    assert response.status_code == 200, response.text


def test_unsupported_reasoning_effort_value_is_400(client: httpx.Client) -> None:
    response = chat(client, model="grok-3-mini", reasoning_effort="medium")
    assert response.status_code == 400
    assert "medium" in error_of(response)["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b"",
        b'{"model": "grok-3", "messages": [',
        b"[1, 2]",
        b'{"model": "grok-3"}',
        b'{"messages": []}',
        b'{"model": 3, "messages": []}',
        b'{"model": "grok-3", "messages": "hi"}',
        b'{"model": "grok-3", "messages": ["hi"]}',
        b'{"model": "grok-3", "messages": [{"content": "no role"}]}',
        b'{"model": "grok-3", "messages": [{"role": "developer", "content": "x"}]}',
        b'{"model": "grok-3", "messages": [{"role": "user", "content": 5}]}',
        b'{"model": "grok-3", "messages": [{"role": "user", "content": [{"text": "x"}]}]}',
        b'{"model": "grok-3", "messages": [{"role": "tool", "content": "x"}]}',
        b'{"model": "grok-3", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        b'{"model": "grok-3", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"model": "grok-3", "messages": [{"role": "user", "content": "x"}], "tools": {}}',
    ],
)
def test_malformed_body_is_422(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid-argument"
    assert error["error"].startswith("Failed to deserialize the JSON body into the target type: ")


def test_missing_content_type_is_415(client: httpx.Client) -> None:
    body = json.dumps({"model": "grok-3", "messages": HISTORY}).encode()
    response = client.post("/chat/completions", content=body)
    assert response.status_code == 415
    assert "application/json" in error_of(response)["error"]


def test_search_parameters_are_gone(client: httpx.Client) -> None:
    response = chat(client, search_parameters={"mode": "auto"})
    assert response.status_code == 410
    assert error_of(response)["error"].startswith("Live search is deprecated.")


def test_stream_options_need_stream(client: httpx.Client) -> None:
    response = chat(client, stream_options={"include_usage": True})
    assert response.status_code == 400
    assert "stream" in error_of(response)["error"]


def test_empty_messages_are_400(client: httpx.Client) -> None:
    response = chat(client, messages=[])
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid-argument"


def test_unknown_route_is_404_and_wrong_method_405(client: httpx.Client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "Some requested entity was not found"
    assert error_of(response)["error"].startswith("No handler found on route.")
    wrong = client.get("/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert client.delete("/models").status_code == 405


# -- faults -----------------------------------------------------------------------------------


def test_status_429_fault_with_retry_after(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="status", status=429, retry_after=2))
    response = chat(client, model="grok-4.3")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    error = error_of(response)
    assert error["code"] == "resource-exhausted"
    assert re.match(r"Too many requests for team \S+ and model grok-4\.3\.", error["error"])
    assert chat(client).status_code == 200  # used up
    assert fake.calls == 2


def test_status_403_fault_is_permission_denied(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="status", status=403))
    response = chat(client)
    assert response.status_code == 403
    assert "retry-after" not in response.headers
    error = error_of(response)
    assert error["code"] == "permission-denied"
    assert "used all available credits" in error["error"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_faults_have_non_json_bodies(
    client: httpx.Client, fake: FakeUpstream, status: int
) -> None:
    fake.push_fault(Fault(kind="status", status=status, retry_after=0.5))
    response = chat(client)
    assert response.status_code == status
    assert response.headers["retry-after"] == "0.5"
    assert not response.headers["content-type"].startswith("application/json")
    assert response.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_fault_body_override_and_times(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="status", status=502, body="<html>Bad Gateway</html>", times=2))
    fake.push_fault(Fault(kind="status", status=400))
    for _ in range(2):
        response = chat(client)
        assert response.status_code == 502
        assert response.text == "<html>Bad Gateway</html>"
        assert response.headers["content-type"].startswith("text/html")
    assert chat(client).status_code == 400  # faults apply in push order
    assert chat(client).status_code == 200
    assert fake.calls == 4


def test_garbage_fault(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="garbage"))
    response = chat(client)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    fake.push_fault(Fault(kind="garbage"))
    response = chat(client, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [b[6:] for b in response.text.split("\n\n") if b.startswith("data: ")]
    assert data
    for item in data:
        if item != "[DONE]":
            with pytest.raises(json.JSONDecodeError):
                json.loads(item)


def test_hang_fault_times_out_the_client_then_clears(
    client: httpx.Client, fake: FakeUpstream
) -> None:
    fake.push_fault(Fault(kind="hang"))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json={"model": "grok-3", "messages": HISTORY}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert chat(client).status_code == 200


def test_short_hang_then_answers(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="hang", delay=0.3))
    started = time.monotonic()
    response = chat(client)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_release_ends_a_hang_with_the_normal_answer(
    client: httpx.Client, fake: FakeUpstream
) -> None:
    fake.push_fault(Fault(kind="hang", delay=3600, times=2))
    outcome: dict[str, httpx.Response] = {}
    caller = threading.Thread(target=lambda: outcome.setdefault("held", chat(client)))
    caller.start()
    time.sleep(0.3)
    assert caller.is_alive()  # held
    root = fake.base_url.removesuffix("/v1")
    assert httpx.post(root + "/_fake/release").json() == {"released": True}
    caller.join(5)
    assert not caller.is_alive()
    assert outcome["held"].status_code == 200
    assert outcome["held"].json()["choices"][0]["message"]["content"]
    # Released until the next hang is pushed: the fault's second use passes at once.
    assert chat(client).status_code == 200
    fake.push_fault(Fault(kind="hang"))
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json={"model": "grok-3", "messages": HISTORY}, timeout=0.3)
    assert httpx.get(root + "/_fake/release").status_code == 405


def test_stop_ends_a_hang_at_once() -> None:
    fake = FakeUpstream(api_keys=[KEY])
    url = fake.start()
    fake.push_fault(Fault(kind="hang", delay=3600))
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["response"] = httpx.post(
                url + "/chat/completions",
                json={"model": "grok-3", "messages": HISTORY},
                headers=AUTH,
                timeout=30,
            )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    for _ in range(200):
        if fake.calls:
            break
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    caller.join(10)
    assert time.monotonic() - started < 3
    assert not caller.is_alive()
    assert "response" in outcome or "error" in outcome
    if "response" in outcome:
        assert outcome["response"].status_code == 503
    with pytest.raises(RuntimeError):
        _ = fake.base_url


def test_drop_stream_fault_cuts_after_n_content_chunks(
    client: httpx.Client, fake: FakeUpstream
) -> None:
    fake.push_fault(Fault(kind="drop_stream", after_chunks=2))
    received: list[str] = []
    body = {"model": "grok-3", "messages": HISTORY, "stream": True}
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(response.iter_lines())  # keeps the lines read before the cut
    events = [json.loads(line[6:]) for line in received if line.startswith("data: {")]
    assert not any("[DONE]" in line for line in received)
    assert not any("finish_reason" in e["choices"][0] for e in events)
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert content == "echo: What "
    assert chat(client, stream=True).text.endswith("data: [DONE]\n\n")  # used up


def test_drop_fault_on_a_non_stream_request(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="drop_stream"))
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client)


def test_no_usage_fault(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="no_usage"))
    _, events = stream(client)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in events[:-1])


def test_slow_fault_delays_every_chunk(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="slow", delay=0.02))
    started = time.monotonic()
    _, events = stream(client, model="grok-3")
    elapsed = time.monotonic() - started
    assert elapsed >= 0.02 * (len(events) - 1)
    fake.push_fault(Fault(kind="slow", delay=0.2))
    started = time.monotonic()
    assert chat(client).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_pace_fault_sends_n_content_chunks_one_every_delay(
    client: httpx.Client, fake: FakeUpstream
) -> None:
    fake.push_fault(Fault(kind="pace", delay=0.05, chunks=6, times=2))
    body = {
        "model": "grok-4",  # hidden reasoning: role and empty deltas come before the content
        "messages": HISTORY,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    arrivals: list[float] = []
    lines: list[str] = []
    started = time.monotonic()
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
                lines.append(line)
    _, events = parse_sse("".join(f"{line}\n\n" for line in lines))
    *deltas, finish, usage, done = events
    assert done == "[DONE]"
    kinds = [next(iter(d["choices"][0]["delta"]), "empty") for d in deltas]
    assert kinds[0] == "role"
    first_content = kinds.index("content")
    assert set(kinds[1:first_content]) == {"empty"}
    assert kinds[first_content:] == ["content"] * 6
    pieces = [d["choices"][0]["delta"]["content"] for d in deltas[first_content:]]
    assert all(pieces)
    assert "".join(pieces) == expected_reply(HISTORY)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    # Each content chunk 0.05 s after the one before it (the first, after the request).
    paced = arrivals[first_content : first_content + 6]
    gaps = [b - a for a, b in zip([0.0, *paced], paced, strict=False)]
    assert min(gaps) >= 0.04, gaps
    # Not streamed: the whole reply after chunks * delay.
    started = time.monotonic()
    whole = chat(client, model="grok-4")
    assert time.monotonic() - started >= 0.29
    assert whole.json()["choices"][0]["message"]["content"] == expected_reply(HISTORY)
    assert whole.json()["usage"] == usage["usage"]
    assert fake.pending_faults() == []  # used up: the next reply is not paced


def test_reply_delay() -> None:
    with (
        FakeUpstream(api_keys=[KEY], reply_delay=0.2) as fake,
        httpx.Client(base_url=fake.base_url, headers=AUTH) as http,
    ):
        started = time.monotonic()
        assert chat(http).status_code == 200
        assert time.monotonic() - started >= 0.2


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="times"):
        Fault(kind="status", times=0)
    with pytest.raises(ValueError, match="chunks"):
        Fault(kind="pace", chunks=0)
    with pytest.raises(ValueError, match="kind"):
        Fault(kind="explode")  # type: ignore[arg-type]


# -- control routes ---------------------------------------------------------------------------


def test_control_routes(fake: FakeUpstream, client: httpx.Client) -> None:
    root = fake.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root) as control:
        assert control.get("/_fake/health").json() == {"status": "ok"}
        pushed = control.post("/_fake/faults", json={"kind": "status", "status": 503})
        assert pushed.status_code == 201
        assert pushed.json()["status"] == 503
        assert control.get("/_fake/faults").json()[0]["kind"] == "status"
        assert fake.pending_faults() == [Fault(kind="status", status=503)]
        assert chat(client).status_code == 503
        assert chat(client).status_code == 200

        recorded = control.get("/_fake/requests").json()
        assert recorded["calls"] == 2
        assert [r["body"]["messages"] for r in recorded["requests"]] == [HISTORY, HISTORY]
        assert recorded["requests"][0]["headers"]["authorization"] == f"Bearer {KEY}"

        bad = control.post("/_fake/faults", json={"kind": "explode"})
        assert bad.status_code == 422
        assert control.post("/_fake/faults", json={"kind": "hang", "times": 0}).status_code == 422
        assert control.post("/_fake/faults", json={"kind": "pace", "chunks": 0}).status_code == 422
        pace = {"kind": "pace", "delay": 1, "chunks": 20, "times": 3}
        pushed = control.post("/_fake/faults", json=pace)
        assert pushed.status_code == 201
        assert fake.pending_faults() == [Fault(kind="pace", delay=1, chunks=20, times=3)]

        control.post("/_fake/faults", json={"kind": "garbage", "times": 5})
        assert control.delete("/_fake/faults").status_code == 200
        assert fake.pending_faults() == []
        assert fake.calls == 0
        assert control.get("/_fake/requests").json() == {"calls": 0, "requests": []}
        assert chat(client).status_code == 200


# -- other routes -----------------------------------------------------------------------------


def test_models(client: httpx.Client) -> None:
    listing = client.get("/models").json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert {"grok-4-0709", "grok-4.3", "grok-3", "grok-3-mini", "grok-code-fast-1"} <= set(ids)
    for model in listing["data"]:
        assert set(model) == {"id", "created", "object", "owned_by"}
        assert model["object"] == "model"
        assert model["owned_by"] == "xai"
    assert client.get("/models/grok-3").json()["id"] == "grok-3"
    assert client.get("/models/grok-4").json()["id"] == "grok-4-0709"  # an alias
    missing = client.get("/models/grok-0")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not-found"


def test_language_models(client: httpx.Client) -> None:
    models = client.get("/language-models").json()["models"]
    assert len(models) == len(MODELS)
    fields = {
        "id",
        "fingerprint",
        "created",
        "object",
        "owned_by",
        "version",
        "input_modalities",
        "output_modalities",
        "prompt_text_token_price",
        "cached_prompt_text_token_price",
        "prompt_image_token_price",
        "completion_text_token_price",
        "search_price",
        "aliases",
    }
    for model in models:
        assert set(model) == fields
        assert isinstance(model["prompt_text_token_price"], int)
    grok3 = next(m for m in models if m["id"] == "grok-3")
    assert grok3["aliases"] == ["grok-3-latest", "grok-3-beta"]


def test_tokenize_text_counts_less_than_prompt_tokens(client: httpx.Client) -> None:
    response = client.post("/tokenize-text", json={"text": "Hello world!", "model": "grok-4.3"})
    assert response.status_code == 200
    tokens = response.json()["token_ids"]
    assert [t["string_token"] for t in tokens] == ["Hello", " world!"]
    for token in tokens:
        assert set(token) == {"token_id", "string_token", "token_bytes"}
        assert bytes(token["token_bytes"]).decode() == token["string_token"]
        assert isinstance(token["token_id"], int)
    for text in ["Hello world!", "a b c d e f g", "  spaced   out  ", "x"]:
        count = len(
            client.post("/tokenize-text", json={"text": text, "model": "grok-3"}).json()[
                "token_ids"
            ]
        )
        usage = chat(client, messages=[{"role": "user", "content": text}]).json()["usage"]
        assert usage["prompt_tokens"] > count
    assert client.post("/tokenize-text", json={"text": "x", "model": "nope"}).status_code == 404
    assert client.post("/tokenize-text", json={"model": "grok-3"}).status_code == 422


async def test_usable_in_process_as_an_asgi_app() -> None:
    fake = FakeUpstream(api_keys=[KEY])
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://fake/v1", headers=AUTH
    ) as http:
        response = await http.post(
            "/chat/completions", json={"model": "grok-4", "messages": HISTORY}
        )
        streamed = await http.post(
            "/chat/completions", json={"model": "grok-4", "messages": HISTORY, "stream": True}
        )
    assert response.json()["choices"][0]["message"]["content"] == expected_reply(HISTORY)
    _, events = parse_sse(streamed.text)
    assert events[-1] == "[DONE]"
    assert fake.calls == 2


@contextlib.contextmanager
def fake_command(*options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python -m service.fake_upstream --port 0 OPTIONS`` running; yields its base URL."""
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "service.fake_upstream", "--port", "0", *options],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("CONVSTORE_UPSTREAM_URL=http://127.0.0.1:")
        url = line.split("=", 1)[1]
        assert url.endswith("/v1")
        for _ in range(500):
            try:
                httpx.get(url.removesuffix("/v1") + "/_fake/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_command_line_serves_and_prints_the_url() -> None:
    with fake_command(env={"XAI_API_KEY": "xai-from-env"}) as url:
        body = {"model": "grok-3", "messages": HISTORY}
        for key in ("test-key", "demo", "xai-from-env"):
            response = httpx.post(
                url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200, (key, response.text)
        other = httpx.post(
            url + "/chat/completions", json=body, headers={"Authorization": "Bearer other"}
        )
        assert other.status_code == 400
        recorded = httpx.get(url.removesuffix("/v1") + "/_fake/requests").json()
        assert recorded["calls"] == 4
        assert [r["headers"]["authorization"] for r in recorded["requests"]] == [
            "Bearer test-key",
            "Bearer demo",
            "Bearer xai-from-env",
            "Bearer other",
        ]


@pytest.mark.parametrize(
    ("options", "kept"),
    [(["--record", "2"], 2), (["--record", "0"], 0), (["--record", "0", "--workers", "2"], 0)],
)
def test_command_line_keeps_as_many_requests_as_told(options: list[str], kept: int) -> None:
    with fake_command(*options) as url:
        auth = {"Authorization": "Bearer test-key"}
        for _ in range(3):
            body = {"model": "grok-3", "messages": HISTORY}
            assert httpx.post(url + "/chat/completions", json=body, headers=auth).status_code == 200
        recorded = httpx.get(url.removesuffix("/v1") + "/_fake/requests").json()
    assert len(recorded["requests"]) == kept
    assert all(r["body"]["messages"] == HISTORY for r in recorded["requests"])


def test_hidden_reasoning_is_counted_but_not_shown(client: httpx.Client) -> None:
    # grok-4 reasons, but (unlike grok-3-mini) does not return its reasoning.
    body = chat(client, model="grok-4").json()
    message = body["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert_usage(body["usage"], reasoning=True)
    _, events = stream(client, model="grok-4")
    chunks = [e for e in events if e != "[DONE]" and e["choices"]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert not any("reasoning_content" in d for d in deltas)
    assert {} in deltas
    content = "".join(d.get("content", "") for d in deltas)
    assert content == message["content"]


# ---- POST /v1/responses ----------------------------------------------------------------------


def respond(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "grok-3-mini")
    body.setdefault("input", HISTORY)
    return client.post("/responses", json=body)


def response_events(raw: str) -> list[dict[str, Any]]:
    """The events of a Responses stream; each ``event:`` line names its data's type."""
    events = []
    for block in raw.split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_a_response_answers_as_the_chat_completion_would(client: httpx.Client) -> None:
    body = respond(client, include=["reasoning.encrypted_content"]).json()
    completion = chat(client, model="grok-3-mini").json()
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["store"] is False
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [
        {"type": "summary_text", "text": completion["choices"][0]["message"]["reasoning_content"]}
    ]
    assert reasoning["encrypted_content"]
    assert message["type"] == "message"
    assert message["content"][0]["text"] == expected_reply(HISTORY)
    usage, counted = body["usage"], completion["usage"]
    assert usage["input_tokens"] == counted["prompt_tokens"]
    reasoning_tokens = counted["completion_tokens_details"]["reasoning_tokens"]
    assert usage["output_tokens"] == counted["completion_tokens"] + reasoning_tokens
    assert usage["output_tokens_details"] == {"reasoning_tokens": reasoning_tokens}
    assert usage["total_tokens"] == counted["total_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # Without include, no encrypted content; a hidden reasoner shows no summary.
    plain = respond(client, model="grok-4").json()["output"][0]
    assert plain == {
        "id": plain["id"],
        "type": "reasoning",
        "summary": [],
        "status": "completed",
    }


def test_input_items_are_read_as_the_chat_messages_they_stand_for(client: httpx.Client) -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    asked = respond(
        client, input="please use tool", tools=tools, include=["reasoning.encrypted_content"]
    ).json()
    reasoning, call = asked["output"]
    assert call["type"] == "function_call"
    assert call["name"] == "lookup"
    answered = respond(
        client,
        instructions="be brief",
        tools=tools,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "please use tool"}]},
            reasoning,
            {key: call[key] for key in ("type", "call_id", "name", "arguments")},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "42"},
        ],
    ).json()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "please use tool"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["call_id"],
                    "type": "function",
                    "function": {"name": "lookup", "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["call_id"], "content": "42"},
    ]
    assert answered["output"][-1]["content"][0]["text"] == expected_reply(messages)


def test_encrypted_reasoning_must_come_back_intact(client: httpx.Client) -> None:
    item = respond(client, include=["reasoning.encrypted_content"]).json()["output"][0]
    payload, _, seal = item["encrypted_content"].rpartition(".")
    for altered in (payload + "x." + seal, payload + "." + seal[::-1], "opaque"):
        refused = respond(client, input=[{**item, "encrypted_content": altered}, *HISTORY])
        assert refused.status_code == 400
        assert error_of(refused) == {
            "code": "invalid-argument",
            "error": "Could not decrypt the provided encrypted_content.",
        }
    missing = respond(client, input=[{"type": "reasoning", "summary": []}, *HISTORY])
    assert missing.status_code == 400
    assert respond(client, input=[item, *HISTORY]).status_code == 200


def test_a_responses_stream_has_the_semantic_events_in_order(client: httpx.Client) -> None:
    response = respond(client, stream=True, include=["reasoning.encrypted_content"])
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith(": keepalive\n\n")
    assert "[DONE]" not in response.text
    events = response_events(response.text)
    kinds = [e["type"].removeprefix("response.") for e in events]
    pieces = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    thoughts = [e for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    assert kinds[:4] == [
        "created",
        "in_progress",
        "output_item.added",
        "reasoning_summary_part.added",
    ]
    assert (
        kinds[-8:]
        == [
            "output_item.added",
            "content_part.added",
            *["output_text.delta"] * len(pieces),
            "output_text.done",
            "content_part.done",
            "output_item.done",
            "completed",
        ][-8:]
    )
    assert "".join(pieces) == expected_reply(HISTORY)
    assert len(pieces) > 1
    assert thoughts
    final = events[-1]["response"]
    whole = respond(client, include=["reasoning.encrypted_content"]).json()
    assert final["output"][1]["content"] == whole["output"][1]["content"]
    assert final["usage"] == whole["usage"]
    assert final["output"][0]["encrypted_content"] == whole["output"][0]["encrypted_content"]


def test_a_streamed_function_call_has_argument_events(client: httpx.Client) -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    events = response_events(
        respond(client, model="grok-3", input="use tool", tools=tools, stream=True).text
    )
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" not in kinds
    delta = kinds.index("response.function_call_arguments.delta")
    assert kinds[delta - 1 : delta + 3] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert events[delta]["delta"] == events[-1]["response"]["output"][-1]["arguments"]


def test_max_output_tokens_makes_an_incomplete_response(client: httpx.Client) -> None:
    body = respond(client, model="grok-3", max_output_tokens=2).json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    events = response_events(respond(client, model="grok-3", max_output_tokens=2, stream=True).text)
    assert events[-1]["type"] == "response.incomplete"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"input": 5}, 422, "input: invalid type: integer"),
        ({"input": [{"type": "mystery"}]}, 422, "input[0].type: unknown variant `mystery`"),
        ({"input": [{"role": "robot", "content": "x"}]}, 422, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
            422,
            "content[0]",
        ),
        ({"input": [{"type": "function_call", "name": "f"}]}, 422, "call_id"),
        ({"model": "nope"}, 404, "The model nope does not exist"),
        ({"model": "grok-4", "reasoning": {"effort": "low"}}, 400, "reasoningEffort"),
        ({"previous_response_id": "resp_1"}, 400, "previous_response_id"),
    ],
    ids=["input", "item", "role", "part", "call", "model", "effort", "previous"],
)
def test_bad_responses_requests_are_refused_as_upstream(
    client: httpx.Client, body: dict[str, Any], status: int, words: str
) -> None:
    response = respond(client, **body)
    assert response.status_code == status, response.text
    assert words in error_of(response)["error"]


def test_faults_apply_to_responses(client: httpx.Client, fake: FakeUpstream) -> None:
    fake.push_fault(Fault(kind="status", status=429, retry_after=2))
    limited = respond(client)
    assert limited.status_code == 429
    assert error_of(limited)["code"] == "resource-exhausted"
    assert limited.headers["retry-after"] == "2"
    fake.push_fault(Fault(kind="drop_stream", after_chunks=2))
    received: list[str] = []
    body = {"model": "grok-3", "input": HISTORY, "stream": True}
    with (
        client.stream("POST", "/responses", json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        received.extend(response.iter_lines())  # keeps the lines read before the cut
    assert received.count("event: response.output_text.delta") == 2
    assert "event: response.completed" not in received
    fake.push_fault(Fault(kind="no_usage"))
    events = response_events(respond(client, stream=True).text)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"] is None
    assert respond(client).status_code == 200  # used up
    assert fake.calls == 4
    assert fake.requests[-1]["body"]["input"] == HISTORY
