"""End users: a conversation's `user` (the frontend's id for its end user) and `archived`.

Revision ID: c4e8a2d6f1b3
Revises: c8d2e6f4a1b3
Create Date: 2026-12-06 23:30:00+00:00

A frontend lists one end user's conversations newest first: an index on (tenant, end_user,
created_at, id) serves that list and its keyset pages. On PostgreSQL, a GIN index on the
metadata (as jsonb, jsonb_path_ops) serves `metadata.<key>=<value>` for every key with one
containment test (`@>`); its name starts with ``search_``, which keeps it, like the text
search's objects, out of Alembic's comparisons (it cannot describe an expression index).
SQLite has no index for arbitrary keys (an expression index names one key): there the
tenant's (or end user's) index narrows the rows first.

The columns are added and dropped in place, not by copying the table (SQLite 3.35 and later
drop a column in place), so the text-search triggers on the conversation table stay.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e8a2d6f1b3"
down_revision: str | None = "c8d2e6f4a1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_METADATA_INDEX = (
    "CREATE INDEX search_conversation_metadata ON conversation "
    "USING gin ((CAST(metadata AS jsonb)) jsonb_path_ops)"
)


def upgrade() -> None:
    op.add_column("conversation", sa.Column("end_user", sa.String(length=200), nullable=True))
    op.add_column(
        "conversation",
        sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_index(
        "ix_conversation_tenant_end_user",
        "conversation",
        ["tenant", "end_user", "created_at", "id"],
        unique=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_METADATA_INDEX)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX search_conversation_metadata")
    op.drop_index("ix_conversation_tenant_end_user", table_name="conversation")
    op.drop_column("conversation", "archived")
    op.drop_column("conversation", "end_user")
