"""The upstream client's own rules (retries, error mapping, parsing), with httpx.MockTransport;
then the same over sockets, through httpx and through the transport's ``fetch``."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from service.netio import UpstreamTransport
from service.upstream import (
    Attempted,
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


# ---- over sockets: httpx.AsyncClient.post, and the transport's fetch (``direct``) -------------


@dataclass
class Scripted:
    """A loopback HTTP/1.1 server that gives its answers in turn (the last one again once they
    run out) and keeps each request's head and body."""

    answers: list[bytes]
    heads: list[list[bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    url: str = ""
    handlers: list[asyncio.Task[None]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.append(handler)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[:-2]
                length = next(
                    int(line.partition(b":")[2])
                    for line in head
                    if line.lower().startswith(b"content-length:")
                )
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                reply = self.answers[min(len(self.bodies), len(self.answers)) - 1]
                if not reply:
                    await asyncio.sleep(5)  # no answer at all
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(*answers: bytes) -> AsyncIterator[Scripted]:
    server = Scripted(list(answers))
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1"
    try:
        yield server
    finally:
        listening.close()
        for handler in server.handlers:
            handler.cancel()
        await asyncio.gather(*server.handlers)


def reply(status: int, body: bytes, *headers: tuple[str, str], reason: str = "Whatever") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + body


OK_REPLY = reply(200, json.dumps(COMPLETION).encode(), ("content-type", "application/json"))


@contextlib.asynccontextmanager
async def socket_client(way: str, url: str, timeout: float = 5) -> AsyncIterator[UpstreamClient]:
    transport = UpstreamTransport(limits=httpx.Limits(max_connections=4))
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        yield UpstreamClient(
            http,
            base_url=url,
            api_key="k",
            timeout=timeout,
            retry_deadline=5,
            backoff=0.001,
            direct=transport if way == "direct" else None,
        )


async def complete_over(
    way: str, *answers: bytes, timeout: float = 5
) -> tuple[Attempted | UpstreamError, Scripted]:
    """One completion against a server giving ``answers``: its result or its error."""
    async with scripted(*answers) as server, socket_client(way, server.url, timeout) as client:
        try:
            return await client.complete({"model": "m"}, conversation_id="c"), server
        except UpstreamError as exc:
            return exc, server


WAYS = pytest.mark.parametrize("way", ["client", "direct"])


async def test_both_ways_send_the_same_request() -> None:
    body = {"model": "grok-4", "messages": [{"role": "user", "content": "hé"}]}
    async with scripted(OK_REPLY) as server:
        for way in ("client", "direct"):
            async with socket_client(way, server.url) as client:
                result = await client.complete(body, conversation_id="c-1")
            assert result.reply.content == "hi"
    by_client, by_fetch = ([line.lower() for line in head] for head in server.heads)
    assert by_client[0] == b"post /v1/chat/completions http/1.1"
    assert sorted(by_client) == sorted(by_fetch)
    port = server.url.split(":")[2].split("/")[0]
    for expected in ("authorization: bearer k", "x-grok-conv-id: c-1", f"host: 127.0.0.1:{port}"):
        assert expected.encode() in by_client
    assert [json.loads(b) for b in server.bodies] == [body, body]


@WAYS
async def test_errors_and_retries_over_sockets(way: str) -> None:
    retried, server = await complete_over(way, reply(503, b"busy"), OK_REPLY)
    assert isinstance(retried, Attempted)
    assert (retried.attempts, len(server.bodies)) == (2, 2)

    limited, server = await complete_over(way, reply(429, b"slow", ("retry-after", "120")))
    assert isinstance(limited, UpstreamRateLimited)
    assert (limited.retry_after, len(server.bodies)) == (120, 1)

    flat = json.dumps({"code": "Client specified an invalid argument", "error": "bad key"})
    rejected, server = await complete_over(way, reply(400, flat.encode()))
    assert isinstance(rejected, UpstreamRejected)
    assert (rejected.message, rejected.status, len(server.bodies)) == ("bad key", 400, 1)


@WAYS
async def test_a_compressed_answer_is_decoded(way: str) -> None:
    compressed = gzip.compress(json.dumps(COMPLETION).encode())
    result, _ = await complete_over(way, reply(200, compressed, ("content-encoding", "gzip")))
    assert isinstance(result, Attempted)
    assert result.reply.content == "hi"


@WAYS
async def test_no_answer_is_a_timeout_over_sockets(way: str) -> None:
    timed_out, server = await complete_over(way, b"", timeout=0.2)
    assert isinstance(timed_out, UpstreamTimeout)
    assert len(server.bodies) == 1  # not retried
