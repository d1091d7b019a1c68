"""The JSON transcript (``convstore.transcript``): build, validate, import, render.

A transcript holds a conversation, every message with every stored field, and its turns. Import
of an export and export again give the same messages and conversation fields; only ids are new.

Version 2 is a tree: every message has its ``id`` and its ``parent_id`` (null for a first
message), and the conversation its ``head_id``, the end of the active path; messages come after
their parents, and ``seq`` is a message's position on its path. Version 1 is a line (``seq``
1, 2, 3, ...) and still imports. A conversation that never branched exports as version 1, as
it always has; one with branches exports as version 2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import msgspec
from jsonschema import Draft202012Validator

from service.errors import ValidationFailed
from service.schemas import ConversationOut, holds_nul
from service.store import ExportRows, Store

FORMAT = "convstore.transcript"
LINE, TREE = 1, 2  # the versions: a line of messages, and a tree
MESSAGE_FIELDS = (
    "name",
    "tool_calls",
    "tool_call_id",
    "reasoning_content",
    "model",
    "finish_reason",
    "usage",
)
TURN_FIELDS = (
    "model",
    "params",
    "usage",
    "finish_reason",
    "error",
    "latency_ms",
    "reply_seq",
)
MAX_REPORTED_ERRORS = 20


@cache
def schema() -> dict[str, Any]:
    """The transcript's JSON Schema, as shipped in the package."""
    text = resources.files("service").joinpath("transcript.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def build(rows: ExportRows, *, exported_at: datetime | None = None) -> dict[str, Any]:
    """The transcript of one conversation, from its stored rows."""
    c = rows.conversation
    conversation: dict[str, Any] = {
        "id": str(c.id),
        "title": c.title,
        "model": c.model,
        "params": c.params,
        "metadata": c.metadata,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }
    if c.source_id is not None:
        conversation["source_id"] = c.source_id
    if c.forked_from_id is not None:
        conversation["forked_from"] = {
            "conversation_id": str(c.forked_from_id),
            "through_seq": c.forked_through_seq,
        }
    # Every message on the active path: the conversation never branched (or its branches are
    # gone), and its transcript is a line, as before branches.
    tree = c.message_count != len(rows.messages)
    if tree:
        conversation["head_id"] = str(c.head_id) if c.head_id else None
    messages = []
    for m in rows.messages:
        message: dict[str, Any] = {}
        if tree:
            message["id"] = str(m.id)
            message["parent_id"] = str(m.parent_id) if m.parent_id else None
        message.update(seq=m.seq, role=m.role, content=m.content)
        for field in MESSAGE_FIELDS:
            value = getattr(m, field)
            if value is not None:
                message[field] = value
        if m.turn_id is not None:
            message["turn_id"] = str(m.turn_id)
        message["created_at"] = m.created_at
        messages.append(message)
    turns = []
    for t in rows.turns:
        turn: dict[str, Any] = {"id": str(t.id), "status": t.status}
        for field in TURN_FIELDS:
            turn[field] = getattr(t, field)
        turn["created_at"] = t.created_at
        turn["completed_at"] = t.completed_at
        turns.append(turn)
    return {
        "format": FORMAT,
        "version": TREE if tree else LINE,
        "exported_at": exported_at or datetime.now(UTC),
        "conversation": conversation,
        "messages": messages,
        "turns": turns,
    }


def encode(transcript: dict[str, Any]) -> bytes:
    """The transcript as compact JSON (timestamps in RFC 3339, UTC)."""
    return msgspec.json.encode(transcript)


def problems(data: Any) -> list[dict[str, str]]:
    """Everything wrong with a would-be transcript, each with a JSON path saying where."""
    found = [
        {"path": error.json_path, "message": error.message}
        for error in sorted(_validator().iter_errors(data), key=lambda e: e.json_path)
    ]
    if found:
        return found[:MAX_REPORTED_ERRORS]
    found += _bad_timestamps(data)
    messages = data["messages"]
    for index, message in enumerate(messages):
        if isinstance(message.get("content"), list) and holds_nul(message["content"]):
            found.append(
                {"path": f"$.messages[{index}].content", "message": "holds a NUL character"}
            )
    found += _misplaced(data)
    turn_ids = [t["id"] for t in data.get("turns", [])]
    if len(set(turn_ids)) != len(turn_ids):
        found.append({"path": "$.turns", "message": "turn ids must be unique"})
    known = set(turn_ids)
    for index, message in enumerate(messages):
        if "turn_id" in message and message["turn_id"] not in known:
            found.append(
                {
                    "path": f"$.messages[{index}].turn_id",
                    "message": "names no turn in `turns`",
                }
            )
    return found


def _misplaced(data: dict[str, Any]) -> list[dict[str, str]]:
    """Messages out of place: in version 1, seqs that are not 1, 2, 3, ...; in version 2, a
    message before its parent, a repeated id, a seq that is not one more than its parent's (1
    for a first message), or a head that is no message."""
    messages = data["messages"]
    if data["version"] == LINE:
        for index, message in enumerate(messages):
            if message["seq"] != index + 1:
                return [
                    {
                        "path": f"$.messages[{index}].seq",
                        "message": f"seq must be {index + 1} here: messages are numbered 1, 2, "
                        f"3, … in order, without gaps or repeats (found {message['seq']})",
                    }
                ]
        return []
    seqs: dict[str, int] = {}
    for index, message in enumerate(messages):
        where, parent = f"$.messages[{index}]", message["parent_id"]
        if message["id"] in seqs:
            return [{"path": f"{where}.id", "message": "ids must be unique"}]
        if parent is not None and parent not in seqs:
            problem = "names no message before this one: parents come first"
            return [{"path": f"{where}.parent_id", "message": problem}]
        expected = 1 if parent is None else seqs[parent] + 1
        if message["seq"] != expected:
            problem = f"seq must be {expected}: one more than the parent's (1 for a first message)"
            return [{"path": f"{where}.seq", "message": problem}]
        seqs[message["id"]] = expected
    head = data["conversation"].get("head_id")
    if head is not None and head not in seqs:
        return [{"path": "$.conversation.head_id", "message": "names no message"}]
    return []


def _bad_timestamps(data: dict[str, Any]) -> list[dict[str, str]]:
    """Timestamps that do not parse (the schema's ``date-time`` format is not enforced by
    every validator, and these values are stored)."""
    places: list[tuple[str, Any]] = [
        (f"$.conversation.{k}", data["conversation"].get(k)) for k in ("created_at", "updated_at")
    ]
    places += [
        (f"$.messages[{i}].created_at", m.get("created_at")) for i, m in enumerate(data["messages"])
    ]
    for i, t in enumerate(data.get("turns", [])):
        places += [(f"$.turns[{i}].{k}", t.get(k)) for k in ("created_at", "completed_at")]
    bad = []
    for path, value in places:
        if value is None:
            continue
        try:
            _timestamp(value, datetime.now(UTC))
        except ValueError:
            bad.append({"path": path, "message": f"{value!r} is not an ISO 8601 date-time"})
    return bad[:MAX_REPORTED_ERRORS]


def validate(data: Any) -> None:
    """Raise a 422 ``ValidationFailed`` listing every problem (at most 20) if ``data`` is not
    a valid transcript."""
    found = problems(data)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ValidationFailed(
            f"Not a valid transcript: {first['path']}: {first['message']}{more}",
            code="invalid_transcript",
            errors=found,
        )


def _timestamp(value: str | None, default: datetime) -> datetime:
    if value is None:
        return default
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_rows(
    data: dict[str, Any], *, default_model: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], Any]:
    """The rows an import stores for a validated transcript: conversation, messages (each with
    its transcript ``id`` and ``parent_id``), turns, and the transcript id of the head."""
    now = datetime.now(UTC)
    c = data["conversation"]
    created = _timestamp(c.get("created_at"), now)
    conversation = {
        "title": c.get("title"),
        "model": c.get("model") or default_model,
        "params": c.get("params") or {},
        "metadata": c.get("metadata") or {},
        "created_at": created,
        "updated_at": _timestamp(c.get("updated_at"), created),
        "source_id": c["id"],
    }
    tree = data["version"] == TREE
    messages = []
    for m in data["messages"]:
        # Version 1 is a line: each message follows the one before it.
        line_parent = m["seq"] - 1 if m["seq"] > 1 else None
        ident, parent = (m["id"], m["parent_id"]) if tree else (m["seq"], line_parent)
        row = {"id": ident, "parent_id": parent, "role": m["role"], "content": m.get("content")}
        for field in MESSAGE_FIELDS:
            row[field] = m.get(field)
        row["turn_id"] = m.get("turn_id")
        row["created_at"] = _timestamp(m.get("created_at"), created)
        messages.append(row)
    head = c.get("head_id") if tree else None
    turns = []
    for t in data.get("turns", []):
        status = t["status"]
        error = t.get("error")
        if status == "running":
            # A turn that was running when exported will never finish here.
            status = "failed"
            error = {"code": "interrupted", "detail": "The turn was running when exported."}
        turn_created = _timestamp(t.get("created_at"), created)
        turns.append(
            {
                "id": t["id"],
                "status": status,
                "model": t.get("model") or conversation["model"],
                "params": t.get("params") or {},
                "stream": False,
                "usage": t.get("usage"),
                "finish_reason": t.get("finish_reason"),
                "error": error,
                "latency_ms": t.get("latency_ms"),
                "reply_seq": t.get("reply_seq"),
                "attempts": 0,
                "created_at": turn_created,
                "completed_at": _timestamp(t["completed_at"], turn_created)
                if t.get("completed_at")
                else (turn_created if status != "completed" else None),
            }
        )
    return conversation, messages, turns, head


