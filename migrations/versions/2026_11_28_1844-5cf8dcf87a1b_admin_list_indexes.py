"""Indexes for the admin list: every tenant newest first, and conversations by turn status.

Revision ID: 5cf8dcf87a1b
Revises: 5b1c0e7d9a31
Create Date: 2026-11-28 18:44:33.088219+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5cf8dcf87a1b"
down_revision: str | None = "5b1c0e7d9a31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.create_index("ix_conversation_created", ["created_at", "id"], unique=False)

    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.create_index(
            "ix_turn_status_conversation", ["status", "conversation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.drop_index("ix_turn_status_conversation")

    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_index("ix_conversation_created")
