"""A turn's rows: its first transaction (append the input, mark the turn running, read the
history), its second (store the reply, complete the turn), or its end as failed."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from msgspec import UNSET
from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from service.context import Policy, record, resolve
from service.errors import NotFound, ValidationFailed
from service.schemas import KEPT_PARAMS, MessageOut, ParentId, Reply, TurnOut
from service.store.engine import StoreBase
from service.store.messages import (
    ABANDONED,
    SET_CONVERSATION,
    SET_RUNNING_TURN,
    Compaction,
    Place,
    Seen,
    append,
    insert_messages,
    message_rows,
    turn_in_progress,
)
from service.store.records import IK, TURN_COLUMNS, C, M, T, turn_out
from service.tables import (
    idempotency_table,
    message_table,
    summary_table,
    turn_table,
    utcnow,
    uuid7,
)
from service.tokens import estimate, prompt_tokens, reply_tokens


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What the first transaction of a turn produced: the upstream request is built from it."""

    turn: TurnOut
    appended: list[MessageOut]
    history: list[dict[str, Any]]  # the path to the reply, as the upstream receives it
    reply_place: Place  # where the reply goes: decided here, as no other writer runs meanwhile
    policy: Policy
    seen: Seen

    @property
    def model(self) -> str:
        return self.turn.model

    @property
    def params(self) -> dict[str, Any]:
        return self.turn.params


@dataclass(frozen=True, slots=True)
class _NewTurn:
    """What a turn's first transaction is given."""

    tenant: str
    conversation_id: uuid.UUID
    messages: list[dict[str, Any]]
    parent_id: ParentId
    model: str | None
    params: dict[str, Any] | None
    stream: bool
    now: datetime
    lease: timedelta
    idempotency_key: str | None
    context: dict[str, Any] | None = None
    windows: Mapping[str, int] | None = None


_SET_HEAD = SET_CONVERSATION.returning(C.id)
_INSERT_TURN = insert(turn_table)


@dataclass(frozen=True, slots=True)
class Summary:
    """A stored summary (``service.tables.ContextSummary``)."""

    id: uuid.UUID
    content: str
    tokens: int
    covers: list[list[int]]
    upto_seq: int


# A summary's tokens as sent, beyond its text: its message's template and the heading.
SUMMARY_EXTRA = 12


class _NotRunning(Exception):
    """The turn being completed is no longer running."""


