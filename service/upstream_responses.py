"""xAI's Responses API as the upstream (``CONVSTORE_UPSTREAM_API=responses``): a turn's request
converted to ``POST /responses``, and its answer (whole, or as semantic stream events) back into
the ``Reply`` and stream deltas the turn machinery uses. Every conversion between the two shapes
is here; ``service.upstream.UpstreamClient`` sends, retries and maps errors as for chat
completions.

Stateless, as the xAI docs describe for keeping a conversation locally: ``store: false``, the
whole history sent each time, and ``include: ["reasoning.encrypted_content"]``, so that a
reply's reasoning comes back encrypted, is stored with the reply
(``message.reasoning_encrypted_content``) and goes back as a ``reasoning`` item before that
reply on later turns.

Usage is stored in the chat-completions names, meaning what they mean there: Responses'
``output_tokens`` include the reasoning tokens, xAI's ``completion_tokens`` do not, so
``completion_tokens`` is ``output_tokens`` less ``output_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec
from httpx_sse import ServerSentEvent

from service.schemas import Reply
from service.upstream import (
    CHAT_COMPLETIONS,
    ENCRYPTED_REASONING,
    MAX_FINISH_REASON_CHARS,
    MAX_MODEL_CHARS,
    ReplyAccumulator,
    StreamReader,
    UpstreamApi,
    UpstreamBadResponse,
    UpstreamReplyTooLarge,
    bounded_column,
    column_text,
    too_large_text,
)

INCLUDE = ["reasoning.encrypted_content"]
# Parameters with another name or shape in a Responses request; the rest go as they are.
_MAX_TOKENS = ("max_completion_tokens", "max_tokens")  # the first given wins, as upstream
_NOT_SENT = frozenset({"messages", "stream", "stream_options", *_MAX_TOKENS})
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}
_SUMMARY_BREAK = "\n\n"  # between a reasoning's summary parts


# ---- the request ---------------------------------------------------------------------------


def request(body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The Responses request for a chat-completions request ``body`` (a turn's params, model
    and messages). Parameters with a Responses counterpart are renamed or reshaped; any other
    goes as it is, for the upstream to take or refuse."""
    converted: dict[str, Any] = {}
    for key, value in body.items():
        if key in _NOT_SENT:
            continue
        if key == "tools" and isinstance(value, list):
            converted["tools"] = [_tool(t) for t in value]
        elif key == "tool_choice":
            converted["tool_choice"] = _tool_choice(value)
        elif key == "response_format":
            converted["text"] = {"format": _text_format(value)}
        elif key == "reasoning_effort":
            converted["reasoning"] = {"effort": value}
        else:
            converted[key] = value
    limit = next((body[k] for k in _MAX_TOKENS if body.get(k) is not None), None)
    if limit is not None:
        converted["max_output_tokens"] = limit
    converted["input"] = input_items(body.get("messages") or [])
    converted["store"] = False
    converted["include"] = INCLUDE
    if stream:
        converted["stream"] = True
    return converted


def input_items(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation's history as Responses ``input`` items: messages (system, user and
    assistant text), ``function_call`` items for an assistant's tool calls, a
    ``function_call_output`` for each tool message, and a ``reasoning`` item with the encrypted
    reasoning before the reply it belongs to. A message's ``name`` has no counterpart."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id"),
                    "output": _input_content(content),
                }
            )
            continue
        if role != "assistant":
            items.append({"role": role, "content": _input_content(content)})
            continue
        encrypted = message.get(ENCRYPTED_REASONING)
        if encrypted:
            # No id: nothing is stored upstream (store: false) for one to name.
            items.append({"type": "reasoning", "summary": [], "encrypted_content": encrypted})
        if content:
            items.append({"role": "assistant", "content": _output_content(content)})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments", ""),
                }
            )
    return items


def _input_content(content: Any) -> Any:
    """A user, system or tool message's content: a string as it is, chat parts as input parts."""
    if not isinstance(content, list):
        return content
    return [_input_part(part) for part in content]


def _input_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind == "text":
        return {"type": "input_text", "text": part.get("text")}
    if kind == "image_url":
        image = part.get("image_url")
        image = image if isinstance(image, dict) else {"url": image}
        converted = {"type": "input_image", "image_url": image.get("url")}
        if image.get("detail") is not None:
            converted["detail"] = image["detail"]
        return converted
    if kind == "file" and isinstance(part.get("file"), dict):
        file = part["file"]
        converted = {"type": "input_file"}
        if "url" in file:
            converted["file_url"] = file["url"]
        converted.update((k, v) for k, v in file.items() if k != "url")
        return converted
    return part  # another kind of part: as given, for the upstream to take or refuse


