"""Convert other chat tools' exports into convstore transcripts (``convstore.transcript``).

Everything here is a pure function of already-decoded JSON: no database, no HTTP, no clock
except for ``exported_at`` when the caller does not pass one. The transcripts come back as plain
dicts with every timestamp as an ISO 8601 UTC string (``2026-11-28T12:00:00Z``); another module
validates and stores them.

Supported sources (:data:`SOURCES`):

``chatgpt``
    ``conversations.json`` from OpenAI's data export: a list of conversations, each a tree of
    message nodes (``mapping``). The whole tree is imported; ``current_node`` is the head.
``openwebui``
    Open WebUI's JSON chat export ("Export All Chats" or a single chat): a list of chat records,
    or one record, or one bare ``chat`` object. The whole ``history.messages`` tree is
    imported; ``history.currentId`` is the head.
``librechat``
    LibreChat's JSON conversation export: one conversation (or a list of them) whose
    ``messages`` are a tree through ``parentMessageId``, listed flat or nested in ``children``.
    The whole tree is imported; the newest leaf is the head (LibreChat shows the latest branch).

What every converter promises:

* Every kept message comes after its parent. A conversation that is one line ending at its
  head gives a version 1 transcript (``seq`` 1..n); one with branches (or a head above its last
  message) gives a version 2 transcript: each message with ``id`` (the other tool's node id)
  and ``parent_id``, ``seq`` its position on its path, and the conversation's ``head_id``.
  Roles are ``system``, ``user`` or ``assistant`` only. Tool calls and tool results are left
  out (a ``tool`` message would need a ``tool_call_id`` the sources do not carry), as is
  anything hidden, empty or without displayable text; the messages below one left out follow
  its nearest kept ancestor. Each kind left out is counted in :attr:`Converted.skipped`, one
  note per conversation.
* A conversation with no messages to import is *not* returned; a note in ``skipped`` says so.
  An empty conversation cannot be continued and would only be clutter.
* ``conversation.metadata`` always holds ``imported_from`` (the source name), ``source_id``
  (the other tool's conversation id) and ``source_message_ids`` (the other tool's message id for
  each imported message, by position; ``None`` for messages made up by the import).
* Malformed input raises :class:`ImportFormatError`, never ``KeyError`` or ``TypeError``. Its
  message names the conversation by position in the file, counted from 1 (``conversation 3``),
  and the place and problem, e.g. ``conversation 3: mapping node 'abc': message.author must be
  an object, got null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

__all__ = [
    "SOURCES",
    "Converted",
    "ImportFormatError",
    "convert",
    "from_chatgpt",
    "from_librechat",
    "from_openwebui",
]

Source = Literal["chatgpt", "openwebui", "librechat"]
SOURCES: tuple[str, ...] = ("chatgpt", "openwebui", "librechat")

FORMAT = "convstore.transcript"
LINE, TREE = 1, 2  # transcript versions

# Open WebUI chat params that xAI's chat-completions API accepts, with the JSON types allowed.
_XAI_PARAMS: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "max_tokens": (int,),
    "seed": (int,),
}
# Seconds since the epoch above this are taken for milliseconds (10^11 s is the year 5138).
_MILLISECONDS_THRESHOLD = 10**11


class ImportFormatError(ValueError):
    """The file is not in the expected shape; the message says what and where (e.g.
    ``conversation 3: mapping node 'abc': parent 'xyz' is not in the mapping``)."""


@dataclass(frozen=True)
class Converted:
    """The result of converting one export file.

    ``transcripts`` are convstore transcript dicts (version 1 for a line, 2 for a tree), in the
    order of the file.
    ``skipped`` holds human-readable notes about what was left out, e.g. ``"conversation 'X':
    2 tool messages and 1 hidden system message skipped"``, or a whole conversation with no
    messages to import.
    """

    transcripts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- shared helpers


def _fail(where: str, problem: str) -> NoReturn:
    raise ImportFormatError(f"{where}: {problem}")


def _describe(value: Any) -> str:
    """A short name for a JSON value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    """``repr(value)``, cut to a length fit for an error message."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a very large number"
    return text if len(text) <= 40 else f"{text[:37]}..."


def _expect_dict(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"{what} must be an object, got {_describe(value)}")
    return value


def _expect_list(value: Any, where: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(where, f"{what} must be a list, got {_describe(value)}")
    return value


def _optional_dict(value: Any, where: str, what: str) -> dict[str, Any]:
    return {} if value is None else _expect_dict(value, where, what)


def _optional_str(value: Any, where: str, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        _fail(where, f"{what} must be a string or null, got {_describe(value)}")
    return value


def _nonempty_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _epoch(value: Any, where: str, what: str, *, allow_milliseconds: bool = False) -> str:
    """An epoch number as an ISO 8601 UTC string."""
    if not _is_number(value):
        _fail(where, f"{what} must be a number of seconds since the epoch, got {_short(value)}")
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
        if allow_milliseconds and abs(seconds) > _MILLISECONDS_THRESHOLD:
            seconds /= 1000
        return _iso(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):
        _fail(where, f"{what} is not a usable time: {_short(value)}")


def _branch(
    nodes: Mapping[str, Any],
    current: str,
    parent_key: str,
    where: str,
    noun: str,
) -> list[tuple[str, dict[str, Any]]]:
    """The nodes from the root down to ``current``, following ``parent_key`` upwards."""
    chain: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    node_id: str | None = current
    child: str | None = None
    while node_id is not None:
        if node_id in seen:
            _fail(where, f"{noun} {node_id!r}: the {parent_key} chain from {current!r} is a cycle")
        seen.add(node_id)
        if node_id not in nodes:
            if child is None:
                _fail(where, f"{node_id!r} is not in the {noun}s")
            _fail(where, f"{noun} {child!r}: {parent_key} {node_id!r} is not one of the {noun}s")
        node = _expect_dict(nodes[node_id], where, f"{noun} {node_id!r}")
        chain.append((node_id, node))
        parent = node.get(parent_key)
        if parent is not None and not isinstance(parent, str):
            _fail(
                where,
                f"{noun} {node_id!r}: {parent_key} must be a string or null, "
                f"got {_describe(parent)}",
            )
        child, node_id = node_id, parent
    chain.reverse()
    return chain


def _walk(
    nodes: Mapping[str, Any], parent_key: str, children_key: str | None, where: str, noun: str
) -> list[tuple[str, dict[str, Any], str | None]]:
    """Every node of a tree as (id, node, parent id), parents before children: from each root
    down, a node's children in the order it lists them (``children_key``, if given), then any
    others in the file's order. A node no root leads to is reported as ``_branch`` reports it (its
    parent chain is a cycle, or names a node that is not there)."""
    children: dict[str | None, list[str]] = {}
    parents: dict[str, str | None] = {}
    for node_id, raw in nodes.items():
        node = _expect_dict(raw, where, f"{noun} {node_id!r}")
        parent = node.get(parent_key)
        if parent is not None and not isinstance(parent, str):
            _fail(
                where,
                f"{noun} {node_id!r}: {parent_key} must be a string or null, "
                f"got {_describe(parent)}",
            )
        parents[node_id] = parent
        children.setdefault(parent, []).append(node_id)
    ordered: list[tuple[str, dict[str, Any], str | None]] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        node_id = stack.pop()
        node = nodes[node_id]
        ordered.append((node_id, node, parents[node_id]))
        listed = node.get(children_key) if children_key else None
        if not isinstance(listed, list):  # only an order: a malformed one orders nothing
            listed = []
        rank = {c: i for i, c in enumerate(listed) if isinstance(c, str)}
        below = children.get(node_id, [])
        stack += reversed(sorted(below, key=lambda c: rank.get(c, len(rank))))
    if len(ordered) != len(nodes):
        seen = {node_id for node_id, _, _ in ordered}
        lost = next(node_id for node_id in nodes if node_id not in seen)
        _branch(nodes, lost, parent_key, where, noun)  # raises: a cycle or a missing parent
        _fail(where, f"{noun} {lost!r} cannot be reached from a first message")
    return ordered


class _Tree:
    """The messages kept from another tool's tree, parents first: each with its id and the id
    of its nearest kept ancestor (a message left out passes its place to its children)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.parents: list[str | None] = []
        self.source_ids: list[str | None] = []
        self._kept: dict[str, str | None] = {}

    def add(
        self,
        node_id: str,
        parent: str | None,
        message: dict[str, Any] | None,
        source_id: str | None = None,
    ) -> None:
        """The node ``node_id`` under ``parent`` (None: a root), keeping ``message`` if any."""
        kept_parent = None if parent is None else self._kept.get(parent)
        if message is None:
            self._kept[node_id] = kept_parent
            return
        self._kept[node_id] = node_id
        self.messages.append(message)
        self.ids.append(node_id)
        self.parents.append(kept_parent)
        self.source_ids.append(source_id)

    def above(self, node_id: str) -> str | None:
        """The kept message at ``node_id``, or its nearest kept ancestor."""
        return self._kept.get(node_id)

    def path(self, node_id: str | None) -> list[dict[str, Any]]:
        """The kept messages from the root down to ``node_id`` (kept), first to last."""
        index = {ident: i for i, ident in enumerate(self.ids)}
        path = []
        while node_id is not None:
            i = index[node_id]
            path.append(self.messages[i])
            node_id = self.parents[i]
        return path[::-1]

    def last_model(self, node_id: str | None) -> str | None:
        """The model of the last message that names one, on the path down to ``node_id``."""
        models = [m["model"] for m in self.path(node_id) if m.get("model")]
        return models[-1] if models else None

    def under(self, root_id: str, message: dict[str, Any], head: str | None) -> str:
        """Put ``message`` above every root (a system prompt the other tool kept aside), with an
        id no other message has; the head after that (``head``, else the new message)."""
        while root_id in self._kept or root_id in self.ids:
            root_id += "'"
        self.parents = [root_id if p is None else p for p in self.parents]
        self.messages.insert(0, message)
        self.ids.insert(0, root_id)
        self.parents.insert(0, None)
        self.source_ids.insert(0, None)
        return head or root_id

    def leaves(self) -> list[str]:
        """The ids of the kept messages nothing follows."""
        inner = set(self.parents)
        return [ident for ident in self.ids if ident not in inner]


