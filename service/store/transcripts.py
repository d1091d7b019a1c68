"""Transcripts: conversations read whole for export, imported whole, and forked."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import Conflict, NotFound, ValidationFailed
from service.schemas import ConversationOut
from service.store.admin import ConversationFilter
from service.store.conversations import PATH_MESSAGES, ConversationStore, newest_leaf
from service.store.messages import (
    NO_SUCH_MESSAGE,
    Place,
    insert_messages,
    insert_rows,
    message_rows,
    path,
    place_after,
    sibling_query,
    with_siblings,
)
from service.store.records import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    TURN_COLUMNS,
    C,
    ExportRows,
    M,
    PathView,
    T,
)
from service.tables import conversation_table, turn_table, utcnow, uuid7

EXPORT_CONVERSATION_COLUMNS = (*CONVERSATION_COLUMNS, C.tenant)
COPIED_MESSAGE_COLUMNS = tuple(
    c
    for c in MESSAGE_COLUMNS
    if c.key not in ("id", "conversation_id", "parent_id", "seq", "turn_id")
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

    async def path_view(self, conversation_id: uuid.UUID, through: uuid.UUID | None) -> PathView:
        """One path of any tenant's conversation, for admins to read: the active path, or the
        path through ``through`` and down its newest replies (``NotFound`` if the conversation
        has no such message); with every turn, and how many messages it holds in all."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(*EXPORT_CONVERSATION_COLUMNS).where(C.id == conversation_id)
                )
            ).first()
            if row is None:
                raise NotFound("No conversation has this id.")
            head = row.head_id
            if through is not None:
                leaf = (await conn.execute(newest_leaf(conversation_id, through))).first()
                if leaf is None:
                    raise NotFound(NO_SUCH_MESSAGE)
                head = leaf.id
            path_rows = []
            if head is not None:
                path_rows = (
                    await conn.execute(PATH_MESSAGES.order_by(M.seq), {"head_id": head})
                ).all()
            query = sibling_query(path_rows)
            siblings = (await conn.execute(*query)).all() if query is not None else []
            total = (
                await conn.execute(select(func.count()).where(M.conversation_id == conversation_id))
            ).scalar_one()
            turns = (
                await conn.execute(
                    select(*TURN_COLUMNS)
                    .where(T.conversation_id == conversation_id)
                    .order_by(T.created_at, T.id)
                )
            ).all()
        return PathView(
            conversation=row,
            messages=with_siblings(path_rows, siblings),
            neighbours={s.id: (s.before, s.after) for s in siblings},
            active=head == row.head_id,
            total=total,
            turns=list(turns),
        )

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
            .order_by(M.conversation_id, M.seq, M.id)
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

    async def import_conversation(
        self,
        tenant: str,
        conversation: dict[str, Any],
        messages: list[dict[str, Any]],
        turns: list[dict[str, Any]],
        *,
        head: str | None = None,
    ) -> ConversationOut:
        """Store an imported conversation in one transaction, with new ids.

        ``conversation`` holds the stored columns (``source_id`` among them); ``messages`` and
        ``turns`` the rows with their transcript ids, which are mapped to new ones. Each
        message names its parent by transcript id (``parent_id``, None for a first message),
        and comes after its parent; ``head`` is the transcript id of the active path's last
        message (default: the last message). Raises ``Conflict`` (``already_imported``) if this
        tenant already imported ``source_id``.
        """
        now = utcnow()
        conversation_id = uuid7()
        turn_ids = {t["id"]: uuid7() for t in turns}
        rows, branches = _tree_rows(conversation_id, messages, turn_ids, now)
        by_id = {m["id"]: row for m, row in zip(messages, rows, strict=True)}
        top = by_id.get(head) if head is not None else (rows[-1] if rows else None)
        replies = {(row["turn_id"], row["seq"]): row["id"] for row in rows if row["turn_id"]}
        values = {
            "id": conversation_id,
            "tenant": tenant,
            "head_id": top["id"] if top else None,
            "message_count": top["seq"] if top else 0,
            "created_at": now,
            "updated_at": now,
            **conversation,
        }
        try:
            async with self._write() as conn:
                await conn.execute(insert(conversation_table).values(**values))
                if turns:
                    await conn.execute(
                        insert(turn_table),
                        [
                            {
                                **t,
                                "id": turn_ids[t["id"]],
                                "conversation_id": conversation_id,
                                "reply_id": replies.get((turn_ids[t["id"]], t.get("reply_seq"))),
                                "deadline_at": t.get("completed_at") or now,
                            }
                            for t in turns
                        ],
                    )
                await conn.run_sync(insert_rows, branches, rows)
        except IntegrityError:
            existing = await self.find_import(tenant, str(conversation.get("source_id")))
            if existing is None:
                raise
            raise Conflict(
                "This transcript was already imported.",
                code="already_imported",
                conversation_id=str(existing),
            ) from None
        return await self.get_conversation(tenant, conversation_id)

    async def fork(
        self, tenant: str, conversation_id: uuid.UUID, through_seq: int | None
    ) -> ConversationOut:
        """A new conversation holding a copy of messages 1..``through_seq`` (default: all) of
        the active path."""
        now = utcnow()
        new_id = uuid7()
        async with self._write() as conn:
            source = (
                await conn.execute(
                    select(
                        C.title, C.model, C.params, C["metadata"], C.message_count, C.head_id
                    ).where(C.id == conversation_id, C.tenant == tenant)
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
            copied = []
            if count and source.head_id is not None:
                copied = [
                    dict(row._mapping)
                    for row in await conn.execute(
                        path(*COPIED_MESSAGE_COLUMNS).where(M.seq <= count).order_by(M.seq),
                        {"head_id": source.head_id},
                    )
                ]
            place = place_after(new_id, None, continues=False, siblings=0)
            rows = message_rows(place, copied, now)
            await conn.execute(
                insert(conversation_table).values(
                    id=new_id,
                    tenant=tenant,
                    title=source.title,
                    model=source.model,
                    params=source.params,
                    metadata=source.metadata,
                    head_id=rows[-1]["id"] if rows else None,
                    message_count=count,
                    created_at=now,
                    updated_at=now,
                    forked_from_id=conversation_id,
                    forked_through_seq=count,
                )
            )
            await conn.run_sync(insert_messages, place, rows)
        return await self.get_conversation(tenant, new_id)


def _tree_rows(
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    turn_ids: dict[Any, uuid.UUID],
    now: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The message and branch rows of an imported tree: each message placed after its parent
    as a new message would be (on its parent's branch while that branch has no message after
    the parent, else on a new branch), with a new id."""
    placed: dict[Any, dict[str, Any]] = {}
    taken: set[tuple[uuid.UUID, int]] = set()
    rows: list[dict[str, Any]] = []
    branches: list[dict[str, Any]] = []
    for message in messages:
        parent = placed.get(message.get("parent_id"))
        anchor = (parent["id"], parent["branch_id"], parent["seq"]) if parent else None
        continues = parent is not None and (parent["branch_id"], parent["seq"] + 1) not in taken
        place: Place = place_after(conversation_id, anchor, continues=continues, siblings=0)
        if place.fork is not None:
            branches.append({"id": place.branch_id, **place.fork})
        fields = {k: v for k, v in message.items() if k not in ("id", "parent_id", "seq")}
        fields["turn_id"] = turn_ids.get(message.get("turn_id"))
        (row,) = message_rows(place, [fields], now)
        taken.add((place.branch_id, place.seq))
        placed[message["id"]] = row
        rows.append(row)
    return rows, branches
