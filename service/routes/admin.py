"""The admin API (``/admin``, admin keys only): every tenant's conversations, stats, export."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from litestar import Controller, Response, delete, get, patch
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter
from litestar.response import Stream
from msgspec import Struct

from service import transcripts
from service.audit import provide_admin_reason
from service.errors import BadRequest
from service.observability import observe_deletions
from service.routes.params import (
    Admin,
    AdminReason,
    Archived,
    ConversationId,
    Cursor,
    EndUserFilter,
    Limit,
    OfConversation,
    Query,
)
from service.routes.transcripts import attachment, export_stream
from service.schemas import (
    NO_NUL,
    AdminReadPage,
    ConversationOut,
    DeletionPage,
    MessageOut,
    Strict,
    TurnOut,
)
from service.store import ConversationFilter, Deleter, ReadBy, Store

Tenant = Annotated[
    str | None, QueryParameter(max_length=200, pattern=NO_NUL, description="Only this tenant's.")
]
Model = Annotated[
    str | None, QueryParameter(max_length=200, pattern=NO_NUL, description="Only this model's.")
]
# A date, or a date and time with or without its offset (without: UTC). Read as text, as
# Litestar would otherwise take a number for a Unix time.
DATE_TIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$"
After = Annotated[
    str | None,
    QueryParameter(
        pattern=DATE_TIME, description="Created at or after (ISO 8601; without an offset, UTC)."
    ),
]
Before = Annotated[
    str | None,
    QueryParameter(
        pattern=DATE_TIME, description="Created before (ISO 8601; without an offset, UTC)."
    ),
]
Status = Annotated[
    Literal["running", "completed", "failed"] | None,
    QueryParameter(description="Only conversations having a turn in this status."),
]


class AdminConversation(ConversationOut, kw_only=True):
    tenant: str


class AdminConversationPage(Struct):
    data: list[AdminConversation]
    has_more: bool
    next_cursor: str | None


class AdminConversationPatch(Strict):
    # Under a legal hold no one may delete the conversation (nor its messages), retention
    # included.
    legal_hold: bool


class AdminConversationDetail(Struct):
    conversation: AdminConversation
    messages: list[MessageOut]
    turns: list[TurnOut]


async def provide_filters(
    admin: Admin,
    state: State,
    tenant: Tenant = None,
    model: Model = None,
    q: Query = None,
    created_after: After = None,
    created_before: Before = None,
    status: Status = None,
    user: EndUserFilter = None,
    archived: Archived = None,
) -> ConversationFilter:
    """The admin routes' filters, from their query parameters. It takes the admin key first,
    so that a request without one is a 401 whatever its parameters."""
    after, before = (
        _instant("created_after", created_after),
        _instant("created_before", created_before),
    )
    if after and before and after >= before:
        raise BadRequest("`created_after` must be before `created_before`.")
    store: Store = state.store
    return ConversationFilter(
        tenant=tenant,
        model=model,
        q=q,
        created_after=after,
        created_before=before,
        status=status,
        user=user,
        archived=archived,
        dialect=store.dialect,
    )


def _instant(name: str, value: str | None) -> datetime | None:
    """``value`` in UTC (a time without an offset is taken as UTC); 400 if it names no real
    date (``2026-02-30``) or UTC cannot hold it (``9999-12-31T23:59:59-23:59`` is in the year
    10000 there)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"`{name}` is not a real date and time.") from None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise BadRequest(f"`{name}` is out of the range of dates this service stores.") from None


def admin_conversation(row: Any) -> AdminConversation:
    return AdminConversation(**row._mapping)