class _Tally:
    """Counts of what one conversation left out, by kind (a phrase ending in a noun)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def note(self, label: str) -> str | None:
        if not self.counts:
            return None
        items = [f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in self.counts.items()]
        listed = items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
        return f"conversation {label}: {listed} skipped"


def _label(title: str | None, source_id: str) -> str:
    return repr(title) if title else f"{source_id!r}"


def _is_empty(content: str | list[dict[str, Any]]) -> bool:
    return not content.strip() if isinstance(content, str) else not content


def _transcript(
    *,
    exported_at: str,
    source_id: str,
    title: str | None,
    model: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any],
    created_at: str,
    updated_at: str,
    tree: _Tree,
    head: str | None,
) -> dict[str, Any]:
    """A transcript of the kept messages: version 1 if they are one line ending at the head,
    else version 2 (ids, parents and ``head_id``). ``seq`` is each one's position on its
    path."""
    line = tree.parents == [None, *tree.ids[:-1]] and head == (tree.ids[-1] if tree.ids else None)
    seqs: dict[str, int] = {}
    messages = []
    for ident, parent, message in zip(tree.ids, tree.parents, tree.messages, strict=True):
        seqs[ident] = 1 if parent is None else seqs[parent] + 1
        placed = {} if line else {"id": ident, "parent_id": parent}
        messages.append({**placed, "seq": seqs[ident], **message})
    conversation: dict[str, Any] = {
        "id": source_id,
        "title": title,
        "model": model,
        "params": params,
        "metadata": {**metadata, "source_message_ids": tree.source_ids},
        "created_at": created_at,
        "updated_at": updated_at,
    }
    if not line:
        conversation["head_id"] = head
    return {
        "format": FORMAT,
        "version": LINE if line else TREE,
        "exported_at": exported_at,
        "conversation": conversation,
        "messages": messages,
        "turns": [],
    }


def _message(
    role: str,
    content: str | list[dict[str, Any]],
    created_at: str,
    *,
    name: str | None = None,
    model: str | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, "content": content}
    if name:
        message["name"] = name
    if reasoning:
        message["reasoning_content"] = reasoning
    if model:
        message["model"] = model
    message["created_at"] = created_at
    return message


def _finish(out: Converted, label: str, tally: _Tally, transcript: dict[str, Any] | None) -> None:
    note = tally.note(label)
    if note:
        out.skipped.append(note)
    if transcript is None or not transcript["messages"]:
        out.skipped.append(f"conversation {label}: skipped, no messages to import")
    else:
        out.transcripts.append(transcript)


def _exported_at(exported_at: datetime | None) -> str:
    return _iso(exported_at if exported_at is not None else datetime.now(UTC))


def _each(
    conversations: list[Any],
    exported_at: datetime | None,
    convert_one: Callable[[Converted, int, Any, str], None],
) -> Converted:
    """Every conversation of a file converted by ``convert_one(out, its position counted from
    1, it, exported_at)``."""
    stamp = _exported_at(exported_at)
    out = Converted()
    for index, conversation in enumerate(conversations, start=1):
        convert_one(out, index, conversation, stamp)
    return out


def _xai_params(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Another tool's model parameters split into those xAI accepts, and the rest (nulls
    dropped)."""
    params: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in raw.items():
        types = _XAI_PARAMS.get(key)
        if value is None:
            continue
        if types is not None and isinstance(value, types) and not isinstance(value, bool):
            params[key] = value
        else:
            rest[key] = value
    return params, rest


