"""Conversations and their messages."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import Connection, delete, insert, select, tuple_, update

from service.errors import NotFound
from service.schemas import ConversationOut, MessageOut
from service.store.engine import StoreBase
from service.store.messages import check_no_running_turn, insert_messages, message_rows, reserve
from service.store.records import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    C,
    M,
    T,
    conversation_out,
    message_out,
)
from service.tables import conversation_table, message_table, turn_table, utcnow, uuid7


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
    ) -> tuple[ConversationOut, list[MessageOut]]:
        now = utcnow()
        conversation = ConversationOut(
            id=uuid7(),
            title=title,
            model=model,
            params=params,
            metadata=metadata,
            message_count=len(messages),
            created_at=now,
            updated_at=now,
        )
        rows = message_rows(conversation.id, messages, 1, now)

        def create(conn: Connection) -> list[MessageOut]:
            conn.execute(
                insert(conversation_table).values(
                    tenant=tenant, **msgspec.structs.asdict(conversation)
                )
            )
            return insert_messages(conn, rows)

        async with self._write() as conn:
            stored = await conn.run_sync(create)
        return conversation, stored

    async def list_conversations(
        self, tenant: str, *, limit: int, cursor: str | None
    ) -> tuple[list[ConversationOut], str | None]:
        query = select(*CONVERSATION_COLUMNS).where(C.tenant == tenant)
        cursors, scope = await self.cursors(), f"conversations:{tenant}"
        if cursor:
            created, ident = cursors.created(scope, cursor)
            query = query.where(tuple_(C.created_at, C.id) < tuple_(created, ident))
        query = query.order_by(C.created_at.desc(), C.id.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        items = [conversation_out(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = cursors.encode(scope, items[-1].created_at, items[-1].id)
        return items, next_cursor

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
        self, tenant: str, conversation_id: uuid.UUID, changes: dict[str, Any]
    ) -> ConversationOut:
        values = {**changes, "updated_at": utcnow()}
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(conversation_table)
                    .where(C.id == conversation_id, C.tenant == tenant)
                    .values(**values)
                    .returning(*CONVERSATION_COLUMNS)
                )
            ).first()
        if row is None:
            raise NotFound("No conversation has this id.")
        return conversation_out(row)

    async def delete_conversation(self, tenant: str, conversation_id: uuid.UUID) -> None:
        async with self._write() as conn:
            # Children first, so no database-level cascade setting is needed.
            owned = select(C.id).where(C.id == conversation_id, C.tenant == tenant)
            await conn.execute(delete(message_table).where(M.conversation_id.in_(owned)))
            await conn.execute(delete(turn_table).where(T.conversation_id.in_(owned)))
            result = await conn.execute(
                delete(conversation_table).where(C.id == conversation_id, C.tenant == tenant)
            )
        if not result.rowcount:
            raise NotFound("No conversation has this id.")

    # ---- messages -----------------------------------------------------------------------

    async def list_messages(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        *,
        limit: int,
        cursor: str | None,
        descending: bool,
    ) -> tuple[list[MessageOut], str | None]:
        query = select(*MESSAGE_COLUMNS).where(M.conversation_id == conversation_id)
        cursors, scope = await self.cursors(), f"messages:{conversation_id}"
        if cursor:
            after = cursors.seq(scope, cursor)
            query = query.where(M.seq < after if descending else M.seq > after)
        query = query.order_by(M.seq.desc() if descending else M.seq).limit(limit + 1)
        async with self._read() as conn:
            await self._owned(conn, tenant, conversation_id)
            rows = (await conn.execute(query)).all()
        items = [message_out(r) for r in rows[:limit]]
        next_cursor = cursors.encode(scope, items[-1].seq) if len(rows) > limit else None
        return items, next_cursor

    async def append_messages(
        self, tenant: str, conversation_id: uuid.UUID, messages: list[dict[str, Any]]
    ) -> list[MessageOut]:
        """Append messages without a turn; refused while a turn runs."""
        now = utcnow()

        def append(conn: Connection) -> list[MessageOut]:
            before, _, _ = reserve(conn, tenant, conversation_id, len(messages), now)
            check_no_running_turn(conn, conversation_id, now)
            return insert_messages(conn, message_rows(conversation_id, messages, before + 1, now))

        async with self._write() as conn:
            return await conn.run_sync(append)

    async def get_message(self, conversation_id: uuid.UUID, seq: int) -> MessageOut | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(*MESSAGE_COLUMNS).where(
                        M.conversation_id == conversation_id, M.seq == seq
                    )
                )
            ).first()
        return message_out(row) if row else None
