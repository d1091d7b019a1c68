"""Reads across every tenant, for admins: filtered lists, text search and stats; and the admin
web pages' sign-in sessions."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    column,
    delete,
    false,
    func,
    insert,
    literal_column,
    select,
    table,
    text,
    tuple_,
    union,
)

from service.store.engine import StoreBase
from service.store.records import (
    AS,
    CONVERSATION_COLUMNS,
    IMPORTING,
    C,
    K,
    M,
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


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """Which conversations a read covers: one tenant's, or (for admins) any filter.

    ``q`` is text to find in titles or message content, through the database's own text
    index (PostgreSQL full-text search, SQLite FTS5); ``status`` keeps conversations having
    a turn in that status.
    """

    tenant: str | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    q: str | None = None
    status: str | None = None
    dialect: str = "sqlite"

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.tenant is not None:
            query = query.where(C.tenant == self.tenant)
        else:  # every tenant's, but none still being imported
            query = query.where(C.tenant != IMPORTING)
        if self.model is not None:
            query = query.where(C.model == self.model)
        if self.created_after is not None:
            query = query.where(C.created_at >= self.created_after)
        if self.created_before is not None:
            query = query.where(C.created_at < self.created_before)
        if self.status is not None:
            query = query.where(C.id.in_(select(T.conversation_id).where(T.status == self.status)))
        if self.q is not None and self.q.strip():
            query = query.where(text_match(self.dialect, self.q))
        return query


_SIMPLE: ColumnElement[Any] = literal_column("'simple'::regconfig")
_EMPTY: ColumnElement[Any] = literal_column("''::text")
_SEARCH_TEXT = table("search_text", column("conv"))


def text_match(dialect: str, q: str) -> ColumnElement[bool]:
    """Conversations whose title or any message contains every word of ``q``."""
    if dialect == "postgresql":
        # Each side must read exactly like its GIN index's expression, and the two sides are a
        # UNION of ids (an OR of the two would make the planner scan every conversation).
        query = func.plainto_tsquery(_SIMPLE, q)
        titled = conversation_table.alias("titled")
        in_titles = select(titled.c.id).where(
            func.to_tsvector(_SIMPLE, func.coalesce(titled.c.title, _EMPTY)).op("@@")(query)
        )
        in_messages = select(M.conversation_id).where(
            func.to_tsvector(_SIMPLE, func.search_content_text(M.content)).op("@@")(query)
        )
        return C.id.in_(union(in_titles, in_messages))
    words = [w for w in q.split() if w]
    phrase = " ".join('"' + w.replace('"', '""') + '"' for w in words)
    matches = select(_SEARCH_TEXT.c.conv).where(
        text("search_text MATCH :search_query").bindparams(search_query=f"body : ({phrase})")
    )
    return C.id.in_(matches)


class AdminStore(StoreBase):
    async def admin_list(
        self, filters: ConversationFilter, *, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """Conversations of every tenant, newest first, with their tenant; keyset pages."""
        query = filters.apply(select(*CONVERSATION_COLUMNS, C.tenant))
        cursors = await self.cursors()
        if cursor:
            created, ident = cursors.created("admin", cursor)
            query = query.where(tuple_(C.created_at, C.id) < tuple_(created, ident))
        query = query.order_by(C.created_at.desc(), C.id.desc()).limit(limit + 1)
        async with self._read(may_lag=True) as conn:
            rows = (await conn.execute(query)).all()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = cursors.encode("admin", rows[-1].created_at, rows[-1].id)
        return list(rows), next_cursor

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
