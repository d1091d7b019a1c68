"""The database schema: conversations, their messages (a tree of branches), turns, API keys and
the admin web pages' sign-in sessions.

Every change here needs an Alembic revision (``tests/test_migrations.py`` fails otherwise).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("system", "user", "assistant", "tool")
TURN_STATUSES = ("running", "completed", "failed")


_uuid7_lock = threading.Lock()
_uuid7_last = 0


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): new rows land at the end of their index.

    Monotonic within the process (RFC 9562, section 6.2, method 2: the random bits are
    incremented when the clock has not moved on), so ids made one after the other sort in the
    order they were made: siblings are numbered in creation order by their ids.
    """
    global _uuid7_last
    millis = time.time_ns() // 1_000_000
    # 48 bits of time, then 74 of randomness (12 in rand_a, 62 in rand_b), as one number.
    candidate = (millis & ((1 << 48) - 1)) << 74 | int.from_bytes(os.urandom(10), "big") >> 6
    with _uuid7_lock:
        if candidate <= _uuid7_last:
            candidate = _uuid7_last + 1
        _uuid7_last = candidate
    value = (candidate >> 74) << 80 | 0x7 << 76 | ((candidate >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | candidate & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite has no time zones; keep naive UTC there so text comparisons order correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        Any: JSON(),
    }


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    tenant: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Turns a minute this key may start, in each server process; NULL for no limit.
    turns_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)


class AdminSession(Base):
    """A sign-in to the admin web pages: the browser holds a random session id, the database
    only its SHA-256 hash. It ends at sign-out, at ``expires_at``, or when its key is revoked."""

    __tablename__ = "admin_session"
    __table_args__ = (
        Index("ix_admin_session_expires_at", "expires_at"),
        Index("ix_admin_session_key_id", "key_id"),
    )

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_key.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class Conversation(Base):
    __tablename__ = "conversation"
    __table_args__ = (
        Index("ix_conversation_tenant_created", "tenant", "created_at", "id"),
        # Admins list every tenant's conversations newest first.
        Index("ix_conversation_created", "created_at", "id"),
        # Importing the same transcript twice finds the first import instead of duplicating it.
        Index("uq_conversation_tenant_source", "tenant", "source_id", unique=True),
        # A frontend lists one end user's conversations newest first. (On PostgreSQL, a GIN
        # index on the metadata, made by hand in its migration, finds `metadata.<key>=<value>`.)
        Index("ix_conversation_tenant_end_user", "tenant", "end_user", "created_at", "id"),
        # The retention sweeper finds expired conversations (the default age uses
        # ix_conversation_created).
        Index("ix_conversation_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    tenant: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(Text, default=None)
    model: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The last message of the active path (None while there is none), and its seq: the length
    # of that path. Every writer to a conversation updates its row first, which serialises
    # them (a row lock on PostgreSQL, the write lock on SQLite).
    head_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where an imported conversation came from: the id it had in its transcript.
    source_id: Mapped[str | None] = mapped_column(String(200), default=None)
    forked_from_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    forked_through_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    # The frontend's own id for the person the conversation is for (`user` in the API).
    end_user: Mapped[str | None] = mapped_column(String(200), default=None)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Retention deletes the conversation after this instant (None: the default age, if any).
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # An admin's hold: no deletion (by retention, its tenant or an admin) while it is set.
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How turns fit the history to the model's window (None: send it all); see API.md.
    context: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)


class Branch(Base):
    """A line of messages in a conversation's tree: its own messages have the seqs after
    ``fork_seq``, one after the other; those up to ``fork_seq`` are its parent branch's (none
    for a root branch, ``fork_seq`` 0). A message goes on its parent's branch when the parent
    is the last message there, else on a new branch forked at the parent: so a path is the
    chain of its branches, each contributing a range of seqs, and a branch copies nothing."""

    __tablename__ = "branch"
    __table_args__ = (
        CheckConstraint("fork_seq >= 0", name="fork_seq"),
        Index("ix_branch_conversation_id", "conversation_id"),
        # Deleting a branch looks for the branches forked from it.
        Index("ix_branch_parent_branch_id", "parent_branch_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversation.id", ondelete="CASCADE")
    )
    parent_branch_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("branch.id", ondelete="CASCADE"), default=None
    )
    fork_seq: Mapped[int] = mapped_column(Integer, default=0)