# --------------------------------------------------------------------------- ChatGPT


def from_chatgpt(data: Any, *, exported_at: datetime | None = None) -> Converted:
    """Convert ChatGPT's ``conversations.json`` (a list of conversations) into transcripts.

    For each conversation, the whole tree of its ``mapping`` is imported (a version 2
    transcript), with ``current_node`` as the head (as the module says above). Left
    out, and counted in
    ``skipped``: ``tool`` messages, assistant messages addressed to a tool (``recipient`` other
    than ``"all"``), messages hidden from the conversation, empty messages, and content types
    without displayable text. Custom instructions (``user_editable_context``, hidden in the
    export) become a ``system`` message holding the non-empty ``user_profile`` and
    ``user_instructions``.

    Content: ``text`` becomes a string (parts joined with newlines), ``code`` its text, and
    ``multimodal_text`` a list of parts, where image asset pointers become ``image_url`` parts
    whose URL is the ``file-service://`` pointer (the image itself is not in the file).

    The conversation's ``model`` is ``default_model_slug``, else the last ``model_slug`` of an
    assistant message on the branch; assistant messages carry their own ``model_slug``. Message
    times fall back to the conversation's ``create_time``. ``exported_at`` defaults to now.

    Raises :class:`ImportFormatError` for anything not in that shape, including a cycle in the
    parent chain.
    """
    conversations = _expect_list(data, "conversations.json", "the top level")
    return _each(conversations, exported_at, _chatgpt_conversation)


