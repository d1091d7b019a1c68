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

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from msgspec import UNSET
from sqlalchemy import (
    CTE,
    Connection,
    Executable,
    Select,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from service.context import (
    SUMMARY_PROMPT_TOKENS,
    Policy,
    gaps,
    ranges,
    summary_message,
    summary_reserve,
)
from service.errors import NotFound, TurnInProgress
from service.schemas import MessageOut, ParentId
from service.store.records import B, C, M, S, T
from service.tables import (
    branch_table,
    conversation_table,
    message_table,
    summary_table,
    turn_table,
    uuid7,
)
from service.tokens import REQUEST_OVERHEAD, estimate

ABANDONED = {
    "status": 503,
    "code": "abandoned",
    "detail": "The server running this turn stopped before it finished.",
}
# The columns of a stored message that go upstream, in the history of a turn.
HISTORY_COLUMNS = (
    M.role,
    M.content,
    M.name,
    M.tool_calls,
    M.tool_call_id,
    M.reasoning_encrypted_content,
)
NO_SUCH_MESSAGE = "No message has this id in this conversation."
NO_SEQ = 2**31 - 1  # past every seq


@dataclass(frozen=True, slots=True)
class Place:
    """Where a new message goes: after ``parent_id`` (None: a first message), on ``branch_id``
    at ``seq``. ``fork`` is the branch row to make for it (None: it continues a branch), and
    ``siblings`` counts the messages that already follow the same parent; ``through`` is the
    running sum of tokens along the path down to the parent (``tokens_through``)."""

    conversation_id: uuid.UUID
    parent_id: uuid.UUID | None
    branch_id: uuid.UUID
    seq: int
    fork: dict[str, Any] | None = None
    siblings: int = 0
    through: int = 0


def place_after(
    conversation_id: uuid.UUID,
    parent: tuple[uuid.UUID, uuid.UUID, int, int] | None,
    *,
    continues: bool,
    siblings: int,
) -> Place:
    """The place of a new message after ``parent`` (its id, branch, seq and running sum of
    tokens; None for a first message). ``continues``: the parent is the last message of its
    branch, so the new message goes on that branch; otherwise it forks a new branch at the
    parent."""
    if parent is None:
        fork = {"conversation_id": conversation_id, "parent_branch_id": None, "fork_seq": 0}
        return Place(conversation_id, None, uuid7(), 1, fork, siblings)
    parent_id, branch_id, seq, through = parent
    if continues:
        return Place(conversation_id, parent_id, branch_id, seq + 1, None, siblings, through)
    fork = {"conversation_id": conversation_id, "parent_branch_id": branch_id, "fork_seq": seq}
    return Place(conversation_id, parent_id, uuid7(), seq + 1, fork, siblings, through)


def following(row: dict[str, Any]) -> Place:
    """The place after a message just stored (the last of its branch, with no reply yet)."""
    return Place(
        row["conversation_id"],
        row["id"],
        row["branch_id"],
        row["seq"] + 1,
        through=row["tokens_through"],
    )


_child = message_table.alias("child")
_parent = message_table.alias("parent")
# The statements of a turn are built once: a recursive CTE takes longer to build than to run.
# What a writer checks before it places new messages, as columns any statement can carry
# (uncorrelated subqueries: each runs once, whatever the rows): the conversation's running
# turn, and how the message given as ``parent`` is followed.
_RUNNING = (
    T.conversation_id == bindparam("conversation_id"),
    T.status == "running",
)
_WRITER_CHECKS = (
    select(T.id).where(*_RUNNING).scalar_subquery().label("running_id"),
    select(T.deadline_at).where(*_RUNNING).scalar_subquery().label("running_deadline"),
)


def _followers(parent: Any) -> tuple[Any, Any]:
    """How many messages follow ``parent`` (a bound id), and how many of them on its branch
    (at most one: the message after it there, found by its place on the unique index of
    (branch_id, seq): a branch's messages follow one another)."""
    children = select(func.count()).where(_child.c.parent_id == parent)
    branch = select(_parent.c.branch_id).where(_parent.c.id == parent).scalar_subquery()
    seq = select(_parent.c.seq).where(_parent.c.id == parent).scalar_subquery()
    after = select(func.count()).where(_child.c.branch_id == branch, _child.c.seq == seq + 1)
    return (
        children.scalar_subquery().label("children"),
        after.scalar_subquery().label("followed"),
    )


_PLACE_COLUMNS = (
    M.branch_id,
    M.seq,
    M.tokens_through,
    *_followers(bindparam("parent_id")),
    *_WRITER_CHECKS,
)
_PARENT = select(*_PLACE_COLUMNS).where(
    M.id == bindparam("parent_id"), M.conversation_id == bindparam("conversation_id")
)
_ROOTS = select(
    select(func.count())
    .where(M.conversation_id == bindparam("conversation_id"), M.parent_id.is_(None))
    .scalar_subquery(),
    *_WRITER_CHECKS,
)


def place_of(conversation_id: uuid.UUID, parent_id: uuid.UUID, row: Any) -> Place:
    """The place after ``parent_id``, from a row of its ``_PLACE_COLUMNS``."""
    return place_after(
        conversation_id,
        (parent_id, row.branch_id, row.seq, row.tokens_through),
        continues=not row.followed,
        siblings=row.children,
    )


def locate(
    conn: Connection, conversation_id: uuid.UUID, parent_id: uuid.UUID | None, now: datetime
) -> Place:
    """The place of a new message after ``parent_id`` (None: a new first message), read
    with one statement that also checks no turn runs (``settle_running``); raises
    ``NotFound`` if the conversation has no such message."""
    params = {"conversation_id": conversation_id, "parent_id": parent_id}
    if parent_id is None:
        roots, running_id, deadline = conn.execute(_ROOTS, params).one()
        settle_running(conn, running_id, deadline, now)
        return place_after(conversation_id, None, continues=False, siblings=roots)
    row = conn.execute(_PARENT, params).first()
    if row is None:
        raise NotFound(NO_SUCH_MESSAGE)
    settle_running(conn, row.running_id, row.running_deadline, now)
    return place_of(conversation_id, parent_id, row)


def message_rows(
    place: Place, messages: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """The rows of new messages, one after the other from ``place``. A message's size is
    ``tokens`` if it comes with one (a copy, an import, a reply counted by the upstream:
    exact if ``tokens_exact``), else estimated; the running sum continues ``place``'s."""
    rows = []
    parent_id, through = place.parent_id, place.through
    for seq, message in enumerate(messages, start=place.seq):
        size = message.get("tokens")
        exact = bool(message.get("tokens_exact")) and size is not None
        if size is None:
            size = estimate(message)
        through += size
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
            "reasoning_encrypted_content": message.get("reasoning_encrypted_content"),
            "model": message.get("model"),
            "finish_reason": message.get("finish_reason"),
            "usage": message.get("usage"),
            "turn_id": message.get("turn_id"),
            "created_at": message.get("created_at", now),
            "tokens": size,
            "tokens_exact": exact,
            "tokens_through": through,
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
            **{k: v for k, v in row.items() if k not in ("branch_id", "tokens_through")},
            sibling_count=first if index == 0 else 1,
            sibling_index=first if index == 0 else 1,
        )
        for index, row in enumerate(rows)
    ]


