"""Conversations and their messages, for frontends (``/v1``). Thin: no SQL, no httpx."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromQuery, JSONBody
from msgspec import UNSET

from service.idempotency import idempotent
from service.observability import observe_deletions
from service.routes.params import (
    Caller,
    ConversationFilters,
    ConversationId,
    Cursor,
    Head,
    Limit,
    MessageId,
    provide_conversation_filters,
)
from service.schemas import (
    ConversationCreate,
    ConversationCreated,
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    MessagePage,
    MessagesAppend,
    MessagesAppended,
    instant,
    message_fields,
)
from service.store import Deleter, Store


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
                user=data.user,
                expires_at=instant("expires_at", data.expires_at),
                context=msgspec.to_builtins(data.context),
            )
            created = ConversationCreated(**msgspec.structs.asdict(conversation), messages=messages)
            return Response(created, status_code=201)

        return await idempotent(request, principal, state.turns, run)

    @get(
        "/",
        summary="List conversations, newest first",
        dependencies={"filters": Provide(provide_conversation_filters)},
    )
    async def list_conversations(
        self, filters: ConversationFilters, state: State, limit: Limit = 20, cursor: Cursor = None
    ) -> ConversationPage:
        """The tenant's conversations, newest first, in keyset pages; ``user``, ``archived``
        and ``q`` (words in titles or messages) filter them, and so does each
        ``metadata.<key>=<value>`` (up to ten): the metadata has this key with exactly this
        string value."""
        items, next_cursor = await state.store.list_conversations(
            filters, limit=limit, cursor=cursor
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
        summary=(
            "Change a conversation's title, user, archived, model, params, metadata or expiry, "
            "or switch branch"
        ),
    )
    async def patch_conversation(
        self,
        conversation_id: ConversationId,
        data: JSONBody[ConversationPatch],
        principal: Caller,
        state: State,
    ) -> ConversationOut:
        """Change the given fields. ``head_id`` switches branch: the head becomes the newest
        leaf below that message (its newest reply, that one's newest reply, and so on), so one
        call pages to a sibling's latest state; 409 while a turn runs. ``expires_at`` (an
        instant with its time zone) has retention delete the conversation after it; null
        returns it to the default age (``CONVSTORE_RETENTION_DAYS``), if any."""
        changes = {
            name: msgspec.to_builtins(value)
            for name in (
                "title",
                "user",
                "archived",
                "model",
                "params",
                "metadata",
                "expires_at",
                "context",
            )
            if (value := getattr(data, name)) is not UNSET
        }
        if "expires_at" in changes:
            changes["expires_at"] = instant("expires_at", changes["expires_at"])
        store: Store = state.store
        head_id = None if data.head_id is UNSET else data.head_id
        if not changes and head_id is None:
            return await store.get_conversation(principal.tenant, conversation_id)
        return await store.update_conversation(
            principal.tenant, conversation_id, changes, head_id=head_id
        )

    @delete("/{conversation_id:uuid}", status_code=204, summary="Delete a conversation")
    async def delete_conversation(
        self, conversation_id: ConversationId, principal: Caller, state: State
    ) -> None:
        """Completely: its messages, turns, search index entries and stored idempotent
        answers. A deletion receipt (no content) is kept, listed at ``GET /v1/deletions``;
        409 ``legal_hold`` while an admin holds the conversation."""
        store: Store = state.store
        receipt = await store.delete_conversation(
            principal.tenant, conversation_id, Deleter("tenant", principal.key_id)
        )
        observe_deletions("tenant", [receipt])

    @get(
        "/{conversation_id:uuid}/messages",
        summary="List the messages of the active path (or of the path to `head`) by seq",
    )
    async def list_messages(
        self,
        conversation_id: ConversationId,
        principal: Caller,
        state: State,
        limit: Limit = 20,
        cursor: Cursor = None,
        order: FromQuery[Literal["asc", "desc"]] = "asc",
        head: Head = None,
    ) -> MessagePage:
        """The path from the first message to the head (or to ``head``), each message with
        ``parent_id``, ``sibling_count`` and ``sibling_index``. A cursor pages on along the
        path it was made for."""
        items, next_cursor = await state.store.list_messages(
            principal.tenant,
            conversation_id,
            limit=limit,
            cursor=cursor,
            descending=order == "desc",
            head=head,
        )
        return MessagePage(items, next_cursor is not None, next_cursor)

    @get(
        "/{conversation_id:uuid}/messages/{message_id:uuid}/siblings",
        summary="List a message's siblings (the messages with its parent), oldest first",
    )
    async def list_siblings(
        self,
        conversation_id: ConversationId,
        message_id: MessageId,
        principal: Caller,
        state: State,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> MessagePage:
        """The alternatives at one place of the tree: the message and the others following
        the same parent (for a first message, the other first messages), in creation order."""
        items, next_cursor = await state.store.list_siblings(
            principal.tenant, conversation_id, message_id, limit=limit, cursor=cursor
        )
        return MessagePage(items, next_cursor is not None, next_cursor)

    @delete(
        "/{conversation_id:uuid}/messages/{message_id:uuid}",
        status_code=204,
        summary="Delete a message and every message below it",
    )
    async def delete_message(
        self,
        conversation_id: ConversationId,
        message_id: MessageId,
        principal: Caller,
        state: State,
    ) -> None:
        """If the head was below it, its parent becomes the head; 409 while a turn runs."""
        await state.store.delete_message(principal.tenant, conversation_id, message_id)

    @post(
        "/{conversation_id:uuid}/messages",
        status_code=201,
        summary="Append messages without asking the model (after the head, or `parent_id`)",
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
                principal.tenant,
                conversation_id,
                [message_fields(m) for m in data.messages],
                parent_id=data.parent_id,
            )
            return Response(MessagesAppended(messages), status_code=201)

        return await idempotent(request, principal, state.turns, run)
