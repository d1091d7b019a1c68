"""Which conversations a list, a search or an export covers: the filters of the tenant's list
(`GET /v1/conversations`) and of the admin's (`/admin`), written once for both."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    cast,
    column,
    exists,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
    union,
)
from sqlalchemy.dialects.postgresql import JSONB

from service.store.records import IMPORTING, C, M, T
from service.tables import conversation_table


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """Which conversations a read covers: one tenant's, or (for admins) any filter.

    ``q`` is text to find in titles or message content, through the database's own text
    index (PostgreSQL full-text search, SQLite FTS5); ``status`` keeps conversations having
    a turn in that status; ``user`` those of one end user; ``archived`` those archived (True)
    or not (False); ``metadata`` those whose metadata has each of these keys with exactly this
    string value.
    """

    tenant: str | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    q: str | None = None
    status: str | None = None
    user: str | None = None
    archived: bool | None = None
    metadata: tuple[tuple[str, str], ...] = ()
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
        if self.user is not None:
            query = query.where(C.end_user == self.user)
        if self.archived is not None:
            query = query.where(C.archived == self.archived)
        if self.metadata:
            query = query.where(metadata_match(self.dialect, dict(self.metadata)))
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


def metadata_match(dialect: str, pairs: dict[str, str]) -> ColumnElement[bool]:
    """Conversations whose metadata has each key with exactly this string value."""
    if dialect == "postgresql":
        # One containment test, read like the GIN index's expression (CAST(metadata AS jsonb)).
        return cast(C["metadata"], JSONB).op("@>")(literal(pairs, JSONB))
    found = []
    for key, value in pairs.items():
        # json_each rather than a JSON path: any key, whatever characters it holds.
        entry = func.json_each(C["metadata"]).table_valued("key", "value", "type")
        found.append(
            exists().where(entry.c.key == key, entry.c.type == "text", entry.c.value == value)
        )
    return and_(*found)
