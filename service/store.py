"""Every SQL statement of the service. Each public method is one short transaction.

The store speaks in plain values and response Structs; it knows nothing of HTTP or the upstream.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec
from sqlalchemy import (
    ColumnElement,
    Select,
    column,
    delete,
    event,
    func,
    insert,
    literal_column,
    select,
    table,
    text,
    tuple_,
    union,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.dbconn import SQLITE_PRAGMAS, DriverLane, SqliteThread, replace_closed_connections
from service.errors import (
    BadRequest,
    Conflict,
    NotFound,
    TurnInProgress,
    ValidationFailed,
)
from service.schemas import ConversationOut, MessageOut, Reply, TurnOut
from service.tables import (
    api_key_table,
    conversation_table,
    idempotency_table,
    message_table,
    turn_table,
    utcnow,
    uuid7,
)

C = conversation_table.c
M = message_table.c
T = turn_table.c
K = api_key_table.c
IK = idempotency_table.c

# A turn's history, as the upstream receives it: one JSON entry per stored message (role and
# content, plus the tool fields it has), written by the database itself and joined in seq order,
# so that the history reaches the upstream request as stored bytes, never decoded into Python
# objects and encoded again. PostgreSQL writes the same entries in convstore_begin_turn (see
# the turn_functions migration); SQLite's group_concat has no ORDER BY before 3.44.
SQLITE_HISTORY = """SELECT '{"role":' || json_quote(role)
    || ',"content":' || coalesce(content, 'null')
    || CASE WHEN name IS NULL THEN '' ELSE ',"name":' || json_quote(name) END
    || CASE WHEN tool_calls IS NULL OR tool_calls = 'null' THEN ''
            ELSE ',"tool_calls":' || tool_calls END
    || CASE WHEN tool_call_id IS NULL THEN ''
            ELSE ',"tool_call_id":' || json_quote(tool_call_id) END
    || '}'
