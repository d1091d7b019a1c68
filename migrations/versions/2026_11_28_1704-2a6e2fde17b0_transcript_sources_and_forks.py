"""Conversations remember the transcript they were imported from and the one they forked.

Revision ID: 2a6e2fde17b0
Revises: 4ee34b489091
Create Date: 2026-11-28 17:04:27.176533+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2a6e2fde17b0"
down_revision: str | None = "4ee34b489091"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("forked_from_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("forked_through_seq", sa.Integer(), nullable=True))
        batch_op.create_index("uq_conversation_tenant_source", ["tenant", "source_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_index("uq_conversation_tenant_source")
        batch_op.drop_column("forked_through_seq")
        batch_op.drop_column("forked_from_id")
        batch_op.drop_column("source_id")
