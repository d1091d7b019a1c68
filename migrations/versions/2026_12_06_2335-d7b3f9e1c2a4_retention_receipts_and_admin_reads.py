"""Retention, deletion receipts and audited admin reads.

Revision ID: d7b3f9e1c2a4
Revises: c4e8a2d6f1b3
Create Date: 2026-12-06 23:35:00+00:00

A conversation gets ``expires_at`` (indexed: the retention sweeper's scan) and ``legal_hold``;
an idempotency record the ``conversation_id`` its answer holds, so that deleting the
conversation deletes it too. ``deletion_receipt`` records every deletion of a conversation,
``admin_read`` every admin read of one; neither holds content, and both outlive it.

On SQLite, the conversation table's columns are added and dropped in place (``ALTER TABLE``):
a batch copy of the table would drop its text-search triggers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d7b3f9e1c2a4"
down_revision: str | None = "c4e8a2d6f1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_read",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint("via IN ('api', 'page', 'export')", name=op.f("ck_admin_read_via")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_read")),
    )
    with op.batch_alter_table("admin_read", schema=None) as batch_op:
        batch_op.create_index("ix_admin_read_read", ["read_at", "id"], unique=False)
        batch_op.create_index(
            "ix_admin_read_tenant_read", ["tenant", "read_at", "id"], unique=False
        )

    op.create_table(
        "deletion_receipt",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('tenant', 'admin', 'retention')", name=op.f("ck_deletion_receipt_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletion_receipt")),
    )
    with op.batch_alter_table("deletion_receipt", schema=None) as batch_op:
        batch_op.create_index("ix_deletion_receipt_deleted", ["deleted_at", "id"], unique=False)
        batch_op.create_index(
            "ix_deletion_receipt_tenant_deleted", ["tenant", "deleted_at", "id"], unique=False
        )

    # Not in a batch: on SQLite a batch would copy the table (for the default) and lose its
    # text-search triggers; a plain ADD COLUMN keeps them.
    op.add_column(
        "conversation", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "conversation",
        sa.Column("legal_hold", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_index("ix_conversation_expires_at", "conversation", ["expires_at"], unique=False)

    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conversation_id", sa.Uuid(), nullable=True))
        batch_op.create_index(
            "ix_idempotency_key_conversation_id", ["conversation_id"], unique=False
        )


def _drop_columns(table: str, *columns: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        return
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in columns:
            batch_op.drop_column(column)


def downgrade() -> None:
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_key_conversation_id")
    _drop_columns("idempotency_key", "conversation_id")
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_index("ix_conversation_expires_at")
    _drop_columns("conversation", "legal_hold", "expires_at")
    op.drop_table("deletion_receipt")
    op.drop_table("admin_read")
