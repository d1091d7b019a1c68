"""An offline stand-in for xAI's chat-completions and Responses APIs, for tests, demos and
benchmarks.

It mimics the upstream described in ``UPSTREAM.md``: the same routes under ``/v1``, the same
auth quirks (401 without a bearer token, **400** for an unknown key), the same flat
``{"code", "error"}`` error bodies, the same response and SSE chunk shapes and the same token
accounting (``total = prompt + completion + reasoning``). Replies are deterministic: see
``expected_reply``. Failures (error statuses, garbage, hangs, cut streams, slow streams) can be
injected with ``Fault`` objects, from Python or over HTTP.

``POST /v1/responses`` is xAI's Responses API without storage (``previous_response_id`` is
refused): its ``input`` is read as the chat messages it stands for (function calls joined to
the assistant message before them, function call outputs as tool messages), which are validated,
answered and counted exactly as a chat completion with those messages is, then shaped as a
response object or its semantic stream events. With ``include: ["reasoning.encrypted_content"]``
a reasoning model's reasoning item carries an opaque ``encrypted_content``; one sent back in a
``reasoning`` input item must be intact, or the request is refused (400).

Offline demo, in two terminals::

    python -m service.fake_upstream --port 9100          # prints CONVSTORE_UPSTREAM_URL=...
    CONVSTORE_UPSTREAM_URL=http://127.0.0.1:9100/v1 XAI_API_KEY=demo convstore serve

(``convstore fake-upstream`` runs the same server.) Accepted API keys: the ``--key`` values if any
are given; otherwise ``test-key``, ``demo`` and, if set, the value of ``XAI_API_KEY``. With
``--workers N`` each worker process has its own faults and recorded requests, so the
``/_fake/*`` control routes are only meaningful with one worker. ``--record N`` keeps the last N
requests for ``GET /_fake/requests`` (1,000 by default; the benchmarks keep none, as the bodies
are kept decoded).

In-process use (tests)::

    with FakeUpstream() as fake:            # uvicorn on 127.0.0.1, random port, own thread
        httpx.post(fake.base_url + "/chat/completions", ...)
        fake.push_fault(Fault(kind="status", status=503))
        fake.requests[-1]["body"], fake.requests[-1]["headers"]["x-grok-conv-id"]

Control routes (no auth): ``POST /_fake/faults`` (a ``Fault`` as JSON), ``GET /_fake/faults``,
``DELETE /_fake/faults`` (same as ``FakeUpstream.clear``), ``POST /_fake/release`` (same as
``FakeUpstream.release``), ``GET /_fake/requests`` (``{"calls": N, "requests": [...]}``) and
``GET /_fake/health``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import http
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    MutableMapping,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, get_args

import msgspec
import uvicorn

__all__ = [
    "MODELS",
    "TEAM_ID",
    "FakeUpstream",
    "Fault",
    "create_app_from_env",
    "expected_digest",
    "expected_reply",
    "main",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# What a stream event carries ("item": a Responses item or part, opened or done).
_ChunkKind = Literal["start", "reasoning", "content", "tool", "item", "finish"]
FaultKind = Literal["status", "garbage", "hang", "drop_stream", "no_usage", "slow", "pace"]
_FAULT_KINDS = frozenset(get_args(FaultKind))
HANG_DEFAULT = 3600.0
"""How long a ``hang`` fault with no ``delay`` sleeps: the docs' timeout for reasoning models."""

TEAM_ID = "6f1d2c3b-4a5e-4f60-9b7a-8c9d0e1f2a3b"
"""The team id quoted in error messages, as real xAI errors quote the caller's team."""

KEYS_ENV = "FAKE_UPSTREAM_KEYS"
"""Environment variable (JSON list) carrying the accepted keys into ``--workers`` processes."""
RECORD_ENV = "FAKE_UPSTREAM_RECORD"
"""Environment variable carrying ``--record`` into ``--workers`` processes."""

_EMPTY_DELTAS = 3  # empty ``delta:{}`` chunks while "hidden" reasoning runs; 1 token each
_IMAGE_TOKENS = 256  # per image part; a flat estimate
_MESSAGE_OVERHEAD = 4  # chat-template tokens per message, so prompt_tokens > tokenize-text
_REQUEST_OVERHEAD = 3
_ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
_PART_TYPES = frozenset({"text", "image_url", "text_file", "file"})
_CAMEL = {
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "stop": "stop",
    "reasoning_effort": "reasoningEffort",
}
_WORD_RE = re.compile(r"\S+\s*")  # a reply "token": a word plus the whitespace after it
_TOKEN_RE = re.compile(r"\s*\S+|\s+")  # tokenize-text: a word with its leading whitespace
_DEPRECATED_SEARCH = (
    "Live search is deprecated. Please switch to the Agent Tools API: "
    "https://docs.x.ai/docs/guides/tools/overview"
)
_DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


