"""Admin sessions: the admin web pages' sign-ins, kept on the server.

Revision ID: 75deb8b81ab5
Revises: e5a8b3c1d702
Create Date: 2026-12-06 19:37:02.922563+00:00

The admin pages' cookie held the admin key itself. It now holds a random session id whose
SHA-256 hash is kept here with the key that signed in and when the session ends; signing out
deletes the row, and a revoked key ends its sessions (they are read joined to the key).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "75deb8b81ab5"
down_revision: str | None = "e5a8b3c1d702"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_session",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_key.id"],
            name=op.f("fk_admin_session_key_id_api_key"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_admin_session")),
    )
    with op.batch_alter_table("admin_session", schema=None) as batch_op:
        batch_op.create_index("ix_admin_session_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_admin_session_key_id", ["key_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("admin_session", schema=None) as batch_op:
        batch_op.drop_index("ix_admin_session_key_id")
        batch_op.drop_index("ix_admin_session_expires_at")

    op.drop_table("admin_session")
