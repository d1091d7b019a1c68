"""The statements that place, write and read a conversation's messages, each written once and
shared by every writer (an append, a turn, a new conversation) and reader.

A conversation's messages form a tree. Each message lies on a branch (``service.tables.Branch``):
it continues its parent's branch when the parent is the last message there, else it starts a
new branch forked at its parent. A path (the root down to one message) is then the chain of its
branches, each giving a range of seqs, and reads as one indexed query (``path``).

They are plain functions on a synchronous ``Connection``: a whole transaction made of them runs
in one hop through ``AsyncConnection.run_sync``, on aiosqlite and asyncpg alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from msgspec import UNSET
from sqlalchemy import (
    Connection,
    Executable,
    Select,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from service.errors import NotFound, TurnInProgress
from service.schemas import MessageOut, ParentId
from service.store.records import B, C, M, T
from service.tables import branch_table, conversation_table, message_table, turn_table, uuid7

ABANDONED = {
    "status": 503,
    "code": "abandoned",
    "detail": "The server running this turn stopped before it finished.",
}
# The columns of a stored message that go upstream, in the history of a turn.
HISTORY_COLUMNS = (M.role, M.content, M.name, M.tool_calls, M.tool_call_id)
NO_SUCH_MESSAGE = "No message has this id in this conversation."


@dataclass(frozen=True, slots=True)
class Place:
    """Where a new message goes: after ``parent_id`` (None: a first message), on ``branch_id``
    at ``seq``. ``fork`` is the branch row to make for it (None: it continues a branch), and
    ``siblings`` counts the messages that already follow the same parent."""

    conversation_id: uuid.UUID
    parent_id: uuid.UUID | None
    branch_id: uuid.UUID
    seq: int
    fork: dict[str, Any] | None = None
    siblings: int = 0


def place_after(
    conversation_id: uuid.UUID,
    parent: tuple[uuid.UUID, uuid.UUID, int] | None,
    *,
    continues: bool,
    siblings: int,
) -> Place:
    """The place of a new message after ``parent`` (its id, branch and seq; None for a first
    message). ``continues``: the parent is the last message of its branch, so the new message
    goes on that branch; otherwise it forks a new branch at the parent."""
    if parent is None:
        fork = {"conversation_id": conversation_id, "parent_branch_id": None, "fork_seq": 0}
        return Place(conversation_id, None, uuid7(), 1, fork, siblings)
    parent_id, branch_id, seq = parent
    if continues:
        return Place(conversation_id, parent_id, branch_id, seq + 1, None, siblings)
    fork = {"conversation_id": conversation_id, "parent_branch_id": branch_id, "fork_seq": seq}
    return Place(conversation_id, parent_id, uuid7(), seq + 1, fork, siblings)


def following(row: dict[str, Any]) -> Place:
    """The place after a message just stored (the last of its branch, with no reply yet)."""
    return Place(row["conversation_id"], row["id"], row["branch_id"], row["seq"] + 1)


_child = message_table.alias("child")
# The statements of a turn are built once: a recursive CTE takes longer to build than to run.
_ROOTS = select(func.count()).where(
    M.conversation_id == bindparam("conversation_id"), M.parent_id.is_(None)
)
_PARENT = (
    select(
        M.branch_id,
        M.seq,
        func.count(_child.c.id),
        # A reply on the parent's own branch is the message after it there.
        func.count(case((_child.c.branch_id == M.branch_id, 1))),
    )
    .outerjoin(_child, _child.c.parent_id == M.id)
    .where(M.id == bindparam("parent_id"), M.conversation_id == bindparam("conversation_id"))
    .group_by(M.branch_id, M.seq)
)


def locate(conn: Connection, conversation_id: uuid.UUID, parent_id: uuid.UUID | None) -> Place:
    """The place of a new message after ``parent_id`` (None: a new first message), read with
    one statement; raises ``NotFound`` if the conversation has no such message."""
    if parent_id is None:
        roots = conn.execute(_ROOTS, {"conversation_id": conversation_id}).scalar_one()
        return place_after(conversation_id, None, continues=False, siblings=roots)
    row = conn.execute(
        _PARENT, {"parent_id": parent_id, "conversation_id": conversation_id}
    ).first()
    if row is None:
        raise NotFound(NO_SUCH_MESSAGE)
    branch_id, seq, children, followed = row
    return place_after(
        conversation_id, (parent_id, branch_id, seq), continues=not followed, siblings=children
    )


def message_rows(
    place: Place, messages: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """The rows of new messages, one after the other from ``place``."""
    rows = []
    parent_id = place.parent_id
    for seq, message in enumerate(messages, start=place.seq):
        row = {
            "id": uuid7(),
            "conversation_id": place.conversation_id,
            "parent_id": parent_id,
            "branch_id": place.branch_id,
            "seq": seq,
            "role": message["role"],
            "content": message.get("content"),
            "name": message.get("name"),
            "tool_calls": message.get("tool_calls"),
            "tool_call_id": message.get("tool_call_id"),
            "reasoning_content": message.get("reasoning_content"),
            "model": message.get("model"),
            "finish_reason": message.get("finish_reason"),
            "usage": message.get("usage"),
            "turn_id": message.get("turn_id"),
            "created_at": message.get("created_at", now),
        }
        rows.append(row)
        parent_id = row["id"]
    return rows


def insert_rows(
    conn: Connection, branches: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    """Store branch rows, then the message rows on them (a statement each, whatever their
    number)."""
    if branches:
        conn.execute(insert(branch_table), branches)
    if rows:
        conn.execute(insert(message_table), rows)


def insert_messages(conn: Connection, place: Place, rows: list[dict[str, Any]]) -> list[MessageOut]:
    """Store new message rows made for ``place`` (and first the branch they fork, if they
    do); answer them as stored."""
    if not rows:
        return []
    forks = [] if place.fork is None else [{"id": place.branch_id, **place.fork}]
    insert_rows(conn, forks, rows)
    first = place.siblings + 1  # the newest of its siblings; the rest have none
    return [
        MessageOut(
            **{k: v for k, v in row.items() if k != "branch_id"},
            sibling_count=first if index == 0 else 1,
            sibling_index=first if index == 0 else 1,
        )
        for index, row in enumerate(rows)
    ]


_LOCK = (
    select(C.model, C.params, C.head_id, C.message_count)
    .where(C.id == bindparam("conversation_id"), C.tenant == bindparam("tenant"))
    .with_for_update()
)


def lock_conversation(conn: Connection, tenant: str, conversation_id: uuid.UUID) -> Any:
    """Lock the conversation's row, and read its model, params and head: every writer to a
    conversation does this first, so writers to one conversation go one at a time (on SQLite
    the write transaction holds the database's lock already). Raises ``NotFound`` if the
    tenant has no such conversation."""
    row = conn.execute(_LOCK, {"conversation_id": conversation_id, "tenant": tenant}).first()
    if row is None:
        raise NotFound("No conversation has this id.")
    return row


def touch(conn: Connection, conversation_id: uuid.UUID, now: datetime, **head: Any) -> None:
    """Mark the conversation updated at ``now``; with ``head_id`` and ``message_count``, make
    that message (at that seq) the end of its active path."""
    conn.execute(
        update(conversation_table).where(C.id == conversation_id).values(updated_at=now, **head)
    )


def check_no_running_turn(conn: Connection, conversation_id: uuid.UUID, now: datetime) -> None:
    """Raise 409 ``turn_in_progress`` if a turn runs in the conversation. A running turn whose
    lease ran out belonged to a server that stopped: it is marked failed (``abandoned``)."""
    running = conn.execute(
        select(T.id, T.deadline_at).where(
            T.conversation_id == conversation_id, T.status == "running"
        )
    ).first()
    if running is None:
        return
    turn_id, deadline = running
    if deadline > now:
        raise turn_in_progress(turn_id, deadline - now)
    conn.execute(
        update(turn_table)
        .where(T.id == turn_id, T.status == "running")
        .values(status="failed", error=ABANDONED, completed_at=now)
    )


def turn_in_progress(turn_id: uuid.UUID | None, remaining: timedelta | None) -> TurnInProgress:
    """409 naming the running turn, with ``Retry-After``: the rest of its lease, after which a
    server that stopped is known to have stopped."""
    extra: dict[str, Any] = {"running_turn_id": str(turn_id)} if turn_id else {}
    seconds = max(1, round(remaining.total_seconds())) if remaining is not None else 1
    return TurnInProgress(
        "A turn is already running in this conversation; wait for it to finish.",
        headers={"retry-after": str(seconds)},
        **extra,
    )


@dataclass(frozen=True, slots=True)
class Appended:
    """What ``append`` did: the conversation's model and params, the messages it stored, and
    the place after them (or after the parent, if there were none)."""

    model: str
    params: dict[str, Any]
    messages: list[MessageOut]
    next: Place


def append(
    conn: Connection,
    tenant: str,
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    parent_id: ParentId,
    now: datetime,
) -> Appended:
    """Append messages after ``parent_id`` (unset: after the head; None: as a new first
    message), refused while a turn runs; the head becomes the last of them.

    The conversation's row is locked first, and only then is the running turn checked and the
    tree read: on PostgreSQL a statement sees the database as it was when the statement began,
    so a check made before taking the lock could miss a turn committed while it waited."""
    conversation = lock_conversation(conn, tenant, conversation_id)
    check_no_running_turn(conn, conversation_id, now)
    parent = conversation.head_id if parent_id is UNSET else parent_id
    place = locate(conn, conversation_id, parent)
    if not messages:
        touch(conn, conversation_id, now)
        return Appended(conversation.model, conversation.params, [], place)
    rows = message_rows(place, messages, now)
    stored = insert_messages(conn, place, rows)
    touch(conn, conversation_id, now, head_id=rows[-1]["id"], message_count=rows[-1]["seq"])
    return Appended(conversation.model, conversation.params, stored, following(rows[-1]))


# ---- reading paths ------------------------------------------------------------------------


def path(*columns: Any) -> Select[Any]:
    """``columns`` of the messages on the path from the root down to the message given as the
    ``head_id`` parameter, as one statement: a recursive CTE climbs the head's chain of
    branches, each with the range of seqs it gives the path (after its fork, up to where its
    child branch forked or the head), and each range is read from the index on (branch_id,
    seq). Callers add the order."""
    head = message_table.alias("head")
    chain = (
        select(
            B.id.label("branch_id"),
            B.parent_branch_id.label("parent_branch_id"),
            B.fork_seq.label("low"),
            head.c.seq.label("high"),
        )
        .join_from(head, branch_table, B.id == head.c.branch_id)
        .where(head.c.id == bindparam("head_id", type_=M.id.type))
        .cte("chain", recursive=True)
    )
    up = branch_table.alias("up")
    # A parent branch forked before its child did, and every branch of a chain gives the path
    # at least one message: both conditions always hold. They are written out for
    # PostgreSQL's planner, which otherwise takes a recursive CTE for a hundred rows and
    # would rather hash the whole message table than probe its index once per branch.
    chain = chain.union_all(
        select(up.c.id, up.c.parent_branch_id, up.c.fork_seq, chain.c.low).where(
            up.c.id == chain.c.parent_branch_id, up.c.fork_seq < chain.c.low
        )
    )
    return (
        select(*columns)
        .join_from(
            chain,
            message_table,
            and_(M.branch_id == chain.c.branch_id, M.seq > chain.c.low, M.seq <= chain.c.high),
        )
        .where(chain.c.high > chain.c.low)
    )


_HISTORY = path(*HISTORY_COLUMNS).order_by(M.seq)


def read_history(conn: Connection, head_id: uuid.UUID) -> list[dict[str, Any]]:
    """The path ending at ``head_id`` as the upstream receives it, in seq order. Each entry has
    ``role`` and ``content``, and the tool fields it has."""
    history: list[dict[str, Any]] = []
    for role, content, name, tool_calls, tool_call_id in conn.execute(
        _HISTORY, {"head_id": head_id}
    ):
        entry: dict[str, Any] = {"role": role, "content": content}
        if name is not None:
            entry["name"] = name
        if tool_calls is not None:
            entry["tool_calls"] = tool_calls
        if tool_call_id is not None:
            entry["tool_call_id"] = tool_call_id
        history.append(entry)
    return history


def _siblings(among: ColumnElement[bool], ids: str) -> Select[Any]:
    """For the messages given as the ``ids`` parameter: how many messages share its parent,
    its place among them (1-based, by id: creation order), and the ids of the siblings before
    and after it; ``among`` holds their parents' children."""
    by_parent: dict[str, Any] = {"partition_by": M.parent_id}
    in_order: dict[str, Any] = {**by_parent, "order_by": M.id}
    siblings = (
        select(
            M.id,
            func.count().over(**by_parent).label("count"),
            func.row_number().over(**in_order).label("index"),
            func.lag(M.id, type_=M.id.type).over(**in_order).label("before"),
            func.lead(M.id, type_=M.id.type).over(**in_order).label("after"),
        )
        .where(among)
        .subquery("siblings")
    )
    return select(siblings).where(siblings.c.id.in_(bindparam(ids, expanding=True)))


_CHILD_SIBLINGS = _siblings(M.parent_id.in_(bindparam("parents", expanding=True)), "children")
_ROOT_SIBLINGS = _siblings(
    and_(M.conversation_id == bindparam("conversation_id"), M.parent_id.is_(None)), "roots"
)
_SIBLINGS = union_all(_CHILD_SIBLINGS, _ROOT_SIBLINGS)


def sibling_query(rows: Sequence[Any]) -> tuple[Executable, dict[str, Any]] | None:
    """For each of the messages ``rows`` (with ``id``, ``parent_id`` and
    ``conversation_id``): its id, how many messages share its parent, its place among them and
    the siblings before and after it, as one query over the rows' parents, with its
    parameters. None if there are no rows."""
    children = [r.id for r in rows if r.parent_id is not None]
    roots = [r.id for r in rows if r.parent_id is None]
    params: dict[str, Any] = {}
    if children:
        params.update(children=children, parents=list({r.parent_id for r in rows} - {None}))
    if roots:
        params.update(roots=roots, conversation_id=rows[0].conversation_id)
    if children and roots:
        return _SIBLINGS, params
    if children:
        return _CHILD_SIBLINGS, params
    if roots:
        return _ROOT_SIBLINGS, params
    return None


def with_siblings(rows: Iterable[Any], counts: Iterable[Any]) -> list[MessageOut]:
    """Message rows as answered, each with its sibling count and index from ``counts`` (the
    rows of ``sibling_query``)."""
    found = {row.id: (row.count, row.index) for row in counts}
    out = []
    for row in rows:
        count, index = found.get(row.id, (None, None))
        out.append(MessageOut(**row._mapping, sibling_count=count, sibling_index=index))
    return out
