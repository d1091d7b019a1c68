"""Request and response bodies (msgspec Structs), validated strictly.

Unknown fields are rejected everywhere, so a client can never set ``seq``, ids or a tenant.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

MAX_CONTENT_CHARS = 1_000_000
MAX_MESSAGES_PER_REQUEST = 1_000
MAX_OBJECT_BYTES = 64 * 1024  # params and metadata, each
MAX_JSON_DEPTH = 32  # arrays and objects inside params, metadata and a message's content
# The content part types the chat-completions API knows.
PART_TYPES = frozenset({"text", "image_url", "text_file", "file"})

# No text may hold NUL characters: PostgreSQL text cannot, and they mean nothing in a chat.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Model = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Title = Annotated[str, Meta(max_length=1_000, pattern=NO_NUL)]
Text = Annotated[str, Meta(max_length=MAX_CONTENT_CHARS, pattern=NO_NUL)]
Identifier = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
# A frontend's id for one of its end users: opaque to the service.
EndUser = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="The frontend's own id for the person the conversation is for.",
    ),
]
Part = dict[str, Any]
Content = Text | list[Part]

# Parameters the service itself sets on every upstream request; a client may not override them.
# ``response`` holds what the OpenAI-compatible surface keeps with a turn (``turns.KEPT_PARAMS``).
RESERVED_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "n", "response"})
# A turn's params under this key are kept with the turn but never sent as they are: what the
# OpenAI-compatible surface remembers of a response (its ``instructions``, sent first as a
# system message for that turn only, ``previous_response_id`` and ``metadata``).
KEPT_PARAMS = "response"


class Strict(Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class FunctionCall(Strict):
    name: Identifier
    arguments: Annotated[str, Meta(max_length=MAX_CONTENT_CHARS)]


class ToolCall(Strict, omit_defaults=False):
    id: Identifier
    function: FunctionCall
    type: Literal["function"] = "function"


def holds_nul(value: Any) -> bool:
    """Whether a NUL character stands anywhere in a JSON value (keys included)."""
    return b"\\u0000" in msgspec.json.encode(value)


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply arrays and objects nest in a JSON value (a scalar is 0), counted level by
    level without recursion, and only up to ``limit + 1``: past it the exact depth is not needed."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            break
        depth += 1
        level = [
            child
            for item in containers
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth


def check_depth(name: str, value: Any) -> None:
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(
            f"`{name}` nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
        )


def _check_parts(content: Content | None) -> None:
    if not isinstance(content, list):
        return
    check_depth("content", content)
    if holds_nul(content):
        raise ValueError("content holds a NUL character")
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise ValueError(
                f"content part {index} needs a `type` of {', '.join(sorted(PART_TYPES))}"
            )
        text = part.get("text")
        if kind == "text" and not isinstance(text, str):
            raise ValueError(f"content part {index} of type text needs a string `text`")
        if isinstance(text, str) and len(text) > MAX_CONTENT_CHARS:
            raise ValueError(
                f"content part {index} is {len(text):,} characters long; "
                f"at most {MAX_CONTENT_CHARS:,} are allowed"
            )
        if isinstance(text, str) and "\x00" in text:
            raise ValueError(f"content part {index} holds a NUL character")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise ValueError(f"content part {index} of type image_url needs `image_url.url`")


class SystemMessage(Strict, tag_field="role", tag="system"):
    content: Content
    name: Name | UnsetType = UNSET

    def __post_init__(self) -> None:
        _check_parts(self.content)


class UserMessage(Strict, tag_field="role", tag="user"):
    content: Content
    name: Name | UnsetType = UNSET

    def __post_init__(self) -> None:
        _check_parts(self.content)


class AssistantMessage(Strict, tag_field="role", tag="assistant"):
    content: Content | None = None
    name: Name | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    reasoning_content: Text | UnsetType = UNSET
    # Opaque: what xAI's Responses API returned as the reply's encrypted reasoning.
    reasoning_encrypted_content: Text | UnsetType = UNSET

    def __post_init__(self) -> None:
        _check_parts(self.content)
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs `content` or `tool_calls`")


class ToolMessage(Strict, tag_field="role", tag="tool"):
    content: Content
    tool_call_id: Identifier
    name: Name | UnsetType = UNSET

    def __post_init__(self) -> None:
        _check_parts(self.content)


MessageIn = SystemMessage | UserMessage | AssistantMessage | ToolMessage
MessageList = Annotated[list[MessageIn], Meta(max_length=MAX_MESSAGES_PER_REQUEST)]
Params = dict[str, Any]
Metadata = dict[str, Any]


class ParamsError(ValueError):
    """A parameter of the wrong type or out of range: ``name`` is the parameter, ``reason``
    msgspec's words for what is wrong with it."""

    def __init__(self, validation: str) -> None:
        reason, _, where = validation.rpartition(" - at `$.")
        self.name = where.rstrip("`").split(".", 1)[0].split("[", 1)[0]
        self.reason = reason or validation
        super().__init__(f"{self.reason} - at `params.{where}" if where else validation)


