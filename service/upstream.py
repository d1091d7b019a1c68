"""The xAI client: one request with retries, errors mapped to a few classes.

It knows nothing of the database. One long-lived ``httpx.AsyncClient`` is passed in and shared:
the service's is httpx over aiohttp's connections (``service.app.make_http_client``). What it
sends and how it reads the answer is an ``UpstreamApi``: chat completions (here, the default)
or xAI's Responses API (``service.upstream_responses``); the retries, error mapping, limits and
connection handling are the same for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import errno
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import aiohttp
import httpx
import msgspec
from httpx_sse import EventSource, ServerSentEvent, SSEError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from service.schemas import Reply

log = logging.getLogger("convstore.upstream")
_T = TypeVar("_T")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 8.0
DEFAULT_MAX_REPLY_CHARS = 2_000_000
MAX_ERROR_CHARS = 500  # of an error's text, as a turn keeps it (the log gets all of it)
ERROR_BODY_BYTES = 64 * 1024  # of an error answer's body, read
MAX_MODEL_CHARS = 200  # a reply's model, as stored (the message table's column)
MAX_FINISH_REASON_CHARS = 32  # likewise
# The most bytes of JSON a reply of N characters can take: a character outside the BMP escaped
# as a surrogate pair (\ud83d\ude00) takes 12; plus room for the rest of the completion.
JSON_BYTES_PER_CHAR = 12
ENVELOPE_BYTES = 1024 * 1024
# What a failed exchange raises: httpx's errors, and aiohttp's that httpx-aiohttp does not map
# (a malformed answer, for one).
TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError)


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
        self.sent = b""  # the request body, exactly as sent

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


class UpstreamContextExceeded(UpstreamRejected):
    """The request was refused as longer than the model's window; ``window`` and ``counted``
    are the numbers the refusal gives, if it gives them."""

    code = "context_length_exceeded"

    def __init__(self, message: str, *, status: int, window: int | None, counted: int | None):
        super().__init__(message, status=status)
        self.window = window
        self.counted = counted


# How xAI words the refusal ("This model's maximum prompt length is 131072 but the request
# contains 136973 tokens."), and OpenAI ("maximum context length is 8192 tokens, however you
# requested 9000 tokens").
_TOO_LONG = re.compile(
    r"maximum (?:prompt|context) length is (\d+)\D+?(?:contains|requested|resulted in) (\d+)"
)


class UpstreamBadResponse(UpstreamError):
    """A 2xx whose body is not a chat completion (not JSON, or the wrong shape)."""


class UpstreamReplyTooLarge(UpstreamError):
    """A reply longer than the service keeps (``max_reply_chars``); never retried."""

    code = "reply_too_large"


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


# A stored reply's encrypted reasoning, as the history carries it: only the Responses API
# takes it back; chat completions is sent the history without it.
ENCRYPTED_REASONING = "reasoning_encrypted_content"


class ReplyAccumulator(Protocol):
    """Reads a streamed answer event by event (``StreamAccumulator`` for chat completions)."""

    END: ClassVar[str]  # what ends the stream, in words for an error
    started: bool  # something of the reply has arrived
    done: bool  # the stream's end has arrived

    def feed(self, event: ServerSentEvent) -> dict[str, str] | None: ...

    def reply(self) -> Reply: ...


class UpstreamApi(Protocol):
    """One upstream endpoint: where a turn's request goes, in which shape, and how its answer
    (whole, or streamed) becomes a ``Reply``. Turns build their request as a chat completion
    (``{**params, "model", "messages"}``); an API converts it to its own shape."""

    path: str

    def request(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]: ...

    def parse(self, content: bytes, requested_model: str, max_chars: int) -> Reply: ...

    def accumulator(self, requested_model: str, max_chars: int) -> ReplyAccumulator: ...


class ChatCompletions:
    """``POST /chat/completions``, xAI's chat completions (see ``UPSTREAM.md``)."""

    path = "/chat/completions"

    def request(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        messages = body.get("messages")
        if messages and any(ENCRYPTED_REASONING in m for m in messages):
            plain = [{k: v for k, v in m.items() if k != ENCRYPTED_REASONING} for m in messages]
            body = {**body, "messages": plain}
        if stream:
            return {**body, "stream": True, "stream_options": {"include_usage": True}}
        return body

    def parse(self, content: bytes, requested_model: str, max_chars: int) -> Reply:
        return parse_completion(content, requested_model, max_chars)

    def accumulator(self, requested_model: str, max_chars: int) -> ReplyAccumulator:
        return StreamAccumulator(requested_model, max_chars)


CHAT_COMPLETIONS = ChatCompletions()


@dataclass(frozen=True, slots=True)
class Attempted:
    """A result and how many attempts it took."""

    reply: Reply
    attempts: int
    sent: bytes = b""  # the request body, exactly as sent


class UpstreamClient:
    """Calls ``POST {base_url}{api.path}`` (chat completions unless another ``api`` is given),
    retrying transient failures with backoff."""

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
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
        api: UpstreamApi = CHAT_COMPLETIONS,
    ) -> None:
        self.http = http
        self.api = api
        # Parsed once: httpx parses a URL given as text on every request (45 µs here).
        self.url = httpx.URL(base_url.rstrip("/") + api.path)
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_deadline = retry_deadline
        self.backoff = backoff
        self.max_reply_chars = max_reply_chars
        self.max_reply_bytes = max_reply_chars * JSON_BYTES_PER_CHAR + ENVELOPE_BYTES

    def headers(self, conversation_id: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-grok-conv-id": conversation_id}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    async def complete(
        self, body: dict[str, Any], *, conversation_id: str, raw: bytes | None = None
    ) -> Attempted:
        """One reply. Raises an ``UpstreamError`` subclass if none could be had. ``raw``: a
        body to send exactly (kept from an earlier call) instead of ``body``'s."""
        content = _encoder.encode(self.api.request(body, stream=False)) if raw is None else raw
        headers = self.headers(conversation_id)
        requested_model = str(body.get("model", ""))

        async def once() -> Reply:
            try:
                response = await self._open(content, headers)
                try:
                    answer, cut = await read_at_most(response, self.max_reply_bytes)
                finally:
                    await response.aclose()
            except TRANSPORT_ERRORS as exc:
                raise self._failure(exc) from exc
            if cut:
                raise self._too_large()
            return self.api.parse(answer, requested_model, self.max_reply_chars)

        return await self._sending(content, once)

    async def stream(
        self,
        body: dict[str, Any],
        *,
        conversation_id: str,
        on_delta: Callable[[dict[str, str]], Awaitable[None]],
        raw: bytes | None = None,
    ) -> Attempted:
        """A streamed reply, read to its end.

        Each ``content`` / ``reasoning_content`` piece is passed to ``on_delta`` as it arrives;
        the whole reply is returned at the end. Failures before the first piece are retried
        like ``complete``; a stream cut after that raises ``UpstreamStreamCut``.
        """
        content = raw or _encoder.encode(self.api.request(body, stream=True))
        headers = self.headers(conversation_id)
        requested_model = str(body.get("model", ""))

        async def once() -> Reply:
            accumulator = self.api.accumulator(requested_model, self.max_reply_chars)
            try:
                response = await self._open(content, headers)
                try:
                    async with contextlib.aclosing(self._events(response)) as events:
                        async for event in events:
                            delta = accumulator.feed(event)
                            if delta:
                                await on_delta(delta)
                            if accumulator.done:
                                break
                finally:
                    await response.aclose()
            except SSEError as exc:  # before TRANSPORT_ERRORS: it is an httpx.TransportError
                raise UpstreamBadResponse(
                    f"The model's answer was not an event stream: {exc}"
                ) from exc
            except TRANSPORT_ERRORS as exc:
                if not accumulator.started:
                    raise self._failure(exc) from exc
                if _read_timed_out(exc):
                    message = f"The model's stream stalled for {self.timeout:g} s."
                else:
                    message = f"The model's stream broke off: {self._describe(exc)}."
                raise UpstreamStreamCut(message, partial=accumulator.reply()) from exc
            if not accumulator.done:
                if not accumulator.started:
                    raise UpstreamBadResponse("The model's stream ended before any data.")
                raise UpstreamStreamCut(
                    f"The model's stream ended before {accumulator.END}.",
                    partial=accumulator.reply(),
                )
            return accumulator.reply()

        return await self._sending(content, once)

    async def _events(self, response: httpx.Response) -> AsyncGenerator[ServerSentEvent]:
        """The events of a streamed answer, as httpx-sse reads them. More than
        ``max_reply_bytes`` of it without an event's end (one endless line, or an event of
        endless lines) raise ``UpstreamReplyTooLarge``: no reply within the limit needs them,
        and the parser would keep them all."""
        pending = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal pending
            async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts whole
                pending += len(chunk)
                if pending > self.max_reply_bytes:
                    raise self._too_large()
                yield chunk

        # httpx-sse reads a response's text; this one's is the answer's body, decoded, counted.
        content_type = response.headers.get("content-type", "")
        body = httpx.Response(200, headers={"content-type": content_type}, content=counted())
        async for event in EventSource(body).aiter_sse():
            pending = 0
            yield event

    async def _sending(self, content: bytes, once: Callable[[], Awaitable[Reply]]) -> Attempted:
        """``retrying(once)``, with the request body sent on its result, or on its error."""
        try:
            attempted = await self.retrying(once)
        except UpstreamError as exc:
            exc.sent = content
            raise
        return dataclasses.replace(attempted, sent=content)

    async def _open(self, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """Send the request; its answer, the body still to read, if the status is 200. Any
        other status raises its ``UpstreamError``, with up to 64 KiB of the body read."""
        request = self.http.build_request("POST", self.url, content=content, headers=headers)
        try:
            response = await self.http.send(request, stream=True)
        except TRANSPORT_ERRORS as exc:
            if not closed_before_answering(exc):
                raise
            # Most likely a kept-alive connection the upstream had just closed: nothing was
            # answered, so the request goes again at once, on another connection (aiohttp does
            # this itself only for idempotent methods). Once: a second failure is a failure.
            log.info("upstream connection closed before answering; sending again: %r", exc)
            response = await self.http.send(request, stream=True)
        if response.status_code == 200:
            return response
        try:
            answer, _ = await read_at_most(response, ERROR_BODY_BYTES)
        finally:
            await response.aclose()
        raise error_for_response(response.status_code, response.headers, answer)

    def _failure(self, exc: Exception) -> UpstreamError:
        """The error for an exchange that failed before anything of the reply arrived."""
        if _read_timed_out(exc):
            return UpstreamTimeout(f"The model did not answer within {self.timeout:g} s.")
        return UpstreamUnavailable(f"Could not reach the model: {self._describe(exc)}.")

    def _describe(self, exc: Exception) -> str:
        connect = self.http.timeout.connect
        return describe_failure(exc, connect_timeout=connect or self.timeout)

    def _too_large(self) -> UpstreamReplyTooLarge:
        return UpstreamReplyTooLarge(too_large_text(self.max_reply_chars))

    async def retrying(self, call: Callable[[], Awaitable[Reply]]) -> Attempted:
        """Run ``call`` until it succeeds (tenacity): a transient failure is tried again, at
        most ``max_retries`` times and never past the deadline, after a full-jitter exponential
        backoff (many clients retrying at once do not hit the upstream in step), or after as
        long as the upstream's ``Retry-After`` asks if that is longer.

        Each failure's text is logged whole at WARNING (credentials redacted); the error
        raised keeps at most ``MAX_ERROR_CHARS`` of it."""
        jitter = wait_random_exponential(multiplier=self.backoff, max=MAX_BACKOFF)

        def wait(state: RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome is not None else None
            asked = failure.retry_after if isinstance(failure, UpstreamError) else None
            return max(jitter(state), asked or 0.0)

        attempts = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.max_retries + 1) | stop_before_delay(self.retry_deadline),
            wait=wait,
            reraise=True,
        )
        async for attempt in attempts:
            with attempt:
                try:
                    reply = await call()
                except UpstreamError as exc:
                    exc.attempts = attempt.retry_state.attempt_number
                    self._publish(exc)
                    raise
                return Attempted(reply, attempt.retry_state.attempt_number)
        raise AssertionError("tenacity ends with a result or the last error")  # pragma: no cover

    def _publish(self, exc: UpstreamError) -> None:
        # A key too short to be a real one (tests, demos) would blank out ordinary words.
        secrets = [self.api_key] if self.api_key and len(self.api_key) >= 8 else []
        text = redact(exc.message, secrets)
        log.warning(
            "upstream call failed (attempt %d, %s, status %s): %s",
            exc.attempts,
            exc.code,
            exc.status,
            text,
        )
        exc.message = bounded(text)
        exc.args = (exc.message,)