class AdminController(Controller):
    path = "/admin"
    tags = ("admin",)
    dependencies = {  # noqa: RUF012 - Litestar's own layout
        "filters": Provide(provide_filters),
        "reason": Provide(provide_admin_reason),
    }

    @get("/conversations", summary="Every tenant's conversations, newest first, filtered")
    async def list_conversations(
        self,
        admin: Admin,
        state: State,
        filters: NamedDependency[ConversationFilter],
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> AdminConversationPage:
        """Keyset pages that stay correct while rows are added. ``q`` uses the database's own
        text index (PostgreSQL full-text search, SQLite FTS5): every word must appear."""
        store: Store = state.store
        rows, next_cursor = await store.admin_list(filters, limit=limit, cursor=cursor)
        return AdminConversationPage(
            [admin_conversation(r) for r in rows], next_cursor is not None, next_cursor
        )

    @get(
        "/conversations/{conversation_id:uuid}",
        summary="One conversation with its tenant, every message and every turn",
    )
    async def get_conversation(
        self, conversation_id: ConversationId, admin: Admin, state: State, reason: AdminReason
    ) -> AdminConversationDetail:
        """The whole tree: every message with its ``parent_id``, by ``seq`` (parents first);
        the conversation's ``head_id`` ends its active path. The read is recorded (with
        ``X-Admin-Reason``); the tenant sees it at ``GET /v1/audit``."""
        store: Store = state.store
        await store.record_admin_reads(ReadBy(admin.key_id, "api", reason), [conversation_id])
        rows = await store.export_one(None, conversation_id)
        return AdminConversationDetail(
            conversation=admin_conversation(rows.conversation),
            messages=[MessageOut(**m._mapping) for m in rows.messages],
            turns=[TurnOut(**t._mapping) for t in rows.turns],
        )

    @get(
        "/conversations/{conversation_id:uuid}/export",
        summary="Any tenant's conversation as a JSON transcript",
    )
    async def export_conversation(
        self, conversation_id: ConversationId, admin: Admin, state: State, reason: AdminReason
    ) -> Response[bytes]:
        """The read is recorded, as for ``GET /admin/conversations/{id}``."""
        store: Store = state.store
        await store.record_admin_reads(ReadBy(admin.key_id, "api", reason), [conversation_id])
        rows = await store.export_one(None, conversation_id)
        return Response(
            transcripts.encode(transcripts.build(rows)),
            media_type="application/json",
            headers=attachment(f"conversation-{conversation_id}.json"),
        )

    @get(
        "/stats",
        summary="Conversations, messages, turns by status, tokens by model, tenant and day",
    )
    async def stats(
        self,
        admin: Admin,
        state: State,
        days: Annotated[int, QueryParameter(ge=1, le=366)] = 30,
    ) -> dict[str, Any]:
        stats: dict[str, Any] = await state.store.stats(days=days)
        return stats

    @get("/export", summary="NDJSON transcripts of every matching conversation, streamed")
    async def export(
        self,
        admin: Admin,
        state: State,
        filters: NamedDependency[ConversationFilter],
        reason: AdminReason,
    ) -> Stream:
        """One transcript per line, oldest first, with constant memory. Each conversation's
        read is recorded (with ``X-Admin-Reason``) before its line is sent."""
        read_by = ReadBy(admin.key_id, "export", reason)
        return export_stream(state.store, filters, "conversations.ndjson", read_by=read_by)

    @patch(
        "/conversations/{conversation_id:uuid}",
        summary="Put any tenant's conversation under a legal hold, or lift it",
    )
    async def patch_conversation(
        self,
        conversation_id: ConversationId,
        admin: Admin,
        state: State,
        data: JSONBody[AdminConversationPatch],
    ) -> AdminConversation:
        """``{"legal_hold": true}``: no one may delete the conversation or its messages (its
        tenant and admins get 409 ``legal_hold``) and retention skips it, until
        ``{"legal_hold": false}``."""
        row = await state.store.set_legal_hold(conversation_id, data.legal_hold)
        return admin_conversation(row)

    @delete(
        "/conversations/{conversation_id:uuid}",
        status_code=204,
        summary="Delete any tenant's conversation completely",
    )
    async def delete_conversation(
        self, conversation_id: ConversationId, admin: Admin, state: State, reason: AdminReason
    ) -> None:
        """Leaves a deletion receipt with the admin key's id and ``X-Admin-Reason``, which the
        tenant sees at ``GET /v1/deletions``; 409 ``legal_hold`` while the conversation is
        held."""
        store: Store = state.store
        receipt = await store.delete_conversation(
            None, conversation_id, Deleter("admin", admin.key_id, reason)
        )
        observe_deletions("admin", [receipt])

    @get("/deletions", summary="Every tenant's deletion receipts, newest first")
    async def deletions(
        self,
        admin: Admin,
        state: State,
        tenant: Tenant = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> DeletionPage:
        items, next_cursor = await state.store.list_deletions(tenant, limit=limit, cursor=cursor)
        return DeletionPage(items, next_cursor is not None, next_cursor)

    @get("/audit", summary="Every admin read of a conversation, newest first")
    async def audit(
        self,
        admin: Admin,
        state: State,
        tenant: Tenant = None,
        conversation_id: OfConversation = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> AdminReadPage:
        items, next_cursor = await state.store.list_admin_reads(
            tenant, conversation_id=conversation_id, limit=limit, cursor=cursor
        )
        return AdminReadPage(items, next_cursor is not None, next_cursor)