FROM message WHERE conversation_id = :conversation_id AND seq > :after ORDER BY seq"""
# SQLite: the other statements of a turn's two transactions (see _sqlite_begin_turn).
SQLITE_RESERVE = """UPDATE conversation SET message_count = message_count + ?, updated_at = ?
WHERE id = ? AND tenant = ? RETURNING message_count, model, params"""
SQLITE_RUNNING_TURN = """SELECT id, deadline_at > ? FROM turn
WHERE conversation_id = ? AND status = 'running'"""
SQLITE_ABANDON = "UPDATE turn SET status = 'failed', error = ?, completed_at = ? WHERE id = ?"
SQLITE_INSERT_MESSAGE = """INSERT INTO message (id, conversation_id, seq, role, content, name,
tool_calls, tool_call_id, reasoning_content, model, finish_reason, usage, turn_id, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
SQLITE_INSERT_TURN = """INSERT INTO turn (id, conversation_id, status, model, params, stream,
attempts, created_at, deadline_at) VALUES (?, ?, 'running', ?, ?, ?, 0, ?, ?)"""
SQLITE_TAKE_SEQ = """UPDATE conversation SET message_count = message_count + 1, updated_at = ?
WHERE id = ? RETURNING message_count"""
SQLITE_COMPLETE_TURN = """UPDATE turn SET status = 'completed', usage = ?, finish_reason = ?,
latency_ms = ?, upstream_ms = ?, attempts = ?, reply_seq = ?, completed_at = ?
WHERE id = ? AND status = 'running'"""

# PostgreSQL: a turn's two transactions are two functions (see the turn_functions migration),
# called through asyncpg as prepared statements: one round trip each.
PG_BEGIN_TURN = """SELECT * FROM convstore_begin_turn(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
    $21)"""
PG_HISTORY = "SELECT seq, entry FROM convstore_history($1, $2)"
PG_COMPLETE_TURN = """SELECT convstore_complete_turn(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"""
# A turn with params reads the conversation's params in its first call; a concurrent change to
# them sends it round again.
MERGE_ATTEMPTS = 5
ABANDONED = {"code": "abandoned", "detail": "The server running this turn stopped."}
MESSAGE_COLUMNS = (
    M.id,
    M.conversation_id,
    M.seq,
    M.role,
    M.content,
    M.created_at,
    M.name,
    M.tool_calls,
    M.tool_call_id,
    M.reasoning_content,
    M.model,
    M.finish_reason,
    M.usage,
    M.turn_id,
)
CONVERSATION_COLUMNS = (
    C.id,
    C.title,
    C.model,
    C.params,
    C["metadata"],
    C.message_count,
    C.created_at,
    C.updated_at,
    C.source_id,
    C.forked_from_id,
    C.forked_through_seq,
)
TURN_COLUMNS = (
    T.id,
    T.conversation_id,
    T.status,
    T.model,
    T.params,
    T.usage,
    T.finish_reason,
    T.error,
    T.latency_ms,
    T.created_at,
    T.completed_at,
    T.reply_seq,
)


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def make_engine(database_url: str, *, pool_size: int = 20) -> AsyncEngine:
    """An engine tuned for the service: WAL and a busy timeout on SQLite, pooling on PostgreSQL.

    On SQLite, transactions begun on ``Store.writer`` start with ``BEGIN IMMEDIATE``, so two
    writers queue on the database lock instead of failing with "database is locked".
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            json_serializer=_json_dumps,
            json_deserializer=msgspec.json.decode,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"timeout": 30},
        )
        _tune_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        json_serializer=_json_dumps,
        json_deserializer=msgspec.json.decode,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,  # a round trip per checkout; closed connections are caught free
    )
    replace_closed_connections(engine)
    return engine


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Own the transaction boundaries (pysqlite's implicit BEGIN gets them wrong).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("convstore_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


EXPORT_CONVERSATION_COLUMNS = (*CONVERSATION_COLUMNS, C.tenant)
EXPORT_MESSAGE_COLUMNS = MESSAGE_COLUMNS
COPIED_MESSAGE_COLUMNS = tuple(
    c for c in MESSAGE_COLUMNS if c.key not in ("id", "conversation_id", "turn_id")
)


# ---- cursors ----------------------------------------------------------------------------


def encode_cursor(*values: Any) -> str:
    raw = msgspec.json.encode([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, count: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise BadRequest("`cursor` is not a cursor this API handed out.") from None
    if not isinstance(values, list) or len(values) != count:
        raise BadRequest("`cursor` is not a cursor this API handed out.")
    return values


def _conversation_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, ident = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (TypeError, ValueError):
        raise BadRequest("`cursor` is not a cursor this API handed out.") from None


# ---- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant whose data they may see, and whether they are an admin."""

    key_id: uuid.UUID
    tenant: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: uuid.UUID
    tenant: str
    key_prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What the first transaction of a turn produced: the upstream request is built from it."""

    turn: TurnOut
    appended: list[MessageOut]
    history: msgspec.Raw  # a JSON array of messages, as the upstream receives them
    model: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _NewTurn:
    """What a turn's first transaction is given (it numbers ``rows`` once their seqs are taken)."""

    tenant: str
    conversation_id: uuid.UUID
    turn_id: uuid.UUID
    rows: list[dict[str, Any]]
    model: str | None
    params: dict[str, Any] | None
    stream: bool
    now: datetime
    deadline: datetime


class _Began(NamedTuple):
    """What a turn's first transaction found: the conversation's message count, the turn's
    model and params, and the history entries after the cached ones (or all of them, ``whole``,
    when what was cached did not fit)."""

    message_count: int
    model: str
    params: dict[str, Any]
    new: list[str]
    whole: bool


@dataclass(frozen=True, slots=True)
class ExportRows:
    """One conversation's rows for a transcript: the conversation, its messages, its turns."""

    conversation: Any
    messages: list[Any]
    turns: list[Any]


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    """Which conversations a read covers: one tenant's, or (for admins) any filter.

    ``q`` is text to find in titles or message content, through the database's own text
    index (PostgreSQL full-text search, SQLite FTS5); ``status`` keeps conversations having
    a turn in that status.
    """

    tenant: str | None = None
    model: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    q: str | None = None
    status: str | None = None
    dialect: str = "sqlite"

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.tenant is not None:
            query = query.where(C.tenant == self.tenant)
        if self.model is not None:
            query = query.where(C.model == self.model)
        if self.created_after is not None:
            query = query.where(C.created_at >= self.created_after)
        if self.created_before is not None:
            query = query.where(C.created_at < self.created_before)
        if self.status is not None:
            query = query.where(C.id.in_(select(T.conversation_id).where(T.status == self.status)))
        if self.q is not None and self.q.strip():
            query = query.where(text_match(self.dialect, self.q))
        return query


_SIMPLE: ColumnElement[Any] = literal_column("'simple'::regconfig")
_EMPTY: ColumnElement[Any] = literal_column("''::text")
_SEARCH_TEXT = table("search_text", column("conv"))


def text_match(dialect: str, q: str) -> ColumnElement[bool]:
    """Conversations whose title or any message contains every word of ``q``."""
    if dialect == "postgresql":
        # Each side must read exactly like its GIN index's expression, and the two sides are a
        # UNION of ids (an OR of the two would make the planner scan every conversation).
        query = func.plainto_tsquery(_SIMPLE, q)
        titled = conversation_table.alias("titled")
        in_titles = select(titled.c.id).where(
            func.to_tsvector(_SIMPLE, func.coalesce(titled.c.title, _EMPTY)).op("@@")(query)
        )
        in_messages = select(M.conversation_id).where(
            func.to_tsvector(_SIMPLE, func.search_content_text(M.content)).op("@@")(query)
        )
        return C.id.in_(union(in_titles, in_messages))
    words = [w for w in q.split() if w]
    phrase = " ".join('"' + w.replace('"', '""') + '"' for w in words)
    matches = select(_SEARCH_TEXT.c.conv).where(
        text("search_text MATCH :search_query").bindparams(search_query=f"body : ({phrase})")
    )
    return C.id.in_(matches)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer first given to an idempotent request."""

    status: int
    body: Any


class _NotRunning(Exception):
    """The turn being completed is no longer running."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _message_out(row: Any) -> MessageOut:
    return MessageOut(**row._mapping)


def _conversation_out(row: Any) -> ConversationOut:
    return ConversationOut(**row._mapping)


def _turn_out(row: Any) -> TurnOut:
    return TurnOut(**row._mapping)


class Store:
    """The conversation store over one SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, *, history_cache: HistoryCache | None = None) -> None:
        self.engine = engine
        self.history_cache = history_cache or HistoryCache(0)
        self.writer = engine.execution_options(convstore_write=True)
        self.lane = DriverLane(engine)
        # SQLite: the thread a turn's transactions run in, and how values are stored there.
        self.sqlite: SqliteThread | None = None
        self._sqlite_values: _SqliteValues | None = None
        if self.dialect == "sqlite":
            self.sqlite = SqliteThread(engine.url.database or "")
            self._sqlite_values = _SqliteValues(engine.dialect)

    async def close(self) -> None:
        """Give back the connections the store keeps (before its engine is disposed of)."""
        await self.lane.close()
        if self.sqlite is not None:
            await self.sqlite.close()

    def connections_in_use(self) -> int:
        """Database connections checked out of the pool, less those only kept for turns."""
        return max(0, self.lane.checked_out() - self.lane.idle)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.writer.begin() as conn:
            yield conn

    def _driver(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """An asyncpg connection, for prepared statements without the overhead of SQL
        expressions; it owns its transactions (SQLAlchemy starts none here)."""
        return self.lane.connection()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))

    # ---- API keys -----------------------------------------------------------------------

    async def create_key(self, tenant: str, *, is_admin: bool = False) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the key itself, which is never stored."""
        key = "cs_" + secrets.token_urlsafe(32)
        record = KeyRecord(uuid7(), tenant, key[:10], is_admin, utcnow(), None)
        async with self._write() as conn:
            await conn.execute(
                insert(api_key_table).values(
                    id=record.id,
                    tenant=tenant,
                    key_hash=hash_key(key),
                    key_prefix=record.key_prefix,
                    is_admin=is_admin,
                    created_at=record.created_at,
                )
            )
        return record, key

    async def list_keys(self) -> list[KeyRecord]:
        async with self._read() as conn:
            rows = await conn.execute(
                select(
                    K.id, K.tenant, K.key_prefix, K.is_admin, K.created_at, K.revoked_at
                ).order_by(K.created_at)
            )
            return [KeyRecord(*row) for row in rows]

    async def revoke_key(self, key_id: uuid.UUID) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                update(api_key_table)
                .where(K.id == key_id, K.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return bool(result.rowcount)

    async def authenticate(self, key: str) -> Principal | None:
        """The principal for a presented key, or None if unknown or revoked."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(K.id, K.tenant, K.is_admin).where(
                        K.key_hash == hash_key(key), K.revoked_at.is_(None)
                    )
                )
            ).first()
        return Principal(row[0], row[1], row[2]) if row else None

    # ---- conversations ------------------------------------------------------------------

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
        async with self._write() as conn:
            await conn.execute(
                insert(conversation_table).values(
                    tenant=tenant, **msgspec.structs.asdict(conversation)
                )
            )
            stored = await self._insert_messages(conn, conversation.id, 0, messages, now)
        return conversation, stored

    async def list_conversations(
        self, tenant: str, *, limit: int, cursor: str | None
    ) -> tuple[list[ConversationOut], str | None]:
        query = select(*CONVERSATION_COLUMNS).where(C.tenant == tenant)
        if cursor:
            created, ident = _conversation_cursor(cursor)
            query = query.where(tuple_(C.created_at, C.id) < tuple_(created, ident))
        query = query.order_by(C.created_at.desc(), C.id.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        items = [_conversation_out(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(items[-1].created_at, str(items[-1].id))
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
        return _conversation_out(row)

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
        return _conversation_out(row)

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
        if cursor:
            (after,) = decode_cursor(cursor, 1)
            if not isinstance(after, int):
                raise BadRequest("`cursor` is not a cursor this API handed out.")
            query = query.where(M.seq < after if descending else M.seq > after)
        query = query.order_by(M.seq.desc() if descending else M.seq).limit(limit + 1)
        async with self._read() as conn:
            await self._owned(conn, tenant, conversation_id)
            rows = (await conn.execute(query)).all()
        items = [_message_out(r) for r in rows[:limit]]
        next_cursor = encode_cursor(items[-1].seq) if len(rows) > limit else None
        return items, next_cursor

    async def append_messages(
        self, tenant: str, conversation_id: uuid.UUID, messages: list[dict[str, Any]]
    ) -> list[MessageOut]:
        """Append messages without a turn; refused while a turn runs."""
        now = utcnow()
        async with self._write() as conn:
            before, _, _ = await self._reserve(conn, tenant, conversation_id, len(messages), now)
            await self._check_no_running_turn(conn, conversation_id, now)
            return await self._insert_messages(conn, conversation_id, before, messages, now)

    # ---- turns --------------------------------------------------------------------------

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
    ) -> TurnStart:
        """Transaction 1 of a turn: append the input, mark the turn running, read the history.

        The conversation's row is locked first (its message counter is bumped), and only then is
        the running turn checked and the history read: on PostgreSQL a statement sees the
        database as it was when the statement began, so a check folded into the locking
        statement could miss a turn committed while it waited for the lock.
        """
        now = utcnow()
        rows = _message_rows(conversation_id, messages, now)
        given = _NewTurn(
            tenant, conversation_id, uuid7(), rows, model, params, stream, now,
            now + timedelta(seconds=lease),
        )  # fmt: skip
        seen, known = self.history_cache.get(conversation_id)
        if self.dialect == "postgresql":
            began = await self._begin_turn_postgresql(given, seen)
        else:
            began = await self._begin_turn_sqlite(given, seen)
        turn = _running_turn(given.turn_id, conversation_id, began.model, began.params, now)
        history = self.history_cache.put(
            conversation_id, began.message_count, "" if began.whole else known, began.new
        )
        return TurnStart(turn, _messages_out(rows), _history(history), turn.model, turn.params)

    async def _begin_turn_postgresql(self, given: _NewTurn, seen: int) -> _Began:
        # With params of its own, a turn's params are merged over the conversation's here: the
        # first call learns the conversation's params (CV412), the second sends the merge.
        params = given.params
        merged = _json_dumps(params) if params else None
        base: str | None = None
        async with self._driver() as pg:
            for _ in range(MERGE_ATTEMPTS):
                try:
                    found = await pg.fetch(
                        PG_BEGIN_TURN,
                        given.conversation_id,
                        given.tenant,
                        given.now,
                        given.deadline,
                        given.turn_id,
                        given.model,
                        merged,
                        base,
                        given.stream,
                        *_message_columns(given.rows),
                        seen,
                    )
                    break
                except asyncpg.PostgresError as exc:
                    if params and getattr(exc, "sqlstate", None) == "CV412":
                        base = exc.detail
                        merged = _json_dumps({**msgspec.json.decode(base or "{}"), **params})
                        continue
                    raise _begin_refused(exc) from None
            else:
                raise Conflict(
                    "The conversation's params kept changing while the turn started; send it again."
                )
            # The function returns its rows in order (the first, then the history by seq);
            # sorting a sorted list costs one comparison per row, and makes the order a promise.
            found.sort(key=_first)
            _, _, count, turn_model, turn_params = found[0]
            new = [entry for _, entry, _, _, _ in found[1:]]
            whole = len(new) != count - seen  # a cache that does not fit: read it all
            if whole:
                rows = await pg.fetch(PG_HISTORY, given.conversation_id, 0)
                new = [entry for _, entry in rows]
        _number(given.rows, count)  # as the function numbered them
        return _Began(count, turn_model, msgspec.json.decode(turn_params), new, whole)

    async def _begin_turn_sqlite(self, given: _NewTurn, seen: int) -> _Began:
        thread, values = self._sqlite_turns()
        try:
            return await thread.run(lambda db: _sqlite_begin_turn(db, values, given, seen))
        except sqlite3.IntegrityError:
            # The unique index on running turns, a backstop: the checks hold the write lock.
            raise _turn_in_progress(None) from None

    async def complete_turn(
        self,
        turn: TurnOut,
        reply: Reply,
        *,
        latency_ms: int,
        upstream_ms: int,
        attempts: int,
    ) -> tuple[TurnOut, MessageOut] | None:
        """Transaction 2 of a turn: store the reply and complete the running ``turn``.

        Returns None if the turn is no longer running (its conversation was deleted, or it was
        declared abandoned), in which case nothing is stored.
        """
        now = utcnow()
        completed = msgspec.structs.replace(
            turn,
            status="completed",
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            latency_ms=latency_ms,
            completed_at=now,
        )
        message = MessageOut(
            id=uuid7(),
            conversation_id=turn.conversation_id,
            seq=0,  # taken in the transaction
            role="assistant",
            content=reply.content,
            created_at=now,
            tool_calls=reply.tool_calls,
            reasoning_content=reply.reasoning_content,
            model=reply.model,
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            turn_id=turn.id,
        )
        store = (
            self._complete_turn_postgresql
            if self.dialect == "postgresql"
            else self._complete_turn_sqlite
        )
        try:
            seq = await store(completed, message, upstream_ms, attempts)
        except _NotRunning:
            return None
        return (
            msgspec.structs.replace(completed, reply_seq=seq),
            msgspec.structs.replace(message, seq=seq),
        )

    async def _complete_turn_postgresql(
        self, turn: TurnOut, reply: MessageOut, upstream_ms: int, attempts: int
    ) -> int:
        async with self._driver() as pg:
            try:
                seq = await pg.fetchval(
                    PG_COMPLETE_TURN,
                    turn.id,
                    turn.conversation_id,
                    turn.completed_at,
                    _json_dumps(turn.usage),
                    turn.finish_reason,
                    turn.latency_ms,
                    upstream_ms,
                    attempts,
                    reply.id,
                    _json_dumps(reply.content),
                    _json_dumps(reply.tool_calls),
                    reply.reasoning_content,
                    reply.model,
                )
            except asyncpg.PostgresError as exc:
                if getattr(exc, "sqlstate", None) == "CV410":
                    raise _NotRunning from None  # the function rolled back the seq it took
                raise
        if seq is None:
            raise _NotRunning  # the conversation was deleted
        return int(seq)

    async def _complete_turn_sqlite(
        self, turn: TurnOut, reply: MessageOut, upstream_ms: int, attempts: int
    ) -> int:
        thread, values = self._sqlite_turns()
        return await thread.run(
            lambda db: _sqlite_complete_turn(db, values, turn, reply, upstream_ms, attempts)
        )

    def _sqlite_turns(self) -> tuple[SqliteThread, _SqliteValues]:
        assert self.sqlite is not None, "a SQLite store"
        assert self._sqlite_values is not None
        return self.sqlite, self._sqlite_values

    async def fail_turn(
        self,
        turn_id: uuid.UUID,
        error: dict[str, Any],
        *,
        latency_ms: int,
        upstream_ms: int | None,
        attempts: int,
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
                    )
                    .returning(*TURN_COLUMNS)
                )
            ).first()
        return _turn_out(row) if row else None

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
        return _turn_out(row)

    async def get_message(self, conversation_id: uuid.UUID, seq: int) -> MessageOut | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(*MESSAGE_COLUMNS).where(
                        M.conversation_id == conversation_id, M.seq == seq
                    )
                )
            ).first()
        return _message_out(row) if row else None

    # ---- admin ----------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def admin_list(
        self, filters: ConversationFilter, *, limit: int, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """Conversations of every tenant, newest first, with their tenant; keyset pages."""
        query = filters.apply(select(*CONVERSATION_COLUMNS, C.tenant))
        if cursor:
            created, ident = _conversation_cursor(cursor)
            query = query.where(tuple_(C.created_at, C.id) < tuple_(created, ident))
        query = query.order_by(C.created_at.desc(), C.id.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].created_at, str(rows[-1].id))
        return list(rows), next_cursor

    async def stats(self, *, days: int = 30) -> dict[str, Any]:
        """Counts of conversations, messages and turns by status; tokens by model, tenant, day."""
        tokens = func.coalesce(func.sum(T.usage["total_tokens"].as_integer()), 0)
        since = utcnow() - timedelta(days=days)
        day = func.date(T.created_at)
        async with self._read() as conn:
            conversations = (
                await conn.execute(select(func.count()).select_from(conversation_table))
            ).scalar_one()
            messages = (
                await conn.execute(select(func.coalesce(func.sum(C.message_count), 0)))
            ).scalar_one()
            by_status: dict[str, int] = dict(
                (await conn.execute(select(T.status, func.count()).group_by(T.status))).all()
            )
            by_model = (
                await conn.execute(
                    select(T.model, func.count(), tokens).group_by(T.model).order_by(T.model)
                )
            ).all()
            by_tenant = (
                await conn.execute(
                    select(C.tenant, func.count(T.id), tokens)
                    .select_from(turn_table.join(conversation_table, C.id == T.conversation_id))
                    .group_by(C.tenant)
                    .order_by(C.tenant)
                )
            ).all()
            by_day = (
                await conn.execute(
                    select(day, func.count(), tokens)
                    .where(T.created_at >= since)
                    .group_by(day)
                    .order_by(day)
                )
            ).all()
        return {
            "conversations": conversations,
            "messages": int(messages),
            "turns": {s: int(by_status.get(s, 0)) for s in ("running", "completed", "failed")},
            "tokens_by_model": [
                {"model": m, "turns": n, "total_tokens": int(t)} for m, n, t in by_model
            ],
            "tokens_by_tenant": [
                {"tenant": m, "turns": n, "total_tokens": int(t)} for m, n, t in by_tenant
            ],
            "by_day": [{"day": str(d), "turns": n, "total_tokens": int(t)} for d, n, t in by_day],
        }

    # ---- transcripts and forks ------------------------------------------------------------

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
            select(*EXPORT_MESSAGE_COLUMNS)
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

    async def import_conversation(
        self,
        tenant: str,
        conversation: dict[str, Any],
        messages: list[dict[str, Any]],
        turns: list[dict[str, Any]],
    ) -> ConversationOut:
        """Store an imported conversation in one transaction, with new ids.

        ``conversation`` holds the stored columns (``source_id`` among them), ``messages`` and
        ``turns`` the rows with their transcript ids, which are mapped to new ones. Raises
        ``Conflict`` (``already_imported``) if this tenant already imported ``source_id``.
        """
        now = utcnow()
        conversation_id = uuid7()
        turn_ids = {t["id"]: uuid7() for t in turns}
        values = {
            "id": conversation_id,
            "tenant": tenant,
            "message_count": len(messages),
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
                                "deadline_at": t.get("completed_at") or now,
                            }
                            for t in turns
                        ],
                    )
                if messages:
                    await conn.execute(
                        insert(message_table),
                        [
                            {
                                **m,
                                "id": uuid7(),
                                "conversation_id": conversation_id,
                                "turn_id": turn_ids.get(m.get("turn_id")),
                            }
                            for m in messages
                        ],
                    )
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

    # ---- idempotency keys ---------------------------------------------------------------

    async def claim_idempotency_key(
        self, tenant: str, key: str, fingerprint: str, *, lock: float, ttl: float
    ) -> StoredAnswer | None:
        """Claim ``key`` for a request, or return the answer it already got.

        Raises 422 if the key was used for a different request, 409 while the first request
        with it is still running.
        """
        now = utcnow()
        claim = {
            "fingerprint": fingerprint,
            "state": "running",
            "response_status": None,
            "response_body": None,
            "created_at": now,
            "locked_until": now + timedelta(seconds=lock),
            "expires_at": now + timedelta(seconds=ttl),
        }
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(
                        IK.fingerprint,
                        IK.state,
                        IK.response_status,
                        IK.response_body,
                        IK.locked_until,
                        IK.expires_at,
                    )
                    .where(IK.tenant == tenant, IK.key == key)
                    .with_for_update()
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(idempotency_table).values(tenant=tenant, key=key, **claim)
                )
                return None
            stored_fingerprint, state, status, body, locked_until, expires_at = row
            if expires_at <= now or (state == "running" and locked_until <= now):
                await conn.execute(
                    update(idempotency_table)
                    .where(IK.tenant == tenant, IK.key == key)
                    .values(**claim)
                )
                return None
        if stored_fingerprint != fingerprint:
            raise ValidationFailed(
                "This Idempotency-Key was already used for a different request.",
                code="idempotency_key_reused",
            )
        if state == "running":
            raise Conflict(
                "The first request with this Idempotency-Key is still running; retry later.",
                code="idempotency_key_in_use",
            )
        return StoredAnswer(status, body)

    async def finish_idempotency_key(self, tenant: str, key: str, status: int, body: Any) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(idempotency_table)
                .where(IK.tenant == tenant, IK.key == key)
                .values(state="done", response_status=status, response_body=body)
            )

    async def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Forget a claim whose request had no effect, so that it may be sent again."""
        async with self._write() as conn:
            await conn.execute(
                delete(idempotency_table).where(
                    IK.tenant == tenant, IK.key == key, IK.state == "running"
                )
            )

    async def purge_idempotency_keys(self) -> int:
        async with self._write() as conn:
            result = await conn.execute(delete(idempotency_table).where(IK.expires_at < utcnow()))
            return int(result.rowcount or 0)

    # ---- helpers ------------------------------------------------------------------------

    async def _owned(self, conn: AsyncConnection, tenant: str, conversation_id: uuid.UUID) -> None:
        found = (
            await conn.execute(select(C.id).where(C.id == conversation_id, C.tenant == tenant))
        ).first()
        if found is None:
            raise NotFound("No conversation has this id.")

    async def _reserve(
        self,
        conn: AsyncConnection,
        tenant: str,
        conversation_id: uuid.UUID,
        count: int,
        now: datetime,
    ) -> tuple[int, str, dict[str, Any]]:
        """Reserve ``count`` seqs: bump the counter, which also locks the conversation row.

        Returns the last seq in use before, the conversation's model and its params.
        """
        row = (
            await conn.execute(
                update(conversation_table)
                .where(C.id == conversation_id, C.tenant == tenant)
                .values(message_count=C.message_count + count, updated_at=now)
                .returning(C.message_count, C.model, C.params)
            )
        ).first()
        if row is None:
            raise NotFound("No conversation has this id.")
        return row[0] - count, row[1], row[2]

    async def _check_no_running_turn(
        self, conn: AsyncConnection, conversation_id: uuid.UUID, now: datetime
    ) -> None:
        running = (
            await conn.execute(
                select(T.id, T.deadline_at).where(
                    T.conversation_id == conversation_id, T.status == "running"
                )
            )
        ).first()
        if running is None:
            return
        turn_id, deadline = running
        if deadline > now:
            raise _turn_in_progress(turn_id)
        # The process that ran it died: free the conversation and say why.
        await conn.execute(
            update(turn_table)
            .where(T.id == turn_id)
            .values(status="failed", error=ABANDONED, completed_at=now)
        )

    async def _insert_messages(
        self,
        conn: AsyncConnection,
        conversation_id: uuid.UUID,
        before: int,
        messages: list[dict[str, Any]],
        now: datetime,
    ) -> list[MessageOut]:
        if not messages:
            return []
        rows = _message_rows(conversation_id, messages, now)
        _number(rows, before + len(rows))
        await conn.execute(insert(message_table), rows)
        return _messages_out(rows)


def _message_rows(
    conversation_id: uuid.UUID, messages: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """The rows of new messages, to be numbered (``_number``) once their seqs are reserved."""
    return [
        {
            "id": uuid7(),
            "conversation_id": conversation_id,
            "seq": 0,
            "role": message["role"],
            "content": message.get("content"),
            "name": message.get("name"),
            "tool_calls": message.get("tool_calls"),
            "tool_call_id": message.get("tool_call_id"),
            "reasoning_content": message.get("reasoning_content"),
            "model": message.get("model"),
            "finish_reason": message.get("finish_reason"),
            "usage": message.get("usage"),
            "turn_id": None,
            "created_at": message.get("created_at", now),
        }
        for message in messages
    ]


def _number(rows: list[dict[str, Any]], count: int) -> None:
    """Give new message rows the seqs up to ``count``, the conversation's new message count."""
    for seq, row in enumerate(rows, start=count - len(rows) + 1):
        row["seq"] = seq


def _message_columns(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """New message rows as one list per column, for convstore_begin_turn (JSON as text)."""
    return [
        [r["id"] for r in rows],
        [r["role"] for r in rows],
        [_json_dumps(r["content"]) for r in rows],
        [r["name"] for r in rows],
        [_json_dumps(r["tool_calls"]) for r in rows],
        [r["tool_call_id"] for r in rows],
        [r["reasoning_content"] for r in rows],
        [r["model"] for r in rows],
        [r["finish_reason"] for r in rows],
        [_json_dumps(r["usage"]) for r in rows],
        [r["created_at"] for r in rows],
    ]


def _messages_out(rows: list[dict[str, Any]]) -> list[MessageOut]:
    return [MessageOut(**row) for row in rows]


def _running_turn(
    turn_id: uuid.UUID,
    conversation_id: uuid.UUID,
    model: str,
    params: dict[str, Any],
    now: datetime,
) -> TurnOut:
    return TurnOut(
        id=turn_id,
        conversation_id=conversation_id,
        status="running",
        model=model,
        params=params,
        usage=None,
        finish_reason=None,
        error=None,
        latency_ms=None,
        created_at=now,
        completed_at=None,
    )


def _first(row: Sequence[Any]) -> Any:
    return row[0]


def _require_messages(count: int) -> None:
    if count == 0:
        raise _no_messages()


def _no_messages() -> ValidationFailed:
    return ValidationFailed(
        "The conversation has no messages yet: send at least one with the turn."
    )


def _begin_refused(exc: Exception) -> Exception:
    """What convstore_begin_turn's refusals mean (it raises with SQLSTATEs of its own)."""
    code = getattr(exc, "sqlstate", None)
    if code == "CV404":
        return NotFound("No conversation has this id.")
    if code == "CV422":
        return _no_messages()
    if code == "CV409":
        return _turn_in_progress(getattr(exc, "detail", None))
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        return _turn_in_progress(None)  # the unique index on running turns, a backstop
    return exc


def _turn_in_progress(running_turn_id: uuid.UUID | str | None) -> TurnInProgress:
    extra: dict[str, Any] = {"running_turn_id": str(running_turn_id)} if running_turn_id else {}
    return TurnInProgress(
        "A turn is already running in this conversation; wait for it to finish.", **extra
    )


def _history(entries: str) -> msgspec.Raw:
    """The JSON array of a history's entries (given joined by commas)."""
    return msgspec.Raw(("[" + entries + "]").encode())


class _SqliteValues:
    """Python values as the tables' column types keep them in SQLite (the same conversions
    SQLAlchemy applies), for the turn statements run on a plain sqlite3 connection."""

    def __init__(self, dialect: Any) -> None:
        self.uuid = _processor(M.id.type, dialect)
        self.when = _processor(M.created_at.type, dialect)
        self.json = _processor(M.content.type, dialect)

    def message(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """A message row, in SQLITE_INSERT_MESSAGE's order."""
        return (
            self.uuid(row["id"]),
            self.uuid(row["conversation_id"]),
            row["seq"],
            row["role"],
            self.json(row["content"]),
            row["name"],
            self.json(row["tool_calls"]),
            row["tool_call_id"],
            row["reasoning_content"],
            row["model"],
            row["finish_reason"],
            self.json(row["usage"]),
            self.uuid(row["turn_id"]),
            self.when(row["created_at"]),
        )


def _processor(column_type: Any, dialect: Any) -> Any:
    process = column_type.bind_processor(dialect)
    return process or (lambda value: value)


def _sqlite_begin_turn(
    db: sqlite3.Connection, values: _SqliteValues, given: _NewTurn, seen: int
) -> _Began:
    """Transaction 1 of a turn on SQLite, run whole in the store's SQLite thread (the steps of
    convstore_begin_turn on PostgreSQL)."""
    rows = given.rows
    cid, at = values.uuid(given.conversation_id), values.when(given.now)
    db.execute("BEGIN IMMEDIATE")  # the write lock, taken at once
    try:
        reserved = db.execute(SQLITE_RESERVE, (len(rows), at, cid, given.tenant)).fetchone()
        if reserved is None:
            raise NotFound("No conversation has this id.")
        count, conversation_model, conversation_params = reserved
        _number(rows, count)
        _require_messages(count)
        running = db.execute(SQLITE_RUNNING_TURN, (at, cid)).fetchone()
        if running is not None:
            running_id, alive = running
            if alive:
                raise _turn_in_progress(uuid.UUID(running_id))
            # The process that ran it died: free the conversation and say why.
            db.execute(SQLITE_ABANDON, (values.json(ABANDONED), at, running_id))
        turn_model = given.model or conversation_model
        turn_params = {**msgspec.json.decode(conversation_params or "{}"), **(given.params or {})}
        db.executemany(SQLITE_INSERT_MESSAGE, [values.message(r) for r in rows])
        db.execute(
            SQLITE_INSERT_TURN,
            (
                values.uuid(given.turn_id), cid, turn_model, values.json(turn_params),
                given.stream, at, values.when(given.deadline),
            ),
        )  # fmt: skip
        read = {"conversation_id": cid, "after": seen}
        new = [entry for (entry,) in db.execute(SQLITE_HISTORY, read)]
        whole = len(new) != count - seen  # a cache that does not fit: read it all
        if whole:
            read["after"] = 0
            new = [entry for (entry,) in db.execute(SQLITE_HISTORY, read)]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return _Began(count, turn_model, turn_params, new, whole)


def _sqlite_complete_turn(
    db: sqlite3.Connection,
    values: _SqliteValues,
    turn: TurnOut,
    reply: MessageOut,
    upstream_ms: int,
    attempts: int,
) -> int:
    """Transaction 2 of a turn on SQLite, run whole in the store's SQLite thread: the reply's
    seq, the turn completed, the reply stored. Raises _NotRunning (nothing stored) if the
    conversation is gone or the turn no longer running."""
    cid, at = values.uuid(turn.conversation_id), values.when(turn.completed_at)
    db.execute("BEGIN IMMEDIATE")
    try:
        # Taking the next seq locks the conversation, as every writer does first.
        taken = db.execute(SQLITE_TAKE_SEQ, (at, cid)).fetchone()
        if taken is None:
            raise _NotRunning
        seq: int = taken[0]
        done = db.execute(
            SQLITE_COMPLETE_TURN,
            (
                values.json(turn.usage), turn.finish_reason, turn.latency_ms, upstream_ms,
                attempts, seq, at, values.uuid(turn.id),
            ),
        )  # fmt: skip
        if done.rowcount != 1:
            raise _NotRunning  # rolls back: the seq taken above is given back
        row = msgspec.structs.asdict(reply)
        row["seq"] = seq
        db.execute(SQLITE_INSERT_MESSAGE, values.message(row))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return seq


class HistoryCache:
    """The histories of recent conversations, as the comma-joined JSON entries the upstream
    receives, kept by each process so that a turn reads from the database only the messages it
    has not seen (``seq`` above the cached ones).

    It can never be stale: stored messages never change (they are appended, or deleted with
    their conversation, whose id is never used again), and only committed ones are cached.
    Least recently used conversations go first once ``max_chars`` are held; 0 keeps nothing.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._held: collections.OrderedDict[uuid.UUID, tuple[int, str]] = collections.OrderedDict()
        self._size = 0

    def get(self, conversation_id: uuid.UUID) -> tuple[int, str]:
        """The last seq cached for a conversation and its entries up to it (0 and "": none)."""
        found = self._held.get(conversation_id)
        if found is None:
            return 0, ""
        self._held.move_to_end(conversation_id)
        return found

    def put(self, conversation_id: uuid.UUID, seq: int, known: str, new: list[str]) -> str:
        """Join ``known`` entries (as ``get`` gave them) and ``new`` ones, which run up to
        ``seq``; keep the result for the conversation's next turn and return it."""
        entries = ",".join([known, *new]) if known else ",".join(new)
        old = self._held.pop(conversation_id, None)
        if old is not None:
            self._size -= len(old[1])
        if len(entries) <= self.max_chars // 4:  # one conversation takes at most a quarter
            self._held[conversation_id] = (seq, entries)
            self._size += len(entries)
            while self._size > self.max_chars:
                _, (_, dropped) = self._held.popitem(last=False)
                self._size -= len(dropped)
        return entries


__all__ = [
    "ConversationFilter",
    "ExportRows",
    "Principal",
    "Reply",
    "Store",
    "StoredAnswer",
    "TurnStart",
    "make_engine",
]