def _transient(exc: BaseException) -> bool:
    """A failure worth trying again: the upstream unreachable or overloaded, rate limited, or a
    408 (its own timeout; ours is not retried: the model may still be thinking)."""
    return isinstance(exc, UpstreamUnavailable | UpstreamRateLimited) or (
        isinstance(exc, UpstreamTimeout) and exc.status == 408
    )


class StreamReader:
    """What every reader of a streamed reply shares: the text accumulated so far, the budget of
    characters (content, reasoning and tool call arguments past ``max_chars`` raise
    ``UpstreamReplyTooLarge``) and what an event's data holds: JSON, or ``[DONE]``, an end.
    Events without data (and comments such as ``: keepalive``, which are no events) count for
    nothing."""

    END: ClassVar[str] = "[DONE]"

    def __init__(self, requested_model: str, max_chars: int = DEFAULT_MAX_REPLY_CHARS) -> None:
        self.model = requested_model
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.started = False
        self.done = False
        self.chars_left = max_chars
        self.max_chars = max_chars

    def data(self, event: ServerSentEvent) -> str | None:
        """The JSON an event carries, if any; ``[DONE]`` calls ``ended`` instead."""
        data = event.data.strip()
        if data == "[DONE]":
            self.ended()
            return None
        return data or None

    def ended(self) -> None:
        self.done = True

    @staticmethod
    def decode(decoder: msgspec.json.Decoder[_T], data: str) -> _T:
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamBadResponse(
                f"The model's stream held something unreadable: {exc}"
            ) from exc

    def _take(self, chars: int) -> None:
        self.chars_left -= chars
        if self.chars_left < 0:
            raise UpstreamReplyTooLarge(too_large_text(self.max_chars))


