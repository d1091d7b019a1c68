"""The upstream client's own rules (retries, error mapping, parsing, limits), with
httpx.MockTransport; then over sockets, through the service's client (httpx over aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.resolver
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from live import loopback_server, serve

from service.app import create_app, make_http_client
from service.fake_upstream import FakeUpstream, expected_reply
from service.settings import Settings
from service.upstream import (
    MAX_ERROR_CHARS,
    Attempted,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamReplyTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_retry_after,
    redact,
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


def test_credentials_are_redacted() -> None:
    text = (
        "key xai-0123456789abcdefghij, header Authorization: Bearer sk-live.42 and proxy "
        "http://user:pa55@proxy.test:3128/ and the-own-key"
    )
    assert redact(text, ["the-own-key"]) == (
        "key [redacted], header Authorization: Bearer [redacted] and proxy "
        "http://[redacted]@proxy.test:3128/ and [redacted]"
    )


class Kept(logging.Handler):
    """Keeps the records of one logger (the service's loggers do not propagate to the root)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def __enter__(self) -> Kept:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_error_texts_are_bounded_and_redacted_and_logged_whole() -> None:
    key = "xai-the-real-key-0123456789"
    long_text = (
        f"Incorrect API key provided: {key}. You sent Authorization: Bearer {key}. "
        + "more words " * 300
    )
    client, _ = client_for(
        [httpx.Response(400, json={"code": "invalid-argument", "error": long_text})], api_key=key
    )
    with Kept("convstore.upstream") as kept, pytest.raises(UpstreamRejected) as caught:
        await client.complete({"model": "m"}, conversation_id="c")
    message = caught.value.message
    assert len(message) <= MAX_ERROR_CHARS
    assert message.startswith("Incorrect API key provided: [redacted]. You sent Authorization:")
    assert key not in str(caught.value.as_dict())
    assert key not in str(caught.value)
    (record,) = [r for r in kept.records if r.levelno == logging.WARNING]
    logged = record.getMessage()
    assert "more words " * 300 in logged  # whole
    assert key not in logged


# ---- reply limits -------------------------------------------------------------------------


def completion_with(**message: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(COMPLETION))
    body["choices"][0]["message"] = {"role": "assistant", **message}
    return body


@pytest.mark.parametrize(
    ("message", "fits"),
    [
        ({"content": "x" * 20}, True),
        ({"content": "x" * 21}, False),
        ({"content": "x" * 10, "reasoning_content": "y" * 11}, False),
        (
            {
                "content": "",
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "f", "arguments": "z" * 21},
                    }
                ],
            },
            False,
        ),
    ],
    ids=["at the limit", "content", "content and reasoning", "tool call arguments"],
)
async def test_a_reply_past_the_limit_is_too_large_and_not_retried(
    message: dict[str, Any], fits: bool
) -> None:
    client, seen = client_for(
        [httpx.Response(200, json=completion_with(**message))], max_reply_chars=20
    )
    if fits:
        assert (await client.complete({"model": "m"}, conversation_id="c")).attempts == 1
        return
    with pytest.raises(UpstreamReplyTooLarge) as caught:
        await client.complete({"model": "m"}, conversation_id="c")
    assert caught.value.code == "reply_too_large"
    assert "20 characters" in caught.value.message
    assert len(seen) == 1


async def test_a_body_larger_than_any_reply_within_the_limit_is_not_read_whole() -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while read < 50 * 1024 * 1024:
            read += 64 * 1024
            yield b" " * 64 * 1024

    # At most 10 characters: 120 bytes of JSON, and 1 MiB for the rest of the completion.
    client, _ = client_for(
        [lambda request: httpx.Response(200, content=endless())], max_reply_chars=10
    )
    with pytest.raises(UpstreamReplyTooLarge):
        await client.complete({"model": "m"}, conversation_id="c")
    assert read < 2 * 1024 * 1024


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    lines = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


EVENT_STREAM = {"content-type": "text/event-stream"}


def streamed(body: bytes | Iterable[bytes]) -> httpx.Response:
    """A 200 event stream answering ``body``, or its pieces each as a chunk of its own."""
    if isinstance(body, bytes):
        return httpx.Response(200, headers=EVENT_STREAM, content=body)

    async def pieces() -> AsyncIterator[bytes]:
        for piece in body:
            yield piece

    return httpx.Response(200, headers=EVENT_STREAM, content=pieces())


