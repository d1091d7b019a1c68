"""The database schema: conversations, their ordered messages, turns, API keys and the admin
web pages' sign-in sessions.

Every change here needs an Alembic revision (``tests/test_migrations.py`` fails otherwise).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
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


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): new rows land at the end of their index."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
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
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    tenant: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(Text, default=None)
    model: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The highest seq in use: the next message is message_count + 1. Updating this counter is
    # also what serialises concurrent writers to one conversation (a row lock on PostgreSQL).
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where an imported conversation came from: the id it had in its transcript.
    source_id: Mapped[str | None] = mapped_column(String(200), default=None)
    forked_from_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    forked_through_seq: Mapped[int | None] = mapped_column(Integer, default=None)


class Message(Base):
    __tablename__ = "message"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
        CheckConstraint("seq >= 1", name="seq_positive"),
    )

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversation.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid7)
    role: Mapped[str] = mapped_column(String(16))
    # A string or a list of parts, kept exactly as given (JSON, not JSONB, keeps key order).
    content: Mapped[Any] = mapped_column(JSON, nullable=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    tool_calls: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    tool_call_id: Mapped[str | None] = mapped_column(String(200), default=None)
    reasoning_content: Mapped[str | None] = mapped_column(Text, default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    finish_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    usage: Mapped[Any] = mapped_column(JSON, nullable=True, default=None)
    turn_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # After this instant a turn still marked running belongs to a process that died.
    deadline_at: Mapped[datetime] = mapped_column()


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``: the request it named and, once done, the answer given."""

    __tablename__ = "idempotency_key"
    __table_args__ = (
        CheckConstraint("state IN ('running', 'done')", name="state"),
        Index("ix_idempotency_key_expires_at", "expires_at"),
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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A running claim whose lock ran out belongs to a process that died (the process renews the
    # lock while the request runs).
    locked_until: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()


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
turn_table = cast(Table, Turn.__table__)
idempotency_table = cast(Table, IdempotencyKey.__table__)
secret_table = cast(Table, ServiceSecret.__table__)