class StreamAccumulator(StreamReader):
    """Parses an upstream chat-completions SSE stream event by event and accumulates the reply.

    Follows the observed xAI order: role on the first delta, empty deltas while reasoning, no
    ``finish_reason`` key until the finish chunk, whole tool calls, a usage chunk with empty
    ``choices``, then ``[DONE]``.
    """

    def __init__(self, requested_model: str, max_chars: int = DEFAULT_MAX_REPLY_CHARS) -> None:
        super().__init__(requested_model, max_chars)
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def feed(self, event: ServerSentEvent) -> dict[str, str] | None:
        """Take one event; return the text delta it carried, if any."""
        data = self.data(event)
        if data is None:
            return None
        chunk = self.decode(_chunk_decoder, data)
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
                self._take(len(piece.reasoning_content))
                self.reasoning.append(piece.reasoning_content)
                delta["reasoning_content"] = piece.reasoning_content
            if piece.content:
                self._take(len(piece.content))
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
                self._take(len(call.function.arguments))
                entry["function"]["arguments"] += call.function.arguments

    def reply(self) -> Reply:
        return Reply(
            content=column_text("".join(self.content)),
            reasoning_content=column_text("".join(self.reasoning)) or None,
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            finish_reason=bounded_column(self.finish_reason, MAX_FINISH_REASON_CHARS),
            usage=self.usage,
            model=bounded_column(self.model, MAX_MODEL_CHARS) or "",
        )


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of ``response``'s (decoded) body, and whether there was more."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        parts.append(part)
        size += len(part)
        if size > limit:
            return b"".join(parts)[:limit], True
    return b"".join(parts), False


