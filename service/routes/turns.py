"""Turns: one model call over a conversation's whole history (``/v1``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import HeaderParameter, JSONBody
from litestar.response import ServerSentEvent

from service.events import FINISHED, Position, parse_last_event_id
from service.idempotency import HEADER, idempotent, idempotent_stream, turn_result
from service.routes.params import Caller, ConversationId, TurnId
from service.schemas import Replayed, TurnCreate, TurnOut, TurnResult
from service.turns import TurnRunner

LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="last-event-id",
        required=False,
        max_length=64,
        description="The id of the last event received: the stream resumes after it.",
    ),
]


class TurnController(Controller):
    path = "/v1/conversations/{conversation_id:uuid}/turns"
    tags = ("turns",)

    @post(
        "/",
        status_code=201,
        summary="Run a turn: append messages, ask the model, store the reply",
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
        key = request.headers.get(HEADER)
        if not data.stream:

            async def run() -> Response[Any]:
                result, timing = await turns.run(
                    principal, conversation_id, data, idempotency_key=key
                )
                return Response(result, status_code=201, headers={"server-timing": timing.header()})

            async def recover(turn_id: uuid.UUID) -> Response[Any]:
                return Response(await turn_result(turns, turn_id), status_code=201)

            return await idempotent(request, principal, turns, run, recover=recover)

        async def begin(started: list[uuid.UUID]) -> Response[Any]:
            feed, _, _ = await turns.begin(principal, conversation_id, data, idempotency_key=key)
            started.append(feed.turn_id)
            return ServerSentEvent(feed.follow())

        async def follow(turn_id: uuid.UUID) -> Response[Any]:
            turn = await state.store.get_turn(principal.tenant, conversation_id, turn_id)
            return ServerSentEvent(turns.follow(turn, None))

        return await idempotent_stream(request, principal, turns, begin, follow)

    @post(
        "/{turn_id:uuid}/replay",
        status_code=200,
        summary="Send a turn's exact request again; the new answer beside the stored one",
    )
    async def replay_turn(
        self, conversation_id: ConversationId, turn_id: TurnId, principal: Caller, state: State
    ) -> Replayed:
        """For debugging and evaluation: the request body the turn sent upstream (kept while
        ``CONVSTORE_KEEP_REQUESTS`` is on) is sent again byte for byte, and the new answer is
        returned with the stored turn and reply. Nothing is stored; 409 ``request_not_kept``
        if the turn's body was not kept."""
        turns: TurnRunner = state.turns
        return await turns.replay(principal, conversation_id, turn_id)

    @get("/{turn_id:uuid}", summary="Get a turn")
    async def get_turn(
        self, conversation_id: ConversationId, turn_id: TurnId, principal: Caller, state: State
    ) -> TurnOut:
        turn: TurnOut = await state.store.get_turn(principal.tenant, conversation_id, turn_id)
        return turn

    @get(
        "/{turn_id:uuid}/events",
        summary="Follow a turn's events (from the start, or after Last-Event-ID), then live",
        response_description="text/event-stream: turn.started, message.delta, then "
        "turn.completed or turn.failed; 204 when Last-Event-ID is the terminal event's",
    )
    async def follow_turn(
        self,
        conversation_id: ConversationId,
        turn_id: TurnId,
        principal: Caller,
        state: State,
        last_event_id: LastEventId = None,
    ) -> Response[Any]:
        """Re-attach to a turn: its events after ``Last-Event-ID`` (all of them without one),
        then live events until the turn ends. Event ids are positions in the reply's text, so
        a resume gives exactly what the client lacks, from any server process, during the turn
        or after it; a turn running in another process is followed through the database and
        its text arrives when it ends."""
        after = parse_last_event_id(last_event_id)
        turn = await state.store.get_turn(principal.tenant, conversation_id, turn_id)
        if after is FINISHED:
            return Response(None, status_code=204)  # EventSource stops reconnecting on 204
        assert after is None or isinstance(after, Position)
        return ServerSentEvent(state.turns.follow(turn, after))


__all__ = ["TurnController"]