def _chatgpt_conversation(out: Converted, index: int, raw: Any, exported_at: str) -> None:
    where = f"conversation {index}"
    conv = _expect_dict(raw, where, "the conversation")
    source_id = _nonempty_str(conv.get("conversation_id")) or _nonempty_str(conv.get("id"))
    if source_id is None:
        _fail(where, "has no conversation_id or id (a non-empty string)")
    title = _optional_str(conv.get("title"), where, "title")
    if "create_time" not in conv:
        _fail(where, "has no create_time")
    created_at = _epoch(conv["create_time"], where, "create_time")
    updated_raw = conv.get("update_time")
    updated_at = created_at if updated_raw is None else _epoch(updated_raw, where, "update_time")
    if "mapping" not in conv:
        _fail(where, "has no mapping")
    mapping = _expect_dict(conv["mapping"], where, "mapping")
    if "current_node" not in conv:
        _fail(where, "has no current_node")
    current = conv["current_node"]
    if not isinstance(current, str):
        _fail(where, f"current_node must be a string, got {_describe(current)}")
    if current not in mapping:
        _fail(where, f"current_node {current!r} is not in the mapping")
    default_model = _optional_str(conv.get("default_model_slug"), where, "default_model_slug")

    tally = _Tally()
    tree = _Tree()
    slugs: dict[str, str] = {}
    current_branch = _branch(mapping, current, "parent", where, "mapping node")
    for node_id, node, parent in _walk(mapping, "parent", "children", where, "mapping node"):
        raw_message = node.get("message")
        if raw_message is None:
            tree.add(node_id, parent, None)
            continue
        node_where = f"{where}: mapping node {node_id!r}"
        message, model_slug = _chatgpt_message(raw_message, node_where, created_at, tally)
        if model_slug:
            slugs[node_id] = model_slug
        tree.add(node_id, parent, message, _nonempty_str(raw_message.get("id")) or node_id)
    on_branch = [slugs[node_id] for node_id, _ in current_branch if node_id in slugs]

    metadata: dict[str, Any] = {
        "imported_from": "chatgpt",
        "source_id": source_id,
        "current_node": current,
    }
    gizmo_id = _nonempty_str(conv.get("gizmo_id"))
    if gizmo_id:
        metadata["gizmo_id"] = gizmo_id
    transcript = _transcript(
        exported_at=exported_at,
        source_id=source_id,
        title=title,
        model=default_model or (on_branch[-1] if on_branch else None),
        params={},
        metadata=metadata,
        created_at=created_at,
        updated_at=updated_at,
        tree=tree,
        head=tree.above(current),
    )
    _finish(out, _label(title, source_id), tally, transcript)


def _chatgpt_message(
    raw: Any, where: str, default_time: str, tally: _Tally
) -> tuple[dict[str, Any] | None, str | None]:
    """The message for one mapping node (``None`` if left out) and its model slug, if any."""
    msg = _expect_dict(raw, where, "message")
    author = _expect_dict(msg.get("author"), where, "message.author")
    role = author.get("role")
    if not isinstance(role, str):
        _fail(where, f"message.author.role must be a string, got {_describe(role)}")
    content = _expect_dict(msg.get("content"), where, "message.content")
    content_type = content.get("content_type")
    if not isinstance(content_type, str):
        _fail(
            where,
            f"message.content.content_type must be a string, got {_describe(content_type)}",
        )
    meta = _optional_dict(msg.get("metadata"), where, "message.metadata")
    recipient = _optional_str(msg.get("recipient"), where, "message.recipient") or "all"
    model_slug = _nonempty_str(meta.get("model_slug")) if role == "assistant" else None
    time_raw = msg.get("create_time")
    created_at = default_time if time_raw is None else _epoch(time_raw, where, "create_time")
    name = _optional_str(author.get("name"), where, "message.author.name")

    if role == "tool":
        tally.add("tool message")
        return None, model_slug
    if role not in ("system", "user", "assistant"):
        tally.add(f"'{role}' role message")
        return None, model_slug
    if role == "assistant" and recipient != "all":
        tally.add("tool call")
        return None, model_slug

    body: str | list[dict[str, Any]] | None
    if content_type == "user_editable_context":
        texts = [
            _optional_str(content.get(key), where, f"message.content.{key}") or ""
            for key in ("user_profile", "user_instructions")
        ]
        body = "\n\n".join(text for text in texts if text.strip())
        if not body:
            tally.add("empty custom-instructions message")
            return None, model_slug
        role = "system"
    elif meta.get("is_visually_hidden_from_conversation"):
        tally.add(f"hidden {role} message")
        return None, model_slug
    else:
        body = _chatgpt_content(content, content_type, where, tally)
        if body is None:
            tally.add(f"'{content_type}' message")
            return None, model_slug
    if _is_empty(body):
        tally.add(f"empty {role} message")
        return None, model_slug
    return _message(role, body, created_at, name=name, model=model_slug), model_slug


