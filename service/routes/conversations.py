"""Conversations and their messages, for frontends (``/v1``). Thin: no SQL, no httpx."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import Parameter
import msgspec
from msgspec import UNSET

from service.idempotency import idempotent
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
from service.store import Principal, Store

Limit = Annotated[int, Parameter(ge=1, le=100, description="Page size (at most 100).")]
Cursor = Annotated[
    str | None,
    Parameter(max_length=512, description="`next_cursor` of the previous page."),
]


class ConversationController(Controller):
    path = "/v1/conversations"
    tags = ["conversations"]

    @post("/", status_code=201, summary="Create a conversation")
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: ConversationCreate,
        principal: Principal,
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
            created = ConversationCreated(
                **msgspec.structs.asdict(conversation), messages=messages
            )
            return Response(created, status_code=201)

        return await idempotent(request, principal, store, run)

    @get("/", summary="List conversations, newest first")
    async def list_conversations(
        self, principal: Principal, state: State, limit: Limit = 20, cursor: Cursor = None
    ) -> ConversationPage:
        items, next_cursor = await state.store.list_conversations(
            principal.tenant, limit=limit, cursor=cursor
        )
        return ConversationPage(items, next_cursor is not None, next_cursor)

    @get("/{conversation_id:uuid}", summary="Get a conversation")
    async def get_conversation(
        self, conversation_id: uuid.UUID, principal: Principal, state: State
    ) -> ConversationOut:
        conversation: ConversationOut = await state.store.get_conversation(
            principal.tenant, conversation_id
        )
        return conversation

    @patch("/{conversation_id:uuid}", summary="Change a conversation's title, model, params or metadata")
    async def patch_conversation(
        self, conversation_id: uuid.UUID, data: ConversationPatch, principal: Principal,
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
        self, conversation_id: uuid.UUID, principal: Principal, state: State
    ) -> None:
        await state.store.delete_conversation(principal.tenant, conversation_id)

    @get("/{conversation_id:uuid}/messages", summary="List a conversation's messages by seq")
    async def list_messages(
        self,
        conversation_id: uuid.UUID,
        principal: Principal,
        state: State,
        limit: Limit = 20,
        cursor: Cursor = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> MessagePage:
        items, next_cursor = await state.store.list_messages(
            principal.tenant, conversation_id, limit=limit, cursor=cursor,
            descending=order == "desc",
        )
        return MessagePage(items, next_cursor is not None, next_cursor)

    @post("/{conversation_id:uuid}/messages", status_code=201,
          summary="Append messages without asking the model")
    async def append_messages(
        self,
        request: Request[Any, Any, Any],
        conversation_id: uuid.UUID,
        data: MessagesAppend,
        principal: Principal,
        state: State,
    ) -> Response[MessagesAppended]:
        store: Store = state.store

        async def run() -> Response[Any]:
            messages = await store.append_messages(
                principal.tenant, conversation_id, [message_fields(m) for m in data.messages]
            )
            return Response(MessagesAppended(messages), status_code=201)

        return await idempotent(request, principal, store, run)