class ChatParams(Struct):
    """The chat-completions parameters xAI documents, with the types and ranges it documents:
    a turn that would only fail upstream is refused before anything is stored. Other names
    pass as they are (xAI adds parameters faster than its documents say)."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=0)] | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=8)] | None = None
    user: str | None = None


def check_params(params: Params | UnsetType, metadata: Metadata | UnsetType = UNSET) -> None:
    """Refuse params the service sets itself, params of the wrong type or out of xAI's
    documented range (``ChatParams``), and params or metadata that are too large."""
    if isinstance(params, dict):
        reserved = sorted(RESERVED_PARAMS.intersection(params))
        if reserved:
            raise ValueError(f"`params` may not set {', '.join(reserved)}: the service sets them")
        _check_object("params", params)
        try:
            msgspec.convert(params, ChatParams, strict=True)
        except msgspec.ValidationError as exc:
            raise ParamsError(str(exc)) from None
    if isinstance(metadata, dict):
        _check_object("metadata", metadata)


def _check_object(name: str, value: dict[str, Any]) -> None:
    """Refuse params or metadata nested too deeply, too large, or holding a NUL character."""
    check_depth(name, value)
    encoded = msgspec.json.encode(value)
    if len(encoded) > MAX_OBJECT_BYTES:
        raise ValueError(
            f"`{name}` is {len(encoded)} bytes as JSON; at most {MAX_OBJECT_BYTES} are allowed"
        )
    if b"\\u0000" in encoded:
        raise ValueError(f"`{name}` holds a NUL character")


# An instant with its time zone (a time without one could mean anywhere's).
Instant = Annotated[datetime, Meta(tz=True)]
# An instant in a request body: a string (RFC 3339, with its offset) of the form its pattern
# shows in the OpenAPI document, read by ``instant``.
InstantText = Annotated[
    str,
    Meta(
        pattern=r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$",
        extra_json_schema={"format": "date-time"},
        description="A date and time with its offset (RFC 3339).",
    ),
]


def instant(name: str, value: Any) -> Any:
    """An ``InstantText`` as a datetime in UTC (other values as they are); ValueError if it
    names no real instant or one out of range."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"`{name}` is not a date and time (RFC 3339)") from None
    return in_utc(name, parsed)


def in_utc(name: str, value: datetime | UnsetType | None) -> Any:
    """An instant in UTC (other values as they are); refused if it is out of the range of
    dates stored once taken to UTC (``9999-12-31T23:59:59-23:59`` is in the year 10000 there)."""
    if not isinstance(value, datetime):
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"`{name}` is out of the range of dates this service stores") from None


class ContextPolicy(Strict, omit_defaults=False):
    """How a turn fits the history into the model's window: ``full`` sends it all (a history
    too long fails the turn), ``truncate`` the system messages and the newest others that fit,
    ``compact`` a summary of the oldest part in place of it. ``max_input_tokens`` caps the
    input below the model's window."""

    strategy: Literal["full", "truncate", "compact"] = "full"
    max_input_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None


class ConversationCreate(Strict):
    title: Title | None = None
    user: EndUser | None = None
    model: Model | UnsetType = UNSET
    params: Params = msgspec.field(default_factory=dict)
    metadata: Metadata = msgspec.field(default_factory=dict)
    messages: MessageList = msgspec.field(default_factory=list)
    # Retention deletes the conversation after this instant (null: the default age, if any).
    expires_at: InstantText | None = None
    context: ContextPolicy | None = None

    def __post_init__(self) -> None:
        check_params(self.params, self.metadata)
        instant("expires_at", self.expires_at)


class ConversationPatch(Strict):
    title: Title | UnsetType | None = UNSET
    user: EndUser | UnsetType | None = UNSET
    archived: bool | UnsetType = UNSET
    model: Model | UnsetType = UNSET
    params: Params | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    context: ContextPolicy | UnsetType | None = UNSET
    # Switch branch: the head becomes the newest leaf below this message.
    head_id: uuid.UUID | UnsetType = UNSET
    expires_at: InstantText | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        check_params(self.params, self.metadata)
        instant("expires_at", self.expires_at)


# The message new messages follow: unset for the conversation's head, null for none (a new
# first message, as when the first message is edited).
ParentId = uuid.UUID | None | UnsetType


class MessagesAppend(Strict):
    messages: Annotated[list[MessageIn], Meta(min_length=1, max_length=MAX_MESSAGES_PER_REQUEST)]
    parent_id: ParentId = UNSET


class TurnCreate(Strict):
    messages: MessageList = msgspec.field(default_factory=list)
    parent_id: ParentId = UNSET
    stream: bool = False
    model: Model | UnsetType = UNSET
    params: Params | UnsetType = UNSET
    # Overrides the conversation's for this turn.
    context: ContextPolicy | UnsetType = UNSET

    def __post_init__(self) -> None:
        check_params(self.params)