class Fault(msgspec.Struct):
    """One injected failure, applied to the next ``times`` chat-completions or Responses
    requests (a Responses stream is cut before ``response.completed``; ``no_usage`` gives it a
    ``response.completed`` whose ``usage`` is null).

    Faults are used in the order they were pushed. ``kind``:

    - ``status``: answer ``status`` with the body real xAI (or its proxies) send for it; 500,
      502, 503 and 504 bodies are not JSON. ``body`` overrides the body; ``retry_after`` adds
      a ``Retry-After`` header.
    - ``garbage``: 200 with a body (or SSE stream) that is not valid JSON.
    - ``hang``: wait ``delay`` seconds (``HANG_DEFAULT`` if 0) before answering normally. The
      wait ends early if the client disconnects or the server stops, and ``release`` ends it
      with the normal answer (a test holds a request this way for as long as it needs).
    - ``drop_stream``: a stream is cut after ``after_chunks`` content chunks, without a finish
      chunk or ``[DONE]``; a non-stream reply is cut half-way through its body.
    - ``no_usage``: a stream without the usage chunk even if ``include_usage`` was asked for.
    - ``slow``: ``delay`` seconds before each stream chunk, or before a non-stream reply.
    - ``pace``: a long reply at a steady rate: a stream's content comes in ``chunks`` content
      chunks (the reply cut into that many pieces of near-equal length, empty pieces only if it
      has fewer characters), each ``delay`` seconds after the one before (the first ``delay``
      seconds after the request); a non-stream reply comes after ``chunks * delay`` seconds.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    body: str | None = None
    delay: float = 0.0
    after_chunks: int = 2
    chunks: int = 20
    times: int = 1

    def __post_init__(self) -> None:
        # msgspec checks types only when decoding; direct construction is checked here.
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status, got {self.status}")
        if self.times < 1:
            raise ValueError("times must be at least 1")
        if self.delay < 0 or self.after_chunks < 0:
            raise ValueError("delay and after_chunks must not be negative")
        if self.chunks < 1:
            raise ValueError("chunks must be at least 1")


class _Model(NamedTuple):
    id: str
    created: int
    aliases: tuple[str, ...]
    reasoning: bool
    efforts: frozenset[str] | None  # accepted reasoning_effort values; None: parameter rejected
    rejects: tuple[str, ...]  # parameters answered with "does not support parameter"
    prices: tuple[int, int, int]  # prompt, cached prompt, completion: USD cents per 100M tokens
    vision: bool

    @property
    def fingerprint(self) -> str:
        return "fp_" + hashlib.sha256(self.id.encode()).hexdigest()[:10]


_NO_SAMPLING = ("presence_penalty", "frequency_penalty", "stop")
_REASONING_BY_NAME = frozenset({"grok-4-0709", "grok-4.3", "grok-3-mini", "grok-code-fast-1"})
# Of the reasoning models only these return their reasoning as `reasoning_content`; the others
# reason hidden: reasoning tokens are counted, and a stream shows empty deltas meanwhile.
_SHOWS_REASONING = frozenset({"grok-3-mini", "grok-code-fast-1"})


def _model(
    id: str,
    created: int,
    prices: tuple[int, int, int],
    *aliases: str,
    efforts: Collection[str] | None = None,
    rejects: tuple[str, ...] | None = None,
    vision: bool = True,
) -> _Model:
    # The docs' rule: "*reasoning" models (not "*non-reasoning") plus a few named ones reason,
    # and reasoning models refuse the sampling penalties and `stop`.
    reasoning = id in _REASONING_BY_NAME or ("reasoning" in id and "non-reasoning" not in id)
    if rejects is None:
        rejects = _NO_SAMPLING if reasoning else ()
    allowed = frozenset(efforts) if efforts is not None else None
    return _Model(id, created, aliases, reasoning, allowed, rejects, prices, vision)


MODELS: tuple[_Model, ...] = (
    _model("grok-4-0709", 1752019200, (30000, 7500, 150000), "grok-4", "grok-4-latest"),
    _model(
        "grok-4.3",
        1775001600,
        (12500, 3125, 62500),
        "grok-latest",
        "grok-4.3-latest",
        efforts=("none", "low", "medium", "high"),
    ),
    _model("grok-4.20-0309-reasoning", 1773014400, (20000, 5000, 60000)),
    _model("grok-4.20-0309-non-reasoning", 1773014400, (20000, 5000, 60000)),
    _model("grok-4-1-fast-reasoning", 1763337600, (2000, 500, 5000), "grok-4-1-fast"),
    _model("grok-4-1-fast-non-reasoning", 1763337600, (2000, 500, 5000)),
    _model("grok-4-fast-reasoning", 1758153600, (2000, 500, 5000), "grok-4-fast"),
    _model("grok-4-fast-non-reasoning", 1758153600, (2000, 500, 5000)),
    _model(
        "grok-code-fast-1",
        1756166400,
        (2000, 200, 15000),
        "grok-code-fast",
        "grok-code-fast-1-0825",
        vision=False,
    ),
    _model(
        "grok-3",
        1743724800,
        (30000, 7500, 150000),
        "grok-3-latest",
        "grok-3-beta",
        rejects=("presence_penalty",),
        vision=False,
    ),
    _model(
        "grok-3-mini",
        1743724800,
        (3000, 750, 5000),
        "grok-3-mini-latest",
        "grok-3-mini-beta",
        efforts=("low", "high"),
        vision=False,
    ),
)
"""The models the fake knows (canonical id, aliases, and what each accepts). Prices are
illustrative, in the units of ``/v1/language-models``."""
_BY_NAME: dict[str, _Model] = {n: m for m in MODELS for n in (m.id, *m.aliases)}
# Each model's context window (UPSTREAM.md section 5); a longer prompt is refused with 400.
_WINDOW_BY_ID = {"grok-3": 131_072, "grok-3-mini": 131_072, "grok-4-0709": 256_000}
_WINDOW_DEFAULT = 256_000
_TOO_LONG = (
    "This model's maximum prompt length is {window} but the request contains {count} tokens."
)


# ---------------------------------------------------------------------------------------------
# Deterministic replies


def _text_of(content: Any) -> str:
    """The text of a message ``content``: the string, or the joined ``text`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def expected_digest(messages: list[dict[str, Any]]) -> str:
    """The first 12 hex digits of SHA-256 over ``messages`` as canonical (key-sorted) JSON.

    Any change to the history sent — a message added, dropped, reordered or edited — changes it.
    """
    return hashlib.sha256(msgspec.json.encode(messages, order="sorted")).hexdigest()[:12]


def expected_reply(messages: list[dict[str, Any]], *, max_tokens: int | None = None) -> str:
    """The exact ``content`` the fake answers to ``messages`` (when it does not call a tool).

    ``"echo: <text of the last user message> [n=<len(messages)> h=<expected_digest>]"``; with
    ``max_tokens`` below its word count, the first ``max_tokens`` words (finish_reason
    ``length``). A streamed reply's content deltas join to exactly this string.
    """
    return "".join(_words(_full_reply(messages), max_tokens)[0])


def _full_reply(messages: list[Any]) -> str:
    return f"echo: {_last_user_text(messages)} [n={len(messages)} h={expected_digest(messages)}]"


def _json_reply(body: dict[str, Any], text: str) -> str:
    """With ``response_format`` json_schema, the reply is a JSON object whose required
    properties hold ``text`` (strings), 0 (numbers) or false (booleans); otherwise ``text``."""
    found = body.get("response_format")
    spec = found.get("json_schema") if isinstance(found, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return text
    blanks = {"integer": 0, "number": 0, "boolean": False}
    properties = schema.get("properties") or {}
    return json.dumps(
        {
            name: blanks.get(str((properties.get(name) or {}).get("type")), text)
            for name in schema.get("required") or ()
        }
    )


def _words(text: str, limit: int | None) -> tuple[list[str], bool]:
    """``text`` split into reply tokens, cut to ``limit``; whether it was cut."""
    pieces = _WORD_RE.findall(text)
    if limit is None or limit >= len(pieces):
        return pieces, False
    pieces = pieces[: max(limit, 0)]
    if pieces:
        pieces[-1] = pieces[-1].rstrip()
    return pieces, True


def _word_count(text: str) -> int:
    """Whitespace-separated words in ``text``. A conversation's history comes back on every
    turn, so most texts were counted before: remembering the short ones (at most 64k of 4 KiB)
    keeps the fake's CPU per request from growing with the history (splitting was a third of
    it at 400 messages)."""
    return _short_word_count(text) if len(text) <= 4096 else len(text.split())


@functools.lru_cache(maxsize=65_536)
def _short_word_count(text: str) -> int:
    return len(text.split())


def _count_prompt(body: dict[str, Any]) -> tuple[int, int, int]:
    """(text tokens, image tokens, tokens of the last message): a cheap, deterministic estimate.

    A word counts as one token, like a ``/v1/tokenize-text`` token, and every message adds a
    chat-template overhead, so prompt_tokens always exceed tokenize-text's count for the text.
    """
    text = _REQUEST_OVERHEAD
    images = 0
    last = 0
    for message in body["messages"]:
        content = message.get("content")
        tokens = _MESSAGE_OVERHEAD
        if isinstance(content, str):
            tokens += _word_count(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    tokens += _word_count(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    images += _IMAGE_TOKENS
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            tokens += 2 + len(str(function.get("arguments", "")).split())
        text += tokens
        last = tokens
    for tool in body.get("tools") or ():
        text += 8 + len(msgspec.json.encode(tool)) // 8
    return text, images, last


def _usage(
    model: _Model, prompt: tuple[int, int, int], completion: int, reasoning: int
) -> dict[str, Any]:
    text, images, last = prompt
    prompt_tokens = text + images
    # Everything before the newest message was seen on the previous turn: cached, in 64-blocks.
    cached = max(0, text - last) // 64 * 64
    price_in, price_cached, price_out = model.prices
    # Prices are cents per 100M tokens and 1 USD = 1e10 ticks, so ticks = tokens * price.
    cost = (
        (prompt_tokens - cached) * price_in
        + cached * price_cached
        + (completion + reasoning) * price_out
    )
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion + reasoning,
        "prompt_tokens_details": {
            "text_tokens": text,
            "audio_tokens": 0,
            "image_tokens": images,
            "cached_tokens": cached,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "num_sources_used": 0,
        "cost_in_usd_ticks": cost,
    }


class _Pace(NamedTuple):
    """How a stream's events fall due: each ``slow`` seconds after the one before, a content
    event ``paced.delay`` more (in ``paced.chunks`` pieces); given ``drop``, the stream is cut
    at its finish or at the content event after ``drop`` of them."""

    slow: float
    drop: int | None
    paced: Fault | None

    @property
    def pieces(self) -> int | None:
        return self.paced.chunks if self.paced is not None else None


@dataclass(slots=True)
class _Reply:
    """What the fake answers to one valid request, before it is shaped as JSON or SSE."""

    model: _Model
    model_name: str
    pieces: list[str]  # content tokens; "".join(pieces) is the content
    reasoning: list[str] | None  # reasoning_content tokens, for reasoning models
    tool_call: dict[str, Any] | None
    finish_reason: str
    prompt: tuple[int, int, int]
    completion_tokens: int
    id: str = ""
    encrypt: bool = False  # a Responses reply's reasoning item carries its encrypted_content

    def __post_init__(self) -> None:
        # Like real ids: a UUID with a region suffix; every chunk of a stream shares it.
        self.id = f"{uuid.uuid4()}_us-east-1"

    @property
    def reasoning_tokens(self) -> int:
        return len(self.reasoning) + _EMPTY_DELTAS if self.reasoning is not None else 0

    def usage(self) -> dict[str, Any]:
        return _usage(self.model, self.prompt, self.completion_tokens, self.reasoning_tokens)


def _wants_tool(body: dict[str, Any], messages: list[Any]) -> str | None:
    """The name of the function to call, or None to answer in text."""
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        return str(choice["function"]["name"])
    if choice == "none":
        return None
    last = messages[-1] if messages else {}
    asked = last.get("role") == "user" and "use tool" in _text_of(last.get("content")).lower()
    if choice == "required" or asked:
        return str(tools[0]["function"]["name"])
    return None


def _plan(body: dict[str, Any], model: _Model, model_name: str, reasoning_on: bool) -> _Reply:
    messages: list[Any] = body["messages"]
    user_text = _last_user_text(messages)
    reasoning = None
    if reasoning_on and model.reasoning:
        reasoning = _WORD_RE.findall(f"Thinking about: {user_text}".rstrip())
    prompt = _count_prompt(body)
    tool = _wants_tool(body, messages)
    if tool is not None:
        digest = expected_digest(messages)
        arguments = json.dumps({"q": user_text})
        call = {
            "id": f"call_{int(digest, 16) % 10**8:08d}",
            "type": "function",
            "function": {"name": tool, "arguments": arguments},
        }
        completion = 2 + len(arguments.split())
        return _Reply(model, model_name, [], reasoning, call, "tool_calls", prompt, completion)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    pieces, cut = _words(_json_reply(body, _full_reply(messages)), limit)
    finish = "length" if cut else "stop"
    return _Reply(model, model_name, pieces, reasoning, None, finish, prompt, len(pieces))


# ---------------------------------------------------------------------------------------------
# Validation


class _Problem(Exception):
    """An error answer: status plus the flat ``{"code", "error"}`` body."""

    def __init__(self, status: int, code: str, error: str) -> None:
        super().__init__(error)
        self.status, self.code, self.error = status, code, error


def _bad(what: str) -> _Problem:
    return _Problem(422, "invalid-argument", _DESERIALIZE + what)


def _kind(value: Any) -> str:
    names = {
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "floating point",
        list: "sequence",
        dict: "map",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _bad(f"{where}: invalid type: {_kind(message)}, expected a message object")
    role = message.get("role")
    if role is None:
        raise _bad(f"{where}: missing field `role`")
    if role not in _ROLES:
        raise _bad(
            f"{where}.role: unknown variant `{role}`, expected one of "
            "`system`, `user`, `assistant`, `tool`, `function`"
        )
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _PART_TYPES:
                raise _bad(
                    f"{where}.content[{j}]: expected a content part with a `type` of "
                    "`text`, `image_url`, `text_file` or `file`"
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise _bad(f"{where}.content[{j}].text: expected a string")
            if part["type"] == "image_url" and not (
                isinstance(part.get("image_url"), dict)
                and isinstance(part["image_url"].get("url"), str)
            ):
                raise _bad(f"{where}.content[{j}].image_url: missing field `url`")
    elif content is not None and not isinstance(content, str):
        raise _bad(
            f"{where}.content: invalid type: {_kind(content)}, "
            "expected a string or a sequence of content parts"
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _bad(f"{where}: missing field `tool_call_id`")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _bad(f"{where}.tool_calls: invalid type: {_kind(calls)}, expected a sequence")
        for j, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not (
                isinstance(function, dict)
                and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), str)
            ):
                raise _bad(f"{where}.tool_calls[{j}].function: expected name and arguments strings")


def _check_types(body: Any) -> dict[str, Any]:
    """``body`` if it has the shape of a chat request; raises a 422 ``_Problem`` if not."""
    if not isinstance(body, dict):
        raise _bad(f"invalid type: {_kind(body)}, expected struct ChatRequest")
    if "model" not in body:
        raise _bad("missing field `model`")
    if not isinstance(body["model"], str):
        raise _bad(f"model: invalid type: {_kind(body['model'])}, expected a string")
    if "messages" not in body:
        raise _bad("missing field `messages`")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _bad(f"messages: invalid type: {_kind(messages)}, expected a sequence")
    for i, message in enumerate(messages):
        _check_message(i, message)
    for name in ("stream", "logprobs", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(f"{name}: invalid type: {_kind(body[name])}, expected a boolean")
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or (value < 0 and name != "seed")
        ):
            raise _bad(f"{name}: invalid value: {value!r}, expected an unsigned integer")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise _bad(f"{name}: invalid type: {_kind(value)}, expected a number")
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)
    ):
        raise _bad('stream_options: expected {"include_usage": boolean}')
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("stop: expected a string or a sequence of strings")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad(f"tools: invalid type: {_kind(tools)}, expected a sequence")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
                raise _bad(f"tools[{i}].function: missing field `name`")
    choice = body.get("tool_choice")
    if (
        choice is not None
        and choice not in ("none", "auto", "required")
        and not (
            isinstance(choice, dict)
            and isinstance(choice.get("function"), dict)
            and isinstance(choice["function"].get("name"), str)
        )
    ):
        raise _bad("tool_choice: expected `none`, `auto`, `required` or a named function")
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise _bad(f"reasoning_effort: invalid type: {_kind(effort)}, expected a string")
    return body


def _lenient_request(body: Any) -> dict[str, Any]:
    """The parts of a chat request that shape the reply, with only the messages checked."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise _bad("missing field `model`")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: expected a non-empty sequence")
    for i, message in enumerate(messages):
        _check_message(i, message)
    options = body.get("stream_options")
    tools = body.get("tools")
    return {
        "model": body["model"],
        "messages": messages,
        "stream": body.get("stream") is True,
        "stream_options": options if isinstance(options, dict) else None,
        "tools": tools if isinstance(tools, list) else None,
    }


def _check_semantics(body: dict[str, Any]) -> _Model:
    """The model to answer with; raises the upstream's 400/404/410 for what it refuses."""
    if body.get("search_parameters") is not None:
        raise _Problem(410, "gone", _DEPRECATED_SEARCH)
    name = body["model"]
    model = _BY_NAME.get(name)
    if model is None:
        raise _model_not_found(name)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _Problem(
            400, "invalid-argument", "stream_options is only allowed when stream is set to true."
        )
    for param in model.rejects:
        if body.get(param) is not None:
            raise _unsupported(name, param)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if model.efforts is None:
            raise _unsupported(name, "reasoning_effort")
        if effort not in model.efforts:
            allowed = ", ".join(sorted(model.efforts))
            raise _Problem(
                400,
                "invalid-argument",
                f"Invalid reasoning effort {effort!r} for model {name}. "
                f"Supported values: {allowed}.",
            )
    if not body["messages"]:
        raise _Problem(400, "invalid-argument", "At least one message is required.")
    if body.get("deferred"):
        raise _Problem(
            400, "invalid-argument", "Deferred completions are not supported by the fake upstream."
        )
    choice = body.get("tool_choice")
    if choice not in (None, "none") and not body.get("tools"):
        raise _Problem(400, "invalid-argument", "tool_choice is set but no tools were given.")
    return model


def _unsupported(model: str, param: str) -> _Problem:
    return _Problem(
        400, "invalid-argument", f"Model {model} does not support parameter {_CAMEL[param]}."
    )


def _model_not_found(name: str) -> _Problem:
    return _Problem(
        404,
        "not-found",
        f"The model {name} does not exist or your team {TEAM_ID} does not have access to it. "
        "Please ensure you're using the correct API key. If you believe this is an error, "
        "contact support.",
    )


def _mask(key: str) -> str:
    return f"{key[:2]}***{key[-2:]}"


# ---------------------------------------------------------------------------------------------
# Fault bodies

_TEXT = b"text/plain; charset=utf-8"
_HTML = b"text/html"
_JSON = b"application/json"
_STATUS_BODIES: dict[int, tuple[bytes, bytes]] = {
    500: (
        _TEXT,
        b"upstream connect error or disconnect/reset before headers. "
        b"reset reason: connection termination",
    ),
    502: (
        _HTML,
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
    ),
    503: (
        _TEXT,
        b"upstream connect error or disconnect/reset before headers. retried and the "
        b"latest reset reason: remote connection failure, transport failure reason: "
        b"delayed connect error: 111",
    ),
    504: (
        _HTML,
        b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
        b"<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n",
    ),
}


def _fault_json(status: int, model: str) -> tuple[str, str]:
    if status == 429:
        return "resource-exhausted", (
            f"Too many requests for team {TEAM_ID} and model {model}. Your team's rate limit "
            "is \u2014 Requests per Second (actual/limit): 2/2. Please wait before retrying "
            "or contact support to increase your limits."
        )
    if status == 403:
        return "permission-denied", (
            f"Your team {TEAM_ID} has either used all available credits or reached its monthly "
            "spending limit. To continue making API requests, please purchase more credits or "
            "raise your spending limit."
        )
    if status == 404:
        problem = _model_not_found(model)
        return problem.code, problem.error
    if status == 401:
        return "unauthenticated", "The API key is invalid or has been revoked."
    if status == 410:
        return "gone", _DEPRECATED_SEARCH
    if status == 422:
        return "invalid-argument", _DESERIALIZE + "invalid value at line 1 column 1"
    if status == 400:
        return "invalid-argument", "Client specified an invalid argument."
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return phrase.lower().replace(" ", "-"), f"{phrase} (HTTP {status})."


def _fault_response(fault: Fault, model: str) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(content type, body, extra headers) for a ``status`` fault."""
    headers: list[tuple[bytes, bytes]] = []
    if fault.retry_after is not None:
        value = fault.retry_after
        text = str(int(value)) if float(value).is_integer() else f"{value:g}"
        headers.append((b"retry-after", text.encode()))
    if fault.status == 429:
        # Real xAI promises no rate-limit headers; send OpenAI-style ones as optional extras.
        reset = f"{fault.retry_after or 1:g}s".encode()
        headers += [
            (b"x-ratelimit-limit-requests", b"120"),
            (b"x-ratelimit-remaining-requests", b"0"),
            (b"x-ratelimit-reset-requests", reset),
        ]
    if fault.body is not None:
        raw = fault.body.encode()
        try:
            msgspec.json.decode(raw)
            content_type = _JSON
        except msgspec.DecodeError:
            content_type = _HTML if fault.body.lstrip().startswith("<") else _TEXT
        return content_type, raw, headers
    if fault.status in _STATUS_BODIES:
        content_type, raw = _STATUS_BODIES[fault.status]
        return content_type, raw, headers
    code, error = _fault_json(fault.status, model)
    return _JSON, msgspec.json.encode({"code": code, "error": error}), headers


# ---------------------------------------------------------------------------------------------
# The server


class _DropFilter(logging.Filter):
    """Hide uvicorn's complaint about a response the fake cut short on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


_DROP_FILTER = _DropFilter()


def _quiet_uvicorn() -> None:
    logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)  # idempotent


class _Exchange:
    """One request in flight: its ASGI callables and a lazily started disconnect watcher."""

    __slots__ = ("receive", "send", "started", "watch")

    def __init__(self, receive: Receive, send: Send) -> None:
        self.receive = receive
        self.send = send
        self.started = False
        self.watch: asyncio.Future[Message] | None = None

    async def body(self) -> bytes:
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def watcher(self) -> asyncio.Future[Message]:
        # The body has been read, so the next receive() only returns on disconnect.
        if self.watch is None:
            self.watch = asyncio.ensure_future(self.receive())
        return self.watch

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        await self.start(
            status,
            [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        )
        await self.finish(body)

    async def problem(self, problem: _Problem) -> None:
        await self.respond(
            problem.status, msgspec.json.encode({"code": problem.code, "error": problem.error})
        )

    def close(self) -> None:
        if self.watch is not None and not self.watch.done():
            self.watch.cancel()


class FakeUpstream:
    """A fake xAI API: an ASGI 3 application plus controls, optionally served on a socket.

    Faults may be pushed, and ``requests``/``calls`` read, from any thread while the server
    runs in its own thread. ``requests`` keeps the last ``max_recorded`` chat-completions and
    Responses requests, each ``{"body": <decoded JSON, or the raw text if not JSON>, "headers":
    {<lowercased name>: value}}``; ``calls`` counts every such request received, including
    refused ones.

    Options: ``reasoning=False`` makes every model answer without ``reasoning_content`` and
    reasoning tokens; ``chunk_size`` is the number of words per streamed content delta;
    ``reply_delay`` seconds pass before every chat reply; ``keepalive`` starts every stream
    with a ``: keepalive`` comment; ``legacy_usage`` makes every chunk repeat the role and
    carry the cumulative usage, as the API did in 2024; ``context_window`` gives every model
    that window (default: each model's own), past which a prompt is refused as xAI does.
    """

    def __init__(
        self,
        *,
        api_keys: Collection[str] = ("test-key",),
        reasoning: bool = True,
        chunk_size: int = 1,
        reply_delay: float = 0.0,
        keepalive: bool = True,
        legacy_usage: bool = False,
        max_recorded: int = 1000,
        lenient: bool = False,
        context_window: int | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.api_keys = frozenset(api_keys)
        self.reasoning = reasoning
        self.chunk_size = chunk_size
        self.reply_delay = reply_delay
        # Lenient: any model name and any parameters are accepted (messages are still checked),
        # for fuzzing the service's own validation without upstream refusals in the way.
        self.lenient = lenient
        # Every model's window, if given (a small one makes long conversations quick to test).
        self.context_window = context_window
        self.keepalive = keepalive
        self.legacy_usage = legacy_usage
        self.max_recorded = max_recorded
        self.requests: list[dict[str, Any]] = []
        self.calls = 0
        self._faults: deque[list[Any]] = deque()  # [fault, uses left]
        self._lock = threading.Lock()
        self._aborts: set[asyncio.Future[None]] = set()  # pending pauses, ended by stop()
        self._holds: set[asyncio.Future[None]] = set()  # pending hangs, ended by release()
        self._released = False  # hangs pass at once, from release() to the next hang pushed
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # -- controls ------------------------------------------------------------------------------

    @property
    def app(self) -> FakeUpstream:
        """The ASGI application (the instance itself)."""
        return self

    def push_fault(self, fault: Fault) -> None:
        """Queue ``fault`` behind any pending ones; it applies to ``fault.times`` requests."""
        with self._lock:
            self._faults.append([fault, fault.times])
            if fault.kind == "hang":
                self._released = False

    def release(self) -> None:
        """End every pending ``hang`` with the normal answer, and let the hangs that come later
        pass at once until another ``hang`` fault is pushed."""
        with self._lock:
            self._released = True
            holds = list(self._holds)
        _resolve_all(holds)

    def pending_faults(self) -> list[Fault]:
        """The faults not yet used up, in the order they will apply."""
        with self._lock:
            return [entry[0] for entry in self._faults]

    def clear(self) -> None:
        """Drop pending faults and recorded requests, and reset ``calls`` to 0."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.calls = 0

    def _next_fault(self) -> Fault | None:
        if not self._faults:  # unlocked fast path: a stale read only delays a fault by a call
            return None
        with self._lock:
            if not self._faults:
                return None
            entry = self._faults[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._faults.popleft()
            fault: Fault = entry[0]
            return fault

    def _record(self, body: Any, headers: dict[str, str]) -> None:
        with self._lock:
            self.calls += 1
            self.requests.append({"body": body, "headers": headers})
            if len(self.requests) > self.max_recorded:
                del self.requests[: len(self.requests) - self.max_recorded]

    # -- running on a socket -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` of the running server; RuntimeError if not started."""
        if self._base_url is None:
            raise RuntimeError("the fake upstream is not running; call start() first")
        return self._base_url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port) from a background thread with its own event
        loop; returns once it accepts connections, with the base URL ``http://HOST:PORT/v1``."""
        if self._thread is not None:
            raise RuntimeError("the fake upstream is already running")
        _quiet_uvicorn()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            self, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        server = uvicorn.Server(config)
        self._stopping = False
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"fake-upstream:{bound}",
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                sock.close()
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self._base_url = f"http://{shown}:{bound}/v1"
        return self._base_url

    def stop(self) -> None:
        """Stop the server started by ``start``; pending hangs and slow replies end at once."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._lock:
            self._stopping = True
            aborts = list(self._aborts)
        _resolve_all(aborts)
        server.should_exit = True
        thread.join(30)
        self._server = self._thread = self._base_url = None

    def __enter__(self) -> FakeUpstream:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _pause(self, seconds: float, exchange: _Exchange, *, hold: bool = False) -> bool:
        """Wait ``seconds`` (with ``hold``, or until ``release``); False if the client left or
        the server is stopping meanwhile."""
        watch = exchange.watcher()
        if seconds <= 0:
            return not watch.done()
        loop = asyncio.get_running_loop()
        abort: asyncio.Future[None] = loop.create_future()
        held: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._stopping:
                return False
            if hold and self._released:
                return not watch.done()
            self._aborts.add(abort)
            if hold:
                self._holds.add(held)
        try:
            await asyncio.wait(
                (watch, abort, held), timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            with self._lock:
                self._aborts.discard(abort)
                self._holds.discard(held)
        return not (watch.done() or abort.done())

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI 3 entry point."""
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        exchange = _Exchange(receive, send)
        try:
            await self._route(scope, exchange)
        except _Problem as problem:
            if not exchange.started:
                await exchange.problem(problem)
        finally:
            exchange.close()

    async def _route(self, scope: Scope, exchange: _Exchange) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/v1/chat/completions", "/v1/responses"):
            if method != "POST":
                return await _not_allowed(exchange, b"POST")
            return await self._chat(scope, exchange, responses=path == "/v1/responses")
        if path.startswith("/_fake/"):
            return await self._control(path, method, exchange)
        route = _ROUTES.get(path)
        if route is None and path.startswith("/v1/models/"):
            route = ("GET", _model_entry)
        elif route is None and path.startswith("/v1/language-models/"):
            route = ("GET", _language_model_entry)
        if route is None:
            raise _Problem(
                404,
                "Some requested entity was not found",
                f"No handler found on route. Please check the path {path!r} and "
                "the method of your request.",
            )
        allowed, handler = route
        if method != allowed:
            return await _not_allowed(exchange, allowed.encode())
        headers = _headers(scope)
        self._authorize(headers)
        body = await exchange.body() if method == "POST" else b""
        if method == "POST":
            _require_json(headers)
        await exchange.respond(200, handler(path, body))
        return None

    def _authorize(self, headers: dict[str, str]) -> None:
        value = headers.get("authorization", "")
        scheme, _, key = value.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _Problem(
                401,
                "unauthenticated",
                "No API key provided. Send it as `Authorization: Bearer <key>`. "
                "You can obtain an API key from https://console.x.ai.",
            )
        if key not in self.api_keys:
            raise _Problem(
                400,
                "Client specified an invalid argument",
                f"Incorrect API key provided: {_mask(key)}. You can obtain an API "
                "key from https://console.x.ai.",
            )

    async def _chat(self, scope: Scope, exchange: _Exchange, *, responses: bool = False) -> None:
        headers = _headers(scope)
        raw = await exchange.body()
        error = ""
        try:
            body: Any = msgspec.json.decode(raw)
            decoded = True
        except msgspec.DecodeError as exc:
            body, decoded, error = raw.decode("utf-8", "replace"), False, str(exc)
        self._record(body, headers)
        self._authorize(headers)
        stream = isinstance(body, dict) and body.get("stream") is True
        fault = self._next_fault()
        if fault is not None:
            if fault.kind == "status":
                wanted = body.get("model") if isinstance(body, dict) else None
                wanted = wanted if isinstance(wanted, str) else "unknown"
                content_type, payload, extra = _fault_response(fault, wanted)
                return await exchange.respond(fault.status, payload, content_type, extra)
            if fault.kind == "garbage":
                return await _garbage(exchange, stream)
            if fault.kind == "hang" and not await self._pause(
                fault.delay or HANG_DEFAULT, exchange, hold=True
            ):
                return await self._aborted(exchange)
        _require_json(headers)
        if not decoded:
            what = "EOF while parsing a value at line 1 column 0" if not raw.strip() else error
            raise _bad(what)
        encrypt = False
        if responses:
            body, encrypt = _responses_as_chat(body)
        if self.lenient:
            request = _lenient_request(body)
            model = _BY_NAME.get(request["model"]) or _BY_NAME["grok-3"]
        else:
            request = _check_types(body)
            model = _check_semantics(request)
        reply = _plan(request, model, request["model"], self.reasoning)
        reply.encrypt = encrypt
        window = self.context_window or _WINDOW_BY_ID.get(model.id, _WINDOW_DEFAULT)
        counted = reply.prompt[0] + reply.prompt[1]
        if counted > window:
            # As xAI refuses it: 400, the gRPC wording of the code, the numbers in the text.
            message = _TOO_LONG.format(window=window, count=counted)
            raise _Problem(400, "Client specified an invalid argument", message)
        if self.reply_delay > 0 and not await self._pause(self.reply_delay, exchange):
            return await self._aborted(exchange)
        slow = fault.delay if fault is not None and fault.kind == "slow" else 0.0
        paced = fault if fault is not None and fault.kind == "pace" else None
        if stream:
            options = request.get("stream_options") or {}
            usage = (responses or bool(options.get("include_usage"))) and not (
                fault is not None and fault.kind == "no_usage"
            )
            drop = fault.after_chunks if fault is not None and fault.kind == "drop_stream" else None
            send = self._stream_response if responses else self._stream
            return await send(exchange, reply, usage=usage, pace=_Pace(slow, drop, paced))
        if paced is not None:
            slow = paced.delay * paced.chunks
        if slow and not await self._pause(slow, exchange):
            return await self._aborted(exchange)
        answer = _response(reply, "completed") if responses else _completion(reply)
        payload = msgspec.json.encode(answer)
        if fault is not None and fault.kind == "drop_stream":
            # Promise the whole body, send half, then return: the server closes the socket.
            await exchange.start(
                200, [(b"content-type", _JSON), (b"content-length", str(len(payload)).encode())]
            )
            await exchange.chunk(payload[: len(payload) // 2])
            return None
        await exchange.respond(200, payload)
        return None

    async def _aborted(self, exchange: _Exchange) -> None:
        """End a request whose wait was cut short (client gone, or the server stopping)."""
        if exchange.watch is not None and exchange.watch.done():
            return  # nobody is listening
        if not exchange.started:
            await exchange.problem(
                _Problem(503, "unavailable", "The fake upstream is shutting down.")
            )

    async def _open_stream(self, exchange: _Exchange) -> None:
        await exchange.start(
            200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        )
        if self.keepalive:
            await exchange.chunk(b": keepalive\n\n")

    async def _stream(
        self, exchange: _Exchange, reply: _Reply, *, usage: bool, pace: _Pace
    ) -> None:
        await self._open_stream(exchange)
        contents = reasonings = 0  # chunks sent so far, for legacy usage
        finished = False
        deltas = _deltas(reply, self.chunk_size, pace.pieces)
        async for delta, kind in self._due(exchange, deltas, pace):
            finish = finished = kind == "finish"
            contents += kind == "content"
            reasonings += kind == "reasoning"
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            if finish:
                choice["finish_reason"] = reply.finish_reason
            chunk = _chunk(reply, [choice])
            if self.legacy_usage:
                delta.setdefault("role", "assistant")
                done = finish or kind == "tool"
                completion = min(contents * self.chunk_size, reply.completion_tokens)
                chunk["usage"] = _usage(
                    reply.model,
                    reply.prompt,
                    reply.completion_tokens if done else completion,
                    reasonings,  # one reasoning token per reasoning chunk, so it ends exact
                )
            await exchange.chunk(_sse(chunk))
        if not finished:
            return None  # cut (drop_stream: no finish chunk, no [DONE]), or the client left
        if usage:
            if pace.slow and not await self._pause(pace.slow, exchange):
                return await self._aborted(exchange)
            final = _chunk(reply, [])
            final["usage"] = reply.usage()
            await exchange.chunk(_sse(final))
        await exchange.finish(b"data: [DONE]\n\n")
        return None

    async def _due(
        self, exchange: _Exchange, events: Iterable[tuple[dict[str, Any], _ChunkKind]], pace: _Pace
    ) -> AsyncIterator[tuple[dict[str, Any], _ChunkKind]]:
        """A stream's events as they fall due (``_Pace``); none after the client left."""
        contents = 0
        drop, paced = pace.drop, pace.paced
        for event, kind in events:
            if drop is not None and (kind == "finish" or (kind == "content" and contents >= drop)):
                return  # cut; the server closes the socket
            wait = pace.slow + (paced.delay if paced is not None and kind == "content" else 0.0)
            if wait and not await self._pause(wait, exchange):
                await self._aborted(exchange)
                return
            contents += kind == "content"
            yield event, kind

    async def _stream_response(
        self, exchange: _Exchange, reply: _Reply, *, usage: bool, pace: _Pace
    ) -> None:
        """A Responses stream: ``event:``/``data:`` pairs, each event with its sequence number,
        ending with ``response.completed`` (or ``response.incomplete``); no ``[DONE]``."""
        await self._open_stream(exchange)
        events = _response_events(reply, self.chunk_size, pace.pieces, usage=usage)
        number = 0
        async for event, kind in self._due(exchange, events, pace):
            event["sequence_number"] = number
            number += 1
            data = b"event: %s\ndata: %s\n\n" % (event["type"].encode(), msgspec.json.encode(event))
            await (exchange.finish(data) if kind == "finish" else exchange.chunk(data))

    async def _control(self, path: str, method: str, exchange: _Exchange) -> None:
        if path == "/_fake/health":
            return await exchange.respond(200, b'{"status":"ok"}')
        if path == "/_fake/requests" and method == "GET":
            with self._lock:
                snapshot = {"calls": self.calls, "requests": list(self.requests)}
            return await exchange.respond(200, msgspec.json.encode(snapshot))
        if path == "/_fake/faults":
            if method == "POST":
                raw = await exchange.body()
                try:
                    fault = msgspec.json.decode(raw, type=Fault)
                except msgspec.ValidationError as exc:
                    raise _bad(str(exc)) from exc
                except msgspec.DecodeError as exc:
                    raise _bad(str(exc)) from exc
                self.push_fault(fault)
                return await exchange.respond(201, msgspec.json.encode(fault))
            if method == "DELETE":
                self.clear()
                return await exchange.respond(200, b'{"cleared":true}')
            if method == "GET":
                return await exchange.respond(200, msgspec.json.encode(self.pending_faults()))
            return await _not_allowed(exchange, b"GET, POST, DELETE")
        if path == "/_fake/release":
            if method != "POST":
                return await _not_allowed(exchange, b"POST")
            self.release()
            return await exchange.respond(200, b'{"released":true}')
        raise _Problem(404, "Some requested entity was not found", "No handler found on route.")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    """Resolve ``futures`` from another thread, each on its own loop."""
    for future in futures:
        with contextlib.suppress(RuntimeError):  # its loop may already be closed
            future.get_loop().call_soon_threadsafe(_resolve, future)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _require_json(headers: dict[str, str]) -> None:
    if not headers.get("content-type", "").lower().startswith("application/json"):
        raise _Problem(
            415, "unsupported-media-type", "Expected request with `Content-Type: application/json`"
        )


async def _not_allowed(exchange: _Exchange, allow: bytes) -> None:
    # Like the real server (axum): 405 with an Allow header and an empty body.
    await exchange.start(405, [(b"allow", allow), (b"content-length", b"0")])
    await exchange.finish()


async def _garbage(exchange: _Exchange, stream: bool) -> None:
    if not stream:
        return await exchange.respond(200, b'{"id": "chatcmpl-broken", "choices": [{"mess', _JSON)
    await exchange.start(200, [(b"content-type", b"text/event-stream")])
    await exchange.chunk(b'data: {"id":"broken","object":"chat.completion.chunk","choi\n\n')
    await exchange.chunk(b"data: <html>upstream error</html>\n\n")
    await exchange.finish(b"data: [DONE]\n\n")
    return None


def _completion(reply: _Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.pieces)}
    if reply.reasoning is not None and reply.model.id in _SHOWS_REASONING:
        message["reasoning_content"] = "".join(reply.reasoning)
    message["refusal"] = None
    if reply.tool_call is not None:
        message["tool_calls"] = [reply.tool_call]
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model_name,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": reply.usage(),
        "system_fingerprint": reply.model.fingerprint,
    }