def too_large_text(max_chars: int) -> str:
    return (
        f"The model's reply is longer than this service keeps ({max_chars:,} characters of "
        "content, reasoning and tool call arguments); it was not stored."
    )


# ---- failures in words ---------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from, outermost first."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _aiohttp_cause(exc: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp error under ``exc`` (httpx-aiohttp raises httpx's errors from aiohttp's)."""
    return next((e for e in _causes(exc) if isinstance(e, aiohttp.ClientError)), None)


def _read_timed_out(exc: BaseException) -> bool:
    """Whether the upstream went quiet on a connection it had (rather than none was made)."""
    cause = _aiohttp_cause(exc)
    if cause is not None:
        return isinstance(cause, aiohttp.SocketTimeoutError)
    return isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout)


def closed_before_answering(exc: BaseException) -> bool:
    """Whether the upstream closed or reset a connection it had accepted before any of its
    answer came (aiohttp: ``ServerDisconnectedError``, or a reset while the request was being
    written): the request may go again as it is."""
    causes = list(_causes(exc))
    if any(isinstance(e, aiohttp.ClientConnectorError) for e in causes):
        return False  # no connection was made: an ordinary failure, retried with backoff
    return any(
        isinstance(e, aiohttp.ServerDisconnectedError | ConnectionResetError | BrokenPipeError)
        or (isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.EPIPE))
        for e in causes
    )


