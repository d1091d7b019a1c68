"""The xAI chat-completions client: one request with retries, errors mapped to a few classes.

It knows nothing of the database. One long-lived ``httpx.AsyncClient`` is passed in and shared.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

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


_completion_decoder = msgspec.json.Decoder(_Completion)
_encoder = msgspec.json.Encoder()


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
    ) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + "/chat/completions"
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

    async def complete(self, body: dict[str, Any], *, conversation_id: str) -> Attempted:
        """One chat completion. Raises an ``UpstreamError`` subclass if none could be had."""
        content = _encoder.encode(body)
        headers = self.headers(conversation_id)

        async def once() -> Reply:
            try:
                response = await self.http.post(self.url, content=content, headers=headers)
            except httpx.TimeoutException as exc:
                raise _timeout_error(exc, self.timeout) from exc
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(f"Could not reach the model: {exc!r}") from exc
            if response.status_code != 200:
                raise error_for_response(response.status_code, response.headers, response.content)
            return parse_completion(response.content, body.get("model", ""))

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
        content=message.content,
        reasoning_content=message.reasoning_content,
        tool_calls=tool_call_dicts(message.tool_calls),
        finish_reason=choice.finish_reason,
        usage=completion.usage,
        model=completion.model or requested_model,
    )
