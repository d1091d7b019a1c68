"""Transcripts: conversations read whole for export, imported whole, and forked."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import Conflict, NotFound, ValidationFailed
from service.schemas import ConversationOut
from service.store.admin import ConversationFilter
from service.store.conversations import ConversationStore
from service.store.records import (
    CONVERSATION_COLUMNS,
    IMPORTING,
    MESSAGE_COLUMNS,
    TURN_COLUMNS,
    C,
    ExportRows,
    ImportRows,
    M,
    T,
)
from service.tables import conversation_table, message_table, turn_table, utcnow, uuid7

log = logging.getLogger("convstore")

EXPORT_CONVERSATION_COLUMNS = (*CONVERSATION_COLUMNS, C.tenant)
# Rows an import writes in one transaction (a few ms of the event loop's time, and up to about
# 60 ms of SQLite's write lock for long messages, with the text index).
IMPORT_BATCH = 250
# SQLite's write lock has no queue: a writer waiting for it retries after sleeps of up to 100 ms,
# and an import that took the lock again at once would keep it from its turn for seconds.
SQLITE_BATCH_PAUSE = 0.01
# A conversation still being imported whose import wrote nothing for this long was left by a
# process that stopped.
ABANDONED_IMPORT = timedelta(hours=1)
COPIED_MESSAGE_COLUMNS = tuple(
    c for c in MESSAGE_COLUMNS if c.key not in ("id", "conversation_id", "turn_id")
)


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` ``IMPORT_BATCH`` at a time, each batch made only when it is written."""
    rows = iter(rows)
    while batch := list(itertools.islice(rows, IMPORT_BATCH)):
        yield batch


def _already_imported(existing: uuid.UUID) -> Conflict:
    return Conflict(
        "This transcript was already imported.",
        code="already_imported",
        conversation_id=str(existing),
    )


