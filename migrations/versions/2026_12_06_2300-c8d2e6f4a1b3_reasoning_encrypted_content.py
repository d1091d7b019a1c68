"""Messages keep the encrypted reasoning xAI's Responses API returns.

Revision ID: c8d2e6f4a1b3
Revises: a3f1c7e2b9d4
Create Date: 2026-12-06 23:00:00+00:00

``message.reasoning_encrypted_content`` holds a reply's reasoning as the Responses upstream
gives it (``include: ["reasoning.encrypted_content"]``), opaque; it is sent back with the
message on later turns. A plain ``ADD COLUMN`` (and ``DROP COLUMN`` back, which SQLite has
since 3.35) on both databases: the message table is not copied, so SQLite's text-search trigger
on it stays.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c8d2e6f4a1b3"
down_revision: str | None = "a3f1c7e2b9d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("message", sa.Column("reasoning_encrypted_content", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("message", "reasoning_encrypted_content")
