"""Signed cursors: a random key, made here once per database, that list cursors are signed with.

Revision ID: d41c9e8a7b12
Revises: b7e2c4d91a05
Create Date: 2026-12-06 20:00:00+00:00

Every process sharing the database reads the same key, so a cursor one process handed out is
accepted by every other, and a cursor changed by a client is refused.
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d41c9e8a7b12"
down_revision: str | None = "b7e2c4d91a05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    secret = op.create_table(
        "service_secret",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_secret")),
    )
    op.bulk_insert(secret, [{"name": "cursor", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("service_secret")