def _output_content(content: Any) -> Any:
    """An assistant message's content: a string as it is, text parts as output text."""
    if not isinstance(content, list):
        return content
    return [
        {"type": "output_text", "text": part.get("text")}
        if isinstance(part, dict) and part.get("type") == "text"
        else part
        for part in content
    ]


def _tool(tool: Any) -> Any:
    """A chat-completions function tool in the Responses' flat form."""
    if isinstance(tool, dict) and tool.get("type") == "function":
        function = tool.get("function")
        if isinstance(function, dict):
            return {"type": "function", **function}
    return tool


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name")}
    return choice


def _text_format(response_format: Any) -> Any:
    """``response_format`` as ``text.format``: a JSON schema's fields come up a level."""
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema")
        if isinstance(schema, dict):
            return {"type": "json_schema", **schema}
    return response_format


# ---- the answer ----------------------------------------------------------------------------


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage in the chat-completions names (see the module's note on
    ``completion_tokens``); fields with no counterpart (``num_sources_used``,
    ``cost_in_usd_ticks``, …) are kept as they are."""
    if not isinstance(usage, dict):
        return None
    converted: dict[str, Any] = {}
    rest = dict(usage)
    prompt, output = rest.pop("input_tokens", None), rest.pop("output_tokens", None)
    prompt_details = rest.pop("input_tokens_details", None)
    output_details = rest.pop("output_tokens_details", None)
    reasoning = output_details.get("reasoning_tokens") if isinstance(output_details, dict) else 0
    converted["prompt_tokens"] = prompt
    converted["completion_tokens"] = (
        output - reasoning if isinstance(output, int) and isinstance(reasoning, int) else output
    )
    if "total_tokens" in rest:
        converted["total_tokens"] = rest.pop("total_tokens")
    if prompt_details is not None:
        converted["prompt_tokens_details"] = prompt_details
    if output_details is not None:
        converted["completion_tokens_details"] = output_details
    converted.update(rest)
    return converted


def _error_text(error: Any) -> str:
    """The words of an error as the upstream gives it: OpenAI's ``{"code", "message"}``, xAI's
    flat ``{"code", "error"}``, or anything else as JSON."""
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        for key in ("message", "error"):
            if isinstance(error.get(key), str):
                code = error.get("code")
                return f"{error[key]} ({code})" if isinstance(code, str) and code else error[key]
    return msgspec.json.encode(error).decode()


def _message_text(item: dict[str, Any]) -> str:
    """The text of a ``message`` output item (a refusal counts as its text)."""
    parts = item.get("content")
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        return ""
    return "".join(
        str(part.get("text") if part.get("type") == "output_text" else part.get("refusal") or "")
        for part in parts
        if isinstance(part, dict)
    )


def _reasoning_text(item: dict[str, Any]) -> str:
    """The readable reasoning of a ``reasoning`` item: its summary, else its reasoning text."""
    for key in ("summary", "content"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [str(p["text"]) for p in parts if isinstance(p, dict) and p.get("text")]
            if texts:
                return _SUMMARY_BREAK.join(texts)
    return ""


def _function_call(item: dict[str, Any]) -> dict[str, Any]:
    """A ``function_call`` output item as a chat-completions tool call."""
    return {
        "id": str(item.get("call_id") or item.get("id") or ""),
        "type": "function",
        "function": {"name": str(item.get("name") or ""), "arguments": _arguments(item)},
    }


def _arguments(item: dict[str, Any]) -> str:
    arguments = item.get("arguments")
    return arguments if isinstance(arguments, str) else ""


def _finish_reason(status: Any, incomplete: Any, calls: bool) -> str | None:
    if calls:
        return "tool_calls"
    if status == "incomplete":
        reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
        return _INCOMPLETE.get(str(reason), str(reason or "length"))
    return "stop"


class _Response(msgspec.Struct):
    output: list[Any]
    model: str = ""
    status: str | None = None
    usage: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    error: Any = None


_response_decoder = msgspec.json.Decoder(_Response)


def parse_response(content: bytes, requested_model: str, max_chars: int) -> Reply:
    """A stored reply from a non-streamed Responses body; ``UpstreamReplyTooLarge`` if its
    text, reasoning and tool call arguments pass ``max_chars`` characters."""
    try:
        response = _response_decoder.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamBadResponse(f"The model's answer was not a response: {exc}") from exc
    if response.status in ("failed", "cancelled"):
        raise UpstreamBadResponse(
            f"The model's answer reported an error: {_error_text(response.error)}"
        )
    items = [item for item in response.output if isinstance(item, dict)]
    text = "".join(_message_text(i) for i in items if i.get("type") == "message")
    reasoning = [i for i in items if i.get("type") == "reasoning"]
    thought = _SUMMARY_BREAK.join(t for t in map(_reasoning_text, reasoning) if t)
    calls = [_function_call(i) for i in items if i.get("type") == "function_call"]
    chars = len(text) + len(thought) + sum(len(c["function"]["arguments"]) for c in calls)
    if chars > max_chars:
        raise UpstreamReplyTooLarge(too_large_text(max_chars))
    return Reply(
        content=column_text(text),
        reasoning_content=column_text(thought) or None,
        tool_calls=calls or None,
        finish_reason=bounded_column(
            _finish_reason(response.status, response.incomplete_details, bool(calls)),
            MAX_FINISH_REASON_CHARS,
        ),
        usage=chat_usage(response.usage),
        model=bounded_column(response.model, MAX_MODEL_CHARS) or requested_model,
        reasoning_encrypted_content=_encrypted(reasoning),
    )


def _encrypted(reasoning: list[dict[str, Any]]) -> str | None:
    """The encrypted reasoning of a reply: its (last) reasoning item's."""
    found = [i.get("encrypted_content") for i in reasoning]
    kept = [f for f in found if isinstance(f, str)]
    return column_text(kept[-1]) if kept else None


