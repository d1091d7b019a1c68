"""Translations between the Responses and Conversations shapes and convstore's: ids, input
items to chat messages, a request's options to chat-completions params, and stored messages
and turns back to items and response objects.

Ids carry OpenAI's prefixes over convstore's UUIDs: ``resp_<turn>``, ``conv_<conversation>``,
and for items ``msg_`` (a message), ``fco_`` (a tool message: a function call's output),
``rs_`` (a reply's reasoning) and ``fc_<message>_<n>`` (its n-th function call). A reply's
items are named after its turn rather than its own id, so that a streamed response can name
them before the reply is stored; either id finds the message.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from service.errors import BadRequest, NotFound
from service.schemas import (
    KEPT_PARAMS,
    MAX_CONTENT_CHARS,
    MAX_MESSAGES_PER_REQUEST,
    NO_NUL,
    ContextPolicy,
    MessageIn,
    MessageOut,
    Model,
    ParamsError,
    TurnOut,
    check_params,
    holds_nul,
    message_fields,
)

ItemList = Annotated[list[dict[str, Any]], Meta(max_length=MAX_MESSAGES_PER_REQUEST)]
# OpenAI's metadata: at most 16 pairs, keys of at most 64 characters, values of at most 512;
# no NUL character (PostgreSQL cannot store one in JSON).
Metadata = Annotated[
    dict[
        Annotated[str, Meta(max_length=64, pattern=NO_NUL)],
        Annotated[str, Meta(max_length=512, pattern=NO_NUL)],
    ],
    Meta(max_length=16),
]
# A response's metadata: kept with its turn and returned on it, never sent upstream (xAI
# documents no metadata field for chat completions, so neither upstream API is sent one).
ResponseMetadata = Annotated[
    Metadata,
    Meta(
        description="Up to 16 pairs of strings (keys up to 64 characters, values up to 512), "
        "kept with the response and returned on it (create, GET, the streamed response "
        "objects). Never sent upstream: xAI's chat-completions API documents no metadata field."
    ),
]
# What the caller may ask that convstore keeps or maps as it is.
SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "parallel_tool_calls")
# The Responses request's name for a chat-completions parameter it is sent as.
RESPONSES_FIELD = {
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
}


class Strict(Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ConversationRef(Strict):
    id: str


class ResponseCreate(Strict):
    """``POST /openai/v1/responses``: the Responses API's request, as far as it maps onto a
    chat-completions turn (what does not is refused with a 400 naming it)."""

    model: Model | None = None
    input: Annotated[str, Meta(max_length=MAX_CONTENT_CHARS)] | ItemList | None = None
    instructions: Annotated[str, Meta(max_length=MAX_CONTENT_CHARS)] | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_tool_calls: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_logprobs: int | None = None
    metadata: ResponseMetadata | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    background: bool | None = None
    include: list[str] | None = None
    prompt: dict[str, Any] | None = None


class OpenAIConversationCreate(Strict):
    items: Annotated[list[dict[str, Any]], Meta(max_length=20)] | None = None
    metadata: Metadata | None = None


class OpenAIConversationUpdate(Strict):
    metadata: Metadata


class OpenAIItemsCreate(Strict):
    items: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=20)]


# ---- ids ---------------------------------------------------------------------------------


def external(prefix: str, ident: uuid.UUID) -> str:
    return f"{prefix}_{ident.hex}"


def internal(value: str, prefixes: tuple[str, ...], what: str) -> uuid.UUID:
    """The UUID an id of one of ``prefixes`` stands for; 404 for anything else."""
    prefix, _, rest = value.partition("_")
    if prefix in prefixes and len(rest) >= 32:
        try:
            return uuid.UUID(hex=rest[:32])
        except ValueError:
            pass
    raise NotFound(f"No {what} has the id {value[:80]!r}.")


def conversation_id(value: str | ConversationRef) -> uuid.UUID:
    ident = value.id if isinstance(value, ConversationRef) else value
    return internal(ident, ("conv",), "conversation")


ITEM_PREFIXES = ("msg", "fco", "rs", "fc")


def item_id(value: str) -> uuid.UUID:
    return internal(value, ITEM_PREFIXES, "item")


# ---- input -------------------------------------------------------------------------------


def invalid(message: str, param: str | None, code: str = "invalid_value") -> BadRequest:
    return BadRequest(message, code=code, param=param)


def input_messages(given: str | list[dict[str, Any]] | None, param: str = "input") -> list[Any]:
    """Input items as the chat messages they stand for, validated as ``/v1`` validates
    messages: a message (``developer`` is sent as ``system``), a ``function_call`` (joined to
    the assistant message before it, if any), a ``function_call_output`` (a tool message). A
    ``reasoning`` item's text goes with the assistant message after it; anything else is
    refused."""
    if given is None:
        return []
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for index, item in enumerate(given):
        where = f"{param}[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role == "developer":
                role = "system"
            if role not in ("user", "system", "assistant"):
                raise invalid(
                    "A message's role must be user, system, developer or assistant.",
                    f"{where}.role",
                )
            message: dict[str, Any] = {
                "role": role,
                "content": chat_content(item.get("content"), f"{where}.content"),
            }
            if role == "assistant" and reasoning:
                message["reasoning_content"] = "".join(reasoning)
                reasoning = []
            messages.append(message)
        elif kind == "function_call":
            call = {
                "id": _text(item, "call_id", where),
                "type": "function",
                "function": {
                    "name": _text(item, "name", where),
                    "arguments": _text(item, "arguments", where),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not reasoning:
                last.setdefault("tool_calls", []).append(call)
            else:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                if reasoning:
                    message["reasoning_content"] = "".join(reasoning)
                    reasoning = []
                messages.append(message)
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _text(item, "call_id", where),
                    "content": output
                    if isinstance(output, str)
                    else chat_content(output, f"{where}.output"),
                }
            )
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            reasoning.extend(
                str(p.get("text", "")) for p in parts if isinstance(p, dict) and "text" in p
            )
        else:
            raise invalid(
                f"Input items of type {kind!r} cannot be sent to the chat-completions model "
                "behind this service; send messages, function_call and function_call_output.",
                f"{where}.type",
                "unsupported_value",
            )
    try:
        return msgspec.convert(messages, list[MessageIn])
    except msgspec.ValidationError as exc:
        raise invalid(f"The input is not valid: {exc}", param) from None


def _text(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise invalid(f"`{name}` must be a string.", f"{where}.{name}")
    return value


def chat_content(content: Any, param: str) -> Any:
    """A message's content as chat completions takes it: a string stays; parts become
    ``text``, ``image_url`` and ``file`` parts (one text part alone: its text)."""
    if isinstance(content, str) or content is None:
        return content
    if not isinstance(content, list):
        raise invalid("`content` must be a string or a list of parts.", param)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _text(part, "text", where)})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _text(part, "refusal", where)})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise invalid(
                    "Images are sent by URL (`image_url`, a URL or a data URL); file ids are "
                    "not supported.",
                    f"{where}.image_url",
                    "unsupported_value",
                )
            parts.append(
                {"type": "image_url", "image_url": {"url": url, "detail": part.get("detail")}}
            )
            if parts[-1]["image_url"]["detail"] is None:
                del parts[-1]["image_url"]["detail"]
        elif kind == "input_file" and isinstance(part.get("file_url"), str):
            parts.append({"type": "file", "file": {"url": part["file_url"]}})
        else:
            raise invalid(
                f"Content parts of type {kind!r} are not supported here; send input_text, "
                "input_image (by URL) or input_file (by URL).",
                f"{where}.type",
                "unsupported_value",
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def stored_messages(messages: list[Any]) -> list[dict[str, Any]]:
    return [message_fields(m) for m in messages]


# ---- options -------------------------------------------------------------------------------


def chat_params(request: ResponseCreate) -> dict[str, Any]:
    """The chat-completions params a response's options map onto, with what is only kept
    (instructions, previous_response_id, metadata) under ``KEPT_PARAMS``. Options that cannot
    be mapped are refused by name."""
    _refuse_unmappable(request)
    params: dict[str, Any] = {}
    for name in SAMPLING:
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.max_output_tokens is not None:
        params["max_completion_tokens"] = request.max_output_tokens
    user = request.safety_identifier or request.user
    if user is not None:
        params["user"] = user
    if request.reasoning is not None:
        effort = request.reasoning.get("effort")
        if effort is not None:
            params["reasoning_effort"] = effort
    if request.tools:
        params["tools"] = [_chat_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        _tool_choice(request.tool_choice, params)
    if request.text is not None:
        response_format = _response_format(request.text)
        if response_format is not None:
            params["response_format"] = response_format
    kept = {
        "instructions": request.instructions,
        "previous_response_id": request.previous_response_id,
        "metadata": request.metadata,
    }
    try:
        check_params(params)
    except ParamsError as exc:
        field = RESPONSES_FIELD.get(exc.name, exc.name)
        raise invalid(f"Invalid '{field}': {exc.reason}.", field) from None
    except ValueError as exc:
        raise invalid(str(exc), None) from None
    if holds_nul(kept):
        raise invalid("`instructions` and `metadata` may not hold NUL characters.", None)
    params[KEPT_PARAMS] = {k: v for k, v in kept.items() if v is not None}
    return params


# Responses' `truncation` as a turn's context strategy: `auto` drops the oldest messages that
# do not fit (keeping the system messages), as `truncate` does; unset follows the conversation.
TRUNCATION = {None: None, "disabled": "full", "auto": "truncate"}


def turn_context(request: ResponseCreate) -> ContextPolicy | UnsetType:
    """The turn's context for a response's ``truncation`` (unset: the conversation's)."""
    strategy = TRUNCATION.get(request.truncation)
    return UNSET if strategy is None else ContextPolicy(strategy=strategy)  # type: ignore[arg-type]


def truncation_of(turn: TurnOut) -> str:
    """A stored turn's strategy as Responses' ``truncation``."""
    context = turn.context if isinstance(turn.context, dict) else {}
    return "auto" if context.get("strategy") == "truncate" else "disabled"


def _refuse_unmappable(request: ResponseCreate) -> None:
    refused: list[tuple[str, str]] = []
    if request.background:
        refused.append(("background", "Background responses are not supported."))
    if request.prompt is not None:
        refused.append(("prompt", "Stored prompts are not supported."))
    if request.max_tool_calls is not None:
        refused.append(("max_tool_calls", "The model behind this service cannot cap tool calls."))
    if request.top_logprobs:
        refused.append(("top_logprobs", "Log probabilities are not returned by this service."))
    if request.truncation not in TRUNCATION:
        refused.append(("truncation", "`truncation` is `auto` or `disabled`."))
    elif request.truncation == "auto" and request.store is False:
        refused.append(("truncation", "`truncation: auto` needs a stored response (`store` true)."))
    if request.service_tier not in (None, "auto", "default"):
        refused.append(("service_tier", "Only the default service tier is offered."))
    for index, value in enumerate(request.include or ()):
        if value != "reasoning.encrypted_content":
            refused.append((f"include[{index}]", f"`{value}` cannot be included here."))
    if request.text is not None and request.text.get("verbosity") is not None:
        refused.append(("text.verbosity", "The model behind this service has no verbosity."))
    if request.reasoning is not None:
        unknown = sorted(set(request.reasoning) - {"effort", "summary", "generate_summary"})
        if unknown:
            refused.append((f"reasoning.{unknown[0]}", f"Unknown reasoning option {unknown[0]}."))
    if refused:
        param, message = refused[0]
        raise invalid(message, param, "unsupported_parameter")


def _chat_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    kind = tool.get("type")
    if kind != "function":
        raise invalid(
            f"Tools of type {kind!r} (hosted tools such as file_search or web_search) cannot "
            "run on the chat-completions model behind this service; only function tools can.",
            f"{param}.type",
            "unsupported_value",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid("A function tool needs a `name`.", f"{param}.name")
    unknown = sorted(set(tool) - {"type", "name", "description", "parameters", "strict"})
    if unknown:
        raise invalid(f"Unknown function tool field `{unknown[0]}`.", f"{param}.{unknown[0]}")
    function = {k: v for k, v in tool.items() if k != "type" and v is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any], params: dict[str, Any]) -> None:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise invalid(
                "`tool_choice` must be none, auto, required or a function.", "tool_choice"
            )
        params["tool_choice"] = choice
        return
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        return
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        allowed = {t.get("name") for t in choice["tools"] if isinstance(t, dict)}
        params["tools"] = [t for t in params.get("tools", []) if t["function"]["name"] in allowed]
        params["tool_choice"] = choice.get("mode", "auto")
        return
    raise invalid(
        f"`tool_choice` of type {kind!r} cannot be mapped; use none, auto, required, a "
        "function or allowed_tools.",
        "tool_choice.type",
        "unsupported_value",
    )


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    found = text.get("format")
    if found is None:
        return None
    kind = found.get("type") if isinstance(found, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(found.get("schema"), dict):
        schema = {k: found[k] for k in ("name", "schema", "description", "strict") if k in found}
        schema.setdefault("name", "answer")
        return {"type": "json_schema", "json_schema": schema}
    raise invalid(
        "`text.format` must be text, json_object or json_schema (with a `schema`).",
        "text.format",
    )


# ---- output --------------------------------------------------------------------------------


class ReplyLike(Protocol):
    """A reply, stored (``MessageOut``) or not (``Reply``)."""

    content: Any
    reasoning_content: str | None
    tool_calls: Any
    finish_reason: str | None
    usage: Any
    model: Any


def seconds(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def input_parts(content: Any) -> list[dict[str, Any]]:
    """Stored content as input content parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts = []
    for part in content:
        kind = part.get("type")
        if kind == "image_url":
            image = part.get("image_url") or {}
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image.get("url"),
                    "detail": image.get("detail") or "auto",
                }
            )
        elif kind == "file" and isinstance(part.get("file"), dict):
            parts.append({"type": "input_file", "file_url": part["file"].get("url", "")})
        else:
            parts.append({"type": "input_text", "text": str(part.get("text", ""))})
    return parts


def output_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def reasoning_item(ident: uuid.UUID, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": external("rs", ident),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def message_item(ident: uuid.UUID, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": external("msg", ident),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call_item(ident: uuid.UUID, index: int, call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": f"{external('fc', ident)}_{index}",
        "call_id": call.get("id", ""),
        "name": function.get("name", ""),
        "arguments": function.get("arguments", ""),
        "status": "completed",
    }


def reply_items(ident: uuid.UUID, reply: ReplyLike) -> list[dict[str, Any]]:
    """A reply's output items: its reasoning, its text (left out only when it is empty and the
    reply calls functions), then each function call."""
    items = []
    if reply.reasoning_content:
        items.append(reasoning_item(ident, reply.reasoning_content))
    text = output_text(reply.content)
    calls = reply.tool_calls or []
    if text or not calls:
        status = "incomplete" if reply.finish_reason == "length" else "completed"
        items.append(message_item(ident, text, status))
    items.extend(function_call_item(ident, i, call) for i, call in enumerate(calls))
    return items


def message_items(message: MessageOut) -> list[dict[str, Any]]:
    """A stored message as conversation items (an assistant's reply may make several)."""
    if message.role == "assistant":
        return reply_items(message.turn_id or message.id, message)
    if message.role == "tool":
        output = message.content
        return [
            {
                "type": "function_call_output",
                "id": external("fco", message.id),
                "call_id": message.tool_call_id or "",
                "output": output if isinstance(output, str) else input_parts(output),
                "status": "completed",
            }
        ]
    return [
        {
            "type": "message",
            "id": external("msg", message.id),
            "status": "completed",
            "role": message.role if message.role in ("user", "system") else "user",
            "content": input_parts(message.content),
        }
    ]


def usage(found: Any) -> dict[str, Any] | None:
    """Chat-completions usage in the Responses names. Output counts reasoning: the upstream's
    total is input plus output, whether or not its completion count includes reasoning."""
    if not isinstance(found, dict):
        return None
    prompt = int(found.get("prompt_tokens") or 0)
    completion = int(found.get("completion_tokens") or 0)
    total = int(found.get("total_tokens") or prompt + completion)
    prompt_details = found.get("prompt_tokens_details") or {}
    completion_details = found.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(prompt_details.get("cached_tokens") or 0)},
        "output_tokens": max(total - prompt, completion),
        "output_tokens_details": {
            "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)
        },
        "total_tokens": max(total, prompt + completion),
    }


def _responses_tools(params: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for tool in params.get("tools") or ():
        function = tool.get("function") or {}
        tools.append(
            {
                "type": "function",
                "name": function.get("name", ""),
                "description": function.get("description"),
                "parameters": function.get("parameters"),
                "strict": function.get("strict"),
            }
        )
    return tools


def _responses_tool_choice(params: dict[str, Any]) -> Any:
    choice = params.get("tool_choice", "auto")
    if isinstance(choice, dict):
        return {"type": "function", "name": (choice.get("function") or {}).get("name", "")}
    return choice


def _text_format(params: dict[str, Any]) -> dict[str, Any]:
    found = params.get("response_format") or {"type": "text"}
    if found.get("type") != "json_schema":
        return {"type": found.get("type", "text")}
    schema = found.get("json_schema") or {}
    return {
        "type": "json_schema",
        "name": schema.get("name", ""),
        "description": schema.get("description"),
        "schema": schema.get("schema"),
        "strict": bool(schema.get("strict", False)),
    }


ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


def response_resource(
    turn: TurnOut,
    reply: ReplyLike | None,
    *,
    stored: bool,
    status: ResponseStatus | None = None,
) -> dict[str, Any]:
    """The response object of a turn (``reply``: its reply, if it has one yet)."""
    params = turn.params or {}
    kept = params.get(KEPT_PARAMS) or {}
    if status is None:
        status = {"running": "in_progress", "failed": "failed"}.get(turn.status, "completed")  # type: ignore[assignment]
        if reply is not None and reply.finish_reason == "length":
            status = "incomplete"
    error = None
    if status == "failed":
        found = turn.error if isinstance(turn.error, dict) else {}
        error = {
            "code": str(found.get("code") or "upstream_error"),
            "message": str(found.get("detail") or "The response failed."),
        }
    effort = params.get("reasoning_effort")
    answer: dict[str, Any] = {
        "id": external("resp", turn.id),
        "object": "response",
        "created_at": seconds(turn.created_at),
        "completed_at": seconds(turn.completed_at) if status != "in_progress" else None,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": (reply.model if reply is not None and reply.model else None) or turn.model,
        "previous_response_id": kept.get("previous_response_id"),
        "instructions": kept.get("instructions"),
        "output": reply_items(turn.id, reply) if reply is not None else [],
        "error": error,
        "tools": _responses_tools(params),
        "tool_choice": _responses_tool_choice(params),
        "truncation": truncation_of(turn),
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "text": {"format": _text_format(params)},
        "top_p": params.get("top_p", 1.0),
        "presence_penalty": params.get("presence_penalty", 0.0),
        "frequency_penalty": params.get("frequency_penalty", 0.0),
        "top_logprobs": 0,
        "temperature": params.get("temperature", 1.0),
        "reasoning": {"effort": effort, "summary": None} if effort else None,
        "usage": usage(reply.usage) if reply is not None else None,
        "max_output_tokens": params.get("max_completion_tokens"),
        "max_tool_calls": None,
        "store": stored,
        "background": False,
        "service_tier": "default",
        "metadata": kept.get("metadata") or {},
        "safety_identifier": params.get("user"),
        "prompt_cache_key": None,
    }
    if stored:
        answer["conversation"] = {"id": external("conv", turn.conversation_id)}
    return answer


def conversation_object(ident: uuid.UUID, created_at: datetime, metadata: Any) -> dict[str, Any]:
    return {
        "id": external("conv", ident),
        "object": "conversation",
        "created_at": seconds(created_at),
        "metadata": metadata or {},
    }


def item_list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