async def store_transcript(
    store: Store, tenant: str, data: Any, *, default_model: str
) -> ConversationOut:
    """Validate a transcript and store it as a new conversation of ``tenant``, in one
    transaction. Raises 422 ``invalid_transcript``, or 409 ``already_imported`` (naming the
    conversation) if this tenant imported the same source before."""
    validate(data)
    conversation, messages, turns, head = to_rows(data, default_model=default_model)
    return await store.import_conversation(tenant, conversation, messages, turns, head=head)


def active_path(transcript: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of a built transcript's active path, first to last (all of a version 1
    transcript's)."""
    messages: list[dict[str, Any]] = transcript["messages"]
    if transcript["version"] == LINE:
        return messages
    by_id = {m["id"]: m for m in messages}
    path = []
    ident = transcript["conversation"].get("head_id")
    while ident is not None:
        path.append(by_id[ident])
        ident = by_id[ident]["parent_id"]
    return path[::-1]


def markdown(transcript: dict[str, Any]) -> str:
    """A readable rendering of a transcript, for people: its active path."""
    c = transcript["conversation"]
    path = active_path(transcript)
    lines = [f"# {c.get('title') or 'Untitled conversation'}", ""]
    lines.append(f"- conversation: `{c['id']}`")
    lines.append(f"- model: `{c.get('model')}`")
    lines.append(f"- created: {_text_time(c.get('created_at'))}")
    lines.append(f"- messages: {len(path)}")
    others = len(transcript["messages"]) - len(path)
    if others:
        lines.append(f"- on other branches: {others} messages (in the JSON transcript)")
    lines.append("")
    for m in path:
        who = m["role"] + (f" ({m['name']})" if m.get("name") else "")
        lines.append(f"## {m['seq']}. {who}")
        lines.append("")
        if m.get("reasoning_content"):
            lines.append("<details><summary>reasoning</summary>")
            lines.append("")
            lines.append(m["reasoning_content"])
            lines.append("")
            lines.append("</details>")
            lines.append("")
        lines.extend(_content_lines(m.get("content")))
        for call in m.get("tool_calls") or []:
            fn = call["function"]
            lines.append(f"**tool call** `{fn['name']}` (`{call['id']}`)")
            lines.append("")
            lines.append("```json")
            lines.append(fn["arguments"])
            lines.append("```")
            lines.append("")
        if m.get("tool_call_id"):
            lines.append(f"_result of tool call `{m['tool_call_id']}`_")
            lines.append("")
        if m.get("usage"):
            lines.append(
                f"_{m.get('model', '')} · {m['usage'].get('total_tokens', '?')} tokens · "
                f"{m.get('finish_reason', '')}_"
            )
            lines.append("")
    failed = [t for t in transcript.get("turns", []) if t["status"] == "failed"]
    if failed:
        lines.append("## Failed turns")
        lines.append("")
        for t in failed:
            detail = (t.get("error") or {}).get("detail", "")
            lines.append(f"- `{t['id']}` at {_text_time(t.get('created_at'))}: {detail}")
        lines.append("")
    return "\n".join(lines)


def _content_lines(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content, ""]
    lines = []
    for part in content:
        if part.get("type") == "text":
            lines.extend([part.get("text", ""), ""])
        elif part.get("type") == "image_url":
            lines.extend([f"![image]({part['image_url']['url']})", ""])
        else:
            lines.extend([f"_[{part.get('type')} part]_", ""])
    return lines


def _text_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)
