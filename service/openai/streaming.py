"""A streamed response: a turn's feed told as the Responses API's semantic events.

``response.created`` and ``response.in_progress``; then, as the reply arrives, each output item
(reasoning, then the message) opened with ``response.output_item.added`` and
``response.content_part.added``, its text as ``response.reasoning.delta`` or
``response.output_text.delta`` events, and closed with the matching ``.done`` events; at the end
the function calls (the upstream sends each call whole: one arguments delta, then done); and
last ``response.completed`` (``response.incomplete`` when the output was cut at
``max_output_tokens``) or ``response.failed``. Every event carries ``sequence_number``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from litestar.response import ServerSentEventMessage

from service.events import KEEPALIVE, TurnFeed, sse
from service.openai.shapes import (
    message_item,
    reasoning_item,
    reply_items,
    response_resource,
)
from service.schemas import TurnOut


@dataclass
class _Open:
    """The output item being streamed: its kind, place and text so far."""

    kind: str  # "reasoning" or "message"
    index: int
    id: str
    text: list[str] = field(default_factory=list)


class _Events:
    def __init__(self) -> None:
        self.numbers = itertools.count()

    def __call__(self, kind: str, **fields: Any) -> ServerSentEventMessage:
        return sse(kind, {"type": kind, "sequence_number": next(self.numbers), **fields})


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item(kind: str, ident: uuid.UUID, text: str, status: str) -> dict[str, Any]:
    if kind == "reasoning":
        return reasoning_item(ident, text)
    return message_item(ident, text, status)


def _opened(event: _Events, item: _Open, ident: uuid.UUID) -> Iterator[ServerSentEventMessage]:
    yield event(
        "response.output_item.added",
        output_index=item.index,
        item={**_item(item.kind, ident, "", "in_progress"), "content": []},
    )
    yield event(
        "response.content_part.added",
        item_id=item.id,
        output_index=item.index,
        content_index=0,
        part=_part(item.kind, ""),
    )


def _delta(event: _Events, item: _Open, piece: str) -> ServerSentEventMessage:
    kind = "response.reasoning.delta" if item.kind == "reasoning" else "response.output_text.delta"
    fields: dict[str, Any] = {"logprobs": []} if item.kind == "message" else {}
    return event(
        kind, item_id=item.id, output_index=item.index, content_index=0, delta=piece, **fields
    )


def _closed(event: _Events, item: _Open, done: dict[str, Any]) -> Iterator[ServerSentEventMessage]:
    text = "".join(item.text)
    kind = "response.reasoning.done" if item.kind == "reasoning" else "response.output_text.done"
    fields: dict[str, Any] = {"logprobs": []} if item.kind == "message" else {}
    yield event(
        kind, item_id=item.id, output_index=item.index, content_index=0, text=text, **fields
    )
    yield event(
        "response.content_part.done",
        item_id=item.id,
        output_index=item.index,
        content_index=0,
        part=_part(item.kind, text),
    )
    yield event("response.output_item.done", output_index=item.index, item=done)


def _whole(event: _Events, index: int, item: dict[str, Any]) -> Iterator[ServerSentEventMessage]:
    """An output item not streamed piece by piece (a function call, or an empty message)."""
    if item["type"] == "function_call":
        yield event(
            "response.output_item.added",
            output_index=index,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        yield event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=index,
            delta=item["arguments"],
        )
        yield event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            arguments=item["arguments"],
        )
        yield event("response.output_item.done", output_index=index, item=item)
        return
    kind = item["type"]
    text = item["content"][0]["text"] if item.get("content") else ""
    opened = _Open(kind, index, item["id"], [text])
    yield event(
        "response.output_item.added",
        output_index=index,
        item={**item, "status": "in_progress", "content": []},
    )
    yield event(
        "response.content_part.added",
        item_id=item["id"],
        output_index=index,
        content_index=0,
        part=_part(kind, ""),
    )
    if text:
        yield _delta(event, opened, text)
    yield from _closed(event, opened, item)


async def response_events(
    feed: TurnFeed,
    turn: TurnOut,
    *,
    stored: bool,
    failed: Callable[[dict[str, Any]], TurnOut],
) -> AsyncIterator[ServerSentEventMessage]:
    """The Responses events of a running turn (``turn``, as it started), from its feed.
    ``failed`` makes the turn as it ended from a ``turn.failed`` event's data."""
    event = _Events()
    started = response_resource(turn, None, stored=stored, status="in_progress")
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    streamed: list[_Open] = []
    async for update in feed.updates():
        if update is None:
            yield KEEPALIVE
            continue
        name, data = update
        if name == "message.delta":
            for kind, key in (("reasoning", "reasoning_content"), ("message", "content")):
                piece = data.get(key)
                if not piece:
                    continue
                current = streamed[-1] if streamed else None
                if current is None or current.kind != kind:
                    if current is not None:
                        text = "".join(current.text)
                        done = _item(current.kind, turn.id, text, "completed")
                        for closing in _closed(event, current, done):
                            yield closing
                    prefix = "rs" if kind == "reasoning" else "msg"
                    current = _Open(kind, len(streamed), f"{prefix}_{turn.id.hex}")
                    streamed.append(current)
                    for opened in _opened(event, current, turn.id):
                        yield opened
                current.text.append(piece)
                yield _delta(event, current, piece)
            continue
        if name != "turn.completed":
            ended = failed(data)
            yield event("response.failed", response=response_resource(ended, None, stored=stored))
            return
        completed, reply = data.get("turn", turn), data["reply"]
        final = response_resource(completed, reply, stored=stored)
        items = reply_items(turn.id, reply)
        by_id = {item["id"]: item for item in items}
        if streamed:
            last = streamed[-1]
            text = "".join(last.text)
            final_item = by_id.get(last.id) or _item(last.kind, turn.id, text, "completed")
            for closing in _closed(event, last, final_item):
                yield closing
        sent = {item.id for item in streamed}
        for index, item in enumerate(items):
            if item["id"] not in sent:
                for whole in _whole(event, index, item):
                    yield whole
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield event(kind, response=final)
        return