def _chatgpt_content(
    content: dict[str, Any], content_type: str, where: str, tally: _Tally
) -> str | list[dict[str, Any]] | None:
    """The convstore content of a ChatGPT message; ``None`` for a type with no text to show."""
    if content_type == "text":
        parts = _expect_list(content.get("parts"), where, "message.content.parts")
        for i, part in enumerate(parts):
            if not isinstance(part, str):
                _fail(where, f"message.content.parts[{i}] must be a string, got {_describe(part)}")
        return "\n".join(parts)
    if content_type == "code":
        text = content.get("text")
        if not isinstance(text, str):
            _fail(where, f"message.content.text must be a string, got {_describe(text)}")
        return text
    if content_type == "multimodal_text":
        parts = _expect_list(content.get("parts"), where, "message.content.parts")
        result: list[dict[str, Any]] = []
        for i, part in enumerate(parts):
            what = f"message.content.parts[{i}]"
            if isinstance(part, str):
                if part:
                    result.append({"type": "text", "text": part})
                continue
            item = _expect_dict(part, where, f"{what} (a string or an object)")
            kind = item.get("content_type")
            if kind == "image_asset_pointer":
                pointer = item.get("asset_pointer")
                if not isinstance(pointer, str) or not pointer:
                    _fail(where, f"{what}.asset_pointer must be a non-empty string")
                result.append({"type": "image_url", "image_url": {"url": pointer}})
            elif kind == "audio_transcription" and isinstance(item.get("text"), str):
                if item["text"]:
                    result.append({"type": "text", "text": item["text"]})
            else:
                tally.add(f"'{kind}' part" if isinstance(kind, str) else "unknown part")
        return result
    return None


# --------------------------------------------------------------------------- Open WebUI


def from_openwebui(data: Any, *, exported_at: datetime | None = None) -> Converted:
    """Convert an Open WebUI JSON chat export into transcripts.

    ``data`` is a list of chat records (``{"id", "title", "chat": {...}, "created_at", ...}``),
    a single such record, or a single bare ``chat`` object; list items may be either kind.

    Only the branch ending at ``chat.history.currentId`` is imported (followed up through
    ``parentId``, oldest first); without a history (or a ``currentId``), ``chat.messages`` in
    order. Roles other than system/user/assistant, and empty messages, are left out and
    counted in ``skipped``. Image attachments (``files`` of type ``image``) turn the content
    into a list of parts with ``image_url`` parts; other attachments are counted as skipped.

    The conversation's ``model`` is the first of ``chat.models``, else the last assistant
    message's; assistant messages carry their ``model``. ``chat.params`` keys that xAI accepts
    (temperature, top_p, max_tokens, seed) go into ``params``, the rest into
    ``metadata["openwebui_params"]``; a non-empty ``params.system`` (Open WebUI's per-chat
    system prompt) also becomes a leading ``system`` message. Times are epoch seconds; values
    above 10^11 are taken for milliseconds. ``exported_at`` defaults to now.

    Raises :class:`ImportFormatError` for anything not in that shape, including a cycle in the
    ``parentId`` chain.
    """
    if isinstance(data, dict):
        chats: list[Any] = [data]
    else:
        chats = _expect_list(data, "Open WebUI export", "the top level (a list or an object)")
    return _each(chats, exported_at, _openwebui_chat)