def delta(**fields: Any) -> dict[str, Any]:
    return {"model": "grok-4", "choices": [{"index": 0, "delta": fields}]}


async def no_delta(_: dict[str, str]) -> None:
    pass


@pytest.mark.parametrize(
    "chunks",
    [
        [delta(content="x" * 15), delta(content="x" * 6)],
        [delta(reasoning_content="y" * 15), delta(content="x" * 6)],
        [
            delta(content="x" * 15),
            delta(tool_calls=[{"index": 0, "id": "c", "function": {"arguments": "z" * 6}}]),
        ],
    ],
    ids=["content", "reasoning and content", "content and tool call arguments"],
)
async def test_a_streamed_reply_past_the_limit_is_too_large(chunks: list[dict[str, Any]]) -> None:
    client, seen = client_for([streamed(sse(*chunks))], max_reply_chars=20)
    with pytest.raises(UpstreamReplyTooLarge):
        await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)
    assert len(seen) == 1

    client, _ = client_for([streamed(sse(*chunks[:1]))], max_reply_chars=20)
    result = await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)
    assert result.attempts == 1


@pytest.mark.parametrize(
    "piece", [b" " * 65536, b"data: " + b" " * 65536 + b"\n"], ids=["one line", "one event"]
)
async def test_a_stream_endless_without_an_event_is_too_large_and_not_read_whole(
    piece: bytes,
) -> None:
    read = 0

    def endless() -> Iterable[bytes]:
        nonlocal read
        yield b"data: "
        while read < 50 * 1024 * 1024:
            read += len(piece)
            yield piece

    # At most 10 characters: 120 bytes of JSON, and 1 MiB for the rest of the event.
    client, seen = client_for([lambda request: streamed(endless())], max_reply_chars=10)
    with pytest.raises(UpstreamReplyTooLarge, match="10 characters"):
        await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)
    assert read < 2 * 1024 * 1024
    assert len(seen) == 1  # not retried


async def test_a_stream_longer_than_the_limit_in_events_within_it_is_read_whole() -> None:
    # 1 KiB events, 3 MiB in all, in 16 KiB chunks (as read from a socket): the bound is on
    # what has come since the last event.
    padded = {"model": "grok-4", "choices": [], "usage": {"pad": "x" * 1000}}
    body = sse(delta(content="hi"), *[padded] * 3072)
    chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    client, _ = client_for([streamed(chunks)], max_reply_chars=10)
    result = await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)
    assert result.reply.content == "hi"


async def test_an_answer_that_is_not_an_event_stream_is_a_bad_response() -> None:
    client, seen = client_for([ok()])
    with pytest.raises(UpstreamBadResponse, match=r"not an event stream.*application/json"):
        await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)
    assert len(seen) == 1  # not retried


async def test_a_long_model_name_or_finish_reason_is_cut_to_its_column() -> None:
    long_name, long_reason = "grok-" + "9" * 500, "stop" * 20
    completion = json.loads(json.dumps(COMPLETION))
    completion["model"], completion["choices"][0]["finish_reason"] = long_name, long_reason
    client, _ = client_for([httpx.Response(200, json=completion)])
    reply = (await client.complete({"model": "m"}, conversation_id="c")).reply
    assert (reply.model, reply.finish_reason) == (long_name[:200], long_reason[:32])

    chunk = {"model": long_name, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    finish = {"model": long_name, "choices": [{"index": 0, "delta": {}, "finish_reason": "x" * 99}]}
    client, _ = client_for([streamed(sse(chunk, finish))])
    reply = (await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)).reply
    assert (reply.model, reply.finish_reason) == (long_name[:200], "x" * 32)


async def stream_of(chunks: list[bytes]) -> tuple[Attempted, list[dict[str, str]]]:
    client, _ = client_for([streamed(chunks)])
    deltas: list[dict[str, str]] = []

    async def relay(delta: dict[str, str]) -> None:
        deltas.append(delta)

    return await client.stream({"model": "m"}, conversation_id="c", on_delta=relay), deltas


