"""One turn path: the PostgreSQL turn functions go; an idempotency claim knows its turn.

Revision ID: b7e2c4d91a05
Revises: 3f6a8d2c1b47
Create Date: 2026-12-06 07:00:00+00:00

A turn's two transactions are SQLAlchemy Core statements run on both databases
(``service/store/turns.py``), so ``convstore_begin_turn``, ``convstore_complete_turn`` and
``convstore_history`` are dropped. ``idempotency_key.turn_id`` ties a claim to the turn its
request started, in the turn's first transaction: a retry after a server stopped gets that
turn's outcome instead of running it again.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7e2c4d91a05"
down_revision: str | None = "3f6a8d2c1b47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTIONS = ("convstore_complete_turn", "convstore_begin_turn", "convstore_history")


def upgrade() -> None:
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.add_column(sa.Column("turn_id", sa.Uuid(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for name in _FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        first = importlib.import_module(
            "migrations.versions.2026_11_29_0315-7c3d2f1a9b64_turn_functions"
        )
        latest = importlib.import_module(
            "migrations.versions.2026_11_29_1000-3f6a8d2c1b47_begin_turn_commit_flushed_by_answer"
        )
        op.execute(first.HISTORY)
        op.execute(latest.BEGIN_TURN)
        op.execute(first.COMPLETE_TURN)
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.drop_column("turn_id")
