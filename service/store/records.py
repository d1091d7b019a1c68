"""What the store hands out besides response Structs, the column lists it reads, and cursors."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from service.errors import BadRequest
from service.schemas import ConversationOut, MessageOut, TurnOut
from service.tables import (
    admin_session_table,
    api_key_table,
    conversation_table,
    idempotency_table,
    message_table,
    turn_table,
)

C = conversation_table.c
M = message_table.c
T = turn_table.c
K = api_key_table.c
AS = admin_session_table.c
IK = idempotency_table.c

MESSAGE_COLUMNS = (
    M.id,
    M.conversation_id,
    M.seq,
    M.role,
    M.content,
    M.created_at,
    M.name,
    M.tool_calls,
    M.tool_call_id,
    M.reasoning_content,
    M.model,
    M.finish_reason,
    M.usage,
    M.turn_id,
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
    C.source_id,
    C.forked_from_id,
    C.forked_through_seq,
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
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant whose data they may see, and whether they are an admin."""

    key_id: uuid.UUID
    tenant: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: uuid.UUID
    tenant: str
    key_prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ExportRows:
    """One conversation's rows for a transcript: the conversation, its messages, its turns."""

    conversation: Any
    messages: list[Any]
    turns: list[Any]


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


def encode_cursor(*values: Any) -> str:
    raw = msgspec.json.encode([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, count: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise BadRequest("`cursor` is not a cursor this API handed out.") from None
    if not isinstance(values, list) or len(values) != count:
        raise BadRequest("`cursor` is not a cursor this API handed out.")
    return values


def conversation_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, ident = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (TypeError, ValueError):
        raise BadRequest("`cursor` is not a cursor this API handed out.") from None