class TranscriptStore(ConversationStore):
    """Builds on the conversation store: imports and forks answer the new conversation."""

    async def export_one(self, tenant: str | None, conversation_id: uuid.UUID) -> ExportRows:
        """Everything a transcript holds for one conversation (any tenant's if ``tenant`` is
        None, for admins)."""
        query = select(*EXPORT_CONVERSATION_COLUMNS).where(C.id == conversation_id)
        if tenant is not None:
            query = query.where(C.tenant == tenant)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                raise NotFound("No conversation has this id.")
            batch = await self._export_batch(conn, [row])
        return batch[0]

    async def export_many(
        self, filters: ConversationFilter, *, batch_size: int = 200
    ) -> AsyncIterator[ExportRows]:
        """Every matching conversation, oldest first, read in keyset batches: memory stays
        bounded by one batch whatever the number of conversations."""
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            query = filters.apply(select(*EXPORT_CONVERSATION_COLUMNS))
            if after is not None:
                query = query.where(tuple_(C.created_at, C.id) > tuple_(*after))
            query = query.order_by(C.created_at, C.id).limit(batch_size)
            async with self._read() as conn:
                rows = (await conn.execute(query)).all()
                if not rows:
                    return
                batch = await self._export_batch(conn, rows)
            for item in batch:
                yield item
            if len(rows) < batch_size:
                return
            after = (rows[-1].created_at, rows[-1].id)

    async def count_conversations(self, filters: ConversationFilter) -> int:
        async with self._read() as conn:
            count: int = (
                await conn.execute(
                    filters.apply(select(func.count()).select_from(conversation_table))
                )
            ).scalar_one()
        return count

    async def _export_batch(self, conn: AsyncConnection, rows: Sequence[Any]) -> list[ExportRows]:
        ids = [r.id for r in rows]
        messages: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
        turns: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
        result = await conn.execute(
            select(*MESSAGE_COLUMNS)
            .where(M.conversation_id.in_(ids))
            .order_by(M.conversation_id, M.seq)
        )
        for m in result:
            messages[m.conversation_id].append(m)
        result = await conn.execute(
            select(*TURN_COLUMNS).where(T.conversation_id.in_(ids)).order_by(T.created_at, T.id)
        )
        for t in result:
            turns[t.conversation_id].append(t)
        return [ExportRows(r, messages[r.id], turns[r.id]) for r in rows]

    async def find_import(self, tenant: str, source_id: str) -> uuid.UUID | None:
        async with self._read() as conn:
            found: uuid.UUID | None = (
                await conn.execute(select(C.id).where(C.tenant == tenant, C.source_id == source_id))
            ).scalar()
        return found

    async def import_conversation(self, tenant: str, rows: ImportRows) -> ConversationOut:
        """Store an imported conversation with new ids. Nothing of it is seen before all of it
        is, and nothing is left if it fails.

        Its rows go in ``IMPORT_BATCH`` at a time, each batch in a short transaction of its own
        (the event loop serves other requests while each is written, and other writers get
        SQLite's write lock between two: the import pauses for them), under the tenant
        ``IMPORTING``, which no key has; a last short transaction gives the conversation to
        ``tenant``. If a batch fails, what was written is deleted; if the process dies, the next
        import deletes it.
        Raises ``Conflict`` (``already_imported``) if this tenant already imported
        ``source_id``.
        """
        source_id = rows.conversation["source_id"]
        existing = await self.find_import(tenant, source_id)
        if existing is not None:
            raise _already_imported(existing)
        now = utcnow()
        conversation_id = uuid7()
        turn_ids = {t["id"]: uuid7() for t in rows.turns}
        async with self._write() as conn:
            await conn.execute(
                delete(conversation_table).where(
                    C.tenant == IMPORTING, C.updated_at < now - ABANDONED_IMPORT
                )
            )
            await conn.execute(
                insert(conversation_table).values(
                    {
                        **rows.conversation,
                        "id": conversation_id,
                        "tenant": IMPORTING,
                        "source_id": None,
                        "message_count": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            )
        turns = (
            {
                **t,
                "id": turn_ids[t["id"]],
                "conversation_id": conversation_id,
                "deadline_at": t.get("completed_at") or now,
            }
            for t in rows.turns
        )
        messages = (
            {
                **m,
                "id": uuid7(),
                "conversation_id": conversation_id,
                "turn_id": turn_ids.get(m.get("turn_id")),
            }
            for m in rows.messages
        )
        try:
            for table, batch in itertools.chain(
                ((turn_table, b) for b in _batches(turns)),
                ((message_table, b) for b in _batches(messages)),
            ):
                async with self._write() as conn:
                    await conn.execute(insert(table), batch)
                    await conn.execute(  # still in progress: not the leftover of a dead process
                        update(conversation_table)
                        .where(C.id == conversation_id)
                        .values(updated_at=utcnow())
                    )
                if self.dialect == "sqlite":
                    await anyio.sleep(SQLITE_BATCH_PAUSE)
            async with self._write() as conn:
                await conn.execute(
                    update(conversation_table)
                    .where(C.id == conversation_id)
                    .values(
                        tenant=tenant,
                        source_id=source_id,
                        message_count=len(rows.messages),
                        created_at=rows.conversation["created_at"],
                        updated_at=rows.conversation["updated_at"],
                    )
                )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):  # even when the request is cancelled
                await self._discard_import(conversation_id)
            if isinstance(exc, IntegrityError):  # a concurrent import of the same source won
                existing = await self.find_import(tenant, source_id)
                if existing is not None:
                    raise _already_imported(existing) from None
            raise
        return await self.get_conversation(tenant, conversation_id)

    async def _discard_import(self, conversation_id: uuid.UUID) -> None:
        """Delete an import that failed, with what it wrote (a later import deletes it if
        this cannot, say with the database gone)."""
        try:
            async with self._write() as conn:
                await conn.execute(
                    delete(conversation_table).where(C.id == conversation_id, C.tenant == IMPORTING)
                )
        except Exception:
            log.exception("could not delete the failed import %s", conversation_id)

    async def fork(
        self, tenant: str, conversation_id: uuid.UUID, through_seq: int | None
    ) -> ConversationOut:
        """A new conversation holding a copy of messages 1..``through_seq`` (default: all)."""
        now = utcnow()
        new_id = uuid7()
        async with self._write() as conn:
            source = (
                await conn.execute(
                    select(C.title, C.model, C.params, C["metadata"], C.message_count).where(
                        C.id == conversation_id, C.tenant == tenant
                    )
                )
            ).first()
            if source is None:
                raise NotFound("No conversation has this id.")
            count = source.message_count if through_seq is None else through_seq
            if count > source.message_count:
                raise ValidationFailed(
                    f"`through_seq` is {through_seq}, but the conversation has only "
                    f"{source.message_count} messages."
                )
            await conn.execute(
                insert(conversation_table).values(
                    id=new_id,
                    tenant=tenant,
                    title=source.title,
                    model=source.model,
                    params=source.params,
                    metadata=source.metadata,
                    message_count=count,
                    created_at=now,
                    updated_at=now,
                    forked_from_id=conversation_id,
                    forked_through_seq=count,
                )
            )
            rows = [
                {**row._mapping, "id": uuid7(), "conversation_id": new_id, "turn_id": None}
                for row in await conn.execute(
                    select(*COPIED_MESSAGE_COLUMNS)
                    .where(M.conversation_id == conversation_id, M.seq <= count)
                    .order_by(M.seq)
                )
            ]
            if rows:
                await conn.execute(insert(message_table), rows)
        return await self.get_conversation(tenant, new_id)
