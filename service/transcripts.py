"""The JSON transcript (``convstore.transcript``): build, validate, import, render.

A transcript holds a conversation, every message with every stored field, its turns and, if
``compact`` made any, its context summaries. Import of an export and export again give the same
messages, conversation fields and summaries; only ids are new.

Version 2 is a tree: every message has its ``id`` and its ``parent_id`` (null for a first
message), and the conversation its ``head_id``, the end of the active path; messages come after
their parents, and ``seq`` is a message's position on its path. Version 1 is a line (``seq``
1, 2, 3, ...) and still imports. A conversation that never branched exports as version 1, as
it always has; one with branches exports as version 2.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import jsonschema_rs
import msgspec

from service.errors import BadRequest, ValidationFailed
from service.schemas import MAX_JSON_DEPTH, holds_nul, json_depth
from service.store import ExportRows, ImportRows

FORMAT = "convstore.transcript"
LINE, TREE = 1, 2  # the versions: a line of messages, and a tree
MESSAGE_FIELDS = (
    "name",
    "tool_calls",
    "tool_call_id",
    "reasoning_content",
    "reasoning_encrypted_content",
    "model",
    "finish_reason",
    "usage",
    "tokens",
    "tokens_exact",
)
TURN_FIELDS = (
    "model",
    "params",
    "usage",
    "finish_reason",
    "error",
    "latency_ms",
    "reply_seq",
    "context",
)
MAX_REPORTED_ERRORS = 20
# The import limits, as the schema states them (tests/test_transcripts.py holds the two to each
# other): messages (and turns) in one conversation; characters in a content, a text part, a
# reasoning or a tool call's arguments, as everywhere in the API.
MAX_IMPORT_MESSAGES = 100_000
MAX_IMPORT_CHARS = 1_000_000
# Messages checked by one call into the schema validator (about 10 ms at 2.5 kB a message).
CHECK_SLICE = 2_000
# Decoding: JSON larger than this is split before it is decoded, down to this many levels (a
# transcript's messages are at the second, a ChatGPT export's mapping nodes at the fourth).
PIECE_BYTES = 256 * 1024
PIECE_LEVELS = 4
# The validator writes this instead of a value in its messages; a short value is put back.
_MASK = "<value>"
_NUL_PATTERN = r"^[^\u0000]*$"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a transcript: where (a JSON path), what, and the limit it passes."""

    path: str
    message: str
    limit: int | None = None

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.limit is not None:
            found["limit"] = self.limit
        return found


class _Validators(NamedTuple):
    transcript: jsonschema_rs.Validator
    messages: jsonschema_rs.Validator  # a list of messages, one slice of a transcript's
    # The rules between the version and the messages' id and parent_id, on the version and a
    # copy of the messages holding only those two keys.
    version: jsonschema_rs.Validator