# What each of aiohttp's errors means, in words; the first class that fits is taken.
_FAILURE_TEXTS: tuple[tuple[type[aiohttp.ClientError], str], ...] = (
    (aiohttp.ClientConnectorDNSError, "could not resolve host {e.host}"),
    (aiohttp.ClientProxyConnectionError, "could not connect to the proxy {e.host}:{e.port} ({os})"),
    (
        aiohttp.ClientConnectorCertificateError,
        "the TLS certificate of {e.host} was not accepted ({e.certificate_error})",
    ),
    (aiohttp.ClientConnectorSSLError, "the TLS handshake with {e.host}:{e.port} failed ({os})"),
    (aiohttp.ClientConnectorError, "could not connect to {e.host}:{e.port} ({os})"),
    (aiohttp.ClientHttpProxyError, "the proxy refused to connect: {e.status} {e.message}"),
    (aiohttp.ConnectionTimeoutError, "no connection within {connect:g} s (the connect timeout)"),
    (aiohttp.SocketTimeoutError, "the connection went quiet past the read timeout"),
    (aiohttp.ServerDisconnectedError, "the connection was closed before an answer"),
    (aiohttp.ClientPayloadError, "the answer was cut off ({e})"),
    (aiohttp.ClientOSError, "the connection failed ({os})"),
    (aiohttp.ClientResponseError, "the answer was not valid HTTP ({e.message})"),
)


def describe_failure(exc: BaseException, *, connect_timeout: float) -> str:
    """What went wrong with an exchange, in words, from its underlying cause:
    httpx-aiohttp maps a failed DNS look-up, a refused connection and a closed one alike to
    ``httpx.ConnectTimeout``."""
    cause = _aiohttp_cause(exc)
    if cause is None:
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return f"no connection within {connect_timeout:g} s (the connect timeout)"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if (
        isinstance(cause, aiohttp.ClientConnectorError)
        and not isinstance(cause, aiohttp.ClientProxyConnectionError)
        and cause.os_error.errno == errno.ECONNREFUSED
    ):
        return f"connection refused by {cause.host}:{cause.port}"
    for kind, text in _FAILURE_TEXTS:
        if isinstance(cause, kind):
            return text.format(e=cause, os=_os_text(cause), connect=connect_timeout)
    return f"{type(cause).__name__}: {cause}"


def _os_text(exc: BaseException) -> str:
    """The operating system's words for an error (``Connection reset by peer``), if it is one."""
    error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if not isinstance(error, OSError):
        return ""
    if isinstance(error, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        return str(error)
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)  # asyncio's own text says only "Connect call failed"
    return error.strerror or str(error) or type(error).__name__


_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"'<>,;]+")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@")
_XAI_KEY = re.compile(r"\bxai-[A-Za-z0-9_-]{16,}")
REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credentials: the given secrets (the API key), ``Bearer`` tokens, xAI
    keys, and the user and password of URLs."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _BEARER.sub(f"Bearer {REDACTED}", text)
    text = _XAI_KEY.sub(REDACTED, text)
    return _URL_CREDENTIALS.sub(rf"\1{REDACTED}@", text)


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        return content.decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return content.decode("utf-8", "replace")


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
    too_long = _TOO_LONG.search(message)
    if too_long is not None:
        window, counted = (int(n) for n in too_long.groups())
        return UpstreamContextExceeded(message, status=status, window=window, counted=counted)
    return UpstreamRejected(message, status=status)


def parse_completion(
    content: bytes, requested_model: str, max_chars: int = DEFAULT_MAX_REPLY_CHARS
) -> Reply:
    """A stored reply from a non-streamed chat-completion body; ``UpstreamReplyTooLarge`` if
    its content, reasoning and tool call arguments pass ``max_chars`` characters."""
    try:
        completion = _completion_decoder.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamBadResponse(f"The model's answer was not a chat completion: {exc}") from exc
    if not completion.choices:
        raise UpstreamBadResponse("The model's answer had no choices.")
    choice = completion.choices[0]
    message = choice.message
    text = message.content
    # Content given as parts is counted by its JSON: close enough for a limit.
    chars = len(text) if isinstance(text, str) else len(_encoder.encode(text)) if text else 0
    chars += len(message.reasoning_content or "")
    chars += sum(len(call.function.arguments) for call in message.tool_calls or ())
    if chars > max_chars:
        raise UpstreamReplyTooLarge(too_large_text(max_chars))
    return Reply(
        content=column_text(text) if isinstance(text, str) else text,
        reasoning_content=column_text(message.reasoning_content),
        tool_calls=tool_call_dicts(message.tool_calls),
        finish_reason=bounded_column(choice.finish_reason, MAX_FINISH_REASON_CHARS),
        usage=completion.usage,
        model=bounded_column(completion.model, MAX_MODEL_CHARS) or requested_model,
    )


def bounded_column(value: str | None, limit: int) -> str | None:
    """A short text from the upstream (the model's name, a finish reason) as its column holds
    it: a longer one is cut, so that it is neither refused by the database nor kept whole."""
    text = column_text(value)
    return text[:limit] if text else text
