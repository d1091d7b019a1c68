"""A turn's events as server-sent events, live or rebuilt from the database, with event ids that
mean the same thing in every server process and after the turn ended.

A turn's stream is ``turn.started``, ``message.delta`` events, then one terminal event
(``turn.completed`` or ``turn.failed``). An event's id is a position in the reply's text, not a
count of events: ``0`` for ``turn.started``, ``R.C`` for a delta (the reply's reasoning and
content, in characters, delivered up to and with that event) and ``end`` for the terminal event.
A client that reconnects with ``Last-Event-ID`` therefore gets exactly the text after what it
has, then the terminal event, whether the turn still runs in this process, runs in another one,
or has ended: how the text was cut into deltas is the only thing that may differ. After ``end``
there is nothing more: the follow route answers 204, which tells a browser's ``EventSource`` to
stop reconnecting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.response import ServerSentEventMessage

from service.errors import BadRequest

STARTED_ID = "0"
END_ID = "end"
# Lines end with LF, as in OpenAI's and xAI's streams (Litestar's default, CRLF, is valid SSE,
# but clients that split events at "\n\n", common if wrong, would see none).
_LINE_END = "\n"
# Proxies cut a connection idle for 60 s; a reasoning model may think silently for minutes.
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = ServerSentEventMessage(data=None, comment="keep-alive", sep=_LINE_END)
_POSITION = re.compile(r"(\d{1,15})\.(\d{1,15})")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Position:
    """How much of a reply's text a client has: characters of reasoning and of content."""

    reasoning: int = 0
    content: int = 0

    @property
    def id(self) -> str:
        return f"{self.reasoning}.{self.content}"

    def covers(self, other: Position) -> bool:
        return self.reasoning >= other.reasoning and self.content >= other.content

    def after(self, delta: dict[str, str]) -> Position:
        return Position(
            self.reasoning + len(delta.get("reasoning_content", "")),
            self.content + len(delta.get("content", "")),
        )


class Finished:
    """The position of a client that has every event, the terminal one included."""


FINISHED = Finished()


def parse_last_event_id(value: str | None) -> Position | Finished | None:
    """What a ``Last-Event-ID`` says the client has: nothing (None), a position, or all."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if value == END_ID:
        return FINISHED
    if value == STARTED_ID:
        return Position()
    match = _POSITION.fullmatch(value)
    if match is None:
        raise BadRequest(
            "Last-Event-ID is not an event id of this turn's stream "
            f"({STARTED_ID!r}, 'R.C' or {END_ID!r})."
        )
    return Position(int(match[1]), int(match[2]))


def sse(event: str, data: Any, event_id: str | None = None) -> ServerSentEventMessage:
    """One server-sent event, its data as JSON (written by Litestar when it is sent)."""
    return ServerSentEventMessage(
        data=_encoder.encode(data), event=event, id=event_id, sep=_LINE_END
    )


def text_after(reasoning: str, content: str, position: Position) -> dict[str, str]:
    """The delta that takes a client from ``position`` to the whole of the given text."""
    delta: dict[str, str] = {}
    if reasoning[position.reasoning :]:
        delta["reasoning_content"] = reasoning[position.reasoning :]
    if content[position.content :]:
        delta["content"] = content[position.content :]
    return delta


class TurnFeed:
    """The events of one turn running in this process, kept so that followers can join (and
    rejoin) at any point and then follow live."""

    def __init__(self, turn_id: Any, started: Any, *, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.turn_id = turn_id
        self.keepalive = keepalive
        self._started = started
        # Each delta with the position where it starts; kept decoded, encoded when followed
        # (most non-streamed turns are never followed).
        self._deltas: list[tuple[Position, dict[str, str]]] = []
        self._position = Position()
        self._terminal: tuple[str, Any] | None = None
        self._changed = asyncio.Event()

    @property
    def started(self) -> Any:
        """What the turn started with (the data of ``turn.started``)."""
        return self._started

    @property
    def ended(self) -> bool:
        return self._terminal is not None

    def delta(self, delta: dict[str, str]) -> None:
        """Add a piece of the reply (``content`` and/or ``reasoning_content``)."""
        self._deltas.append((self._position, delta))
        self._position = self._position.after(delta)
        self._notify()

    def end(self, event: str, data: Any) -> None:
        """Publish the terminal event; ``data`` must not change afterwards."""
        self._terminal = (event, data)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def updates(self) -> AsyncIterator[tuple[str, Any] | None]:
        """Every delta as ``("message.delta", delta)``, then live ones, then the terminal event
        as ``(event, data)``; None whenever nothing happened for ``keepalive`` seconds."""
        index = 0
        while True:
            changed = self._changed
            while index < len(self._deltas):
                index += 1
                yield "message.delta", self._deltas[index - 1][1]
            if self._terminal is not None:
                yield self._terminal
                return
            try:
                await asyncio.wait_for(changed.wait(), self.keepalive)
            except TimeoutError:
                yield None

    async def follow(self, after: Position | None = None) -> AsyncIterator[ServerSentEventMessage]:
        """The events after ``after`` (None: all of them), then live ones until the end, with a
        keep-alive comment whenever nothing else was sent for ``keepalive`` seconds."""
        if after is None:
            yield sse("turn.started", self._started, STARTED_ID)
            after = Position()
        sent, start = after, Position()
        async for update in self.updates():
            if update is None:
                yield KEEPALIVE
                continue
            event, data = update
            if event != "message.delta":
                yield sse(event, data, END_ID)
                return
            end = start.after(data)
            if not sent.covers(end):
                piece = text_after(
                    data.get("reasoning_content", ""),
                    data.get("content", ""),
                    Position(
                        max(0, sent.reasoning - start.reasoning),
                        max(0, sent.content - start.content),
                    ),
                )
                sent = Position(max(sent.reasoning, end.reasoning), max(sent.content, end.content))
                yield sse("message.delta", piece, sent.id)
            start = end