@cache
def schema() -> dict[str, Any]:
    """The transcript's JSON Schema, as shipped in the package."""
    text = resources.files("service").joinpath("transcript.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validators() -> _Validators:
    """The schema, compiled once (jsonschema-rs: about a hundred times faster than the
    pure-Python jsonschema on a long transcript). ``date-time`` stays an annotation, as it was:
    the timestamps are checked by what parses them (:func:`_bad_timestamps`)."""
    whole = schema()
    messages = {
        "$schema": whole["$schema"],
        "$defs": whole["$defs"],
        "type": "array",
        "items": {"$ref": "#/$defs/message"},
    }
    version = {"$schema": whole["$schema"], "allOf": whole["allOf"]}
    return _Validators(
        *(
            jsonschema_rs.validator_for(s, validate_formats=False, mask=_MASK)
            for s in (whole, messages, version)
        )
    )


def build(rows: ExportRows, *, exported_at: datetime | None = None) -> dict[str, Any]:
    """The transcript of one conversation, from its stored rows."""
    c = rows.conversation
    conversation: dict[str, Any] = {
        "id": str(c.id),
        "title": c.title,
        "model": c.model,
        "params": c.params,
        "metadata": c.metadata,
        "user": c.user,
        "archived": c.archived,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }
    if c.source_id is not None:
        conversation["source_id"] = c.source_id
    if c.context is not None:
        conversation["context"] = c.context
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
    transcript: dict[str, Any] = {
        "format": FORMAT,
        "version": TREE if tree else LINE,
        "exported_at": exported_at or datetime.now(UTC),
        "conversation": conversation,
        "messages": messages,
        "turns": turns,
    }
    if rows.summaries:
        transcript["summaries"] = _summaries(rows, tree=tree)
    return transcript


def _summaries(rows: ExportRows, *, tree: bool) -> list[dict[str, Any]]:
    """The conversation's context summaries: each names the message it ends at by seq (in a
    tree, by id too) and its summarising turn, if that turn is still there."""
    turn_ids = {t.id for t in rows.turns}
    summaries = []
    for s in rows.summaries:
        summary: dict[str, Any] = {"id": str(s.id)}
        if tree:
            summary["upto_id"] = str(s.upto_id)
        summary.update(upto_seq=s.upto_seq, covers=s.covers, content=s.content, tokens=s.tokens)
        if s.turn_id in turn_ids:
            summary["turn_id"] = str(s.turn_id)
        summary["created_at"] = s.created_at
        summaries.append(summary)
    return summaries


def encode(transcript: dict[str, Any]) -> bytes:
    """The transcript as compact JSON (timestamps in RFC 3339, UTC)."""
    return msgspec.json.encode(transcript)


def decode(body: bytes) -> Any:
    """The JSON value of an import's body: 400 if it is not JSON, 422 if it nests deeper than
    the decoder goes.

    A large body is decoded in pieces (:func:`_in_pieces`): the same value, but no single call
    into the decoder, which holds the interpreter's lock throughout, runs for long."""
    try:
        return _in_pieces(body, PIECE_LEVELS)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationFailed("The JSON nests arrays and objects too deeply to be read.") from None


def _in_pieces(raw: bytes | msgspec.Raw, levels: int) -> Any:
    """Decode ``raw``; an object or array larger than ``PIECE_BYTES`` is first split into its
    members, left encoded (a quick scan), and each member is decoded the same way, down to
    ``levels`` levels (each one scans its bytes once more)."""
    if len(raw) <= PIECE_BYTES or levels == 0:
        return msgspec.json.decode(raw)
    start = bytes(memoryview(raw)[:64]).lstrip()[:1]
    if start == b"{":
        members = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        return {key: _in_pieces(value, levels - 1) for key, value in members.items()}
    if start == b"[":
        items = msgspec.json.decode(raw, type=list[msgspec.Raw])
        return [_in_pieces(item, levels - 1) for item in items]
    return msgspec.json.decode(raw)


def problems(data: Any) -> Iterator[Problem]:
    """Everything wrong with a would-be transcript, each with a JSON path saying where and, when
    an import limit is what it passes, that limit. Lazily: a caller may stop at any point."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list) and len(messages) > MAX_IMPORT_MESSAGES:
        # Refused before anything else is looked at: the rest would only cost time.
        yield Problem(
            "$.messages",
            f"holds {len(messages):,} messages; an imported conversation holds at most "
            f"{MAX_IMPORT_MESSAGES:,}",
            limit=MAX_IMPORT_MESSAGES,
        )
        return
    found = False
    for error in _schema_errors(data):
        found = True
        yield error
    if found:  # the checks below need the shape the schema gives
        return
    messages = data["messages"]
    yield from _bad_timestamps(data)
    yield from _bad_objects(data)
    yield from _misplaced(data)
    turn_ids = [t["id"] for t in data.get("turns", [])]
    if len(set(turn_ids)) != len(turn_ids):
        yield Problem("$.turns", "turn ids must be unique")
    known = set(turn_ids)
    for index, message in enumerate(messages):
        if "turn_id" in message and message["turn_id"] not in known:
            yield Problem(f"$.messages[{index}].turn_id", "names no turn in `turns`")
    yield from _bad_summaries(data, known)


def _bad_summaries(data: dict[str, Any], turn_ids: set[Any]) -> Iterator[Problem]:
    """Summaries that do not fit their transcript: a repeated id; an end that is no message
    (in version 2, ``upto_seq`` not that message's seq); a covered range that is not within
    1..``upto_seq``; a summarising turn that is not in ``turns``."""
    messages = data["messages"]
    seq_of = {m["id"]: m["seq"] for m in messages} if data["version"] == TREE else {}
    seen: set[str] = set()
    for index, summary in enumerate(data.get("summaries", [])):
        where, upto = f"$.summaries[{index}]", summary["upto_seq"]
        if summary["id"] in seen:
            yield Problem(f"{where}.id", "summary ids must be unique")
        seen.add(summary["id"])
        if data["version"] == TREE:
            seq = seq_of.get(summary["upto_id"])
            if seq is None:
                yield Problem(f"{where}.upto_id", "names no message")
            elif seq != upto:
                yield Problem(f"{where}.upto_seq", f"must be {seq}, the seq of `upto_id`")
        elif upto > len(messages):
            yield Problem(f"{where}.upto_seq", f"names no message (there are {len(messages)})")
        for at, (first, last) in enumerate(summary["covers"]):
            if not first <= last <= upto:
                problem = "must be a range [first, last] of seqs, first <= last <= upto_seq"
                yield Problem(f"{where}.covers[{at}]", problem)
        if summary.get("turn_id") is not None and summary["turn_id"] not in turn_ids:
            yield Problem(f"{where}.turn_id", "names no turn in `turns`")


def _misplaced(data: dict[str, Any]) -> Iterator[Problem]:
    """Messages out of place: in version 1, seqs that are not 1, 2, 3, ...; in version 2, a
    message before its parent, a repeated id, a seq that is not one more than its parent's (1
    for a first message), or a head that is no message."""
    messages = data["messages"]
    if data["version"] == LINE:
        for index, message in enumerate(messages):
            if message["seq"] != index + 1:
                yield Problem(
                    f"$.messages[{index}].seq",
                    f"seq must be {index + 1} here: messages are numbered 1, 2, 3, … in order, "
                    f"without gaps or repeats (found {message['seq']})",
                )
                return
        return
    seqs: dict[str, int] = {}
    for index, message in enumerate(messages):
        where, parent = f"$.messages[{index}]", message["parent_id"]
        if message["id"] in seqs:
            yield Problem(f"{where}.id", "ids must be unique")
            return
        if parent is not None and parent not in seqs:
            problem = "names no message before this one: parents come first"
            yield Problem(f"{where}.parent_id", problem)
            return
        expected = 1 if parent is None else seqs[parent] + 1
        if message["seq"] != expected:
            problem = f"seq must be {expected}: one more than the parent's (1 for a first message)"
            yield Problem(f"{where}.seq", problem)
            return
        seqs[message["id"]] = expected
    head = data["conversation"].get("head_id")
    if head is not None and head not in seqs:
        yield Problem("$.conversation.head_id", "names no message")


def _schema_errors(data: Any) -> Iterator[Problem]:
    """The schema's complaints. A transcript's messages are checked a slice at a time, so that
    no single call into the validator (which holds the GIL) runs for long."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        yield from (_problem(e, data, []) for e in _validators().transcript.iter_errors(data))
        return
    rest = {**data, "messages": []}
    yield from (_problem(e, rest, []) for e in _validators().transcript.iter_errors(rest))
    # Whether messages have an id and a parent_id is what the version says (a quick check: a
    # key or two a message).
    keys = {
        "version": data.get("version"),
        "messages": [
            {k: m[k] for k in ("id", "parent_id") if k in m} if isinstance(m, dict) else {}
            for m in messages
        ],
    }
    yield from (_problem(e, keys, []) for e in _validators().version.iter_errors(keys))
    for start in range(0, len(messages), CHECK_SLICE):
        part = messages[start : start + CHECK_SLICE]
        for error in _validators().messages.iter_errors(part):
            yield _problem(error, part, ["messages"], offset=start)


def _problem(
    error: jsonschema_rs.ValidationError, data: Any, prefix: list[str | int], offset: int = 0
) -> Problem:
    """A validator error as a problem: its JSON path in the whole transcript, and a message that
    names a limit it passes and shows the value only when it is short."""
    path = list(error.instance_path)
    value = data
    for step in path:
        value = value[step]
    if prefix and path:  # a path into one slice of the messages
        path[0] = int(path[0]) + offset
    where = "$" + "".join(
        f"[{step}]" if isinstance(step, int) else f".{step}" for step in [*prefix, *path]
    )
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MaxLength):
        return Problem(
            where,
            f"is {len(value):,} characters long; at most {kind.limit:,} are allowed",
            limit=kind.limit,
        )
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MaxItems):
        return Problem(
            where,
            f"holds {len(value):,} items; at most {kind.limit:,} are allowed",
            limit=kind.limit,
        )
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Pattern) and kind.pattern == _NUL_PATTERN:
        return Problem(where, "holds a NUL character")
    shown = msgspec.json.encode(value).decode()
    return Problem(where, error.message.replace(_MASK, shown if len(shown) <= 60 else "the value"))