def _openwebui_chat(out: Converted, index: int, raw: Any, exported_at: str) -> None:
    where = f"conversation {index}"
    item = _expect_dict(raw, where, "the chat")
    if "chat" in item:
        record = item
        chat = _expect_dict(item["chat"], where, "chat")
    elif "history" in item or "messages" in item:
        record, chat = {}, item
    else:
        _fail(where, "has neither chat nor history/messages")
    source_id = _nonempty_str(record.get("id")) or _nonempty_str(chat.get("id"))
    if source_id is None:
        _fail(where, "has no id (a non-empty string)")
    title = _optional_str(record.get("title"), where, "title")
    if title is None:
        title = _optional_str(chat.get("title"), where, "chat.title")

    models_raw = chat.get("models")
    models = [] if models_raw is None else _expect_list(models_raw, where, "chat.models")
    model_names = [m for m in models if isinstance(m, str) and m]
    if len(model_names) != len(models):
        _fail(where, "chat.models must be a list of non-empty strings")

    nodes, current = _openwebui_nodes(chat, where)
    branch = [] if current is None else _branch(nodes, current, "parentId", where, "message")

    first_time = next((m["timestamp"] for _, m in branch if m.get("timestamp") is not None), None)
    for key, container, what in (
        ("created_at", record, "created_at"),
        ("timestamp", chat, "chat.timestamp"),
    ):
        if container.get(key) is not None:
            created_at = _epoch(container[key], where, what, allow_milliseconds=True)
            break
    else:
        if first_time is None:
            _fail(where, "has no created_at, chat.timestamp or message timestamp")
        created_at = _epoch(first_time, where, "timestamp", allow_milliseconds=True)
    updated_raw = record.get("updated_at")
    updated_at = (
        created_at
        if updated_raw is None
        else _epoch(updated_raw, where, "updated_at", allow_milliseconds=True)
    )

    params, rest = _xai_params(_optional_dict(chat.get("params"), where, "chat.params"))

    tally = _Tally()
    tree = _Tree()
    for node_id, raw_message, parent in _walk(nodes, "parentId", "childrenIds", where, "message"):
        message_where = f"{where}: message {node_id!r}"
        message = _openwebui_message(raw_message, message_where, created_at, tally)
        tree.add(node_id, parent, message, _nonempty_str(raw_message.get("id")) or node_id)
    head = None if current is None else tree.above(current)
    path_model = tree.last_model(head)
    system_prompt = rest.get("system")
    if isinstance(system_prompt, str) and system_prompt.strip():
        head = tree.under("system", _message("system", system_prompt, created_at), head)

    metadata: dict[str, Any] = {"imported_from": "openwebui", "source_id": source_id}
    history = chat.get("history")
    if isinstance(history, dict) and isinstance(history.get("currentId"), str):
        metadata["current_id"] = history["currentId"]
    if model_names:
        metadata["models"] = model_names
    if rest:
        metadata["openwebui_params"] = rest
    record_meta = record.get("meta")
    tags = chat.get("tags") or (record_meta.get("tags") if isinstance(record_meta, dict) else None)
    if tags:
        metadata["tags"] = tags
    for key, container in (
        ("user_id", record),
        ("folder_id", record),
        ("pinned", record),
        ("archived", record),
    ):
        value = container.get(key)
        if value not in (None, [], False):
            metadata[key] = value

    transcript = _transcript(
        exported_at=exported_at,
        source_id=source_id,
        title=title,
        model=model_names[0] if model_names else path_model,
        params=params,
        metadata=metadata,
        created_at=created_at,
        updated_at=updated_at,
        tree=tree,
        head=head,
    )
    _finish(out, _label(title, source_id), tally, transcript)


def _openwebui_nodes(chat: dict[str, Any], where: str) -> tuple[dict[str, Any], str | None]:
    """The messages to import by id, each naming its parent (``parentId``), and the current
    one: ``history.messages`` and ``history.currentId``, or without them ``chat.messages`` as
    a line ending at its last message."""
    history = _optional_dict(chat.get("history"), where, "chat.history")
    current = history.get("currentId")
    if current is not None:
        if not isinstance(current, str):
            _fail(where, f"chat.history.currentId must be a string, got {_describe(current)}")
        nodes = _expect_dict(history.get("messages"), where, "chat.history.messages")
        if current not in nodes:
            _fail(where, f"chat.history.currentId {current!r} is not in chat.history.messages")
        return nodes, current
    listed_raw = chat.get("messages")
    listed = [] if listed_raw is None else _expect_list(listed_raw, where, "chat.messages")
    line: dict[str, Any] = {}
    for i, message in enumerate(listed):
        item = _expect_dict(message, where, f"chat.messages[{i}]")
        # Positions, not the messages' own ids: those need not be unique in a list.
        line[f"#{i}"] = {**item, "parentId": f"#{i - 1}" if i else None, "childrenIds": None}
    return line, f"#{len(listed) - 1}" if listed else None


def _openwebui_message(
    msg: dict[str, Any], where: str, default_time: str, tally: _Tally
) -> dict[str, Any] | None:
    role = msg.get("role")
    if not isinstance(role, str):
        _fail(where, f"role must be a string, got {_describe(role)}")
    text = msg.get("content")
    if text is None:
        text = ""
    if not isinstance(text, str):
        _fail(where, f"content must be a string, got {_describe(text)}")
    time_raw = msg.get("timestamp")
    created_at = (
        default_time
        if time_raw is None
        else _epoch(time_raw, where, "timestamp", allow_milliseconds=True)
    )
    model = _optional_str(msg.get("model"), where, "model") if role == "assistant" else None
    files_raw = msg.get("files")
    files = [] if files_raw is None else _expect_list(files_raw, where, "files")
    if role not in ("system", "user", "assistant"):
        tally.add(f"'{role}' role message")
        return None

    images: list[dict[str, Any]] = []
    for i, file in enumerate(files):
        entry = _expect_dict(file, where, f"files[{i}]")
        kind = entry.get("type")
        if kind == "image":
            url = entry.get("url")
            if not isinstance(url, str) or not url:
                _fail(where, f"files[{i}].url must be a non-empty string")
            images.append({"type": "image_url", "image_url": {"url": url}})
        else:
            tally.add(f"'{kind}' attachment" if isinstance(kind, str) else "unknown attachment")
    content: str | list[dict[str, Any]] = text
    if images:
        content = ([{"type": "text", "text": text}] if text.strip() else []) + images
    if _is_empty(content):
        tally.add(f"empty {role} message")
        return None
    return _message(role, content, created_at, model=model)


