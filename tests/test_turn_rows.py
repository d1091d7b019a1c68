"""A turn's two transactions write their rows with statements of their own (a PostgreSQL
function; plain sqlite3 in the store's SQLite thread): what they write must read back through
the store exactly as they said they wrote it, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import text

from service.errors import NotFound, TurnInProgress
from service.schemas import Reply
from service.store import Store
from service.tables import utcnow

TOOL_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
]
INPUT: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "parts \u00e9"}], "name": "ann"},
    {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
    {"role": "tool", "content": '{"ok": true}', "tool_call_id": "call_1"},
    {"role": "user", "content": 'plain "quoted"\n'},
]


async def new_conversation(store: Store) -> uuid.UUID:
    conversation, _ = await store.create_conversation(
        "t",
        title=None,
        model="grok-4",
        params={"temperature": 0.5},
        metadata={},
        messages=[{"role": "system", "content": "s"}],
    )
    return conversation.id


async def test_a_turn_reads_back_as_written(store: Store) -> None:
    cid = await new_conversation(store)
    start = await store.begin_turn(
        "t", cid, INPUT, model="grok-4-mini", params={"top_p": 0.9}, stream=False, lease=60
    )
    assert start.model == "grok-4-mini"
    assert start.params == {"temperature": 0.5, "top_p": 0.9}
    assert [m.seq for m in start.appended] == [2, 3, 4, 5]
    sent = msgspec.json.decode(start.history)
    assert sent == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "parts \u00e9"}], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
        {"role": "tool", "content": '{"ok": true}', "tool_call_id": "call_1"},
        {"role": "user", "content": 'plain "quoted"\n'},
    ]
    assert await store.get_turn("t", cid, start.turn.id) == start.turn

    reply = Reply(
        content="answer",
        reasoning_content="thought",
        tool_calls=TOOL_CALLS,
        finish_reason="tool_calls",
        usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        model="grok-4-mini-0709",
    )
    done = await store.complete_turn(start.turn, reply, latency_ms=12, upstream_ms=10, attempts=2)
    assert done is not None
    turn, message = done
    assert message.seq == 6
    assert turn.reply_seq == 6
    assert turn.status == "completed"
    assert await store.get_turn("t", cid, turn.id) == turn

    rows, _ = await store.list_messages("t", cid, limit=10, cursor=None, descending=False)
    assert rows[1:5] == start.appended
    assert rows[5] == message
    assert (await store.get_conversation("t", cid)).message_count == 6


async def test_a_refused_turn_writes_nothing(store: Store) -> None:
    cid = await new_conversation(store)
    with pytest.raises(NotFound):
        await store.begin_turn("other", cid, INPUT, model=None, params=None, stream=False, lease=60)
    first = await store.begin_turn(
        "t", cid, INPUT[:1], model=None, params=None, stream=False, lease=60
    )
    with pytest.raises(TurnInProgress) as refused:
        await store.begin_turn("t", cid, INPUT, model=None, params=None, stream=False, lease=60)
    assert refused.value.extra["running_turn_id"] == str(first.turn.id)
    conversation = await store.get_conversation("t", cid)
    assert conversation.message_count == 2
    assert conversation.updated_at == first.turn.created_at


async def test_a_turn_left_by_a_dead_process_is_marked_abandoned(store: Store) -> None:
    cid = await new_conversation(store)
    dead = await store.begin_turn(
        "t", cid, INPUT[:1], model=None, params=None, stream=False, lease=0.001
    )
    later = await store.begin_turn(
        "t", cid, INPUT[3:], model=None, params=None, stream=False, lease=60
    )
    abandoned = await store.get_turn("t", cid, dead.turn.id)
    assert abandoned.status == "failed"
    assert abandoned.error == {
        "code": "abandoned",
        "detail": "The server running this turn stopped.",
    }
    assert abandoned.completed_at is not None
    assert abandoned.completed_at - later.turn.created_at < timedelta(seconds=1)
    # The dead turn cannot complete any more, and nothing of its reply is stored.
    reply = Reply(content="late", model="grok-4", finish_reason="stop")
    assert (
        await store.complete_turn(dead.turn, reply, latency_ms=1, upstream_ms=1, attempts=1) is None
    )
    assert (await store.get_conversation("t", cid)).message_count == 3
    assert utcnow() - later.turn.created_at < timedelta(minutes=1)


def shape(value: Any) -> tuple[str, str]:
    """A stored value's type and its text with every digit masked: "2026-11-29 10:00:00.123456"
    and "2026-01-02 03:04:05.000001" have one shape, "2026-11-29T10:00:00+00:00" another."""
    return type(value).__name__, re.sub(r"[0-9a-f]", "0", str(value))


async def test_turn_rows_are_stored_as_the_rest_of_the_store_stores_them(store: Store) -> None:
    # Rows written through SQLAlchemy (the conversation and its first message) set the format;
    # a turn's rows must match it column by column, as the database holds them (on SQLite,
    # timestamps compared as text must sort right, whichever code wrote them).
    cid = await new_conversation(store)
    start = await store.begin_turn(
        "t", cid, INPUT[3:], model=None, params=None, stream=False, lease=60
    )
    reply = Reply(content="a", model="grok-4", finish_reason="stop", usage={"total_tokens": 1})
    assert await store.complete_turn(start.turn, reply, latency_ms=1, upstream_ms=1, attempts=1)
    async with store.engine.connect() as conn:
        # The store fixture empties every table after each test: these are this test's rows.
        messages = (
            await conn.execute(
                text(
                    "SELECT id, conversation_id, created_at, content, usage, turn_id "
                    "FROM message ORDER BY seq"
                )
            )
        ).all()
        turn = (
            await conn.execute(
                text("SELECT id, created_at, deadline_at, completed_at, params FROM turn")
            )
        ).one()
        conversation = (
            await conn.execute(text("SELECT id, created_at, updated_at, params FROM conversation"))
        ).one()
    system, user, assistant = messages
    for written in (user, assistant):
        for column in ("id", "conversation_id", "created_at"):
            assert shape(written._mapping[column]) == shape(system._mapping[column]), column
    # JSON: the text SQLite keeps decodes to the value given (PostgreSQL's json comes decoded).
    decode = msgspec.json.decode if store.dialect == "sqlite" else (lambda value: value)
    assert decode(user.content) == INPUT[3]["content"]
    assert decode(assistant.usage) == {"total_tokens": 1}
    assert shape(assistant.turn_id) == shape(turn.id)
    assert shape(user.usage) == shape(system.usage)  # none given: stored as the store stores None
    for column in ("created_at", "deadline_at", "completed_at"):
        assert shape(turn._mapping[column]) == shape(conversation.created_at), column
    assert shape(conversation.updated_at) == shape(conversation.created_at)
    assert turn.params == conversation.params