def _bad_timestamps(data: dict[str, Any]) -> Iterator[Problem]:
    """Timestamps that do not parse (the schema's ``date-time`` format is an annotation only,
    and these values are stored, or claim when the transcript was made)."""
    places: Iterator[tuple[str, Any]] = itertools.chain(
        (("$.exported_at", data.get("exported_at")),),
        (
            (f"$.conversation.{k}", data["conversation"].get(k))
            for k in ("created_at", "updated_at")
        ),
        (
            (f"$.messages[{i}].created_at", m.get("created_at"))
            for i, m in enumerate(data["messages"])
        ),
        (
            (f"$.turns[{i}].{k}", t.get(k))
            for i, t in enumerate(data.get("turns", []))
            for k in ("created_at", "completed_at")
        ),
        (
            (f"$.summaries[{i}].created_at", s.get("created_at"))
            for i, s in enumerate(data.get("summaries", []))
        ),
    )
    now = datetime.now(UTC)
    for path, value in places:
        if value is None:
            continue
        try:
            _timestamp(value, now)
        except ValueError:
            yield Problem(path, f"{value!r} is not an ISO 8601 date-time")


def _bad_objects(data: dict[str, Any]) -> Iterator[Problem]:
    """What the API refuses in params, metadata and a list of content parts, refused here too:
    a NUL character anywhere, or arrays and objects nested more than 32 levels deep."""
    conversation = data["conversation"]
    places: Iterator[tuple[str, Any]] = itertools.chain(
        ((f"$.conversation.{k}", conversation.get(k)) for k in ("params", "metadata")),
        ((f"$.messages[{i}].content", m["content"]) for i, m in enumerate(data["messages"])),
    )
    for path, value in places:
        if not isinstance(value, dict | list):
            continue
        if json_depth(value) > MAX_JSON_DEPTH:
            yield Problem(path, f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")
        elif holds_nul(value):
            yield Problem(path, "holds a NUL character")


def validate(data: Any) -> None:
    """Raise a 422 ``ValidationFailed`` (``invalid_transcript``) if ``data`` is not a valid
    transcript: its detail names the first problem, ``errors`` lists the first 20 (each with its
    JSON path, and the limit when a limit is what it passes) and ``error_count`` counts them all."""
    found = problems(data)
    shown = [p.as_dict() for p in itertools.islice(found, MAX_REPORTED_ERRORS)]
    if not shown:
        return
    count = len(shown) + sum(1 for _ in found)
    first = shown[0]
    more = f" (and {count - 1} more)" if count > 1 else ""
    raise ValidationFailed(
        f"Not a valid transcript: {first['path']}: {first['message']}{more}",
        code="invalid_transcript",
        errors=shown,
        error_count=count,
    )


def _timestamp(value: str | None, default: datetime) -> datetime:
    if value is None:
        return default
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def prepare(data: Any, *, default_model: str) -> ImportRows:
    """Validate a transcript (422 ``invalid_transcript`` as :func:`validate` says) and make
    its rows. Plain CPU work on Python values: run it off the event loop for a big one."""
    validate(data)
    return to_rows(data, default_model=default_model)


def to_rows(data: dict[str, Any], *, default_model: str) -> ImportRows:
    """The rows an import stores for a validated transcript: conversation, messages (each
    with its transcript ``id`` and ``parent_id``), turns, the transcript id of the head, and
    the context summaries (each naming the message it ends at by transcript id)."""
    now = datetime.now(UTC)
    c = data["conversation"]
    created = _timestamp(c.get("created_at"), now)
    conversation = {
        "title": c.get("title"),
        "model": c.get("model") or default_model,
        "params": c.get("params") or {},
        "metadata": c.get("metadata") or {},
        "end_user": c.get("user"),
        "archived": c.get("archived", False),
        "created_at": created,
        "updated_at": _timestamp(c.get("updated_at"), created),
        "source_id": c["id"],
        "context": c.get("context"),
    }
    tree = data["version"] == TREE
    forked = c.get("forked_from")
    if forked is not None:
        conversation["forked_from_id"] = uuid.UUID(forked["conversation_id"])
        conversation["forked_through_seq"] = forked["through_seq"]
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
                "context": t.get("context"),
                "attempts": 0,
                "imported": True,  # its usage was another deployment's
                "created_at": turn_created,
                "completed_at": _timestamp(t["completed_at"], turn_created)
                if t.get("completed_at")
                else (turn_created if status != "completed" else None),
            }
        )
    summaries = [
        {
            "id": s["id"],
            "upto": s["upto_id"] if tree else s["upto_seq"],
            "covers": s["covers"],
            "content": s["content"],
            "tokens": s["tokens"],
            "turn_id": s.get("turn_id"),
            "created_at": _timestamp(s.get("created_at"), created),
        }
        for s in data.get("summaries", [])
    ]
    return ImportRows(conversation, messages, turns, head, summaries)


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
    summaries = _summaries_after(transcript, path)
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
        for summary in summaries.get(m["seq"], []):
            lines.append(
                f"<details><summary>context summary of messages "
                f"{_ranges(summary['covers'])} ({summary.get('tokens') or '?'} tokens), "
                "sent to the model instead of them</summary>"
            )
            lines.append("")
            lines.append(summary["content"])
            lines.append("")
            lines.append("</details>")
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


def _summaries_after(
    transcript: dict[str, Any], path: list[dict[str, Any]]
) -> dict[int, list[dict[str, Any]]]:
    """The context summaries that end at a message of ``path``, by that message's seq."""
    line = transcript["version"] == LINE  # a line's messages carry no ids: all are the path
    on_path = set() if line else {m["id"] for m in path}
    after: dict[int, list[dict[str, Any]]] = {}
    for summary in transcript.get("summaries", []):
        if line or summary["upto_id"] in on_path:
            after.setdefault(summary["upto_seq"], []).append(summary)
    return after


def _ranges(covers: list[list[int]]) -> str:
    return ", ".join(
        f"{first} to {last}" if first != last else str(first) for first, last in covers
    )


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
