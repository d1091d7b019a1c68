"""What a tenant can learn of what happened to its conversations (``/v1``): their deletions
(receipts, never content) and admins' reads of them."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State

from service.routes.params import Caller, Cursor, Limit, OfConversation
from service.schemas import AdminReadPage, DeletionPage


class AccountabilityController(Controller):
    path = "/v1"
    tags = ("audit",)

    @get("/deletions", summary="Receipts of the tenant's deleted conversations, newest first")
    async def deletions(
        self, principal: Caller, state: State, limit: Limit = 20, cursor: Cursor = None
    ) -> DeletionPage:
        """One receipt per deleted conversation, whoever deleted it (``kind``: ``tenant``,
        ``admin`` or ``retention``): when, which key, why, and how many messages and turns it
        had. Never its content."""
        items, next_cursor = await state.store.list_deletions(
            principal.tenant, limit=limit, cursor=cursor
        )
        return DeletionPage(items, next_cursor is not None, next_cursor)

    @get("/audit", summary="Admin reads of the tenant's conversations, newest first")
    async def audit(
        self,
        principal: Caller,
        state: State,
        conversation_id: OfConversation = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> AdminReadPage:
        """Every read of a conversation's messages by an admin (admin API, admin web pages,
        admin export): the admin key's id, when, how (``api``, ``page``, ``export``) and the
        reason it gave. Kept after the conversation is deleted."""
        items, next_cursor = await state.store.list_admin_reads(
            principal.tenant, conversation_id=conversation_id, limit=limit, cursor=cursor
        )
        return AdminReadPage(items, next_cursor is not None, next_cursor)