async def test_stream_lines_end_at_crlf_lf_or_cr_only() -> None:
    # Raw in JSON, U+2028, U+2029 and NEL are text, not line breaks (str.splitlines would cut).
    first = "data: " + json.dumps(delta(content="a\u2028b\x85"), ensure_ascii=False)
    second = "data: " + json.dumps(delta(content="c\u2029d"), ensure_ascii=False)
    chunks = [
        b": keep-alive\r",
        b"\n\r\n" + first.encode()[:9],
        first.encode()[9:] + b"\r",
        b"\r" + second.encode() + b"\n",
        b"\ndata: [DONE]\r\n\r\n",
    ]
    result, deltas = await stream_of(chunks)
    assert result.reply.content == "a\u2028b\x85c\u2029d"
    assert deltas == [{"content": "a\u2028b\x85"}, {"content": "c\u2029d"}]


@given(
    st.lists(st.text('ab \r\n\u2028\u2029\x85é😀"\\', min_size=1, max_size=6), max_size=4),
    st.lists(st.sampled_from(["\r\n", "\r", "\n"]), min_size=1, max_size=6),
    st.lists(st.integers(1, 600), max_size=10),
)
def test_stream_events_do_not_depend_on_line_endings_or_how_the_stream_is_cut(
    pieces: list[str], line_ends: list[str], cuts: list[int]
) -> None:
    ends = itertools.cycle(line_ends)
    lines = [": keep-alive"]
    lines += ["data: " + json.dumps(delta(content=p), ensure_ascii=False) for p in pieces]
    text = (
        "".join(line + end + end for line, end in zip(lines, ends, strict=False))
        + "data: [DONE]\n\n"
    )
    whole = text.encode()
    # Cut anywhere: inside a CRLF, or inside a character's UTF-8 bytes.
    bounds = [0, *sorted(c for c in cuts if c < len(whole)), len(whole)]
    chunks = [whole[a:b] for a, b in itertools.pairwise(bounds) if a < b]
    result, deltas = asyncio.run(stream_of(chunks))
    assert result.reply.content == "".join(pieces)
    assert deltas == [{"content": p} for p in pieces]


# ---- over sockets: the service's client (httpx over aiohttp) -------------------------------


