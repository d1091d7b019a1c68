"""A turn's two transactions, at the store: what they write reads back exactly as they said
they wrote it, a refused turn writes nothing, and a turn left by a dead server is abandoned;
on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

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
    assert start.history == [
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
    done = await store.complete_turn(start, reply, latency_ms=12, upstream_ms=10, attempts=2)
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
        "status": 503,
        "code": "abandoned",
        "detail": "The server running this turn stopped before it finished.",
    }
    assert abandoned.completed_at is not None
    assert abandoned.completed_at - later.turn.created_at < timedelta(seconds=1)
    # The dead turn cannot complete any more, and nothing of its reply is stored.
    reply = Reply(content="late", model="grok-4", finish_reason="stop")
    assert await store.complete_turn(dead, reply, latency_ms=1, upstream_ms=1, attempts=1) is None
    assert (await store.get_conversation("t", cid)).message_count == 3
    assert utcnow() - later.turn.created_at < timedelta(minutes=1)
