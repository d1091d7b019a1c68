"""Each process keeps recent histories so that a turn reads only the messages it has not seen;
the history a turn sends must be exactly the stored one, whichever process ran the turns
before, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from service.schemas import Reply
from service.store import HistoryCache, Store

Message = dict[str, Any]


def test_cache_keeps_the_most_recent_conversations_within_its_size() -> None:
    cache = HistoryCache(max_chars=400)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert cache.get(first) == (0, "")
    assert cache.put(first, 2, "", ["a" * 40, "b" * 40]) == "a" * 40 + "," + "b" * 40
    assert cache.put(first, 3, *cache.get(first)[1:], ["c"]) == "a" * 40 + "," + "b" * 40 + ",c"
    assert cache.get(first)[0] == 3
    cache.put(second, 1, "", ["x" * 90])
    cache.put(third, 1, "", ["y" * 90])
    cache.get(second)  # used: the least recently used is now the first
    cache.put(uuid.uuid4(), 1, "", ["z" * 99])
    cache.put(uuid.uuid4(), 1, "", ["w" * 99])
    assert cache.get(first) == (0, "")
    assert cache.get(second)[0] == 1
    # One conversation never takes more than a quarter: it is not kept (but still returned).
    assert cache.put(third, 2, "", ["q" * 101]) == "q" * 101
    assert cache.get(third) == (0, "")
    assert HistoryCache(0).put(first, 1, "", ["a"]) == "a"


def text(i: int) -> Message:
    return {"role": "user", "content": f'question {i} \u00e9\n"quoted"'}


def as_sent(message: Message) -> Message:
    """A message as the upstream should receive it: role and content, plus the tool fields."""
    sent = {"role": message["role"], "content": message["content"]}
    for field in ("name", "tool_calls", "tool_call_id"):
        if message.get(field) is not None:
            sent[field] = message[field]
    return sent


@pytest.fixture
async def other_process(store: Store) -> AsyncIterator[Callable[[], Store]]:
    """Stores as other server processes have them: same database, a history cache of their own."""
    made: list[Store] = []

    def make() -> Store:
        made.append(Store(store.engine, history_cache=HistoryCache(1 << 20)))
        return made[-1]

    yield make
    for other in made:
        await other.close()


async def stored_history(store: Store, cid: uuid.UUID) -> list[Any]:
    rows, _ = await store.list_messages("t", cid, limit=1000, cursor=None, descending=False)
    return [as_sent(msgspec.structs.asdict(m)) for m in rows]


async def check_turn(store: Store, runner: Store, cid: uuid.UUID, messages: list[Message]) -> None:
    """Run a turn through ``runner``: it must send the stored history plus ``messages``."""
    expected = await stored_history(store, cid) + [as_sent(m) for m in messages]
    start = await runner.begin_turn(
        "t", cid, messages, model=None, params=None, stream=False, lease=60
    )
    assert msgspec.json.decode(start.history) == expected
    reply = Reply(content=f"answer {len(expected)}", model="grok-4", finish_reason="stop")
    assert await runner.complete_turn(start.turn, reply, latency_ms=1, upstream_ms=1, attempts=1)


async def test_turns_across_processes_send_the_stored_history(
    store: Store, other_process: Callable[[], Store]
) -> None:
    # Two processes, each with its own cache; messages are also appended outside turns.
    one, two = other_process(), other_process()
    conversation, _ = await store.create_conversation(
        "t", title=None, model="grok-4", params={}, metadata={}, messages=[text(0)]
    )
    cid = conversation.id
    await check_turn(store, one, cid, [])
    await check_turn(store, one, cid, [text(1)])
    await check_turn(store, two, cid, [text(2)])
    await store.append_messages("t", cid, [text(3), {"role": "system", "content": "s"}])
    await check_turn(store, one, cid, [])
    await check_turn(store, two, cid, [text(4), text(5)])
    await check_turn(store, two, cid, [])
    assert one.history_cache.get(cid)[0] == 8
    assert two.history_cache.get(cid)[0] == 12


async def test_a_cache_that_does_not_fit_is_read_again(
    store: Store, other_process: Callable[[], Store]
) -> None:
    cached = other_process()
    conversation, _ = await store.create_conversation(
        "t", title=None, model="grok-4", params={}, metadata={}, messages=[text(0), text(1)]
    )
    cid = conversation.id
    cached.history_cache.put(cid, 99, "", [])  # more messages than the conversation holds
    await check_turn(store, cached, cid, [text(2)])
    assert cached.history_cache.get(cid)[0] == 3
