"""The statements that write a conversation's messages, each written once and shared by every
writer (an append, a turn, a new conversation).

They are plain functions on a synchronous ``Connection``: a whole transaction made of them runs
in one hop through ``AsyncConnection.run_sync``, on aiosqlite and asyncpg alike.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from service.errors import NotFound, TurnInProgress
from service.schemas import MessageOut
from service.store.records import C, M, T
from service.tables import conversation_table, message_table, turn_table, uuid7

ABANDONED = {
    "status": 503,
    "code": "abandoned",
    "detail": "The server running this turn stopped before it finished.",
}
# The columns of a stored message that go upstream, in the history of a turn.
HISTORY_COLUMNS = (M.role, M.content, M.name, M.tool_calls, M.tool_call_id)


def reserve(
    conn: Connection, tenant: str, conversation_id: uuid.UUID, count: int, now: datetime
) -> tuple[int, str, dict[str, Any]]:
    """Take ``count`` seqs: bump the conversation's counter, which also locks its row, so every
    writer to a conversation does this first and writers to one conversation go one at a time.

    Returns the last seq in use before, the conversation's model and its params; raises
    ``NotFound`` if the tenant has no such conversation.
    """
    row = conn.execute(
        update(conversation_table)
        .where(C.id == conversation_id, C.tenant == tenant)
        .values(message_count=C.message_count + count, updated_at=now)
        .returning(C.message_count, C.model, C.params)
    ).first()
    if row is None:
        raise NotFound("No conversation has this id.")
    return row[0] - count, row[1], row[2]


def check_no_running_turn(conn: Connection, conversation_id: uuid.UUID, now: datetime) -> None:
    """Raise 409 ``turn_in_progress`` if a turn runs in the conversation. A running turn whose
    lease ran out belonged to a server that stopped: it is marked failed (``abandoned``)."""
    running = conn.execute(
        select(T.id, T.deadline_at).where(
            T.conversation_id == conversation_id, T.status == "running"
        )
    ).first()
    if running is None:
        return
    turn_id, deadline = running
    if deadline > now:
        raise turn_in_progress(turn_id, deadline - now)
    conn.execute(
        update(turn_table)
        .where(T.id == turn_id, T.status == "running")
        .values(status="failed", error=ABANDONED, completed_at=now)
    )


def turn_in_progress(turn_id: uuid.UUID | None, remaining: timedelta | None) -> TurnInProgress:
    """409 naming the running turn, with ``Retry-After``: the rest of its lease, after which a
    server that stopped is known to have stopped."""
    extra: dict[str, Any] = {"running_turn_id": str(turn_id)} if turn_id else {}
    seconds = max(1, round(remaining.total_seconds())) if remaining is not None else 1
    return TurnInProgress(
        "A turn is already running in this conversation; wait for it to finish.",
        headers={"retry-after": str(seconds)},
        **extra,
    )


def message_rows(
    conversation_id: uuid.UUID, messages: list[dict[str, Any]], first_seq: int, now: datetime
) -> list[dict[str, Any]]:
    """The rows of new messages, numbered from ``first_seq``."""
    return [
        {
            "id": uuid7(),
            "conversation_id": conversation_id,
            "seq": seq,
            "role": message["role"],
            "content": message.get("content"),
            "name": message.get("name"),
            "tool_calls": message.get("tool_calls"),
            "tool_call_id": message.get("tool_call_id"),
            "reasoning_content": message.get("reasoning_content"),
            "model": message.get("model"),
            "finish_reason": message.get("finish_reason"),
            "usage": message.get("usage"),
            "turn_id": message.get("turn_id"),
            "created_at": message.get("created_at", now),
        }
        for seq, message in enumerate(messages, start=first_seq)
    ]


def insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> list[MessageOut]:
    """Store new message rows (one statement, whatever their number)."""
    if rows:
        conn.execute(insert(message_table), rows)
    return [MessageOut(**row) for row in rows]


def read_history(conn: Connection, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    """A conversation's messages as the upstream receives them, in seq order: one range read of
    the primary key. Each entry has ``role`` and ``content``, and the tool fields it has."""
    history: list[dict[str, Any]] = []
    rows = conn.execute(
        select(*HISTORY_COLUMNS).where(M.conversation_id == conversation_id).order_by(M.seq)
    )
    for role, content, name, tool_calls, tool_call_id in rows:
        entry: dict[str, Any] = {"role": role, "content": content}
        if name is not None:
            entry["name"] = name
        if tool_calls is not None:
            entry["tool_calls"] = tool_calls
        if tool_call_id is not None:
            entry["tool_call_id"] = tool_call_id
        history.append(entry)
    return history