# --------------------------------------------------------------------------- LibreChat

# LibreChat's parentMessageId of a first message.
_LIBRECHAT_ROOT = "00000000-0000-0000-0000-000000000000"


def from_librechat(data: Any, *, exported_at: datetime | None = None) -> Converted:
    """Convert LibreChat's JSON conversation export into transcripts.

    ``data`` is one exported conversation (``{"conversationId", "title", "options",
    "messages", ...}``) or a list of them. ``messages`` (``messagesTree`` in older exports) is
    the tree: flat, each message naming its ``parentMessageId`` (a first message names none,
    or ``00000000-0000-0000-0000-000000000000``), or nested, each message's replies in its
    ``children`` (``"recursive": true``). The whole tree is imported. LibreChat's export names
    no current message: the head is the newest leaf (by ``createdAt``, then by place in the
    file), the branch LibreChat shows.

    A message is ``user`` if ``isCreatedByUser``, else ``assistant`` (with its ``model``). Its
    content is ``text``, or the ``content`` parts of newer exports: ``text`` parts become the
    text, ``think`` parts the ``reasoning_content``, ``image_url`` parts images; other parts,
    messages marked ``error`` and empty messages are left out and counted in ``skipped``.
    ``options.promptPrefix`` (the conversation's instructions) becomes a ``system`` message
    above the first messages; ``options`` keys that xAI accepts (temperature, top_p,
    max_tokens, seed) go into ``params``, the rest into ``metadata["librechat_options"]``. The
    conversation's ``model`` is ``options.model``, else the last on the head's path. Times are
    ISO 8601; the conversation was created with its first message and updated with its last
    (``exported_at``, which defaults to now, if no message has a time).

    Raises :class:`ImportFormatError` for anything not in that shape, including a cycle in the
    ``parentMessageId`` chain.
    """
    return _each(data if isinstance(data, list) else [data], exported_at, _librechat_conversation)


def _librechat_conversation(out: Converted, index: int, raw: Any, exported_at: str) -> None:
    where = f"conversation {index}"
    conv = _expect_dict(raw, where, "the conversation")
    source_id = _nonempty_str(conv.get("conversationId"))
    if source_id is None:
        _fail(where, "has no conversationId (a non-empty string)")
    title = _optional_str(conv.get("title"), where, "title")
    options = _optional_dict(conv.get("options"), where, "options")
    listed = conv.get("messagesTree", conv.get("messages"))
    nodes = _librechat_nodes(_expect_list(listed, where, "messages"), where)

    times: dict[str, datetime] = {}
    for node_id, node in nodes.items():
        if node.get("createdAt") is not None:
            times[node_id] = _instant(node["createdAt"], f"{where}: message {node_id!r}")
    first = min(times.values(), default=None)
    created_at = _iso(first) if first else exported_at
    updated_at = _iso(max(times.values())) if times else created_at

    tally = _Tally()
    tree = _Tree()
    for node_id, node, parent in _walk(nodes, "parentMessageId", None, where, "message"):
        message_where = f"{where}: message {node_id!r}"
        moment = _iso(times[node_id]) if node_id in times else created_at
        tree.add(node_id, parent, _librechat_message(node, message_where, moment, tally), node_id)
    position = {ident: i for i, ident in enumerate(tree.ids)}
    epoch = datetime.min.replace(tzinfo=UTC)
    head = max(tree.leaves(), key=lambda i: (times.get(i, epoch), position[i]), default=None)
    path_model = tree.last_model(head)

    params, rest = _xai_params(options)
    prompt = rest.get("promptPrefix")
    if isinstance(prompt, str) and prompt.strip():
        head = tree.under("system", _message("system", prompt, created_at), head)
        del rest["promptPrefix"]
    for kept_elsewhere in ("model", "title"):
        rest.pop(kept_elsewhere, None)
    metadata: dict[str, Any] = {"imported_from": "librechat", "source_id": source_id}
    endpoint = _nonempty_str(conv.get("endpoint"))
    if endpoint:
        metadata["endpoint"] = endpoint
    if rest:
        metadata["librechat_options"] = rest
    model = _nonempty_str(options.get("model"))
    transcript = _transcript(
        exported_at=exported_at,
        source_id=source_id,
        title=title,
        model=model or path_model,
        params=params,
        metadata=metadata,
        created_at=created_at,
        updated_at=updated_at,
        tree=tree,
        head=head,
    )
    _finish(out, _label(title, source_id), tally, transcript)


