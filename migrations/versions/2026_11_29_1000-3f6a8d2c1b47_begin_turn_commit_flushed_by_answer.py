"""PostgreSQL: a non-streamed turn's first transaction does not wait for its WAL flush.

Revision ID: 3f6a8d2c1b47
Revises: 9e1b4c7d2a85
Create Date: 2026-11-29 10:00:00+00:00

``convstore_begin_turn`` commits a non-streamed turn's input with ``synchronous_commit`` off: the
commit returns without waiting for the disk (a third of a millisecond a turn here). The input is
no less durable once the turn is answered: every answer a non-streamed turn gets (201 with the
reply, or the upstream's failure) comes after a synchronous commit of that turn
(``convstore_complete_turn``, or the failed turn's update), and flushing a commit flushes the log
up to it, the turn's first transaction included. A streamed turn acknowledges its input at once
(its ``turn.started`` event), so its first commit still waits.
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "3f6a8d2c1b47"
down_revision: str | None = "9e1b4c7d2a85"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_previous = importlib.import_module(
    "migrations.versions.2026_11_29_0600-9e1b4c7d2a85_turn_functions_by_id"
)

_FIRST_STATEMENT = "BEGIN\n    -- Bumping the counter"
_NOT_FLUSHED = """BEGIN
    IF NOT p_stream THEN
        -- Until the end of this transaction: its commit does not wait for the disk. The turn's
        -- next commit, which comes before any answer, flushes the log up to it.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- Bumping the counter"""
assert _previous.BEGIN_TURN.count(_FIRST_STATEMENT) == 1
BEGIN_TURN = _previous.BEGIN_TURN.replace(_FIRST_STATEMENT, _NOT_FLUSHED)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BEGIN_TURN)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_previous.BEGIN_TURN)