class Message(Base):
    __tablename__ = "message"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
        CheckConstraint("seq >= 1", name="seq_positive"),
        # A path is read as ranges of this index, one per branch of its chain.
        Index("uq_message_branch_seq", "branch_id", "seq", unique=True),
        # The first messages (siblings without a parent), and a conversation's messages.
        Index("ix_message_conversation_parent", "conversation_id", "parent_id"),
        # Siblings, and deleting a message's replies with it.
        Index("ix_message_parent_id", "parent_id"),
        # Where a path is cut to fit a window: the first message of a branch past a running sum.
        Index("ix_message_branch_tokens", "branch_id", "tokens_through"),
        # The system messages of a path, always sent, read without the rest of a long history.
        Index(
            "ix_message_branch_system",
            "branch_id",
            "seq",
            sqlite_where=text("role = 'system'"),
            postgresql_where=text("role = 'system'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversation.id", ondelete="CASCADE")
    )
    # The message this one follows (None for a first message); seq is its position on its path.
    # No cascade: deleting a message deletes what is below it in the same statement (SQLite runs
    # a cascade as a nested trigger, one level a message, and refuses past 1,000 levels, so a
    # long line could not be deleted).
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("message.id"), default=None
    )
    branch_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("branch.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    # A string or a list of parts, kept exactly as given (JSON, not JSONB, keeps key order).
    content: Mapped[Any] = mapped_column(JSON, nullable=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    tool_calls: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    tool_call_id: Mapped[str | None] = mapped_column(String(200), default=None)
    reasoning_content: Mapped[str | None] = mapped_column(Text, default=None)
    # The reasoning as xAI's Responses API returns it, encrypted (opaque to us): sent back with
    # the message on later turns so the model keeps its chain of thought.
    reasoning_encrypted_content: Mapped[str | None] = mapped_column(Text, default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    finish_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    usage: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    turn_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Its size in tokens as the upstream receives it (``service.tokens``): the upstream's count
    # where its usage told it (``tokens_exact``), else estimated. ``tokens_through`` sums the
    # sizes along its path, itself included: where to cut a path to fit is one index lookup.
    tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    tokens_exact: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    tokens_through: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class Turn(Base):
    __tablename__ = "turn"
    __table_args__ = (
        CheckConstraint(f"status IN {TURN_STATUSES!r}", name="status"),
        Index("ix_turn_conversation_created", "conversation_id", "created_at"),
        # Admins filter conversations by the status of their turns (failed ones, mostly).
        Index("ix_turn_status_conversation", "status", "conversation_id"),
        # At most one running turn per conversation, enforced by the database so that it holds
        # across every server process sharing it.
        Index(
            "uq_turn_running",
            "conversation_id",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversation.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    usage: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    finish_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    error: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    latency_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    upstream_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Brought in by an import: its usage was another deployment's, not this one's.
    imported: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    reply_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    # The stored reply (None until there is one).
    reply_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # After this instant a turn still marked running belongs to a process that died.
    deadline_at: Mapped[datetime] = mapped_column()
    # What the model saw: the strategy, the seq ranges sent and left out, the input's tokens
    # (estimated and as the upstream counted them), the SHA-256 of the request body.
    context: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    # The exact request body sent, kept only with CONVSTORE_KEEP_REQUESTS (for replay).
    request_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None)


class ContextSummary(Base):
    """A compaction: the model's summary of a path's oldest messages, up to and including
    ``upto_id`` (``covers``: the seq ranges it summarises, a previous summary's among them).
    Any path through ``upto_id`` may send it instead of those messages; the messages stay.
    ``turn_id`` is the summarising turn (its usage)."""

    __tablename__ = "context_summary"
    __table_args__ = (Index("ix_context_summary_conversation_id", "conversation_id", "upto_seq"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversation.id", ondelete="CASCADE")
    )
    # Deleting the message (or what it lies below) deletes the summary with it.
    upto_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("message.id", ondelete="CASCADE"))
    upto_seq: Mapped[int] = mapped_column(Integer)
    covers: Mapped[Any] = mapped_column(JSON)
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    turn_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``: the request it named and, once done, the answer given."""

    __tablename__ = "idempotency_key"
    __table_args__ = (
        CheckConstraint("state IN ('running', 'done')", name="state"),
        Index("ix_idempotency_key_expires_at", "expires_at"),
        Index("ix_idempotency_key_conversation_id", "conversation_id"),
    )

    tenant: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    # The turn the request started, set in the turn's first transaction: after a crash, a retry
    # is answered by that turn's outcome rather than running the turn again.
    turn_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    # The conversation the request created or acted on (set with its answer, or when its turn
    # starts): deleting the conversation deletes its stored answers, which hold its content.
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A running claim whose lock ran out belongs to a process that died (the process renews the
    # lock while the request runs).
    locked_until: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()


class DeletionReceipt(Base):
    """That a conversation was deleted, by whom and why: never any of its content. Kept after
    the conversation (no foreign key), so its tenant can see what became of it."""

    __tablename__ = "deletion_receipt"
    __table_args__ = (
        CheckConstraint("kind IN ('tenant', 'admin', 'retention')", name="kind"),
        Index("ix_deletion_receipt_tenant_deleted", "tenant", "deleted_at", "id"),
        Index("ix_deletion_receipt_deleted", "deleted_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    conversation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    tenant: Mapped[str] = mapped_column(String(200))
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who asked: the tenant (through one of its keys), an admin, or retention.
    kind: Mapped[str] = mapped_column(String(16))
    # The key that deleted it (None for retention).
    key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Every stored message (all branches) and turn the conversation had.
    message_count: Mapped[int] = mapped_column(Integer)
    turn_count: Mapped[int] = mapped_column(Integer)


class AdminRead(Base):
    """An admin's read of a conversation's messages (admin API, web pages, export): which key,
    when, through what, and the reason given. Kept after the conversation is deleted."""

    __tablename__ = "admin_read"
    __table_args__ = (
        CheckConstraint("via IN ('api', 'page', 'export')", name="via"),
        Index("ix_admin_read_tenant_read", "tenant", "read_at", "id"),
        Index("ix_admin_read_read", "read_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    conversation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    tenant: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    read_at: Mapped[datetime] = mapped_column(default=utcnow)
    via: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, default=None)


class ServiceSecret(Base):
    """Random keys the service signs with, made by a migration, so that every process sharing
    the database signs alike with nothing to configure (``cursor``: list cursors)."""

    __tablename__ = "service_secret"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


api_key_table = cast(Table, ApiKey.__table__)
admin_session_table = cast(Table, AdminSession.__table__)
conversation_table = cast(Table, Conversation.__table__)
message_table = cast(Table, Message.__table__)
branch_table = cast(Table, Branch.__table__)
turn_table = cast(Table, Turn.__table__)
idempotency_table = cast(Table, IdempotencyKey.__table__)
secret_table = cast(Table, ServiceSecret.__table__)
deletion_receipt_table = cast(Table, DeletionReceipt.__table__)
admin_read_table = cast(Table, AdminRead.__table__)
summary_table = cast(Table, ContextSummary.__table__)
