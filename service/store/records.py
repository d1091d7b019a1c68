"""What the store hands out besides response Structs, the column lists it reads, and cursors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from service.errors import BadRequest
from service.schemas import ConversationOut, MessageOut, TurnOut
from service.tables import (
    admin_read_table,
    admin_session_table,
    api_key_table,
    branch_table,
    conversation_table,
    deletion_receipt_table,
    idempotency_table,
    message_table,
    summary_table,
    turn_table,
)

# The tenant of a conversation while it is being imported: no key has it (a key's tenant is
# printable), so no one sees the conversation before the import gives it to its tenant.
IMPORTING = "\x1bimporting"

C = conversation_table.c
M = message_table.c
B = branch_table.c
T = turn_table.c
K = api_key_table.c
AS = admin_session_table.c
IK = idempotency_table.c
DR = deletion_receipt_table.c
AR = admin_read_table.c
S = summary_table.c

MESSAGE_COLUMNS = (
    M.id,
    M.conversation_id,
    M.seq,
    M.role,
    M.content,
    M.created_at,
    M.parent_id,
    M.name,
    M.tool_calls,
    M.tool_call_id,
    M.reasoning_content,
    M.reasoning_encrypted_content,
    M.model,
    M.finish_reason,
    M.usage,
    M.turn_id,
    M.tokens,
    M.tokens_exact,
)
CONVERSATION_COLUMNS = (
    C.id,
    C.title,
    C.model,
    C.params,
    C["metadata"],
    C.message_count,
    C.created_at,
    C.updated_at,
    C.head_id,
    C.source_id,
    C.forked_from_id,
    C.forked_through_seq,
    C.end_user.label("user"),
    C.archived,
    C.expires_at,
    C.legal_hold,
    C.context,
)
TURN_COLUMNS = (
    T.id,
    T.conversation_id,
    T.status,
    T.model,
    T.params,
    T.usage,
    T.finish_reason,
    T.error,
    T.latency_ms,
    T.created_at,
    T.completed_at,
    T.reply_seq,
    T.reply_id,
    T.context,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant whose data they may see, and whether they are an admin."""

    key_id: uuid.UUID
    tenant: str
    is_admin: bool
    turns_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class ReadBy:
    """Who reads conversations as an admin, through what (``api``, ``page``, ``export``), and
    the reason given (None if none was)."""

    key_id: uuid.UUID
    via: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: uuid.UUID
    tenant: str
    key_prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None
    turns_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class ExportRows:
    """One conversation's rows for a transcript: the conversation, its messages, its turns,
    and the context summaries made of it (``compact``)."""

    conversation: Any
    messages: list[Any]
    turns: list[Any]
    summaries: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PathView:
    """One path of a conversation as an admin reads it: its messages (with their sibling
    counts and indexes), the ids of the siblings before and after each, whether it is the
    active path, how many messages the conversation holds in all, and its turns."""

    conversation: Any
    messages: list[MessageOut]
    neighbours: dict[uuid.UUID, tuple[uuid.UUID | None, uuid.UUID | None]]
    active: bool
    total: int
    turns: list[Any]


@dataclass(frozen=True, slots=True)
class ImportRows:
    """What an import stores: the conversation's columns (``source_id`` among them), and its
    message and turn rows with their transcript's ids (the store gives new ids). Each message
    names its parent by transcript id (``parent_id``, None for a first message) and comes after
    it; ``head`` is the transcript id of the active path's last message (None: the last
    message). Each summary names the message it summarises up to by transcript id (``upto``),
    its summarising turn by transcript id (``turn_id``), and keeps its own (``id``)."""

    conversation: dict[str, Any]
    messages: list[dict[str, Any]]
    turns: list[dict[str, Any]]
    head: Any = None
    summaries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer first given to an idempotent request."""

    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class OrphanedTurn:
    """An idempotent request whose server stopped after it started ``turn_id``: its answer is
    the turn's, whatever became of it."""

    turn_id: uuid.UUID


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def message_out(row: Any) -> MessageOut:
    return MessageOut(**row._mapping)


def conversation_out(row: Any) -> ConversationOut:
    return ConversationOut(**row._mapping)


def turn_out(row: Any) -> TurnOut:
    return TurnOut(**row._mapping)


# ---- cursors ----------------------------------------------------------------------------


NOT_A_CURSOR = "`cursor` is not a cursor this API handed out for this list."


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Cursors:
    """Opaque, signed keyset cursors: the position of the last row handed out and the list it
    belongs to (``scope``), with an HMAC-SHA256 of both under the database's cursor key. A
    cursor a client changed, or one from another list, is a 400, never a query."""

    key: bytes = field(repr=False)

    def encode(self, scope: str, *position: Any) -> str:
        payload = msgspec.json.encode([scope, *position])
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, scope: str, cursor: str) -> list[Any]:
        body, _, mac = cursor.partition(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except ValueError:
            raise BadRequest(NOT_A_CURSOR) from None
        # Only the one spelling handed out: base64 ignores the spare bits of a last character.
        canonical = _b64(payload) == body and _b64(signature) == mac
        if not canonical or not hmac.compare_digest(self._sign(payload), signature):
            raise BadRequest(NOT_A_CURSOR)
        values = msgspec.json.decode(payload)
        if not isinstance(values, list) or not values or values[0] != scope:
            raise BadRequest(NOT_A_CURSOR)
        return values[1:]

    def created(self, scope: str, cursor: str) -> tuple[datetime, uuid.UUID]:
        """A position in a list of conversations, newest first."""
        created, ident = self.decode(scope, cursor)
        return datetime.fromisoformat(created), uuid.UUID(ident)

    def seq(self, scope: str, cursor: str) -> tuple[uuid.UUID, int]:
        """A position in a path of messages: the path's last message, and a seq on it."""
        try:
            head, seq = self.decode(scope, cursor)
            return uuid.UUID(head), int(seq)
        except (ValueError, TypeError):  # signed before paths were, say, or for another list
            raise BadRequest(NOT_A_CURSOR) from None

    def ident(self, scope: str, cursor: str) -> uuid.UUID:
        """A position in a list ordered by id."""
        try:
            (ident,) = self.decode(scope, cursor)
            return uuid.UUID(ident)
        except (ValueError, TypeError):
            raise BadRequest(NOT_A_CURSOR) from None

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, hashlib.sha256).digest()[:16]
