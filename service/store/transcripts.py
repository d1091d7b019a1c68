"""Transcripts: conversations read whole for export, imported whole, and forked."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import anyio
from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import Conflict, NotFound, ValidationFailed
from service.schemas import ConversationOut
from service.store.conversations import PATH_MESSAGES, ConversationStore, newest_leaf
from service.store.filters import ConversationFilter
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
    IMPORTING,
    MESSAGE_COLUMNS,
    TURN_COLUMNS,
    C,
    ExportRows,
    ImportRows,
    M,
    PathView,
    ReadBy,
    S,
    T,
)
from service.store.retention import RetentionStore
from service.tables import conversation_table, summary_table, turn_table, utcnow, uuid7

log = logging.getLogger("convstore")
_T = TypeVar("_T")

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
SUMMARY_COLUMNS = (
    S.id,
    S.conversation_id,
    S.upto_id,
    S.upto_seq,
    S.covers,
    S.content,
    S.tokens,
    S.turn_id,
    S.created_at,
)
COPIED_MESSAGE_COLUMNS = tuple(
    c
    for c in MESSAGE_COLUMNS
    if c.key not in ("id", "conversation_id", "parent_id", "seq", "turn_id")
)


def _batches(rows: Iterable[_T]) -> Iterator[list[_T]]:
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


class TranscriptStore(ConversationStore, RetentionStore):
    """Builds on the conversation store: imports and forks answer the new conversation."""

    async def export_one(self, tenant: str | None, conversation_id: uuid.UUID) -> ExportRows:
        """Everything a transcript holds for one conversation (any tenant's if ``tenant`` is
        None, for admins, read from the replica if there is one)."""
        query = select(*EXPORT_CONVERSATION_COLUMNS).where(C.id == conversation_id)
        if tenant is not None:
            query = query.where(C.tenant == tenant)
        async with self._read(may_lag=tenant is None) as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                raise NotFound("No conversation has this id.")
            batch = await self._export_batch(conn, [row])
        return batch[0]

    async def path_view(self, conversation_id: uuid.UUID, through: uuid.UUID | None) -> PathView:
        """One path of any tenant's conversation, for admins to read: the active path, or the
        path through ``through`` and down its newest replies (``NotFound`` if the conversation
        has no such message); with every turn, and how many messages it holds in all."""
        async with self._read(may_lag=True) as conn:
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
        self, filters: ConversationFilter, *, batch_size: int = 200, read_by: ReadBy | None = None
    ) -> AsyncIterator[ExportRows]:
        """Every matching conversation, oldest first, read in keyset batches: memory stays
        bounded by one batch whatever the number of conversations. With ``read_by`` (an
        admin's export), each batch's reads are recorded before it is handed out."""
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            query = filters.apply(select(*EXPORT_CONVERSATION_COLUMNS))
            if after is not None:
                query = query.where(tuple_(C.created_at, C.id) > tuple_(*after))
            query = query.order_by(C.created_at, C.id).limit(batch_size)
            async with self._read(may_lag=True) as conn:
                rows = (await conn.execute(query)).all()
                if not rows:
                    return
                batch = await self._export_batch(conn, rows)
            if read_by is not None:
                await self.record_admin_reads(read_by, [r.id for r in rows])
            for item in batch:
                yield item
            if len(rows) < batch_size:
                return
            after = (rows[-1].created_at, rows[-1].id)

    async def count_conversations(self, filters: ConversationFilter) -> int:
        async with self._read(may_lag=True) as conn:
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
        summaries: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
        result = await conn.execute(
            select(*SUMMARY_COLUMNS)
            .where(S.conversation_id.in_(ids))
            .order_by(S.conversation_id, S.upto_seq, S.created_at, S.id)
        )
        for s in result:
            summaries[s.conversation_id].append(s)
        return [ExportRows(r, messages[r.id], turns[r.id], summaries[r.id]) for r in rows]

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
        ``tenant`` and sets its head. Each message is placed after its parent as a new message
        would be (a batch's new branch rows go in before its messages), and the turns go in
        after the messages, with their replies' new ids. If a batch fails, what was written is
        deleted; if the process dies, the next import deletes it.
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
                        "head_id": None,
                        "message_count": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            )
        tree = _Tree(conversation_id, turn_ids, now)
        summary_ids = {s["id"]: uuid7() for s in rows.summaries}
        turns = (
            {
                **t,
                "id": turn_ids[t["id"]],
                "conversation_id": conversation_id,
                "reply_id": tree.replies.get((turn_ids[t["id"]], t.get("reply_seq"))),
                "deadline_at": t.get("completed_at") or now,
                "context": _remapped(t.get("context"), turn_ids, summary_ids),
            }
            for t in rows.turns
        )
        try:
            for placed in _batches(tree.place(m) for m in rows.messages):
                async with self._write() as conn:
                    branches = [b for b, _ in placed if b is not None]
                    await conn.run_sync(insert_rows, branches, [m for _, m in placed])
                    await self._still_importing(conn, conversation_id)
                if self.dialect == "sqlite":
                    await anyio.sleep(SQLITE_BATCH_PAUSE)
            # After the messages: a turn names its reply's new id, a summary its last message's.
            for batch in _batches(turns):
                async with self._write() as conn:
                    await conn.execute(insert(turn_table), batch)
                    await self._still_importing(conn, conversation_id)
                if self.dialect == "sqlite":
                    await anyio.sleep(SQLITE_BATCH_PAUSE)
            if rows.summaries:
                async with self._write() as conn:
                    await conn.execute(
                        insert(summary_table), tree.summaries(rows.summaries, summary_ids)
                    )
            top = tree.head(rows.head)
            async with self._write() as conn:
                await conn.execute(
                    update(conversation_table)
                    .where(C.id == conversation_id)
                    .values(
                        tenant=tenant,
                        source_id=source_id,
                        head_id=top["id"] if top else None,
                        message_count=top["seq"] if top else 0,
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

    async def _still_importing(self, conn: AsyncConnection, conversation_id: uuid.UUID) -> None:
        """Mark the import in progress: not the leftover of a dead process."""
        await conn.execute(
            update(conversation_table).where(C.id == conversation_id).values(updated_at=utcnow())
        )

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
        """A new conversation holding a copy of messages 1..``through_seq`` (default: all) of
        the active path, and of the context summaries made up to one of them."""
        now = utcnow()
        new_id = uuid7()
        async with self._write() as conn:
            source = (
                await conn.execute(
                    select(
                        C.title,
                        C.model,
                        C.params,
                        C["metadata"],
                        C.end_user,
                        C.message_count,
                        C.head_id,
                        C.context,
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
            copied: list[dict[str, Any]] = []
            summaries: Sequence[Any] = []
            if count and source.head_id is not None:
                on_path = {"head_id": source.head_id}
                copied = [
                    dict(row._mapping)
                    for row in await conn.execute(
                        path(*COPIED_MESSAGE_COLUMNS).where(M.seq <= count).order_by(M.seq),
                        on_path,
                    )
                ]
                # The summaries of the copied part of the path: its seqs stay as they were.
                summaries = (
                    await conn.execute(
                        select(*SUMMARY_COLUMNS)
                        .where(
                            S.conversation_id == conversation_id,
                            S.upto_seq <= count,
                            S.upto_id.in_(path(M.id).where(M.seq <= count)),
                        )
                        .order_by(S.upto_seq, S.id),
                        on_path,
                    )
                ).all()
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
                    end_user=source.end_user,
                    context=source.context,
                    head_id=rows[-1]["id"] if rows else None,
                    message_count=count,
                    created_at=now,
                    updated_at=now,
                    forked_from_id=conversation_id,
                    forked_through_seq=count,
                )
            )
            await conn.run_sync(insert_messages, place, rows)
            if summaries:
                # Each a copy, made up to the copy of its message; the turn that wrote it
                # stays with the source conversation.
                await conn.execute(
                    insert(summary_table),
                    [
                        {
                            **summary._mapping,
                            "id": uuid7(),
                            "conversation_id": new_id,
                            "upto_id": rows[summary.upto_seq - 1]["id"],
                            "turn_id": None,
                        }
                        for summary in summaries
                    ],
                )
        return await self.get_conversation(tenant, new_id)


def _remapped(
    context: Any, turn_ids: dict[Any, uuid.UUID], summary_ids: dict[Any, uuid.UUID]
) -> Any:
    """A turn's context record with the turn and summary it names given their new ids."""
    if not isinstance(context, dict):
        return context
    renamed = dict(context)
    for name, ids in (("for_turn_id", turn_ids), ("summary_id", summary_ids)):
        new = ids.get(renamed.get(name))
        if new is not None:
            renamed[name] = str(new)
    return renamed


class _Tree:
    """The rows of an imported tree, made a message at a time: each message placed after its
    parent as a new message would be (on its parent's branch while that branch has no message
    after the parent, else on a new branch), with a new id."""

    def __init__(
        self, conversation_id: uuid.UUID, turn_ids: dict[Any, uuid.UUID], now: datetime
    ) -> None:
        self.conversation_id = conversation_id
        self.turn_ids = turn_ids
        self.now = now
        # Each placed message's transcript id: its new id, branch, seq and running sum of tokens.
        self.placed: dict[Any, tuple[uuid.UUID, uuid.UUID, int, int]] = {}
        self.taken: set[tuple[uuid.UUID, int]] = set()
        self.last: Any = None
        # (turn id, seq) of each message of a turn: its new id, for the turn's reply.
        self.replies: dict[tuple[uuid.UUID, Any], uuid.UUID] = {}

    def place(self, message: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The branch row the message forks (None if it forks none) and its own row."""
        anchor = self.placed.get(message.get("parent_id"))
        continues = anchor is not None and (anchor[1], anchor[2] + 1) not in self.taken
        place: Place = place_after(self.conversation_id, anchor, continues=continues, siblings=0)
        branch = None if place.fork is None else {"id": place.branch_id, **place.fork}
        fields = {k: v for k, v in message.items() if k not in ("id", "parent_id", "seq")}
        fields["turn_id"] = self.turn_ids.get(message.get("turn_id"))
        (row,) = message_rows(place, [fields], self.now)
        self.taken.add((place.branch_id, place.seq))
        self.placed[message["id"]] = (
            row["id"],
            place.branch_id,
            place.seq,
            row["tokens_through"],
        )
        self.last = message["id"]
        if row["turn_id"] is not None:
            self.replies[(row["turn_id"], place.seq)] = row["id"]
        return branch, row

    def summaries(
        self, summaries: list[dict[str, Any]], ids: dict[Any, uuid.UUID]
    ) -> list[dict[str, Any]]:
        """The rows of the summaries, once every message is placed: each with its new id, the
        new id of the message it summarises up to (and that message's seq), and its
        summarising turn's new id."""
        rows = []
        for summary in summaries:
            upto_id, _, upto_seq, _ = self.placed[summary["upto"]]
            rows.append(
                {
                    "id": ids[summary["id"]],
                    "conversation_id": self.conversation_id,
                    "upto_id": upto_id,
                    "upto_seq": upto_seq,
                    "covers": summary["covers"],
                    "content": summary["content"],
                    "tokens": summary["tokens"],
                    "turn_id": self.turn_ids.get(summary.get("turn_id")),
                    "created_at": summary["created_at"],
                }
            )
        return rows

    def head(self, ident: Any) -> dict[str, Any] | None:
        """The new id and seq of the message ``ident`` names (None: the last placed)."""
        found = self.placed.get(self.last if ident is None else ident)
        return None if found is None else {"id": found[0], "seq": found[2]}
