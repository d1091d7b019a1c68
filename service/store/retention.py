"""Deleting conversations completely (by their tenant, an admin or retention), each deletion
leaving a receipt; legal holds; and the record of admins' reads of conversations.

A deletion removes, in one short transaction: the messages, branches, turns and the
conversation (the text index follows: PostgreSQL's GIN indexes with their rows, SQLite's FTS5
rows through the conversation's delete trigger), and the idempotency records whose stored
answers hold its content. Receipts and admin reads hold no content and outlive it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, exists, false, func, insert, select, tuple_, update
from sqlalchemy import delete as delete_rows

from service.errors import Conflict, NotFound
from service.schemas import AdminReadOut, DeletionReceipt
from service.store.engine import StoreBase
from service.store.records import (
    AR,
    CONVERSATION_COLUMNS,
    DR,
    IK,
    IMPORTING,
    B,
    C,
    M,
    ReadBy,
    S,
    T,
)
from service.tables import (
    admin_read_table,
    branch_table,
    conversation_table,
    deletion_receipt_table,
    idempotency_table,
    message_table,
    summary_table,
    turn_table,
    utcnow,
    uuid7,
)

# Conversations one sweep transaction claims at most, and messages: a batch stops short of a
# conversation that would take it past the messages (but holds at least one conversation).
SWEEP_CONVERSATIONS = 100
SWEEP_MESSAGES = 10_000
NO_CONVERSATION = "No conversation has this id."
ON_HOLD = (
    "This conversation is under a legal hold: it cannot be deleted (nor its messages) until an "
    "admin lifts the hold."
)
RECEIPT_COLUMNS = (
    DR.id,
    DR.conversation_id,
    DR.tenant,
    DR.deleted_at,
    DR.kind,
    DR.key_id,
    DR.reason,
    DR.message_count,
    DR.turn_count,
)
READ_COLUMNS = (AR.id, AR.conversation_id, AR.tenant, AR.key_id, AR.read_at, AR.via, AR.reason)


@dataclass(frozen=True, slots=True)
class Deleter:
    """Who deletes: ``tenant``, ``admin`` or ``retention``, with the key that asked (None for
    retention) and the reason given."""

    kind: str
    key_id: uuid.UUID | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SweptBatch:
    """What one sweep transaction deleted, and how long it held its locks (from its first
    statement, once it had the write lock on SQLite, to its commit)."""

    receipts: list[DeletionReceipt]
    seconds: float


def on_hold(conversation_id: uuid.UUID) -> Conflict:
    return Conflict(ON_HOLD, code="legal_hold", conversation_id=str(conversation_id))


def refuse_if_held(conn: Connection, conversation_id: uuid.UUID) -> None:
    """Raise 409 ``legal_hold`` if the conversation is under a legal hold."""
    if conn.execute(select(C.legal_hold).where(C.id == conversation_id)).scalar():
        raise on_hold(conversation_id)


def delete_completely(
    conn: Connection, rows: Sequence[Any], by: Deleter, now: datetime, reasons: Sequence[Any] = ()
) -> list[DeletionReceipt]:
    """Delete these conversations (rows with ``id`` and ``tenant``, locked by the caller) and
    everything of theirs, leaving a receipt for each (its reason from ``reasons``, in order, else
    ``by.reason``)."""
    ids = [r.id for r in rows]

    def counts(column: Any) -> dict[uuid.UUID, int]:
        query = select(column, func.count()).where(column.in_(ids)).group_by(column)
        return {i: int(n) for i, n in conn.execute(query)}

    messages, turns = counts(M.conversation_id), counts(T.conversation_id)
    receipts = [
        DeletionReceipt(
            id=uuid7(),
            conversation_id=r.id,
            tenant=r.tenant,
            deleted_at=now,
            kind=by.kind,
            key_id=by.key_id,
            reason=reasons[i] if reasons else by.reason,
            message_count=messages.get(r.id, 0),
            turn_count=turns.get(r.id, 0),
        )
        for i, r in enumerate(rows)
    ]
    conn.execute(
        insert(deletion_receipt_table),
        [{f: getattr(r, f) for f in r.__struct_fields__} for r in receipts],
    )
    conn.execute(delete_rows(idempotency_table).where(IK.conversation_id.in_(ids)))
    # Children first, so no database-level cascade setting is needed.
    conn.execute(delete_rows(summary_table).where(S.conversation_id.in_(ids)))
    conn.execute(delete_rows(message_table).where(M.conversation_id.in_(ids)))
    conn.execute(delete_rows(branch_table).where(B.conversation_id.in_(ids)))
    conn.execute(delete_rows(turn_table).where(T.conversation_id.in_(ids)))
    conn.execute(delete_rows(conversation_table).where(C.id.in_(ids)))
    return receipts


class RetentionStore(StoreBase):
    async def delete_conversation(
        self, tenant: str | None, conversation_id: uuid.UUID, by: Deleter
    ) -> DeletionReceipt:
        """Delete one conversation completely (any tenant's if ``tenant`` is None: an admin's
        deletion); its receipt. 404 if there is no such conversation, 409 ``legal_hold`` while
        it is held."""
        now = utcnow()
        query = select(C.id, C.tenant, C.legal_hold).where(
            C.id == conversation_id, C.tenant != IMPORTING
        )
        if tenant is not None:
            query = query.where(C.tenant == tenant)

        def run(conn: Connection) -> DeletionReceipt:
            # The row lock first, as every writer to a conversation takes it.
            row = conn.execute(query.with_for_update()).first()
            if row is None:
                raise NotFound(NO_CONVERSATION)
            if row.legal_hold:
                raise on_hold(conversation_id)
            return delete_completely(conn, [row], by, now)[0]

        async with self._write() as conn:
            return await conn.run_sync(run)

    async def sweep_expired(
        self,
        *,
        retention_days: int = 0,
        conversations: int = SWEEP_CONVERSATIONS,
        messages: int = SWEEP_MESSAGES,
    ) -> SweptBatch:
        """Delete one batch of expired conversations, in one short transaction; their receipts
        (none when none is left). Expired: past its ``expires_at``, or (with
        ``retention_days``, for one without) created more than that many days ago. Never one
        under a legal hold, being imported, or with a turn running.

        Several processes may sweep at once: on PostgreSQL each batch claims its rows with
        ``FOR UPDATE SKIP LOCKED``, so no two take the same conversation and none waits for
        another; on SQLite the write lock makes them take turns."""
        now = utcnow()
        running = exists().where(
            T.conversation_id == C.id, T.status == "running", T.deadline_at > now
        )
        expirable = select(C.id, C.tenant, C.expires_at, C.created_at, C.message_count).where(
            C.legal_hold.is_(false()), C.tenant != IMPORTING, ~running
        )

        def claim(conn: Connection, query: Select[Any], limit: int) -> list[Any]:
            locked = query.limit(limit).with_for_update(skip_locked=True, of=conversation_table)
            return list(conn.execute(locked).all())

        def run(conn: Connection) -> list[DeletionReceipt]:
            rows = claim(
                conn,
                expirable.where(C.expires_at <= now).order_by(C.expires_at),
                conversations,
            )
            if retention_days and len(rows) < conversations:
                cutoff = now - timedelta(days=retention_days)
                rows += claim(
                    conn,
                    expirable.where(C.expires_at.is_(None), C.created_at <= cutoff).order_by(
                        C.created_at
                    ),
                    conversations - len(rows),
                )
            taken: list[Any] = []
            total = 0
            for row in rows:
                total += row.message_count
                if taken and total > messages:
                    break  # the rest is released at commit, for the next batch
                taken.append(row)
            if not taken:
                return []
            reasons = [
                f"expired at {r.expires_at.isoformat()}"
                if r.expires_at is not None
                else f"older than {retention_days} days"
                for r in taken
            ]
            return delete_completely(conn, taken, Deleter("retention"), now, reasons)

        async with self._write() as conn:
            started = time.perf_counter()
            receipts = await conn.run_sync(run)
        return SweptBatch(receipts, time.perf_counter() - started)

    async def set_legal_hold(self, conversation_id: uuid.UUID, hold: bool) -> Any:
        """Put any tenant's conversation under a legal hold, or lift it; the conversation's row
        (with its tenant). 404 if there is no such conversation."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(conversation_table)
                    .where(C.id == conversation_id, C.tenant != IMPORTING)
                    .values(legal_hold=hold)
                    .returning(*CONVERSATION_COLUMNS, C.tenant)
                )
            ).first()
        if row is None:
            raise NotFound(NO_CONVERSATION)
        return row

    async def list_deletions(
        self, tenant: str | None, *, limit: int, cursor: str | None
    ) -> tuple[list[DeletionReceipt], str | None]:
        """Deletion receipts, newest first (one tenant's, or with None every tenant's)."""
        query = select(*RECEIPT_COLUMNS)
        if tenant is not None:
            query = query.where(DR.tenant == tenant)
        rows, next_cursor = await self._newest_first(
            query, (DR.deleted_at, DR.id), f"deletions:{tenant or ''}", limit, cursor
        )
        return [DeletionReceipt(**r._mapping) for r in rows], next_cursor

    # ---- admin reads ----------------------------------------------------------------------

    async def record_admin_reads(
        self, read_by: ReadBy, conversation_ids: Sequence[uuid.UUID]
    ) -> None:
        """Record that an admin reads these conversations (those of them that exist)."""
        if not conversation_ids:
            return
        now = utcnow()
        async with self._write() as conn:
            found = (
                await conn.execute(
                    select(C.id, C.tenant).where(
                        C.id.in_(list(conversation_ids)), C.tenant != IMPORTING
                    )
                )
            ).all()
            if found:
                await conn.execute(
                    insert(admin_read_table),
                    [
                        {
                            "id": uuid7(),
                            "conversation_id": r.id,
                            "tenant": r.tenant,
                            "key_id": read_by.key_id,
                            "read_at": now,
                            "via": read_by.via,
                            "reason": read_by.reason,
                        }
                        for r in found
                    ],
                )

    async def list_admin_reads(
        self,
        tenant: str | None,
        *,
        conversation_id: uuid.UUID | None = None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[AdminReadOut], str | None]:
        """Admin reads, newest first: of one tenant's conversations (or with None, of every
        tenant's), of one conversation if ``conversation_id`` is given."""
        query = select(*READ_COLUMNS)
        if tenant is not None:
            query = query.where(AR.tenant == tenant)
        if conversation_id is not None:
            query = query.where(AR.conversation_id == conversation_id)
        scope = f"audit:{tenant or ''}:{conversation_id or ''}"
        rows, next_cursor = await self._newest_first(
            query, (AR.read_at, AR.id), scope, limit, cursor
        )
        return [AdminReadOut(**r._mapping) for r in rows], next_cursor

    async def _newest_first(
        self,
        query: Select[Any],
        order: tuple[Any, Any],
        scope: str,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Any], str | None]:
        """A keyset page of ``query`` by (time, id) descending, with a signed cursor."""
        at, ident = order
        cursors = await self.cursors()
        if cursor:
            query = query.where(tuple_(at, ident) < tuple_(*cursors.created(scope, cursor)))
        query = query.order_by(at.desc(), ident.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        if len(rows) <= limit:
            return list(rows), None
        last = rows[limit - 1]
        return list(rows[:limit]), cursors.encode(
            scope, getattr(last, at.key), getattr(last, ident.key)
        )
