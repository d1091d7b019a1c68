"""The xAI chat-completions client: one request with retries, errors mapped to a few classes.

It knows nothing of the database. One long-lived ``httpx.AsyncClient`` is passed in and shared.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from service.netio import UpstreamTransport
from service.schemas import Reply

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 8.0


class UpstreamError(Exception):
    """The upstream did not give a usable answer. ``status`` is its HTTP status, if any."""

    code = "upstream_error"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.attempts = 1

    def as_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "detail": self.message}
        if self.status is not None:
            error["upstream_status"] = self.status
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        error["attempts"] = self.attempts
        return error


class UpstreamUnavailable(UpstreamError):
    """Connection failures and 5xx: transient, retried."""


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    code = "upstream_rate_limited"


class UpstreamRejected(UpstreamError):
    """A 4xx other than 408/429: the request itself is wrong; never retried."""


class UpstreamBadResponse(UpstreamError):
    """A 2xx whose body is not a chat completion (not JSON, or the wrong shape)."""


class UpstreamStreamCut(UpstreamError):
    """A stream that ended before ``[DONE]``; ``partial`` holds what had arrived."""

    def __init__(self, message: str, *, partial: Reply) -> None:
        super().__init__(message)
        self.partial = partial

    def as_dict(self) -> dict[str, Any]:
        error = super().as_dict()
        error["partial_content"] = self.partial.content
        if self.partial.reasoning_content:
            error["partial_reasoning_content"] = self.partial.reasoning_content
        return error


# ---- wire shapes (lenient: the upstream adds fields over time) ---------------------------


class _Function(msgspec.Struct):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct):
    id: str
    function: _Function
    type: str = "function"


class _Message(msgspec.Struct):
    content: str | list[Any] | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    model: str = ""
    usage: dict[str, Any] | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_DeltaToolCall] | None = None


class _DeltaFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _DeltaToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: _DeltaFunction | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None
    index: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    model: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = None


_completion_decoder = msgspec.json.Decoder(_Completion)
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_encoder = msgspec.json.Encoder()


def column_text(value: str | None) -> str | None:
    """Text as stored: without NUL characters, which PostgreSQL text cannot hold."""
    return value.replace("\x00", "") if value else value


def tool_call_dicts(calls: list[_ToolCall] | None) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    return [
        {
            "id": c.id,
            "type": c.type,
            "function": {"name": c.function.name, "arguments": c.function.arguments},
        }
        for c in calls
    ]


@dataclass(frozen=True, slots=True)
class Attempted:
    """A result and how many attempts it took."""

    reply: Reply
    attempts: int


class UpstreamClient:
    """Calls ``POST {base_url}/chat/completions``, retrying transient failures with backoff."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int = 2,
        retry_deadline: float = 60.0,
        backoff: float = 0.5,
        direct: UpstreamTransport | None = None,
    ) -> None:
        """``direct`` is the transport under ``http`` when it is the service's own: a
        non-streamed completion then goes to it without httpx's request and response objects
        (``UpstreamTransport.fetch``), with the same headers, timeouts and connections."""
        self.http = http
        self.direct = direct
        # Parsed once: httpx parses a URL given as text on every request (45 µs here).
        self.url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_deadline = retry_deadline
        self.backoff = backoff

    def headers(self, conversation_id: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-grok-conv-id": conversation_id}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    @functools.cached_property
    def _direct_headers(self) -> list[tuple[bytes, bytes]]:
        """What ``http.post`` sends but the conversation id: the client's own headers (accept,
        accept-encoding, user-agent…), then ours."""
        merged = httpx.Headers(self.http.headers)
        merged.update(self.headers(""))
        return [(name, value) for name, value in merged.raw if name != b"x-grok-conv-id"]

    async def complete(self, body: dict[str, Any], *, conversation_id: str) -> Attempted:
        """One chat completion. Raises an ``UpstreamError`` subclass if none could be had."""
        content = _encoder.encode(body)
        post = self._post if self.direct is None else self._fetch

        async def once() -> Reply:
            try:
                status, headers, answer = await post(content, conversation_id)
            except httpx.TimeoutException as exc:
                raise _timeout_error(exc, self.timeout) from exc
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(f"Could not reach the model: {exc!r}") from exc
            if status != 200:
                raise error_for_response(status, headers or httpx.Headers(), answer)
            return parse_completion(answer, body.get("model", ""))

        return await self.retrying(once)

    async def _post(
        self, content: bytes, conversation_id: str
    ) -> tuple[int, httpx.Headers | None, bytes]:
        response = await self.http.post(
            self.url, content=content, headers=self.headers(conversation_id)
        )
        return response.status_code, response.headers, response.content

    async def _fetch(
        self, content: bytes, conversation_id: str
    ) -> tuple[int, httpx.Headers | None, bytes]:
        """As ``_post``, through ``direct``; the headers only when they are needed."""
        assert self.direct is not None
        headers = [*self._direct_headers, (b"x-grok-conv-id", conversation_id.encode())]
        answer = await self.direct.fetch(b"POST", self.url, headers, content, self.http.timeout)
        if answer.status == 200 and not any(
            name.lower() == b"content-encoding" for name, _ in answer.headers
        ):
            return 200, None, answer.content
        # An error (its Retry-After is read from the headers) or a compressed body (httpx's
        # decoders decode it).
        response = httpx.Response(answer.status, headers=answer.headers, content=answer.content)
        return response.status_code, response.headers, response.content

    async def stream(
        self,
        body: dict[str, Any],
        *,
        conversation_id: str,
        on_delta: Callable[[dict[str, str]], Awaitable[None]],
    ) -> Attempted:
        """A streamed chat completion, read to its end.

        Each ``content`` / ``reasoning_content`` piece is passed to ``on_delta`` as it arrives;
        the whole reply is returned at the end. Failures before the first piece are retried
        like ``complete``; a stream cut after that raises ``UpstreamStreamCut``.
        """
        content = _encoder.encode(
            {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
        headers = self.headers(conversation_id)
        requested_model = str(body.get("model", ""))

        async def once() -> Reply:
            accumulator = StreamAccumulator(requested_model)
            try:
                async with self.http.stream(
                    "POST", self.url, content=content, headers=headers
                ) as response:
                    if response.status_code != 200:
                        raise error_for_response(
                            response.status_code, response.headers, await response.aread()
                        )
                    async for line in response.aiter_lines():
                        delta = accumulator.feed_line(line)
                        if delta:
                            await on_delta(delta)
                        if accumulator.done:
                            break
            except httpx.TimeoutException as exc:
                if accumulator.started:
                    raise UpstreamStreamCut(
                        f"The model's stream stalled for {self.timeout:g} s.",
                        partial=accumulator.reply(),
                    ) from exc
                raise _timeout_error(exc, self.timeout) from exc
            except httpx.HTTPError as exc:
                if accumulator.started:
                    raise UpstreamStreamCut(
                        f"The model's stream broke off: {exc!r}", partial=accumulator.reply()
                    ) from exc
                raise UpstreamUnavailable(f"Could not reach the model: {exc!r}") from exc
            if not accumulator.done:
                if not accumulator.started:
                    raise UpstreamBadResponse("The model's stream ended before any data.")
                raise UpstreamStreamCut(
                    "The model's stream ended before [DONE].", partial=accumulator.reply()
                )
            return accumulator.reply()

        return await self.retrying(once)

    async def retrying(self, call: Callable[[], Awaitable[Reply]]) -> Attempted:
        """Run ``call`` until it succeeds, retrying transient failures within the deadline."""
        deadline = time.monotonic() + self.retry_deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await call()
            except UpstreamError as exc:
                exc.attempts = attempt
                delay = self._retry_delay(exc, attempt, deadline)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            return Attempted(result, attempt)

    def _retry_delay(self, exc: UpstreamError, attempt: int, deadline: float) -> float | None:
        transient = isinstance(exc, UpstreamUnavailable | UpstreamRateLimited) or (
            isinstance(exc, UpstreamTimeout) and exc.status == 408
        )
        if not transient or attempt > self.max_retries:
            return None
        # Full jitter keeps many clients retrying at once from hitting the upstream in step.
        delay = random.uniform(0, min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1)))
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        if time.monotonic() + delay > deadline:
            return None
        return delay


class StreamAccumulator:
    """Parses an upstream SSE stream line by line and accumulates the reply.

    Follows the observed xAI order: role on the first delta, empty deltas while reasoning, no
    ``finish_reason`` key until the finish chunk, whole tool calls, a usage chunk with empty
    ``choices``, then ``[DONE]``. Comment lines (``: keepalive``) and other SSE fields are skipped.
    """

    def __init__(self, requested_model: str) -> None:
        self.model = requested_model
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.started = False
        self.done = False

    def feed_line(self, line: str) -> dict[str, str] | None:
        """Take one line; return the text delta it carried, if any."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            chunk = _chunk_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamBadResponse(
                f"The model's stream held something unreadable: {exc}"
            ) from exc
        if chunk.error is not None:
            message = (
                chunk.error
                if isinstance(chunk.error, str)
                else msgspec.json.encode(chunk.error).decode()
            )
            raise UpstreamBadResponse(f"The model's stream reported an error: {message}")
        self.started = True
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage  # the last one wins: older streams repeat a running total
        delta: dict[str, str] = {}
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            piece = choice.delta
            if piece.reasoning_content:
                self.reasoning.append(piece.reasoning_content)
                delta["reasoning_content"] = piece.reasoning_content
            if piece.content:
                self.content.append(piece.content)
                delta["content"] = piece.content
            for call in piece.tool_calls or ():
                self._merge_tool_call(call)
        return delta or None

    def _merge_tool_call(self, call: _DeltaToolCall) -> None:
        # xAI sends each call whole; OpenAI-style streams send the arguments in pieces.
        entry = self.tool_calls.setdefault(
            call.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.id:
            entry["id"] = call.id
        if call.type:
            entry["type"] = call.type
        if call.function is not None:
            if call.function.name:
                entry["function"]["name"] += call.function.name
            if call.function.arguments:
                entry["function"]["arguments"] += call.function.arguments

    def reply(self) -> Reply:
        return Reply(
            content=column_text("".join(self.content)),
            reasoning_content=column_text("".join(self.reasoning)) or None,
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            finish_reason=column_text(self.finish_reason),
            usage=self.usage,
            model=column_text(self.model) or "",
        )


def _timeout_error(exc: httpx.TimeoutException, timeout: float) -> UpstreamError:
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamUnavailable(f"Could not connect to the model in time: {exc!r}")
    return UpstreamTimeout(f"The model did not answer within {timeout:g} s.")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def upstream_message(content: bytes) -> str:
    """The human message in an upstream error body: xAI's flat ``{"code","error"}``,
    OpenAI's ``{"error":{"message"}}``, or the raw text."""
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        text = content.decode("utf-8", "replace").strip()
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return content.decode("utf-8", "replace")[:500]


def error_for_response(status: int, headers: httpx.Headers, content: bytes) -> UpstreamError:
    message = upstream_message(content)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        return UpstreamRateLimited(message, status=status, retry_after=retry_after)
    if status == 408:
        return UpstreamTimeout(message, status=status)
    if status >= 500:
        return UpstreamUnavailable(message, status=status, retry_after=retry_after)
    if 200 <= status < 300:
        return UpstreamBadResponse(f"Unexpected status {status}: {message}", status=status)
    return UpstreamRejected(message, status=status)


def parse_completion(content: bytes, requested_model: str) -> Reply:
    """A stored reply from a non-streamed chat-completion body."""
    try:
        completion = _completion_decoder.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamBadResponse(f"The model's answer was not a chat completion: {exc}") from exc
    if not completion.choices:
        raise UpstreamBadResponse("The model's answer had no choices.")
    choice = completion.choices[0]
    message = choice.message
    return Reply(
        content=column_text(message.content)
        if isinstance(message.content, str)
        else message.content,
        reasoning_content=column_text(message.reasoning_content),
        tool_calls=tool_call_dicts(message.tool_calls),
        finish_reason=column_text(choice.finish_reason),
        usage=completion.usage,
        model=column_text(completion.model) or requested_model,
    )