class TurnStore(StoreBase):
    async def begin_turn(
        self,
        tenant: str,
        conversation_id: uuid.UUID,
        messages: list[dict[str, Any]],
        *,
        model: str | None,
        params: dict[str, Any] | None,
        stream: bool,
        lease: float,
        idempotency_key: str | None = None,
        parent_id: ParentId = UNSET,
        context: dict[str, Any] | None = None,
        windows: Mapping[str, int] | None = None,
    ) -> TurnStart:
        """Transaction 1 of a turn: append the input after ``parent_id`` (unset: the head; see
        ``append``), mark the turn running (for ``lease`` seconds, renewed while it runs), read
        the path the reply will follow, or as much of it as ``context`` (the turn's, else the
        conversation's; see ``service.context``) lets fit. With ``idempotency_key``, the
        tenant's claim of that key is tied to the turn in the same transaction, so that a
        retry after a crash gets the turn's outcome instead of running it again.

        Raises ``NotFound`` (the conversation, or ``parent_id`` in it), 409
        ``turn_in_progress`` or 422 (no messages at all); nothing is written then.
        """
        given = _NewTurn(
            tenant, conversation_id, messages, parent_id, model, params, stream, utcnow(),
            timedelta(seconds=lease), idempotency_key, context, windows,
        )  # fmt: skip
        try:
            async with self._write() as conn:
                return await conn.run_sync(_begin_turn, given)
        except IntegrityError:
            # The unique index on running turns, a backstop: the checks hold the row lock.
            raise turn_in_progress(None, None) from None

    async def complete_turn(
        self,
        start: TurnStart,
        reply: Reply,
        *,
        latency_ms: int,
        upstream_ms: int,
        attempts: int,
        request_sha256: str | None = None,
        request_body: bytes | None = None,
    ) -> tuple[TurnOut, MessageOut] | None:
        """Transaction 2 of a turn: store the reply where ``start`` placed it, make it the
        head, and complete the turn.

        Returns None, storing nothing, if the turn is no longer running (its conversation was
        deleted, or it was declared abandoned).
        """
        now, turn, place = utcnow(), start.turn, start.reply_place
        sha = {"request_sha256": request_sha256} if request_sha256 else {}
        context = reply_context(start, reply.usage, **sha)
        size = reply_tokens(reply.usage)
        inputs = _exact_inputs(start, reply.usage)
        if inputs is not None:
            place = dataclasses.replace(place, through=inputs["m_through"])
        message = {
            "role": "assistant",
            "content": reply.content,
            "tool_calls": reply.tool_calls,
            "reasoning_content": reply.reasoning_content,
            "reasoning_encrypted_content": reply.reasoning_encrypted_content,
            "model": reply.model,
            "finish_reason": reply.finish_reason,
            "usage": reply.usage,
            "turn_id": turn.id,
            "tokens": size,
            "tokens_exact": size is not None,
        }
        (row,) = message_rows(place, [message], now)
        completed = msgspec.structs.replace(
            turn,
            status="completed",
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            latency_ms=latency_ms,
            completed_at=now,
            reply_seq=place.seq,
            reply_id=row["id"],
            context=context,
        )

        def complete(conn: Connection) -> tuple[TurnOut, MessageOut]:
            # The conversation's row first, as every writer locks it first.
            taken = conn.execute(
                _SET_HEAD,
                {
                    "conversation_id": turn.conversation_id,
                    "head_id": row["id"],
                    "message_count": place.seq,
                    "updated_at": now,
                },
            ).first()
            if taken is None:
                raise _NotRunning  # the conversation was deleted
            done = conn.execute(
                SET_RUNNING_TURN,
                {
                    "turn_id": turn.id,
                    "status": "completed",
                    "usage": reply.usage,
                    "finish_reason": reply.finish_reason,
                    "latency_ms": latency_ms,
                    "upstream_ms": upstream_ms,
                    "attempts": attempts,
                    "reply_seq": place.seq,
                    "reply_id": row["id"],
                    "completed_at": now,
                    "context": context,
                    "request_body": request_body,
                },
            )
            if done.rowcount != 1:
                raise _NotRunning  # rolls back: the head stays where it was
            if inputs is not None:
                conn.execute(_SET_INPUT_TOKENS, inputs)
            (stored,) = insert_messages(conn, place, [row])
            return completed, stored

        try:
            async with self._write() as conn:
                return await conn.run_sync(complete)
        except _NotRunning:
            return None

    async def record_compaction(
        self,
        start: TurnStart,
        compaction: Compaction,
        reply: Reply,
        *,
        model: str,
        params: dict[str, Any],
        attempts: int,
        latency_ms: int,
        request_sha256: str,
    ) -> Summary:
        """Store a summary the model made for ``start``'s turn, and the summarising call as a
        completed turn of its own (its usage; ``context.purpose`` is ``compaction``)."""
        now, cid = utcnow(), start.turn.conversation_id
        content = reply.content if isinstance(reply.content, str) else ""
        size = reply_tokens(reply.usage)
        tokens = (size if size is not None else estimate({"content": content})) + SUMMARY_EXTRA
        summary = Summary(uuid7(), content, tokens, compaction.covers, compaction.upto_seq)
        turn_id = uuid7()
        context = {
            "strategy": "compact",
            "purpose": "compaction",
            "for_turn_id": str(start.turn.id),
            "summary_id": str(summary.id),
            "summarised": compaction.covers,
            "upstream_input_tokens": prompt_tokens(reply.usage),
            "request_sha256": request_sha256,
        }
        async with self._write() as conn:
            await conn.execute(
                insert(turn_table).values(
                    id=turn_id,
                    conversation_id=cid,
                    status="completed",
                    model=model,
                    params=params,
                    stream=False,
                    usage=reply.usage,
                    finish_reason=reply.finish_reason,
                    latency_ms=latency_ms,
                    upstream_ms=latency_ms,
                    attempts=attempts,
                    created_at=now,
                    completed_at=now,
                    deadline_at=now,
                    context=context,
                )
            )
            await conn.execute(
                insert(summary_table).values(
                    id=summary.id,
                    conversation_id=cid,
                    upto_id=compaction.upto_id,
                    upto_seq=compaction.upto_seq,
                    covers=compaction.covers,
                    content=content,
                    tokens=tokens,
                    turn_id=turn_id,
                    created_at=now,
                )
            )
        return summary

    async def fail_turn(
        self,
        turn_id: uuid.UUID,
        error: dict[str, Any],
        *,
        latency_ms: int,
        upstream_ms: int | None,
        attempts: int,
        context: dict[str, Any] | None = None,
    ) -> TurnOut | None:
        """Mark a running turn failed with its error; None if it was not running any more."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(turn_table)
                    .where(T.id == turn_id, T.status == "running")
                    .values(
                        status="failed",
                        error=error,
                        latency_ms=latency_ms,
                        upstream_ms=upstream_ms,
                        attempts=attempts,
                        completed_at=utcnow(),
                        **({"context": context} if context is not None else {}),
                    )
                    .returning(*TURN_COLUMNS)
                )
            ).first()
        return turn_out(row) if row else None

    async def renew_leases(self, turn_ids: list[uuid.UUID], lease: float) -> None:
        """Push back the deadline of running turns this process is still working on."""
        async with self._write() as conn:
            await conn.execute(
                update(turn_table)
                .where(T.id.in_(turn_ids), T.status == "running")
                .values(deadline_at=utcnow() + timedelta(seconds=lease))
            )

    async def get_turn(
        self, tenant: str, conversation_id: uuid.UUID, turn_id: uuid.UUID
    ) -> TurnOut:
        async with self._read() as conn:
            await self._owned(conn, tenant, conversation_id)
            row = (
                await conn.execute(
                    select(*TURN_COLUMNS).where(
                        T.id == turn_id, T.conversation_id == conversation_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound("No turn has this id in this conversation.")
        return turn_out(row)

    async def kept_request(
        self, tenant: str, conversation_id: uuid.UUID, turn_id: uuid.UUID
    ) -> tuple[TurnOut, bytes | None]:
        """A turn of the tenant's conversation, and the exact request body it sent upstream
        (None if it was not kept). Raises ``NotFound``."""
        async with self._read() as conn:
            await self._owned(conn, tenant, conversation_id)
            row = (
                await conn.execute(
                    select(*TURN_COLUMNS, T.request_body).where(
                        T.id == turn_id, T.conversation_id == conversation_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound("No turn has this id in this conversation.")
        return TurnOut(*row[:-1]), row.request_body

    async def settled_turn(self, turn_id: uuid.UUID) -> TurnOut | None:
        """The turn as it stands, or None if it was deleted. A turn still running after its
        lease ran out belonged to a server that stopped: it is marked failed (``abandoned``)
        here, and returned so."""
        now = utcnow()
        async with self._read() as conn:
            row = (
                await conn.execute(select(*TURN_COLUMNS, T.deadline_at).where(T.id == turn_id))
            ).first()
        if row is None:
            return None
        if row.status != "running" or row.deadline_at > now:
            return TurnOut(*row[:-1])
        async with self._write() as conn:
            abandoned = (
                await conn.execute(
                    update(turn_table)
                    .where(T.id == turn_id, T.status == "running", T.deadline_at <= now)
                    .values(status="failed", error=ABANDONED, completed_at=now)
                    .returning(*TURN_COLUMNS)
                )
            ).first()
        if abandoned is not None:
            return turn_out(abandoned)
        return await self.settled_turn(turn_id)  # renewed or finished meanwhile


def _begin_turn(conn: Connection, given: _NewTurn) -> TurnStart:
    """The first transaction's statements: the input appended as ``append`` does (the
    conversation's row locked first), the turn marked running, the path to the reply read."""
    cid, now = given.conversation_id, given.now
    policies: list[Policy] = []

    def policy_of(conversation: Any) -> Policy:
        model = given.model or conversation.model
        policy = resolve(conversation.context, given.context, model, given.windows)
        policies.append(policy)
        return policy

    appended = append(
        conn,
        given.tenant,
        cid,
        given.messages,
        given.parent_id,
        now,
        with_history=True,
        policy=policy_of,
    )
    if appended.next.parent_id is None:
        raise ValidationFailed(
            "The conversation has no messages yet: send at least one with the turn."
        )
    policy, seen = policies[0], appended.seen
    assert seen is not None  # with the history, append says what it holds
    context = record(
        policy,
        sent=seen.sent,
        dropped=seen.dropped,
        estimated_input_tokens=seen.estimated,
    )
    if seen.compaction is not None:
        context["summarised"] = seen.summarised
        if seen.compaction.summary is not None:
            context["summary_id"] = str(seen.compaction.summary.id)
    turn = TurnOut(
        id=uuid7(),
        conversation_id=cid,
        status="running",
        model=given.model or appended.model,
        params={**(appended.params or {}), **(given.params or {})},
        usage=None,
        finish_reason=None,
        error=None,
        latency_ms=None,
        created_at=now,
        completed_at=None,
        context=context,
    )
    conn.execute(
        _INSERT_TURN,
        {
            "id": turn.id,
            "conversation_id": cid,
            "status": "running",
            "model": turn.model,
            "params": turn.params,
            "stream": given.stream,
            "attempts": 0,
            "created_at": now,
            "deadline_at": now + given.lease,
            "context": context,
        },
    )
    if given.idempotency_key is not None:
        conn.execute(
            update(idempotency_table)
            .where(IK.tenant == given.tenant, IK.key == given.idempotency_key)
            .values(turn_id=turn.id, conversation_id=cid)
        )
    return TurnStart(turn, appended.messages, appended.history, appended.next, policy, seen)