class _Event(msgspec.Struct):
    """One Responses stream event (or a flat error), as far as a reply needs it."""

    type: str = ""
    delta: Any = None
    item_id: str | None = None
    output_index: int = 0
    summary_index: int = 0
    content_index: int = 0
    item: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    arguments: str | None = None
    message: str | None = None
    code: Any = None
    error: Any = None


_event_decoder = msgspec.json.Decoder(_Event)
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})
_REASONING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)
_ENDS = frozenset({"response.completed", "response.incomplete"})


class ResponsesStreamAccumulator(StreamReader):
    """Reads a Responses event stream event by event and accumulates the reply.

    Text deltas (``response.output_text.delta``) become ``content`` deltas and reasoning
    deltas (summary or reasoning text) ``reasoning_content`` ones; function calls are put
    together from ``response.output_item.added``, the argument deltas and ``….done`` events;
    the reasoning item's ``encrypted_content`` comes with its ``response.output_item.done``.
    An item given whole in its ``….done`` event (no deltas before it) is taken from there, and
    passed on as one delta. ``response.completed`` (or ``response.incomplete``) ends the stream
    and brings the usage; ``response.failed``, an ``error`` event or a flat ``{"code",
    "error"}`` raise ``UpstreamBadResponse``. An event's kind is its data's ``type``, else its
    SSE name; other kinds are skipped.
    """

    END: ClassVar[str] = "response.completed"  # or response.incomplete

    def __init__(self, requested_model: str, max_chars: int) -> None:
        super().__init__(requested_model, max_chars)
        self.encrypted: str | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # by output index
        self.streamed: set[str | int] = set()  # items whose deltas came: ids, output indexes
        self.reasoning_at: tuple[str | None, int] | None = None  # the last reasoning piece's part
        self.status: str | None = None
        self.incomplete: Any = None

    def ended(self) -> None:
        # [DONE] (which xAI's Responses streams do not send) ends nothing by itself.
        self.done = self.done or self.status is not None

    def feed(self, sse: ServerSentEvent) -> dict[str, str] | None:
        """Take one event; return the text delta it carried, if any."""
        data = self.data(sse)
        if data is None:
            return None
        event = self.decode(_event_decoder, data)
        kind = event.type or (sse.event if sse.event != "message" else "")
        if kind in ("error", "response.failed") or (not kind and event.error is not None):
            message = _stream_error(kind, event)
            raise UpstreamBadResponse(f"The model's stream reported an error: {message}")
        self.started = True
        if kind in _TEXT_DELTAS and isinstance(event.delta, str):
            self._streamed(event)
            return self._text(event.delta)
        if kind in _REASONING_DELTAS and isinstance(event.delta, str):
            self._streamed(event)
            index = event.summary_index if "summary" in kind else event.content_index
            return self._thought(event.delta, (event.item_id, index))
        if kind == "response.output_item.added" and event.item is not None:
            if event.item.get("type") == "function_call":
                self.calls[event.output_index] = _function_call(event.item)
                self._take(len(self.calls[event.output_index]["function"]["arguments"]))
            return None
        if kind == "response.function_call_arguments.delta" and isinstance(event.delta, str):
            call = self._call(event.output_index)
            self._take(len(event.delta))
            call["function"]["arguments"] += event.delta
            return None
        if kind == "response.function_call_arguments.done" and event.arguments is not None:
            self._set_arguments(self._call(event.output_index), event.arguments)
            return None
        if kind == "response.output_item.done" and event.item is not None:
            return self._item_done(event.item, event.output_index)
        if kind in _ENDS or kind in ("response.created", "response.in_progress"):
            self._response(event.response or {}, ended=kind in _ENDS)
        return None

    def _streamed(self, event: _Event) -> None:
        self.streamed.add(event.output_index)
        if event.item_id:
            self.streamed.add(event.item_id)

    def _text(self, piece: str) -> dict[str, str] | None:
        if not piece:
            return None
        self._take(len(piece))
        self.content.append(piece)
        return {"content": piece}

    def _thought(self, piece: str, part: tuple[str | None, int]) -> dict[str, str] | None:
        if not piece:
            return None
        if self.reasoning_at is not None and self.reasoning_at != part:
            piece = _SUMMARY_BREAK + piece
        self.reasoning_at = part
        self._take(len(piece))
        self.reasoning.append(piece)
        return {"reasoning_content": piece}

    def _call(self, index: int) -> dict[str, Any]:
        return self.calls.setdefault(index, _function_call({}))

    def _set_arguments(self, call: dict[str, Any], arguments: str) -> None:
        self._take(max(0, len(arguments) - len(call["function"]["arguments"])))
        call["function"]["arguments"] = arguments

    def _item_done(self, item: dict[str, Any], index: int) -> dict[str, str] | None:
        kind = item.get("type")
        streamed = index in self.streamed or item.get("id") in self.streamed
        if kind == "function_call":
            call = self._call(index)
            whole = _function_call(item)
            call["id"] = whole["id"] or call["id"]
            call["function"]["name"] = whole["function"]["name"] or call["function"]["name"]
            if whole["function"]["arguments"]:
                self._set_arguments(call, whole["function"]["arguments"])
            return None
        if kind == "reasoning":
            if isinstance(item.get("encrypted_content"), str):
                self.encrypted = column_text(item["encrypted_content"])
            text = "" if streamed else _reasoning_text(item)
            return self._thought(text, (item.get("id"), -1))
        if kind == "message" and not streamed:
            return self._text(_message_text(item))
        return None

    def _response(self, response: dict[str, Any], *, ended: bool) -> None:
        if isinstance(response.get("model"), str) and response["model"]:
            self.model = response["model"]
        if not ended:
            return
        self.done = True
        self.status = str(response.get("status") or "completed")
        self.incomplete = response.get("incomplete_details")
        self.usage = chat_usage(response.get("usage"))
        if self.encrypted is None:  # a stream that gave its items only here
            output = response.get("output")
            items = output if isinstance(output, list) else []
            reasoning = [i for i in items if isinstance(i, dict) and i.get("type") == "reasoning"]
            self.encrypted = _encrypted(reasoning)

    def reply(self) -> Reply:
        calls = [self.calls[i] for i in sorted(self.calls)]
        finish = _finish_reason(self.status, self.incomplete, bool(calls)) if self.done else None
        return Reply(
            content=column_text("".join(self.content)),
            reasoning_content=column_text("".join(self.reasoning)) or None,
            tool_calls=calls or None,
            finish_reason=bounded_column(finish, MAX_FINISH_REASON_CHARS),
            usage=self.usage,
            model=bounded_column(self.model, MAX_MODEL_CHARS) or "",
            reasoning_encrypted_content=self.encrypted,
        )


def _stream_error(kind: str, event: _Event) -> str:
    if kind == "response.failed":
        return _error_text((event.response or {}).get("error") or "the response failed")
    if event.message is not None:  # OpenAI's error event
        return _error_text({"message": event.message, "code": event.code})
    return _error_text({"error": event.error, "code": event.code})  # xAI's flat error


class Responses:
    """``POST /responses``, xAI's Responses API without storage upstream."""

    path = "/responses"

    def request(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        return request(body, stream=stream)

    def parse(self, content: bytes, requested_model: str, max_chars: int) -> Reply:
        return parse_response(content, requested_model, max_chars)

    def accumulator(self, requested_model: str, max_chars: int) -> ReplyAccumulator:
        return ResponsesStreamAccumulator(requested_model, max_chars)


RESPONSES = Responses()
APIS: dict[str, UpstreamApi] = {"chat_completions": CHAT_COMPLETIONS, "responses": RESPONSES}


def upstream_api(name: str) -> UpstreamApi:
    """The upstream API a ``CONVSTORE_UPSTREAM_API`` value names."""
    return APIS[name]
