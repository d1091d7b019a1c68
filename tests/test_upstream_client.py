"""The upstream client's own rules (retries, error mapping, parsing), with httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.upstream import (
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_retry_after,
    upstream_message,
)

COMPLETION = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "grok-4",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def client_for(
    answers: list[Callable[[httpx.Request], httpx.Response] | httpx.Response], **options: Any
) -> tuple[UpstreamClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        return answer(request) if callable(answer) else answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    defaults: dict[str, Any] = {
        "base_url": "http://upstream.test/v1",
        "api_key": "k",
        "timeout": 5,
        "max_retries": 2,
        "retry_deadline": 5,
        "backoff": 0.001,
    }
    return UpstreamClient(http, **{**defaults, **options}), seen


def ok() -> httpx.Response:
    return httpx.Response(200, json=COMPLETION)


async def test_sends_body_key_and_conversation_header() -> None:
    client, seen = client_for([ok()])
    result = await client.complete({"model": "grok-4", "messages": []}, conversation_id="c1")
    assert result.reply.content == "hi"
    assert result.reply.finish_reason == "stop"
    assert result.reply.usage == COMPLETION["usage"]
    assert result.attempts == 1
    (request,) = seen
    assert request.url == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["x-grok-conv-id"] == "c1"
    assert json.loads(request.content) == {"model": "grok-4", "messages": []}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(status: int) -> None:
    client, seen = client_for([httpx.Response(status, text="busy"), ok()])
    result = await client.complete({"model": "m"}, conversation_id="c")
    assert result.attempts == 2
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, UpstreamRejected),
        (401, UpstreamRejected),
        (403, UpstreamRejected),
        (404, UpstreamRejected),
        (422, UpstreamRejected),
    ],
)
async def test_rejections_are_never_retried(status: int, error: type[UpstreamError]) -> None:
    client, seen = client_for([httpx.Response(status, json={"code": "c", "error": "no way"})])
    with pytest.raises(error, match="no way") as caught:
        await client.complete({"model": "m"}, conversation_id="c")
    assert caught.value.status == status
    assert len(seen) == 1


async def test_gives_up_after_max_retries() -> None:
    client, seen = client_for([httpx.Response(500, text="<html>oops</html>")], max_retries=3)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.complete({"model": "m"}, conversation_id="c")
    assert len(seen) == 4
    assert caught.value.attempts == 4
    assert caught.value.as_dict()["upstream_status"] == 500


async def test_retry_after_beyond_the_deadline_stops_retrying() -> None:
    client, seen = client_for(
        [httpx.Response(429, headers={"retry-after": "120"}, json={"code": "r", "error": "slow"})],
        retry_deadline=1,
    )
    with pytest.raises(UpstreamRateLimited) as caught:
        await client.complete({"model": "m"}, conversation_id="c")
    assert len(seen) == 1
    assert caught.value.retry_after == 120


async def test_connection_errors_are_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client, seen = client_for([refuse, ok()])
    assert (await client.complete({"model": "m"}, conversation_id="c")).attempts == 2

    client, seen = client_for([refuse])
    with pytest.raises(UpstreamUnavailable):
        await client.complete({"model": "m"}, conversation_id="c")
    assert len(seen) == 3


async def test_read_timeout_is_a_timeout_and_not_retried() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client, seen = client_for([slow])
    with pytest.raises(UpstreamTimeout):
        await client.complete({"model": "m"}, conversation_id="c")
    assert len(seen) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"{}",
        b'{"choices": []}',
        b'{"choices": [{"message": 5}]}',
        b"[1, 2]",
        b"",
    ],
)
async def test_malformed_answers_are_bad_responses(body: bytes) -> None:
    client, seen = client_for([httpx.Response(200, content=body)])
    with pytest.raises(UpstreamBadResponse):
        await client.complete({"model": "m"}, conversation_id="c")
    assert len(seen) == 1


async def test_tool_calls_and_reasoning_are_parsed() -> None:
    completion = json.loads(json.dumps(COMPLETION))
    completion["choices"][0]["message"] = {
        "role": "assistant",
        "content": "",
        "reasoning_content": "hmm",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    completion["choices"][0]["finish_reason"] = "tool_calls"
    client, _ = client_for([httpx.Response(200, json=completion)])
    reply = (await client.complete({"model": "m"}, conversation_id="c")).reply
    assert reply.reasoning_content == "hmm"
    assert reply.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert reply.finish_reason == "tool_calls"


def test_retry_after_and_messages() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert upstream_message(b'{"code": "x", "error": "flat"}') == "flat"
    assert upstream_message(b'{"error": {"message": "nested"}}') == "nested"
    assert upstream_message(b"plain text") == "plain text"
