"""The reads the OpenAI-compatible surface needs besides those of ``/v1``: a turn by its id
alone (a response id names no conversation), a path of messages from a seq on, a message by
its own id or its turn's, and a path's history for a response that is not stored."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, bindparam, delete, or_, select

from service.errors import NotFound, TurnInProgress
from service.schemas import MessageOut, TurnOut
from service.store.conversations import PATH_MESSAGES
from service.store.engine import StoreBase
from service.store.messages import read_history
from service.store.records import MESSAGE_COLUMNS, TURN_COLUMNS, C, M, T, message_out
from service.tables import conversation_table, message_table, turn_table

NO_SUCH_RESPONSE = "No response has this id."


# A turn of a tenant's conversation with its reply, in one statement (the reply's columns
# prefixed ``m_``).
_RESPONSE = (
    select(*TURN_COLUMNS, *(c.label(f"m_{c.name}") for c in MESSAGE_COLUMNS))
    .join(conversation_table, C.id == T.conversation_id)
    .outerjoin(message_table, M.id == T.reply_id)
    .where(T.id == bindparam("turn_id"), C.tenant == bindparam("tenant"))
)


def turn_out_of(row: Any) -> TurnOut:
    return TurnOut(**{column.name: row._mapping[column.name] for column in TURN_COLUMNS})


class ResponseStore(StoreBase):
    async def response_turn(
        self, tenant: str, turn_id: uuid.UUID
    ) -> tuple[TurnOut, MessageOut | None]:
        """A turn of one of the tenant's conversations, with its reply (None until it has
        one). Raises ``NotFound`` if there is no such turn, or if its reply was deleted."""
        async with self._read() as conn:
            row = (await conn.execute(_RESPONSE, {"turn_id": turn_id, "tenant": tenant})).first()
        if row is None:
            raise NotFound(NO_SUCH_RESPONSE)
        turn = turn_out_of(row)
        if turn.reply_id is None:
            return turn, None
        if row.m_id is None:  # the reply was deleted
            raise NotFound(NO_SUCH_RESPONSE)
        return turn, MessageOut(
            **{column.name: row._mapping[f"m_{column.name}"] for column in MESSAGE_COLUMNS}
        )

    async def path_from(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        *,
        head: uuid.UUID | None,
        seq: int | None,
        descending: bool,
        limit: int,
    ) -> list[MessageOut]:
        """Up to ``limit`` messages of the path ending at ``head`` (None: the active path),
        from ``seq`` on (that one included) in the order asked; ``NotFound`` if the tenant has
        no such conversation."""
        async with self._read() as conn:
            found = (
                await conn.execute(
                    select(C.head_id).where(C.id == conversation_id, C.tenant == tenant)
                )
            ).first()
            if found is None:
                raise NotFound("No conversation has this id.")
            head = head or found.head_id
            if head is None:
                return []
            query = PATH_MESSAGES
            if seq is not None:
                query = query.where(M.seq <= seq if descending else M.seq >= seq)
            query = query.order_by(M.seq.desc() if descending else M.seq).limit(limit)
            rows = (await conn.execute(query, {"head_id": head})).all()
        return [message_out(r) for r in rows]

    async def find_message(
        self, tenant: str, conversation_id: uuid.UUID, ident: uuid.UUID
    ) -> MessageOut:
        """The message of the conversation with this id, or the reply of the turn with this
        id; ``NotFound`` if there is none (or the conversation is not the tenant's)."""
        async with self._read() as conn:
            await self._owned(conn, tenant, conversation_id)
            row = (
                await conn.execute(
                    select(*MESSAGE_COLUMNS).where(
                        M.conversation_id == conversation_id,
                        or_(M.id == ident, M.turn_id == ident),
                    )
                )
            ).first()
        if row is None:
            raise NotFound("No item has this id in this conversation.")
        return message_out(row)

    async def history(self, head_id: uuid.UUID) -> list[dict[str, Any]]:
        """The path ending at ``head_id`` as the upstream receives it (see ``read_history``)."""

        def read(conn: Connection) -> list[dict[str, Any]]:
            return read_history(conn, head_id)

        async with self._read() as conn:
            return await conn.run_sync(read)

    async def delete_turn(self, turn_id: uuid.UUID) -> None:
        """Remove a turn that is not running (its messages are removed separately)."""
        async with self._write() as conn:
            removed = await conn.execute(
                delete(turn_table).where(T.id == turn_id, T.status != "running")
            )
        if not removed.rowcount:
            raise TurnInProgress("The response is still running; wait for it to finish.")
