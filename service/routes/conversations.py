"""Conversations and their messages, for frontends (``/v1``). Thin: no SQL, no httpx."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody
from msgspec import UNSET

from service.idempotency import idempotent
from service.routes.params import Caller, ConversationId, Cursor, Limit
from service.schemas import (
    ConversationCreate,
    ConversationCreated,
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    MessagePage,
    MessagesAppend,
    MessagesAppended,
    message_fields,
)
from service.store import Store


class ConversationController(Controller):
    path = "/v1/conversations"
    tags = ("conversations",)

    @post("/", status_code=201, summary="Create a conversation")
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ConversationCreate],
        principal: Caller,
        state: State,
    ) -> Response[ConversationCreated]:
        """Create a conversation, optionally with its first messages (any roles, any order)."""
        store: Store = state.store

        async def run() -> Response[Any]:
            conversation, messages = await store.create_conversation(
                principal.tenant,
                title=data.title,
                model=data.model or state.settings.default_model,
                params=data.params,
                metadata=data.metadata,
                messages=[message_fields(m) for m in data.messages],
            )
            created = ConversationCreated(**msgspec.structs.asdict(conversation), messages=messages)
            return Response(created, status_code=201)

        return await idempotent(request, principal, state.turns, run)

    @get("/", summary="List conversations, newest first")
    async def list_conversations(
        self, principal: Caller, state: State, limit: Limit = 20, cursor: Cursor = None
    ) -> ConversationPage:
        items, next_cursor = await state.store.list_conversations(
            principal.tenant, limit=limit, cursor=cursor
        )
        return ConversationPage(items, next_cursor is not None, next_cursor)

    @get("/{conversation_id:uuid}", summary="Get a conversation")
    async def get_conversation(
        self, conversation_id: ConversationId, principal: Caller, state: State
    ) -> ConversationOut:
        conversation: ConversationOut = await state.store.get_conversation(
            principal.tenant, conversation_id
        )
        return conversation

    @patch(
        "/{conversation_id:uuid}",
        summary="Change a conversation's title, model, params or metadata",
    )
    async def patch_conversation(
        self,
        conversation_id: ConversationId,
        data: JSONBody[ConversationPatch],
        principal: Caller,
        state: State,
    ) -> ConversationOut:
        changes = {
            name: value
            for name in ("title", "model", "params", "metadata")
            if (value := getattr(data, name)) is not UNSET
        }
        store: Store = state.store
        if not changes:
            return await store.get_conversation(principal.tenant, conversation_id)
        return await store.update_conversation(principal.tenant, conversation_id, changes)

    @delete("/{conversation_id:uuid}", status_code=204, summary="Delete a conversation")
    async def delete_conversation(
        self, conversation_id: ConversationId, principal: Caller, state: State
    ) -> None:
        await state.store.delete_conversation(principal.tenant, conversation_id)

    @get("/{conversation_id:uuid}/messages", summary="List a conversation's messages by seq")
    async def list_messages(
        self,
        conversation_id: ConversationId,
        principal: Caller,
        state: State,
        limit: Limit = 20,
        cursor: Cursor = None,
        order: FromQuery[Literal["asc", "desc"]] = "asc",
    ) -> MessagePage:
        items, next_cursor = await state.store.list_messages(
            principal.tenant,
            conversation_id,
            limit=limit,
            cursor=cursor,
            descending=order == "desc",
        )
        return MessagePage(items, next_cursor is not None, next_cursor)

    @post(
        "/{conversation_id:uuid}/messages",
        status_code=201,
        summary="Append messages without asking the model",
    )
    async def append_messages(
        self,
        request: Request[Any, Any, Any],
        conversation_id: ConversationId,
        data: JSONBody[MessagesAppend],
        principal: Caller,
        state: State,
    ) -> Response[MessagesAppended]:
        store: Store = state.store

        async def run() -> Response[Any]:
            messages = await store.append_messages(
                principal.tenant, conversation_id, [message_fields(m) for m in data.messages]
            )
            return Response(MessagesAppended(messages), status_code=201)

        return await idempotent(request, principal, state.turns, run)
