"""Conversations and their messages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET
from sqlalchemy import Connection, delete, exists, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BadRequest, NotFound
from service.schemas import ConversationOut, MessageOut, ParentId
from service.store.engine import StoreBase
from service.store.filters import ConversationFilter
from service.store.messages import (
    NO_SUCH_MESSAGE,
    append,
    check_no_running_turn,
    insert_messages,
    lock_conversation,
    message_rows,
    path,
    place_after,
    sibling_query,
    touch,
    with_siblings,
)
from service.store.records import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    NOT_A_CURSOR,
    B,
    C,
    M,
    conversation_out,
)
from service.store.retention import refuse_if_held
from service.tables import (
    branch_table,
    conversation_table,
    message_table,
    utcnow,
    uuid7,
)


class ConversationStore(StoreBase):
    async def create_conversation(
        self,
        tenant: str,
        *,
        title: str | None,
        model: str,
        params: dict[str, Any],
        metadata: dict[str, Any],
        messages: list[dict[str, Any]],
        user: str | None = None,
        expires_at: datetime | None = None,
        context: dict[str, Any] | None = None,
    ) -> tuple[ConversationOut, list[MessageOut]]:
        now = utcnow()
        conversation_id = uuid7()
        place = place_after(conversation_id, None, continues=False, siblings=0)
        rows = message_rows(place, messages, now)
        conversation = ConversationOut(
            id=conversation_id,
            title=title,
            model=model,
            params=params,
            metadata=metadata,
            message_count=len(messages),
            created_at=now,
            updated_at=now,
            head_id=rows[-1]["id"] if rows else None,
            user=user,
            archived=False,
            expires_at=expires_at,
            context=context,
        )

        def create(conn: Connection) -> list[MessageOut]:
            values = msgspec.structs.asdict(conversation)
            values["end_user"] = values.pop("user")
            conn.execute(insert(conversation_table).values(tenant=tenant, **values))
            return insert_messages(conn, place, rows)

        async with self._write() as conn:
            stored = await conn.run_sync(create)
        return conversation, stored

    async def list_conversations(
        self, filters: ConversationFilter, *, limit: int, cursor: str | None
    ) -> tuple[list[ConversationOut], str | None]:
        """One tenant's conversations (``filters.tenant``) that pass the filters, newest
        first; keyset pages."""
        query = filters.apply(select(*CONVERSATION_COLUMNS))
        scope = f"conversations:{filters.tenant}"
        rows, next_cursor = await self._conversation_page(
            query, scope=scope, limit=limit, cursor=cursor
        )
        return [conversation_out(r) for r in rows], next_cursor

    async def get_conversation(self, tenant: str, conversation_id: uuid.UUID) -> ConversationOut:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(*CONVERSATION_COLUMNS).where(C.id == conversation_id, C.tenant == tenant)
                )
            ).first()
        if row is None:
            raise NotFound("No conversation has this id.")
        return conversation_out(row)

    async def update_conversation(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        changes: dict[str, Any],
        *,
        head_id: uuid.UUID | None = None,
    ) -> ConversationOut:
        """Change the conversation's fields; with ``head_id``, also switch branch: the head
        becomes the newest leaf below that message (following the newest reply down), which
        is refused with 409 while a turn runs and is a 404 if the message is not in the
        conversation."""
        now = utcnow()

        def update_it(conn: Connection) -> Any:
            values = {COLUMN_OF.get(k, k): v for k, v in changes.items()}
            values["updated_at"] = now
            if head_id is not None:
                lock_conversation(conn, tenant, conversation_id)
                check_no_running_turn(conn, conversation_id, now)
                leaf = conn.execute(newest_leaf(conversation_id, head_id)).first()
                if leaf is None:
                    raise NotFound(NO_SUCH_MESSAGE)
                values.update(head_id=leaf.id, message_count=leaf.seq)
            return conn.execute(
                update(conversation_table)
                .where(C.id == conversation_id, C.tenant == tenant)
                .values(**values)
                .returning(*CONVERSATION_COLUMNS)
            ).first()

        async with self._write() as conn:
            row = await conn.run_sync(update_it)
        if row is None:
            raise NotFound("No conversation has this id.")
        return conversation_out(row)

    # ---- messages -----------------------------------------------------------------------

    async def list_messages(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        *,
        limit: int,
        cursor: str | None,
        descending: bool,
        head: uuid.UUID | None = None,
    ) -> tuple[list[MessageOut], str | None]:
        """A page of the path ending at ``head`` (default: the active path), in seq order.
        A cursor pages on along the path it was made for; each message carries its sibling
        count and index."""
        cursors, scope = await self.cursors(), f"messages:{conversation_id}"
        after: int | None = None
        if cursor:
            cursor_head, after = cursors.seq(scope, cursor)
            if head is not None and head != cursor_head:
                raise BadRequest(NOT_A_CURSOR)
            head = cursor_head
        async with self._read() as conn:
            found = (
                await conn.execute(
                    select(
                        C.head_id,
                        select(literal(True))
                        .where(M.id == head, M.conversation_id == C.id)
                        .scalar_subquery(),
                    ).where(C.id == conversation_id, C.tenant == tenant)
                )
            ).first()
            if found is None:
                raise NotFound("No conversation has this id.")
            if head is None:
                head = found.head_id
            elif not found[1]:
                raise NotFound(NO_SUCH_MESSAGE)
            if head is None:
                return [], None
            query = PATH_MESSAGES
            if after is not None:
                query = query.where(M.seq < after if descending else M.seq > after)
            query = query.order_by(M.seq.desc() if descending else M.seq).limit(limit + 1)
            rows = (await conn.execute(query, {"head_id": head})).all()
            items = await self._with_siblings(conn, rows[:limit])
        next_cursor = cursors.encode(scope, head, items[-1].seq) if len(rows) > limit else None
        return items, next_cursor

    async def list_siblings(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        *,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[MessageOut], str | None]:
        """The messages with the same parent as ``message_id`` (it among them), oldest first."""
        async with self._read() as conn:
            await self._owned(conn, tenant, conversation_id)
            parent = (
                await conn.execute(
                    select(M.parent_id).where(
                        M.id == message_id, M.conversation_id == conversation_id
                    )
                )
            ).first()
            if parent is None:
                raise NotFound(NO_SUCH_MESSAGE)
            (parent_id,) = parent
            cursors = await self.cursors()
            scope = f"siblings:{conversation_id}:{parent_id or 'root'}"
            query = select(*MESSAGE_COLUMNS).where(M.conversation_id == conversation_id)
            query = query.where(
                M.parent_id.is_(None) if parent_id is None else M.parent_id == parent_id
            )
            if cursor:
                query = query.where(M.id > cursors.ident(scope, cursor))
            rows = (await conn.execute(query.order_by(M.id).limit(limit + 1))).all()
            items = await self._with_siblings(conn, rows[:limit])
        next_cursor = cursors.encode(scope, items[-1].id) if len(rows) > limit else None
        return items, next_cursor

    async def append_messages(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        messages: list[dict[str, Any]],
        *,
        parent_id: ParentId = UNSET,
    ) -> list[MessageOut]:
        """Append messages after ``parent_id`` (unset: the head) without a turn; refused while
        a turn runs. The head becomes the last of them."""
        now = utcnow()

        def run(conn: Connection) -> list[MessageOut]:
            return append(conn, tenant, conversation_id, messages, parent_id, now).messages

        async with self._write() as conn:
            return await conn.run_sync(run)

    async def delete_message(
        self, tenant: str, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        """Delete a message and every message below it; refused while a turn runs. If the
        head was among them, the deleted message's parent becomes the head."""
        now = utcnow()

        def run(conn: Connection) -> None:
            conversation = lock_conversation(conn, tenant, conversation_id)
            refuse_if_held(conn, conversation_id)
            check_no_running_turn(conn, conversation_id, now)
            target = conn.execute(
                select(M.parent_id, M.seq).where(
                    M.id == message_id, M.conversation_id == conversation_id
                )
            ).first()
            if target is None:
                raise NotFound(NO_SUCH_MESSAGE)
            # The head is below the message if the message is on the head's path.
            head_inside = conversation.head_id is not None and (
                conn.execute(
                    path(M.id).where(M.seq == target.seq), {"head_id": conversation.head_id}
                ).scalar()
                == message_id
            )
            below = select(M.id).where(M.id == message_id).cte("below", recursive=True)
            below = below.union_all(select(M.id).where(M.parent_id == below.c.id))
            conn.execute(delete(message_table).where(M.id.in_(select(below.c.id))))
            # Branches left without messages (they were all below it) go too.
            conn.execute(
                delete(branch_table).where(
                    B.conversation_id == conversation_id,
                    ~exists().where(M.branch_id == B.id),
                )
            )
            head = {"head_id": target.parent_id, "message_count": target.seq - 1}
            touch(conn, conversation_id, now, **(head if head_inside else {}))

        async with self._write() as conn:
            await conn.run_sync(run)

    async def get_message(
        self, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> MessageOut | None:
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(*MESSAGE_COLUMNS).where(
                        M.id == message_id, M.conversation_id == conversation_id
                    )
                )
            ).all()
            items = await self._with_siblings(conn, rows)
        return items[0] if items else None

    async def message_at(
        self, conversation_id: uuid.UUID, seq: int, *, through: uuid.UUID | None = None
    ) -> MessageOut | None:
        """The message at ``seq`` on the conversation's active path, or on the path through
        ``through`` and down its newest replies (any tenant's: for admins); None if there is
        none."""
        async with self._read(may_lag=True) as conn:
            if through is None:
                head = (
                    await conn.execute(select(C.head_id).where(C.id == conversation_id))
                ).scalar()
            else:
                leaf = (await conn.execute(newest_leaf(conversation_id, through))).first()
                head = leaf.id if leaf else None
            if head is None:
                return None
            rows = (await conn.execute(PATH_MESSAGES.where(M.seq == seq), {"head_id": head})).all()
            items = await self._with_siblings(conn, rows)
        return items[0] if items else None

    async def _with_siblings(self, conn: AsyncConnection, rows: Sequence[Any]) -> list[MessageOut]:
        """Message rows as answered, with their sibling counts (one more query)."""
        query = sibling_query(rows)
        counts = (await conn.execute(*query)).all() if query is not None else []
        return with_siblings(rows, counts)


PATH_MESSAGES = path(*MESSAGE_COLUMNS)
# The column of a conversation's field where their names differ.
COLUMN_OF = {"user": "end_user"}


def newest_leaf(conversation_id: uuid.UUID, message_id: uuid.UUID) -> Any:
    """The id and seq of the newest leaf below a message of the conversation (the message
    itself if nothing follows it): from the message, follow its newest reply down, as one
    recursive query (an index lookup a level; a reply's seq is one more than its parent's).
    No row if the conversation has no such message."""
    child = message_table.alias("child")
    down = (
        select(M.id, M.seq)
        .where(M.id == message_id, M.conversation_id == conversation_id)
        .cte("down", recursive=True)
    )
    newest = (
        select(child.c.id)
        .where(child.c.parent_id == down.c.id)
        .order_by(child.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    down = down.union_all(select(newest, down.c.seq + 1).where(down.c.id.is_not(None)))
    return (
        select(down.c.id, down.c.seq)
        .where(down.c.id.is_not(None))
        .order_by(down.c.seq.desc())
        .limit(1)
    )