def reply_context(start: TurnStart, usage: Any, **more: Any) -> dict[str, Any]:
    """The turn's context record once the upstream answered: with its count of the input."""
    context = {**(start.turn.context or {}), **more}
    counted = prompt_tokens(usage)
    if counted is not None:
        context["upstream_input_tokens"] = counted
    return context


def _exact_inputs(start: TurnStart, usage: Any) -> dict[str, Any] | None:
    """The exact size of a turn's one input message, when the upstream's count tells it: the
    whole path was sent, as on the turn before whose reply the input follows, so the input is
    what this request counted beyond that one's and its reply. The parameters of
    ``_SET_INPUT_TOKENS``; None when it cannot be known."""
    seen, counted = start.seen, prompt_tokens(usage)
    if start.policy.windowed or seen.previous_prompt is None or counted is None:
        return None
    if len(start.appended) != 1 or start.turn.params.get(KEPT_PARAMS):
        return None
    size = counted - seen.previous_prompt - seen.previous_reply
    if size <= 0:
        return None
    return {"m_id": start.appended[0].id, "m_tokens": size, "m_through": seen.base_through + size}


# The exact size of an input message, and the running sum after it (it has no reply yet).
_SET_INPUT_TOKENS = (
    update(message_table)
    .where(M.id == bindparam("m_id"))
    .values(
        tokens=bindparam("m_tokens"),
        tokens_exact=True,
        tokens_through=bindparam("m_through"),
    )
)
