"""Turns: one model call over a conversation's whole history (``/v1``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import HeaderParameter, JSONBody
from litestar.response import Stream

from service.idempotency import idempotent
from service.routes.params import Caller, ConversationId, TurnId
from service.routes.turn_lane import TurnLane
from service.schemas import TurnCreate, TurnOut, TurnResult
from service.store import Store
from service.turns import TurnRunner, replay

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
POLL_SECONDS = 0.5


def event_stream(events: AsyncIterator[bytes]) -> Stream:
    return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)


class TurnController(Controller):
    path = "/v1/conversations/{conversation_id:uuid}/turns"
    tags = ("turns",)

    @post(
        "/",
        status_code=201,
        summary="Run a turn: append messages, ask the model, store the reply",
        # Answers the common turn itself (not streamed, no Idempotency-Key); this handler
        # answers everything else, and is the reference the lane is tested against.
        middleware=[TurnLane],
        response_description="The completed turn and the stored reply (or, with "
        "`stream: true`, a text/event-stream of turn.started, message.delta and "
        "turn.completed or turn.failed)",
    )
    async def create_turn(
        self,
        request: Request[Any, Any, Any],
        conversation_id: ConversationId,
        data: JSONBody[TurnCreate],
        principal: Caller,
        state: State,
    ) -> Response[TurnResult]:
        """Append the given messages, send the whole history upstream and store the reply."""
        turns: TurnRunner = state.turns
        store: Store = state.store
        if not data.stream:

            async def run() -> Response[Any]:
                result, timing = await turns.run(principal.tenant, conversation_id, data)
                return Response(result, status_code=201, headers={"server-timing": timing.header()})

            return await idempotent(request, principal, store, run)

        started: list[uuid.UUID] = []

        async def run_streamed() -> Response[Any]:
            feed = await turns.run_streamed(principal.tenant, conversation_id, data)
            started.append(feed.turn_id)
            return event_stream(feed.follow())

        async def replay_stream(stored: Any) -> Response[Any]:
            turn_id = uuid.UUID(stored["stream_turn_id"])
            turn = await store.get_turn(principal.tenant, conversation_id, turn_id)
            return _follow(state, principal, turn, 0)

        return await idempotent(
            request,
            principal,
            store,
            run_streamed,
            remember=lambda _: {"stream_turn_id": str(started[0])},
            replay=replay_stream,
        )

    @get("/{turn_id:uuid}", summary="Get a turn")
    async def get_turn(
        self, conversation_id: ConversationId, turn_id: TurnId, principal: Caller, state: State
    ) -> TurnOut:
        turn: TurnOut = await state.store.get_turn(principal.tenant, conversation_id, turn_id)
        return turn

    @get(
        "/{turn_id:uuid}/events",
        summary="Follow a turn's events (replayed from the start, then live)",
        response_description="text/event-stream: turn.started, message.delta, then "
        "turn.completed or turn.failed",
    )
    async def follow_turn(
        self,
        conversation_id: ConversationId,
        turn_id: TurnId,
        principal: Caller,
        state: State,
        last_event_id: Annotated[
            int | None, HeaderParameter(name="last-event-id", ge=0, required=False)
        ] = None,
    ) -> Stream:
        """Re-attach to a turn: every event from the start (or after ``Last-Event-ID``), then
        live events until the turn ends. A turn running in another server process is followed
        through the database and its reply arrives whole when it completes."""
        turn = await state.store.get_turn(principal.tenant, conversation_id, turn_id)
        return _follow(state, principal, turn, 0 if last_event_id is None else last_event_id + 1)


def _follow(state: State, principal: Caller, turn: TurnOut, start: int) -> Stream:
    feed = state.turns.feed(turn.id)
    if feed is not None:
        return event_stream(feed.follow(start))
    return event_stream(_from_database(state.store, principal.tenant, turn, start))


async def _from_database(
    store: Store, tenant: str, turn: TurnOut, start: int
) -> AsyncIterator[bytes]:
    while turn.status == "running":
        yield b": waiting for the turn to finish\n\n"
        await asyncio.sleep(POLL_SECONDS)
        turn = await store.get_turn(tenant, turn.conversation_id, turn.id)
    reply = None
    if turn.reply_seq is not None:
        reply = await store.get_message(turn.conversation_id, turn.reply_seq)
    for event in replay(turn, reply)[start:]:
        yield event


__all__ = ["TurnController"]
