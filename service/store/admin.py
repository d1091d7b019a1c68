"""Reads across every tenant, for admins: filtered lists, text search and stats; and the admin
web pages' sign-in sessions."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, false, func, insert, select

from service.store.engine import StoreBase
from service.store.filters import ConversationFilter
from service.store.records import (
    AS,
    CONVERSATION_COLUMNS,
    IMPORTING,
    C,
    K,
    Principal,
    T,
    hash_key,
)
from service.tables import (
    admin_session_table,
    api_key_table,
    conversation_table,
    message_table,
    turn_table,
    utcnow,
)


class AdminStore(StoreBase):
    async def admin_list(
        self, filters: ConversationFilter, *, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """Conversations of every tenant, newest first, with their tenant; keyset pages."""
        query = filters.apply(select(*CONVERSATION_COLUMNS, C.tenant))
        return await self._conversation_page(query, scope="admin", limit=limit, cursor=cursor)

    async def with_failed_turns(self, conversation_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these conversations have a failed turn (the list page marks them)."""
        if not conversation_ids:
            return set()
        query = (
            select(T.conversation_id)
            .where(T.status == "failed", T.conversation_id.in_(list(conversation_ids)))
            .distinct()
        )
        async with self._read(may_lag=True) as conn:
            return set((await conn.scalars(query)).all())

    async def stats(self, *, days: int = 30) -> dict[str, Any]:
        """Counts of conversations, messages and turns by status; tokens by model, tenant, day.

        Turns and tokens are this deployment's usage: turns brought in by imports are counted
        apart (``imported_turns``), and their tokens not at all.
        """
        tokens = func.coalesce(func.sum(T.usage["total_tokens"].as_integer()), 0)
        own = T.imported.is_(false())
        since = utcnow() - timedelta(days=days)
        day = func.date(T.created_at)
        async with self._read(may_lag=True) as conn:
            conversations = (
                await conn.execute(
                    select(func.count())
                    .select_from(conversation_table)
                    .where(C.tenant != IMPORTING)
                )
            ).scalar_one()
            # Every stored message, on every branch (message_count counts the active path).
            messages = (
                await conn.execute(select(func.count()).select_from(message_table))
            ).scalar_one()
            by_status: dict[str, int] = {}
            imported = 0
            for was_imported, status, count in await conn.execute(
                select(T.imported, T.status, func.count()).group_by(T.imported, T.status)
            ):
                if was_imported:
                    imported += count
                else:
                    by_status[status] = count
            by_model = (
                await conn.execute(
                    select(T.model, func.count(), tokens)
                    .where(own)
                    .group_by(T.model)
                    .order_by(T.model)
                )
            ).all()
            by_tenant = (
                await conn.execute(
                    select(C.tenant, func.count(T.id), tokens)
                    .select_from(turn_table.join(conversation_table, C.id == T.conversation_id))
                    .where(own)
                    .group_by(C.tenant)
                    .order_by(C.tenant)
                )
            ).all()
            by_day = (
                await conn.execute(
                    select(day, func.count(), tokens)
                    .where(own, T.created_at >= since)
                    .group_by(day)
                    .order_by(day)
                )
            ).all()
        return {
            "conversations": conversations,
            "messages": int(messages),
            "turns": {s: int(by_status.get(s, 0)) for s in ("running", "completed", "failed")},
            "imported_turns": int(imported),
            "tokens_by_model": [
                {"model": m, "turns": n, "total_tokens": int(t)} for m, n, t in by_model
            ],
            "tokens_by_tenant": [
                {"tenant": m, "turns": n, "total_tokens": int(t)} for m, n, t in by_tenant
            ],
            "by_day": [{"day": str(d), "turns": n, "total_tokens": int(t)} for d, n, t in by_day],
        }


class AdminSessionStore(StoreBase):
    """Sign-ins to the admin web pages. The session id is random and shown only to the browser;
    the database keeps its SHA-256 hash, as it does for API keys."""

    async def create_admin_session(self, key_id: uuid.UUID, *, lifetime: timedelta) -> str:
        """A new session for the key, valid for ``lifetime``; returns the session id. Sessions
        past their end are deleted on the way (an indexed range, so it stays cheap)."""
        session_id = secrets.token_urlsafe(32)
        now = utcnow()
        async with self._write() as conn:
            await conn.execute(delete(admin_session_table).where(AS.expires_at <= now))
            await conn.execute(
                insert(admin_session_table).values(
                    token_hash=hash_key(session_id),
                    key_id=key_id,
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )
        return session_id

    async def admin_session(self, session_id: str) -> Principal | None:
        """The admin signed in with this session id, or None if there is no such session, it
        has ended, or its key has been revoked since."""
        query = (
            select(K.id, K.tenant, K.is_admin)
            .select_from(admin_session_table.join(api_key_table, K.id == AS.key_id))
            .where(
                AS.token_hash == hash_key(session_id),
                AS.expires_at > utcnow(),
                K.revoked_at.is_(None),
                K.is_admin.is_(True),
            )
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return Principal(row[0], row[1], row[2]) if row else None

    async def end_admin_session(self, session_id: str) -> None:
        """Sign out: the session is deleted, so its id no longer works anywhere."""
        async with self._write() as conn:
            await conn.execute(
                delete(admin_session_table).where(AS.token_hash == hash_key(session_id))
            )
