"""Turns remember whether an import brought them: their usage was another deployment's.

Revision ID: 6c2e9a4f1d37
Revises: 75deb8b81ab5
Create Date: 2026-12-06 21:50:00+00:00

Turns imported before this revision are recognised by what an import wrote: no attempt and no
upstream time, in a conversation that was imported, and not running. A turn of this deployment
has made at least one attempt by the time it has usage, so none with usage is taken for one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "6c2e9a4f1d37"
down_revision: str | None = "75deb8b81ab5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("imported", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.execute(
        """
        UPDATE turn SET imported = true
        WHERE attempts = 0 AND upstream_ms IS NULL AND status <> 'running'
          AND conversation_id IN (SELECT id FROM conversation WHERE source_id IS NOT NULL)
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.drop_column("imported")