def _groups(reply: _Reply, chunk_size: int, pieces: int | None) -> list[str]:
    """A reply's content as streamed: in groups of ``chunk_size`` words or, given ``pieces``,
    cut into that many pieces of near-equal length."""
    if pieces is None:
        return [
            "".join(reply.pieces[i : i + chunk_size])
            for i in range(0, len(reply.pieces), chunk_size)
        ]
    text = "".join(reply.pieces)
    return [text[len(text) * i // pieces : len(text) * (i + 1) // pieces] for i in range(pieces)]


def _deltas(
    reply: _Reply, chunk_size: int, pieces: int | None = None
) -> Iterable[tuple[dict[str, Any], _ChunkKind]]:
    """The stream's deltas in order, each with what it carries (the content as ``_groups``)."""
    groups = _groups(reply, chunk_size, pieces)
    if reply.reasoning and reply.model.id not in _SHOWS_REASONING:
        yield {"role": "assistant"}, "reasoning"
        for _ in range(len(reply.reasoning) - 1 + _EMPTY_DELTAS):  # hidden reasoning
            yield {}, "reasoning"
        for group in groups:
            yield {"content": group}, "content"
    elif reply.reasoning:
        yield {"role": "assistant", "reasoning_content": reply.reasoning[0]}, "reasoning"
        for _ in range(_EMPTY_DELTAS):  # hidden reasoning: empty deltas
            yield {}, "reasoning"
        for piece in reply.reasoning[1:]:
            yield {"reasoning_content": piece}, "reasoning"
        for group in groups:
            yield {"content": group}, "content"
    elif groups:
        yield {"role": "assistant", "content": groups[0]}, "content"
        for group in groups[1:]:
            yield {"content": group}, "content"
    else:
        yield {"role": "assistant", "content": ""}, "start"
    if reply.tool_call is not None:
        yield {"tool_calls": [{**reply.tool_call, "index": 0}]}, "tool"
    yield {}, "finish"


def _chunk(reply: _Reply, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": reply.model_name,
        "choices": choices,
        "system_fingerprint": reply.model.fingerprint,
    }


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def _model_object(model: _Model) -> dict[str, Any]:
    return {"id": model.id, "created": model.created, "object": "model", "owned_by": "xai"}


def _language_model(model: _Model) -> dict[str, Any]:
    price_in, price_cached, price_out = model.prices
    return {
        "id": model.id,
        "fingerprint": model.fingerprint,
        "created": model.created,
        "object": "model",
        "owned_by": "xai",
        "version": "1.0.0",
        "input_modalities": ["text", "image"] if model.vision else ["text"],
        "output_modalities": ["text"],
        "prompt_text_token_price": price_in,
        "cached_prompt_text_token_price": price_cached,
        "prompt_image_token_price": price_in if model.vision else 0,
        "completion_text_token_price": price_out,
        "search_price": 0,
        "aliases": list(model.aliases),
    }


def _lookup(path: str) -> _Model:
    name = path.rsplit("/", 1)[1]
    model = _BY_NAME.get(name)
    if model is None:
        raise _model_not_found(name)
    return model


def _models(path: str, body: bytes) -> bytes:
    return msgspec.json.encode({"data": [_model_object(m) for m in MODELS], "object": "list"})


def _model_entry(path: str, body: bytes) -> bytes:
    return msgspec.json.encode(_model_object(_lookup(path)))


def _language_models(path: str, body: bytes) -> bytes:
    return msgspec.json.encode({"models": [_language_model(m) for m in MODELS]})


def _language_model_entry(path: str, body: bytes) -> bytes:
    return msgspec.json.encode(_language_model(_lookup(path)))


def _tokenize(path: str, body: bytes) -> bytes:
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _bad(str(exc)) from exc
    if not isinstance(request, dict) or not isinstance(request.get("text"), str):
        raise _bad("missing field `text`")
    if not isinstance(request.get("model"), str):
        raise _bad("missing field `model`")
    if request["model"] not in _BY_NAME:
        raise _model_not_found(request["model"])
    tokens = []
    for token in _TOKEN_RE.findall(request["text"]):
        data = token.encode()
        tokens.append(
            {
                "token_id": zlib.crc32(data) % 131072,
                "string_token": token,
                "token_bytes": list(data),
            }
        )
    return msgspec.json.encode({"token_ids": tokens})


_ROUTES: dict[str, tuple[str, Callable[[str, bytes], bytes]]] = {
    "/v1/models": ("GET", _models),
    "/v1/language-models": ("GET", _language_models),
    "/v1/tokenize-text": ("POST", _tokenize),
}


# ---------------------------------------------------------------------------------------------
# The Responses API: requests read as chat requests, replies shaped as responses

_RESPONSES_ONLY = frozenset(
    {
        "input",
        "instructions",
        "include",
        "store",
        "previous_response_id",
        "max_output_tokens",
        "text",
        "reasoning",
        "tools",
        "tool_choice",
        "messages",
    }
)
_INPUT_ITEMS = "`message`, `function_call`, `function_call_output`, `reasoning`"
_SEAL_KEY = b"convstore fake upstream: reasoning"  # fixed, so that --workers agree


def _responses_as_chat(body: Any) -> tuple[dict[str, Any], bool]:
    """The chat request a Responses request stands for, and whether it asks for encrypted
    reasoning. Its own fields are checked here (422, or 400 for a reasoning item that was not
    sent back intact); the chat request's, as for a chat completion."""
    if not isinstance(body, dict):
        raise _bad(f"invalid type: {_kind(body)}, expected struct ResponsesRequest")
    if body.get("previous_response_id") is not None:
        raise _Problem(
            400,
            "invalid-argument",
            "The fake upstream stores no responses: previous_response_id cannot be used.",
        )
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise _bad(f"store: invalid type: {_kind(body['store'])}, expected a boolean")
    include = body.get("include")
    if include is not None and not (
        isinstance(include, list) and all(isinstance(i, str) for i in include)
    ):
        raise _bad("include: expected a sequence of strings")
    if "input" not in body:
        raise _bad("missing field `input`")
    chat = {k: v for k, v in body.items() if k not in _RESPONSES_ONLY}
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad(f"instructions: invalid type: {_kind(instructions)}, expected a string")
    system = [{"role": "system", "content": instructions}] if instructions is not None else []
    chat["messages"] = system + _input_messages(body["input"])
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    tools = body.get("tools")
    if tools is not None:
        chat["tools"] = [_nested_tool(t) for t in tools] if isinstance(tools, list) else tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        choice = {"type": "function", "function": {"name": choice["name"]}}
    if choice is not None:
        chat["tool_choice"] = choice
    text = body.get("text")
    if isinstance(text, dict) and text.get("format") is not None:
        chat["response_format"] = _nested_format(text["format"])
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _bad(f"reasoning: invalid type: {_kind(reasoning)}, expected struct Reasoning")
    if reasoning is not None and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    return chat, "reasoning.encrypted_content" in (include or ())


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """The chat messages of a Responses ``input``: a function call joins the assistant message
    just before it (or makes one), a function call output is a tool message, and a reasoning
    item is checked and dropped."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad(f"input: invalid type: {_kind(value)}, expected a string or a sequence of items")
    messages: list[dict[str, Any]] = []
    joinable: dict[str, Any] | None = None  # the assistant message a function call joins
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where}: invalid type: {_kind(item)}, expected an input item")
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role")
            if role not in ("system", "user", "assistant"):
                raise _bad(
                    f"{where}.role: unknown variant `{role}`, expected one of "
                    "`system`, `developer`, `user`, `assistant`"
                )
            joinable = {"role": role, "content": _chat_content(where, "content", item)}
            messages.append(joinable)
            joinable = joinable if role == "assistant" else None
        elif kind == "function_call":
            fields = [item.get(k) for k in ("call_id", "name", "arguments")]
            if not all(isinstance(f, str) for f in fields):
                raise _bad(f"{where}: expected `call_id`, `name` and `arguments` strings")
            call_id, name, arguments = fields
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            if joinable is None:
                joinable = {"role": "assistant", "content": None}
                messages.append(joinable)
            joinable.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}: missing field `call_id`")
            content = _chat_content(where, "output", item)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
            joinable = None
        elif kind == "reasoning":
            _check_sealed(where, item)
            joinable = None
        else:
            raise _bad(f"{where}.type: unknown variant `{kind}`, expected one of {_INPUT_ITEMS}")
    return messages


def _chat_content(where: str, field: str, item: dict[str, Any]) -> Any:
    """A message's (or function call output's) content as chat content."""
    content = item.get(field)
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(
            f"{where}.{field}: invalid type: {_kind(content)}, "
            "expected a string or a sequence of content parts"
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            file = {("url" if k == "file_url" else k): v for k, v in part.items() if k != "type"}
            parts.append({"type": "file", "file": file})
        else:
            raise _bad(
                f"{where}.{field}[{j}]: expected a content part with a `type` of "
                "`input_text`, `output_text`, `input_image` or `input_file`"
            )
    return parts


def _nested_tool(tool: Any) -> Any:
    """A flat Responses function tool as a chat-completions one."""
    if isinstance(tool, dict) and tool.get("type") == "function" and "function" not in tool:
        return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
    return tool


def _nested_format(format_: Any) -> Any:
    if isinstance(format_, dict) and format_.get("type") == "json_schema":
        schema = {k: v for k, v in format_.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    return format_


def _seal(payload: str) -> str:
    return hmac.new(_SEAL_KEY, payload.encode(), hashlib.sha256).hexdigest()[:32]


def _sealed(reply: _Reply) -> str:
    """The reasoning's ``encrypted_content``: opaque to the client, checked when it comes back."""
    reasoning = {"model": reply.model.id, "reasoning": "".join(reply.reasoning or ())}
    payload = base64.urlsafe_b64encode(msgspec.json.encode(reasoning)).decode()
    return f"{payload}.{_seal(payload)}"


def _check_sealed(where: str, item: dict[str, Any]) -> None:
    value = item.get("encrypted_content")
    if not isinstance(value, str):
        raise _Problem(
            400,
            "invalid-argument",
            f"{where}: a reasoning item needs its encrypted_content: nothing is stored to "
            "look it up by.",
        )
    payload, _, seal = value.rpartition(".")
    if not payload or not hmac.compare_digest(seal, _seal(payload)):
        raise _Problem(400, "invalid-argument", "Could not decrypt the provided encrypted_content.")


def _responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's usage in the Responses names: ``output_tokens`` include the
    reasoning tokens (as xAI reports them), ``total_tokens`` is the same."""
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
        "output_tokens": usage["completion_tokens"] + reasoning,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage["total_tokens"],
        "num_sources_used": 0,
        "num_server_side_tools_used": 0,
        "cost_in_usd_ticks": usage["cost_in_usd_ticks"],
    }


def _reasoning_item(reply: _Reply) -> dict[str, Any]:
    shown = reply.model.id in _SHOWS_REASONING
    summary = [{"type": "summary_text", "text": "".join(reply.reasoning or ())}] if shown else []
    item = {"id": f"rs_{reply.id}", "type": "reasoning", "summary": summary, "status": "completed"}
    if reply.encrypt:
        item["encrypted_content"] = _sealed(reply)
    return item


def _message_item(reply: _Reply) -> dict[str, Any]:
    text = {"type": "output_text", "text": "".join(reply.pieces), "annotations": [], "logprobs": []}
    return {
        "id": f"msg_{reply.id}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [text],
    }


def _call_item(reply: _Reply) -> dict[str, Any]:
    call = reply.tool_call or {}
    return {
        "id": f"fc_{call['id']}",
        "type": "function_call",
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": "completed",
    }


def _output(reply: _Reply) -> list[dict[str, Any]]:
    output = [_reasoning_item(reply)] if reply.reasoning is not None else []
    if reply.pieces or reply.tool_call is None:
        output.append(_message_item(reply))
    if reply.tool_call is not None:
        output.append(_call_item(reply))
    return output


def _response(reply: _Reply, status: str, *, usage: bool = True) -> dict[str, Any]:
    """The response object: ``in_progress`` with no output yet, or done (``completed``, or
    ``incomplete`` for a reply cut at ``max_output_tokens``) with its output and usage."""
    running = status == "in_progress"
    cut = not running and reply.finish_reason == "length"
    return {
        "id": reply.id,
        "object": "response",
        "created_at": int(time.time()),
        "model": reply.model_name,
        "status": "incomplete" if cut else status,
        "output": [] if running else _output(reply),
        "usage": _responses_usage(reply.usage()) if usage and not running else None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "store": False,
        "previous_response_id": None,
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}},
        "metadata": {},
    }


def _response_events(
    reply: _Reply, chunk_size: int, pieces: int | None, *, usage: bool
) -> Iterable[tuple[dict[str, Any], _ChunkKind]]:
    """The events of a Responses stream in order (without their sequence numbers), each with
    what it carries; the text comes in the same groups as a chat stream's content."""

    def event(kind: str, carries: _ChunkKind, **fields: Any) -> tuple[dict[str, Any], _ChunkKind]:
        return {"type": f"response.{kind}", **fields}, carries

    started = _response(reply, "in_progress")
    yield event("created", "start", response=started)
    yield event("in_progress", "start", response=started)
    index = 0
    if reply.reasoning is not None:
        item = _reasoning_item(reply)
        at = {"item_id": item["id"], "output_index": index, "summary_index": 0}
        added = {"id": item["id"], "type": "reasoning", "summary": [], "status": "in_progress"}
        yield event("output_item.added", "item", output_index=index, item=added)
        if item["summary"]:
            done = item["summary"][0]
            empty = {**done, "text": ""}
            yield event("reasoning_summary_part.added", "item", **at, part=empty)
            for piece in reply.reasoning:
                yield event("reasoning_summary_text.delta", "reasoning", **at, delta=piece)
            yield event("reasoning_summary_text.done", "item", **at, text=done["text"])
            yield event("reasoning_summary_part.done", "item", **at, part=done)
        yield event("output_item.done", "item", output_index=index, item=item)
        index += 1
    if reply.pieces or reply.tool_call is None:
        item = _message_item(reply)
        part = item["content"][0]
        at = {"item_id": item["id"], "output_index": index, "content_index": 0}
        added = {**item, "status": "in_progress", "content": []}
        yield event("output_item.added", "item", output_index=index, item=added)
        yield event("content_part.added", "item", **at, part={**part, "text": ""})
        for group in _groups(reply, chunk_size, pieces):
            yield event("output_text.delta", "content", **at, delta=group, logprobs=[])
        yield event("output_text.done", "item", **at, text=part["text"], logprobs=[])
        yield event("content_part.done", "item", **at, part=part)
        yield event("output_item.done", "item", output_index=index, item=item)
        index += 1
    if reply.tool_call is not None:
        item = _call_item(reply)
        at = {"item_id": item["id"], "output_index": index}
        added = {**item, "arguments": "", "status": "in_progress"}
        yield event("output_item.added", "item", output_index=index, item=added)
        yield event("function_call_arguments.delta", "tool", **at, delta=item["arguments"])
        yield event("function_call_arguments.done", "item", **at, arguments=item["arguments"])
        yield event("output_item.done", "item", output_index=index, item=item)
    final = _response(reply, "completed", usage=usage)
    yield event(final["status"], "finish", response=final)


# ---------------------------------------------------------------------------------------------
# Command line


def _default_keys() -> list[str]:
    keys = ["test-key", "demo"]
    if os.environ.get("XAI_API_KEY"):
        keys.append(os.environ["XAI_API_KEY"])
    return keys


def create_app_from_env() -> FakeUpstream:
    """The app for ``--workers`` processes: keys from ``FAKE_UPSTREAM_KEYS`` (a JSON list), or
    the default keys; how many requests to keep from ``FAKE_UPSTREAM_RECORD``."""
    raw = os.environ.get(KEYS_ENV)
    keys = msgspec.json.decode(raw, type=list[str]) if raw else _default_keys()
    _quiet_uvicorn()
    return FakeUpstream(api_keys=keys, max_recorded=int(os.environ.get(RECORD_ENV, "1000")))


def _count(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def main(argv: list[str] | None = None) -> None:
    """Serve the fake upstream until interrupted, after printing the base URL to use as
    ``CONVSTORE_UPSTREAM_URL``. See the module docstring for the accepted keys."""
    parser = argparse.ArgumentParser(
        prog="python -m service.fake_upstream", description="An offline stand-in for the xAI API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help="an accepted API key (repeatable); default: test-key, demo and $XAI_API_KEY",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--record",
        type=_count,
        default=1000,
        metavar="N",
        help="chat-completions and Responses requests kept for GET /_fake/requests "
        "(default 1000; 0: none). "
        "They are kept decoded: 1,000 requests with 10,000-message histories take over 1 GB",
    )
    args = parser.parse_args(argv)
    keys: list[str] = args.keys or _default_keys()
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
    }
    if args.workers > 1:
        os.environ[KEYS_ENV] = json.dumps(keys)  # inherited by the worker processes
        os.environ[RECORD_ENV] = str(args.record)
        config = uvicorn.Config(
            "service.fake_upstream:create_app_from_env",
            factory=True,
            workers=args.workers,
            **common,
        )
    else:
        config = uvicorn.Config(FakeUpstream(api_keys=keys, max_recorded=args.record), **common)
    _quiet_uvicorn()  # after Config, which (re)configures uvicorn's loggers
    sock = config.bind_socket()
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"CONVSTORE_UPSTREAM_URL=http://{host}:{sock.getsockname()[1]}/v1", flush=True)
    print(
        "accepting API keys: "
        + ", ".join(_mask(k) if k == os.environ.get("XAI_API_KEY") else k for k in keys),
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(config)
    try:
        if args.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[sock]).run()
        else:
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