def _librechat_nodes(listed: list[Any], where: str) -> dict[str, dict[str, Any]]:
    """The messages by id, each naming its parent (None for a first message), from a flat or
    nested (``children``) list, in the file's order."""
    nodes: dict[str, dict[str, Any]] = {}
    stack: list[tuple[Any, str | None, str]] = [
        (m, None, f"messages[{i}]") for i, m in reversed(list(enumerate(listed)))
    ]
    while stack:
        raw, nested_in, place = stack.pop()
        message = _expect_dict(raw, where, place)
        node_id = _nonempty_str(message.get("messageId"))
        if node_id is None:
            _fail(where, f"{place}: messageId must be a non-empty string")
        if node_id in nodes:
            _fail(where, f"message {node_id!r} appears twice")
        parent = message.get("parentMessageId", nested_in)
        if parent is None or parent == _LIBRECHAT_ROOT:
            parent = nested_in
        nodes[node_id] = {**message, "parentMessageId": parent}
        children = message.get("children")
        if children is not None:
            children = _expect_list(children, where, f"message {node_id!r}: children")
            stack += [
                (child, node_id, f"message {node_id!r}: children[{i}]")
                for i, child in reversed(list(enumerate(children)))
            ]
    return nodes


def _librechat_message(
    msg: dict[str, Any], where: str, created_at: str, tally: _Tally
) -> dict[str, Any] | None:
    created_by_user = msg.get("isCreatedByUser")
    if created_by_user is None:
        created_by_user = msg.get("sender") == "User"
    if not isinstance(created_by_user, bool):
        _fail(where, f"isCreatedByUser must be a boolean, got {_describe(created_by_user)}")
    role = "user" if created_by_user else "assistant"
    if msg.get("error") is True:
        tally.add(f"failed {role} message")
        return None
    texts: list[str] = []
    thoughts: list[str] = []
    images: list[dict[str, Any]] = []
    parts = msg.get("content")
    if parts is not None:
        for i, part in enumerate(_expect_list(parts, where, "content")):
            item = _expect_dict(part, where, f"content[{i}]")
            kind = item.get("type")
            value = item.get(kind) if isinstance(kind, str) else None
            value = value.get("value") if isinstance(value, dict) else value
            url = item.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if kind == "text" and isinstance(value, str):
                texts.append(value)
            elif kind == "think" and isinstance(value, str):
                thoughts.append(value)
            elif kind == "image_url" and isinstance(url, str) and url:
                images.append({"type": "image_url", "image_url": {"url": url}})
            else:
                tally.add(f"'{kind}' part" if isinstance(kind, str) else "unknown part")
    text = _optional_str(msg.get("text"), where, "text")
    if not texts and text:
        texts.append(text)
    body = "\n".join(t for t in texts if t)
    content: str | list[dict[str, Any]] = body
    if images:
        content = ([{"type": "text", "text": body}] if body.strip() else []) + images
    if _is_empty(content):
        tally.add(f"empty {role} message")
        return None
    model = _optional_str(msg.get("model"), where, "model") if role == "assistant" else None
    reasoning = "\n".join(t for t in thoughts if t)
    return _message(role, content, created_at, model=model, reasoning=reasoning)


def _instant(value: Any, where: str) -> datetime:
    """An ISO 8601 time (UTC if it names no offset)."""
    if not isinstance(value, str):
        _fail(where, f"createdAt must be an ISO 8601 time, got {_short(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(where, f"createdAt is not an ISO 8601 time: {_short(value)}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- dispatch

_CONVERTERS: dict[str, Callable[..., Converted]] = {
    "chatgpt": from_chatgpt,
    "openwebui": from_openwebui,
    "librechat": from_librechat,
}


def convert(source: Source, data: Any, *, exported_at: datetime | None = None) -> Converted:
    """Convert ``data`` (the decoded JSON of an export file) from ``source``, one of
    :data:`SOURCES`. Raises :class:`ImportFormatError` for a malformed file and ``ValueError``
    for an unknown source."""
    converter = _CONVERTERS.get(source)
    if converter is None:
        raise ValueError(f"unknown import source {source!r}; expected one of {', '.join(SOURCES)}")
    return converter(data, exported_at=exported_at)


def prepared(source: str, transcript: dict[str, Any]) -> dict[str, Any]:
    """A converted transcript made ready to store: its source id names the tool (so the same
    chat imported twice is recognised), and the other tool's model moves to the metadata, so
    that later turns go to the conversation's own (xAI) model."""
    conversation = transcript["conversation"]
    conversation["id"] = f"{source}:{conversation['id']}"
    model = conversation.get("model")
    if model:
        conversation["metadata"]["source_model"] = model
    conversation["model"] = None
    return transcript