@dataclass
class Scripted:
    """A loopback HTTP/1.1 server that gives its answers in turn (the last one again once they
    run out) and keeps each request's head and body; with ``close_after_answer``, it closes
    each connection right after answering (though its answers say keep-alive)."""

    answers: list[bytes]
    close_after_answer: bool = False
    heads: list[list[bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
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
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(*answers: bytes, close_after_answer: bool = False) -> AsyncIterator[Scripted]:
    server = Scripted(list(answers), close_after_answer)
    async with loopback_server(server.serve) as port:
        server.url = f"http://127.0.0.1:{port}/v1"
        yield server


def reply(status: int, body: bytes, *headers: tuple[str, str], reason: str = "Whatever") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + body


OK_REPLY = reply(200, json.dumps(COMPLETION).encode(), ("content-type", "application/json"))


@contextlib.asynccontextmanager
async def socket_client(
    url: str, timeout: float = 5, connect_timeout: float = 2, **options: Any
) -> AsyncIterator[UpstreamClient]:
    """An upstream client over the service's own HTTP client (``make_http_client``)."""
    settings = Settings(
        upstream_url=url,
        upstream_timeout=timeout,
        upstream_connect_timeout=connect_timeout,
        upstream_max_connections=4,
    )
    async with make_http_client(settings) as http:
        defaults: dict[str, Any] = {"retry_deadline": 5, "backoff": 0.001}
        yield UpstreamClient(
            http, base_url=url, api_key="k", timeout=timeout, **{**defaults, **options}
        )


async def complete_over(
    *answers: bytes, timeout: float = 5
) -> tuple[Attempted | UpstreamError, Scripted]:
    """One completion against a server giving ``answers``: its result or its error."""
    async with scripted(*answers) as server, socket_client(server.url, timeout) as client:
        try:
            return await client.complete({"model": "m"}, conversation_id="c"), server
        except UpstreamError as exc:
            return exc, server


async def test_the_request_over_sockets() -> None:
    body = {"model": "grok-4", "messages": [{"role": "user", "content": "hé"}]}
    async with scripted(OK_REPLY) as server, socket_client(server.url) as client:
        result = await client.complete(body, conversation_id="c-1")
        assert result.reply.content == "hi"
        # The limits given reach aiohttp's connector (httpx-aiohttp builds it on first use).
        connector = client.http._transport.client.connector  # type: ignore[attr-defined]
        assert (connector.limit, connector._keepalive_timeout) == (4, 60)
    (head,) = ([line.lower() for line in head] for head in server.heads)
    assert head[0] == b"post /v1/chat/completions http/1.1"
    port = server.url.split(":")[2].split("/")[0]
    for expected in (
        "authorization: bearer k",
        "x-grok-conv-id: c-1",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        f"content-length: {len(server.bodies[0])}",
    ):
        assert expected.encode() in head
    assert [json.loads(b) for b in server.bodies] == [body]


async def test_errors_and_retries_over_sockets() -> None:
    retried, server = await complete_over(reply(503, b"busy"), OK_REPLY)
    assert isinstance(retried, Attempted)
    assert (retried.attempts, len(server.bodies)) == (2, 2)

    limited, server = await complete_over(reply(429, b"slow", ("retry-after", "120")))
    assert isinstance(limited, UpstreamRateLimited)
    assert (limited.retry_after, len(server.bodies)) == (120, 1)

    flat = json.dumps({"code": "Client specified an invalid argument", "error": "bad key"})
    rejected, server = await complete_over(reply(400, flat.encode()))
    assert isinstance(rejected, UpstreamRejected)
    assert (rejected.message, rejected.status, len(server.bodies)) == ("bad key", 400, 1)


async def test_an_error_body_is_read_up_to_64_kib() -> None:
    # The answer promises 10 MiB and sends 256 KiB: reading it all would wait for the rest.
    head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10485760\r\n\r\n"
    started = time.monotonic()
    rejected, _ = await complete_over(head + b"no! " * 65536, timeout=5)
    assert time.monotonic() - started < 3
    assert isinstance(rejected, UpstreamRejected)
    assert rejected.message.startswith("no! no! ")
    assert len(rejected.message) <= MAX_ERROR_CHARS


async def test_a_compressed_answer_is_decoded() -> None:
    compressed = gzip.compress(json.dumps(COMPLETION).encode())
    result, _ = await complete_over(reply(200, compressed, ("content-encoding", "gzip")))
    assert isinstance(result, Attempted)
    assert result.reply.content == "hi"


async def test_a_compressed_stream_is_decoded_and_bounded_as_decoded() -> None:
    text = "data: " + json.dumps(delta(content="a\u2028b"), ensure_ascii=False) + "\r\n\r\n"
    # 3 MiB of one line in 3 KiB: counting the bytes as sent would let all of it through.
    bomb = b"data: " + b" " * (3 * 1024 * 1024)
    for body in (text.encode() + b"data: [DONE]\r\n\r\n", bomb):
        answer = reply(
            200,
            gzip.compress(body),
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
        )
        async with scripted(answer) as server, socket_client(server.url, max_reply_chars=10) as c:
            try:
                result: Attempted | UpstreamError = await c.stream(
                    {"model": "m"}, conversation_id="c", on_delta=no_delta
                )
            except UpstreamError as exc:
                result = exc
        if body is bomb:
            assert isinstance(result, UpstreamReplyTooLarge), result
        else:
            assert isinstance(result, Attempted), result
            assert result.reply.content == "a\u2028b"


async def test_no_answer_is_a_timeout_over_sockets() -> None:
    timed_out, server = await complete_over(b"", timeout=0.2)
    assert isinstance(timed_out, UpstreamTimeout)
    assert timed_out.message == "The model did not answer within 0.2 s."
    assert len(server.bodies) == 1  # not retried


STREAM_REPLY = reply(
    200,
    sse(delta(role="assistant", content="hi"), delta()),
    ("content-type", "text/event-stream"),
)


async def test_a_connection_the_upstream_closed_after_answering_fails_no_call() -> None:
    # Every answer says keep-alive and the server closes the connection right after it: the
    # pooled connection is dead when the next call takes it. No retries are allowed, so each
    # call must succeed on its first attempt.
    async with (
        scripted(OK_REPLY, close_after_answer=True) as server,
        socket_client(server.url, max_retries=0) as client,
    ):
        for _ in range(200):
            result = await client.complete({"model": "m"}, conversation_id="c")
            assert (result.reply.content, result.attempts) == ("hi", 1)
        server.answers = [STREAM_REPLY]
        for _ in range(50):
            result = await client.stream({"model": "m"}, conversation_id="c", on_delta=no_delta)
            assert (result.reply.content, result.attempts) == ("hi", 1)
    assert server.connections >= 250


async def test_a_failed_dns_look_up_says_so() -> None:
    if aiohttp.resolver.DefaultResolver is not aiohttp.resolver.ThreadedResolver:
        pytest.skip("aiohttp resolves through aiodns here, not the event loop")
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # No look-up leaves this machine: the name is refused here, as a resolver would.
        if host == "upstream.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await real(host, *args, **kwargs)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    try:
        async with socket_client("http://upstream.invalid/v1", max_retries=0) as client:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.complete({"model": "m"}, conversation_id="c")
    finally:
        del loop.getaddrinfo
    assert (
        caught.value.message
        == "Could not reach the model: could not resolve host upstream.invalid."
    )


async def test_a_refused_connection_says_so() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with socket_client(f"http://127.0.0.1:{port}/v1", max_retries=0) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.complete({"model": "m"}, conversation_id="c")
    assert (
        caught.value.message
        == f"Could not reach the model: connection refused by 127.0.0.1:{port}."
    )


async def test_a_failed_tls_handshake_says_so() -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(400, b"plain HTTP here"))  # where TLS is expected
        await writer.drain()
        writer.close()

    async with loopback_server(plain) as port:
        url = f"https://127.0.0.1:{port}/v1"
        async with socket_client(url, max_retries=0) as client:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.complete({"model": "m"}, conversation_id="c")
    where = url.split("/")[2]
    assert caught.value.message.startswith(
        f"Could not reach the model: the TLS handshake with {where} failed ([SSL: "
    ), caught.value.message


async def test_a_connect_timeout_says_so() -> None:
    # A listening socket whose queue of one is full: the kernel drops further SYNs, so a new
    # connection waits until its timeout.
    with socket.socket() as listening, socket.socket() as queued:
        listening.bind(("127.0.0.1", 0))
        listening.listen(0)
        port = listening.getsockname()[1]
        queued.connect(("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}/v1"
        async with socket_client(url, connect_timeout=0.3, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.complete({"model": "m"}, conversation_id="c")
    assert time.monotonic() - started < 2
    assert caught.value.message == (
        "Could not reach the model: no connection within 0.3 s (the connect timeout)."
    )


# ---- end to end: the service against the fake upstream, on each database ------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_reply_too_large_fails_the_turn_and_keeps_the_message(
    settings: Settings, alice: dict[str, str], upstream: FakeUpstream, stream: bool
) -> None:
    small = dataclasses.replace(settings, max_reply_chars=40)
    asked = [{"role": "user", "content": "tell me everything about everything, twice over"}]
    assert len(expected_reply(asked)) > 40
    async with serve(create_app(small, retry_backoff=0.01)) as client:
        created = await client.post("/v1/conversations", json={}, headers=alice)
        cid = created.json()["id"]
        response = await client.post(
            f"/v1/conversations/{cid}/turns",
            json={"messages": asked, "stream": stream},
            headers=alice,
        )
        if stream:
            assert response.status_code == 201, response.text
            data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
            problem = json.loads(data[-1])
            assert problem["status"] == 502
        else:
            assert response.status_code == 502, response.text
            problem = response.json()
        assert problem["code"] == "reply_too_large"
        assert "40 characters" in problem["detail"]
        turn = await client.get(
            f"/v1/conversations/{cid}/turns/{problem['turn_id']}", headers=alice
        )
        assert turn.json()["status"] == "failed"
        assert turn.json()["error"]["code"] == "reply_too_large"
        messages = await client.get(f"/v1/conversations/{cid}/messages", headers=alice)
        stored = [(m["role"], m["content"]) for m in messages.json()["data"]]
        assert stored == [("user", asked[0]["content"])]
    assert upstream.calls == 1  # not retried
