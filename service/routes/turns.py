"""Turns: one model call over a conversation's whole history (``/v1``)."""

from __future__ import annotations

import uuid

from litestar import Controller, get, post
from litestar.datastructures import State

from service.schemas import TurnCreate, TurnOut, TurnResult
from service.store import Principal


class TurnController(Controller):
    path = "/v1/conversations/{conversation_id:uuid}/turns"
    tags = ["turns"]

    @post("/", status_code=201, summary="Run a turn: append messages, ask the model, store the reply")
    async def create_turn(
        self, conversation_id: uuid.UUID, data: TurnCreate, principal: Principal, state: State
    ) -> TurnResult:
        """Append the given messages, send the whole history upstream and store the reply."""
        result: TurnResult = await state.turns.run(principal.tenant, conversation_id, data)
        return result

    @get("/{turn_id:uuid}", summary="Get a turn")
    async def get_turn(
        self, conversation_id: uuid.UUID, turn_id: uuid.UUID, principal: Principal, state: State
    ) -> TurnOut:
        turn: TurnOut = await state.store.get_turn(principal.tenant, conversation_id, turn_id)
        return turn