_LOCK = (
    select(C.model, C.params, C.head_id, C.message_count, C.context)
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


# Updates of a conversation's and a turn's row, built once: what they set is given with the
# parameters (the keys that name columns).
SET_CONVERSATION = update(conversation_table).where(C.id == bindparam("conversation_id"))
SET_RUNNING_TURN = update(turn_table).where(T.id == bindparam("turn_id"), T.status == "running")


def touch(conn: Connection, conversation_id: uuid.UUID, now: datetime, **head: Any) -> None:
    """Mark the conversation updated at ``now``; with ``head_id`` and ``message_count``, make
    that message (at that seq) the end of its active path."""
    conn.execute(SET_CONVERSATION, {"conversation_id": conversation_id, "updated_at": now, **head})


def check_no_running_turn(conn: Connection, conversation_id: uuid.UUID, now: datetime) -> None:
    """Raise 409 ``turn_in_progress`` if a turn runs in the conversation (see
    ``settle_running``)."""
    running_id, deadline = conn.execute(
        select(*_WRITER_CHECKS), {"conversation_id": conversation_id}
    ).one()
    settle_running(conn, running_id, deadline, now)


def settle_running(
    conn: Connection, turn_id: uuid.UUID | None, deadline: datetime | None, now: datetime
) -> None:
    """Given the conversation's running turn (None: there is none), raise 409
    ``turn_in_progress`` if it still runs. A running turn whose lease ran out belonged to a
    server that stopped: it is marked failed (``abandoned``)."""
    if turn_id is None or deadline is None:
        return
    if deadline > now:
        raise turn_in_progress(turn_id, deadline - now)
    conn.execute(
        SET_RUNNING_TURN,
        {"turn_id": turn_id, "status": "failed", "error": ABANDONED, "completed_at": now},
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
class Seen:
    """What a turn's history holds of its path: the seq ranges sent (the input among them)
    and dropped, the estimated tokens of the input as sent (request overhead included), the
    running sum of tokens at the input's parent, and what tells the input's exact size once
    the upstream has counted the request: the previous turn's ``prompt_tokens`` and its
    reply's size, when that turn sent its whole path and its reply is the input's parent."""

    sent: list[list[int]]
    dropped: list[list[int]]
    estimated: int
    base_through: int
    previous_prompt: int | None = None
    previous_reply: int = 0
    compaction: Compaction | None = None
    summarised: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Appended:
    """What ``append`` did: the conversation's model and params, the messages it stored, and
    the place after them (or after the parent, if there were none)."""

    model: str
    params: dict[str, Any]
    messages: list[MessageOut]
    next: Place
    history: list[dict[str, Any]]  # the path down to ``next``'s parent, if it was asked for
    seen: Seen | None = None  # with the history: what it holds of the path
    conversation: Any = None  # the conversation's locked row


def append(
    conn: Connection,
    tenant: str,
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    parent_id: ParentId,
    now: datetime,
    *,
    with_history: bool = False,
    policy: Callable[[Any], Policy] | None = None,
) -> Appended:
    """Append messages after ``parent_id`` (unset: after the head; None: as a new first
    message), refused while a turn runs; the head becomes the last of them. With
    ``with_history``, also read the path down to the last of them (as the upstream receives
    it): the parent's path is read by the statement that places the messages. ``policy``,
    given the conversation's locked row, answers how the history fits the model's window:
    under ``truncate`` or ``compact`` only the path's system messages and the newest others
    that fit are read (``_locate_in_window``).

    The conversation's row is locked first, and only then is the running turn checked and the
    tree read: on PostgreSQL a statement sees the database as it was when the statement began,
    so a check made before taking the lock could miss a turn committed while it waited."""
    conversation = lock_conversation(conn, tenant, conversation_id)
    parent = conversation.head_id if parent_id is UNSET else parent_id
    chosen = policy(conversation) if policy is not None and with_history else None
    limit = chosen if chosen is not None and chosen.windowed else None
    history: list[dict[str, Any]] = []
    seen = None
    if limit is not None:
        place, rows, history, seen = _locate_in_window(
            conn, conversation_id, parent, messages, now, limit
        )
    else:
        if with_history and parent is not None:
            place, history, seen = _locate_with_history(conn, conversation_id, parent, now)
        else:
            place = locate(conn, conversation_id, parent, now)
        rows = message_rows(place, messages, now)
    if not rows:
        touch(conn, conversation_id, now)
        return Appended(
            conversation.model, conversation.params, [], place, history, seen, conversation
        )
    stored = insert_messages(conn, place, rows)
    touch(conn, conversation_id, now, head_id=rows[-1]["id"], message_count=rows[-1]["seq"])
    if with_history:
        history.extend(history_entry(*(row[c.name] for c in HISTORY_COLUMNS)) for row in rows)
        if limit is None:
            base = seen.base_through if seen else 0
            first = seen.sent if seen else []
            estimated = rows[-1]["tokens_through"] + REQUEST_OVERHEAD
            seen = Seen(
                ranges_with(first, rows[0]["seq"], rows[-1]["seq"]),
                [],
                estimated,
                base,
                seen.previous_prompt if seen else None,
                seen.previous_reply if seen else 0,
            )
    next_place = following(rows[-1])
    return Appended(
        conversation.model, conversation.params, stored, next_place, history, seen, conversation
    )


def ranges_with(sent: list[list[int]], first: int, last: int) -> list[list[int]]:
    """Seq ranges with ``first``..``last`` added after them (joined to the last if they
    follow it)."""
    if sent and sent[-1][1] == first - 1:
        return [*sent[:-1], [sent[-1][0], last]]
    return [*sent, [first, last]]


# ---- reading paths ------------------------------------------------------------------------


def path(
    *columns: Any,
    in_conversation: bool = False,
    after: Callable[[CTE], ColumnElement[Any]] | None = None,
) -> Select[Any]:
    """``columns`` of the messages on the path from the root down to the message given as the
    ``head_id`` parameter (with ``in_conversation``: only if it is in the conversation given
    as the ``conversation_id`` parameter), as one statement: a recursive CTE climbs the head's
    chain of branches, each with the range of seqs it gives the path (after its fork, up to
    where its child branch forked or the head), and each range is read from the index on
    (branch_id, seq). With ``after`` (given the chain, the seq the path is read after), only
    the messages past that seq. Callers add the order."""
    chain = _chain(in_conversation)
    low: Any = chain.c.low
    if after is not None:
        cut = after(chain)
        low = case((chain.c.low > cut, chain.c.low), else_=cut)
    return (
        select(*columns)
        .join_from(
            chain,
            message_table,
            and_(M.branch_id == chain.c.branch_id, M.seq > low, M.seq <= chain.c.high),
        )
        .where(chain.c.high > low)
    )


def _chain(in_conversation: bool) -> CTE:
    """The chain of branches of the path down to the ``head_id`` parameter: each with the
    range of seqs it gives the path, ``low`` (excluded) to ``high``."""
    head = message_table.alias("head")
    chain = (
        select(
            B.id.label("branch_id"),
            B.parent_branch_id.label("parent_branch_id"),
            B.fork_seq.label("low"),
            head.c.seq.label("high"),
        )
        .join_from(head, branch_table, B.id == head.c.branch_id)
        .where(
            head.c.id == bindparam("head_id", type_=M.id.type),
            *([head.c.conversation_id == bindparam("conversation_id")] if in_conversation else []),
        )
        .cte("chain", recursive=True)
    )
    up = branch_table.alias("up")
    # A parent branch forked before its child did, and every branch of a chain gives the path
    # at least one message: both conditions always hold. They are written out for
    # PostgreSQL's planner, which otherwise takes a recursive CTE for a hundred rows and
    # would rather hash the whole message table than probe its index once per branch.
    return chain.union_all(
        select(up.c.id, up.c.parent_branch_id, up.c.fork_seq, chain.c.low).where(
            up.c.id == chain.c.parent_branch_id, up.c.fork_seq < chain.c.low
        )
    )


def cut_after(chain: CTE) -> ColumnElement[Any]:
    """The seq on the path of its first message whose running sum of tokens reaches the
    ``floor`` parameter (0 if none does): a probe of the index on (branch_id, tokens_through)
    per branch of the chain, as the sum grows with the seq along a branch."""
    probe = (
        select(M.seq)
        .where(M.branch_id == chain.c.branch_id, M.tokens_through >= bindparam("floor"))
        .order_by(M.tokens_through)
        .limit(1)
        .correlate(chain)
        .scalar_subquery()
    )
    firsts = select(probe.label("seq"), chain.c.high).select_from(chain).subquery("firsts")
    found = select(func.min(firsts.c.seq)).where(firsts.c.seq <= firsts.c.high)
    return func.coalesce(found.scalar_subquery(), NO_SEQ)


_HISTORY = path(*HISTORY_COLUMNS).order_by(M.seq)


def read_history(conn: Connection, head_id: uuid.UUID) -> list[dict[str, Any]]:
    """The path ending at ``head_id`` as the upstream receives it, in seq order."""
    return [history_entry(*row) for row in conn.execute(_HISTORY, {"head_id": head_id})]


# What tells a turn's input its exact size (``Seen``): the prompt tokens of the turn that
# stored the message the input follows, and that turn's strategy; uncorrelated, each read
# once. Text values, not JSON: every row of the path carries them, and decoding a JSON
# document a row cost 5 ms at 1,000 messages.
_IS_HEAD = _parent.c.id == bindparam("head_id")
_PARENT_FACTS = (
    select(_parent.c.usage["prompt_tokens"].as_string())
    .where(_IS_HEAD)
    .scalar_subquery()
    .label("parent_prompt_tokens"),
    select(T.context["strategy"].as_string())
    .where(T.id == select(_parent.c.turn_id).where(_IS_HEAD).scalar_subquery())
    .scalar_subquery()
    .label("parent_turn_strategy"),
)
# A turn's path, with what placing its input after the path's last message needs to know,
# given on that message's row alone (NULL on the others: every column a row carries is
# decoded, and carrying these on every row doubled the statement's cost at 1,000 messages).
_HEAD_FACTS = (
    *_PLACE_COLUMNS[:3],
    M.tokens,
    M.tokens_exact,
    *_followers(bindparam("head_id")),
    *_WRITER_CHECKS,
    *_PARENT_FACTS,
)
_TURN_PATH = path(
    *HISTORY_COLUMNS,
    *(case((M.id == bindparam("head_id"), fact)).label(fact.key) for fact in _HEAD_FACTS),
    in_conversation=True,
).order_by(M.seq)


def _locate_with_history(
    conn: Connection, conversation_id: uuid.UUID, parent_id: uuid.UUID, now: datetime
) -> tuple[Place, list[dict[str, Any]], Seen]:
    """``locate`` after ``parent_id``, and the path down to it as the upstream receives it,
    with one statement."""
    rows = conn.execute(_TURN_PATH, {"head_id": parent_id, "conversation_id": conversation_id})
    history, last = [], None
    for last in rows:
        history.append(history_entry(*last[: len(HISTORY_COLUMNS)]))
    if last is None:
        raise NotFound(NO_SUCH_MESSAGE)
    settle_running(conn, last.running_id, last.running_deadline, now)
    previous = None
    if last.role == "assistant" and last.tokens_exact and last.parent_turn_strategy == "full":
        previous = _whole(last.parent_prompt_tokens)
    seen = Seen(
        [[1, last.seq]], [], 0, last.tokens_through, previous, last.tokens if previous else 0
    )
    return place_of(conversation_id, parent_id, last), history, seen


# The system messages of a path (always sent), read from their own index.
# The role is written out, not bound: a planner uses a partial index only for a condition it
# can see implies the index's own (SQLite never, for a bound parameter).
_SYSTEMS = (
    path(*HISTORY_COLUMNS, M.seq, M.tokens)
    .where(M.role == literal_column("'system'"))
    .order_by(M.seq)
)
_WINDOW_COLUMNS = (*HISTORY_COLUMNS, M.seq, M.tokens, M.tokens_through, M.id)
# The newest messages of a path whose running sum passes the ``floor`` parameter.
_NEWEST = path(*_WINDOW_COLUMNS, after=cut_after).order_by(M.seq)
_WHOLE = path(*_WINDOW_COLUMNS).order_by(M.seq)
# Messages to summarise: after the ``since`` seq and before the ``before`` seq, the newest
# whose running sum passes ``floor`` (``_SPAN``: all of them).
_SPAN_LIMITS = (M.seq > bindparam("since"), M.seq < bindparam("before"))
_NEWEST_SPAN = path(*_WINDOW_COLUMNS, after=cut_after).where(*_SPAN_LIMITS).order_by(M.seq)
_SPAN = path(*_WINDOW_COLUMNS).where(*_SPAN_LIMITS).order_by(M.seq)


def _latest_summary() -> Select[Any]:
    """The newest summary of a path down to ``head_id``: made up to one of its messages."""
    chain = _chain(False)
    upto = message_table.alias("upto")
    on_path = and_(
        upto.c.branch_id == chain.c.branch_id,
        upto.c.seq > chain.c.low,
        upto.c.seq <= chain.c.high,
    )
    return (
        select(S.id, S.content, S.covers, S.tokens, S.upto_seq)
        .join_from(summary_table, upto, upto.c.id == S.upto_id)
        .join(chain, on_path)
        .where(S.conversation_id == bindparam("conversation_id"))
        .order_by(S.upto_seq.desc())
        .limit(1)
    )


_SUMMARY = _latest_summary()


@dataclass(frozen=True, slots=True)
class Compaction:
    """What ``compact`` makes of a path that does not fit: the summary goes at ``at`` in the
    history (after the system messages before the cut). ``summary`` is one made before that
    covers what is left out (sent as it is), else ``previous`` (if any) and ``messages`` are to
    be summarised, up to the message ``upto_id`` at ``upto_seq``, in ``reserve`` tokens."""

    at: int
    covers: list[list[int]]
    reserve: int
    summary: Any = None
    previous: Any = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    upto_id: uuid.UUID | None = None
    upto_seq: int = 0


def _skip_tools(rows: Sequence[Any]) -> list[Any]:
    """``rows`` without the tool messages they start with (their call was cut off)."""
    start = 0
    while start < len(rows) and rows[start].role == "tool":
        start += 1
    return list(rows[start:])


def _locate_in_window(
    conn: Connection,
    conversation_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    messages: list[dict[str, Any]],
    now: datetime,
    policy: Policy,
) -> tuple[Place, list[dict[str, Any]], list[dict[str, Any]], Seen]:
    """``locate`` after ``parent_id``, the rows of ``messages`` placed there, and the
    history down to the parent that fits in the policy's budget with them: every system
    message, and the newest others that fit, never starting with a ``tool`` message (whose
    assistant message, with its ``tool_calls``, would be cut off). Three statements whatever
    the path's length: the place (with the running sum there), the system messages, and the
    messages after the cut, found by the running sum's index. Under ``compact``, room is kept
    for a summary of what is cut (``Compaction``): the newest summary made on the path is read,
    and, if it does not cover the cut, the messages since it that a summarising request fits."""
    budget, compact = policy.budget, policy.strategy == "compact"
    place = locate(conn, conversation_id, parent_id, now)
    rows = message_rows(place, messages, now)
    total = rows[-1]["tokens_through"] if rows else place.through
    new = total - place.through
    if parent_id is None:
        inputs = [[rows[0]["seq"], rows[-1]["seq"]]] if rows else []
        return place, rows, [], Seen(inputs, [], new + REQUEST_OVERHEAD, place.through)
    params = {"head_id": parent_id}
    systems = conn.execute(_SYSTEMS, params).all()
    system_tokens = sum(s.tokens for s in systems)
    reserve = summary_reserve(budget) if compact else 0
    floor = total + system_tokens + REQUEST_OVERHEAD - budget
    if floor > 0 and compact:
        floor += reserve
        previous = conn.execute(_SUMMARY, {**params, "conversation_id": conversation_id}).first()
        if previous is not None:
            floor += previous.tokens
    if floor > 0:
        kept = _skip_tools(conn.execute(_NEWEST, {**params, "floor": floor}).all())
    else:
        kept = _skip_tools(conn.execute(_WHOLE, params).all())
    first_kept = kept[0].seq if kept else place.seq
    compaction = None
    if floor > 0 and compact:
        if previous is None or previous.upto_seq < first_kept - 1:
            # A new summary: cut deeper, to half the room, so that the turns after this one
            # fit with it for a while (each compaction is a model call).
            deeper = {**params, "floor": floor + (budget - reserve) // 2}
            kept = _skip_tools(conn.execute(_NEWEST, deeper).all())
        compaction = _compaction(conn, params, systems, kept, place, previous, budget, reserve)
        if compaction is not None and compaction.summary is not None:
            kept = _skip_tools([r for r in kept if r.seq > compaction.summary.upto_seq])
            first_kept = kept[0].seq if kept else place.seq
    earlier = [s for s in systems if s.seq < first_kept]
    sent = [*earlier, *kept]
    history = [history_entry(*r[: len(HISTORY_COLUMNS)]) for r in sent]
    estimated = sum(r.tokens for r in sent) + new + REQUEST_OVERHEAD
    sent_seqs = [r.seq for r in sent]
    if rows:
        sent_seqs.extend(range(rows[0]["seq"], rows[-1]["seq"] + 1))
    summarised: list[list[int]] = []
    if compaction is not None:
        compaction = dataclasses.replace(compaction, at=len(earlier))
        summarised = compaction.covers
        if compaction.summary is not None:
            history.insert(len(earlier), summary_message(compaction.summary.content))
            estimated += compaction.summary.tokens
        else:
            estimated += compaction.reserve
    dropped = gaps(place.seq - 1, [*ranges(s.seq for s in sent), *summarised])
    seen = Seen(
        ranges(sent_seqs),
        dropped,
        estimated,
        place.through,
        compaction=compaction,
        summarised=summarised,
    )
    return place, rows, history, seen


def _compaction(
    conn: Connection,
    params: dict[str, Any],
    systems: Sequence[Any],
    kept: list[Any],
    place: Place,
    previous: Any,
    budget: int,
    reserve: int,
) -> Compaction | None:
    """What to summarise for the messages cut before ``kept`` (see ``Compaction``); None if
    nothing but system messages is cut."""
    first_kept = kept[0].seq if kept else place.seq
    if previous is not None and previous.upto_seq >= first_kept - 1:
        return Compaction(0, previous.covers, reserve, summary=previous)
    since = previous.upto_seq if previous is not None else 0
    # The summarising request holds the previous summary and the newest of the messages since
    # it that fit beside it: older ones are dropped.
    room = budget - reserve - SUMMARY_PROMPT_TOKENS - (previous.tokens if previous else 0)
    high = kept[0].tokens_through - kept[0].tokens if kept else place.through
    span = {**params, "since": since, "before": first_kept, "floor": high - room}
    found = conn.execute(_NEWEST_SPAN if high - room > 0 else _SPAN, span).all()
    told = [r for r in found if r.role != "system"]
    if not told:
        return None
    covers = ranges(r.seq for r in told)
    if previous is not None:
        covers = [*previous.covers, *covers]
    return Compaction(
        0,
        covers,
        reserve,
        previous=previous,
        messages=[{"seq": r.seq, **history_entry(*r[: len(HISTORY_COLUMNS)])} for r in told],
        upto_id=found[-1].id,
        upto_seq=found[-1].seq,
    )


def _whole(value: Any) -> int | None:
    """A count read from JSON as text: a whole number, or None."""
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() else None


def history_entry(
    role: str,
    content: Any,
    name: str | None,
    tool_calls: Any,
    tool_call_id: str | None,
    encrypted_reasoning: str | None,
) -> dict[str, Any]:
    """A message as the upstream receives it: ``role`` and ``content``, and the tool fields
    and encrypted reasoning it has (the chat-completions request leaves the latter out:
    ``service.upstream``)."""
    entry: dict[str, Any] = {"role": role, "content": content}
    if name is not None:
        entry["name"] = name
    if tool_calls is not None:
        entry["tool_calls"] = tool_calls
    if tool_call_id is not None:
        entry["tool_call_id"] = tool_call_id
    if encrypted_reasoning is not None:
        entry["reasoning_encrypted_content"] = encrypted_reasoning
    return entry


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