def message_fields(message: MessageIn) -> dict[str, Any]:
    """The stored fields of an input message, as plain JSON values (unset fields left out)."""
    fields: dict[str, Any] = msgspec.to_builtins(message)
    return fields


class Reply(Struct):
    """An assistant reply as the upstream gave it, before it is stored."""

    content: Any
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str = ""
    reasoning_encrypted_content: str | None = None


# ---- responses ---------------------------------------------------------------------------


class MessageOut(Struct, omit_defaults=True):
    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    role: str
    content: Any
    created_at: datetime
    parent_id: uuid.UUID | None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning_encrypted_content: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: Any = None
    turn_id: uuid.UUID | None = None
    # Its size in tokens as the upstream receives it, and whether the upstream counted it
    # (else it is estimated).
    tokens: int | None = None
    tokens_exact: bool | None = None
    # The messages with the same parent (this one among them), and this one's place among
    # them (1-based, in creation order): a frontend's "< 2/3 >".
    sibling_count: int | None = None
    sibling_index: int | None = None


class ConversationOut(Struct, omit_defaults=True):
    id: uuid.UUID
    title: str | None
    model: str
    params: dict[str, Any]
    metadata: dict[str, Any]
    message_count: int
    created_at: datetime
    updated_at: datetime
    # The frontend's own id for the person the conversation is for.
    user: str | None
    archived: bool
    head_id: uuid.UUID | None = None
    source_id: str | None = None
    forked_from_id: uuid.UUID | None = None
    forked_through_seq: int | None = None
    expires_at: datetime | None = None
    # Set by an admin: no one may delete the conversation while it holds.
    legal_hold: bool = False
    context: Any = None


class TurnOut(Struct):
    id: uuid.UUID
    conversation_id: uuid.UUID
    status: str
    model: str
    params: dict[str, Any]
    usage: Any
    finish_reason: str | None
    error: Any
    latency_ms: int | None
    created_at: datetime
    completed_at: datetime | None
    reply_seq: int | None = None
    reply_id: uuid.UUID | None = None
    # What the model saw (see ``service.context``); None for a turn from before it was kept.
    context: Any = None


class Replayed(Struct):
    """A turn's request sent again: the stored turn and its reply (None if it failed), and the
    new answer, stored nowhere. ``same_request``: the body sent has the SHA-256 recorded."""

    turn: TurnOut
    stored: MessageOut | None
    replayed: Reply
    request_sha256: str
    same_request: bool


class TurnResult(Struct):
    turn: TurnOut
    reply: MessageOut


class ConversationPage(Struct):
    data: list[ConversationOut]
    has_more: bool
    next_cursor: str | None


class MessagePage(Struct):
    data: list[MessageOut]
    has_more: bool
    next_cursor: str | None


class MessagesAppended(Struct):
    data: list[MessageOut]


class ConversationCreated(ConversationOut):
    """A new conversation, with the messages it was created with."""

    messages: list[MessageOut] = msgspec.field(default_factory=list)


class ForkCreate(Strict):
    through_seq: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None


class ImportProblem(Struct, omit_defaults=True):
    """Something that keeps a transcript out: where (a JSON path), what, and the import limit
    it passes, if that is what it is."""

    path: str
    message: str
    limit: int | None = None


class RefusedImport(Struct):
    """A conversation of another tool's export that was not imported, and why (its
    ``problems``' paths point into the transcript it was converted into; ``problem_count``
    counts them all, ``problems`` holds the first 20)."""

    source_id: str
    title: str | None
    detail: str
    problems: list[ImportProblem]
    problem_count: int


class ImportSummary(Struct):
    """What an import of another tool's export did: the conversations it made, the ones made
    before (by source id), notes on what was left out, and the conversations refused."""

    data: list[ConversationOut]
    already_imported: list[str]
    skipped: list[str]
    refused: list[RefusedImport]


class DeletionReceipt(Struct):
    """That a conversation was deleted: by whom (``kind``: ``tenant``, ``admin`` or
    ``retention``; ``key_id``: the key that asked, none for retention), when, why, and how
    many messages (every branch's) and turns it had. Never any of its content."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    tenant: str
    deleted_at: datetime
    kind: str
    key_id: uuid.UUID | None
    reason: str | None
    message_count: int
    turn_count: int


class DeletionPage(Struct):
    data: list[DeletionReceipt]
    has_more: bool
    next_cursor: str | None


class AdminReadOut(Struct):
    """An admin's read of a conversation's messages: which admin key, when, through what
    (``api``, ``page``: the admin web pages, ``export``: the admin NDJSON export) and the
    reason it gave."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    tenant: str
    key_id: uuid.UUID
    read_at: datetime
    via: str
    reason: str | None


class AdminReadPage(Struct):
    data: list[AdminReadOut]
    has_more: bool
    next_cursor: str | None
