"""Context windows: every message's size in tokens and the running sum along its path; a
conversation's context policy; a turn's record of what the model saw (and, optionally, the
exact request body sent); the summaries of ``compact`` (``context_summary``).

Revision ID: e4b7a9c2d5f6
Revises: d7b3f9e1c2a4
Create Date: 2026-12-06 23:40:00+00:00

Stored messages get their estimated size (``service.tokens.estimate``; a reply with usage, its
completion tokens) and the sum along their path, a conversation at a time, in batches of
``BATCH`` messages: a message's parent has the seq before it, so in seq order the parent's sum
is always known when a message is reached.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.tokens import estimate, reply_tokens

revision: str = "e4b7a9c2d5f6"
down_revision: str | None = "d7b3f9e1c2a4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000

_message = sa.table(
    "message",
    sa.column("id", sa.Uuid()),
    sa.column("conversation_id", sa.Uuid()),
    sa.column("parent_id", sa.Uuid()),
    sa.column("seq", sa.Integer()),
    sa.column("role", sa.String()),
    sa.column("content", sa.JSON()),
    sa.column("name", sa.String()),
    sa.column("tool_calls", sa.JSON()),
    sa.column("tool_call_id", sa.String()),
    sa.column("usage", sa.JSON()),
    sa.column("turn_id", sa.Uuid()),
    sa.column("tokens", sa.Integer()),
    sa.column("tokens_exact", sa.Boolean()),
    sa.column("tokens_through", sa.BigInteger()),
)
_conversation = sa.table("conversation", sa.column("id", sa.Uuid()))


def upgrade() -> None:
    # Plain ALTERs, also on SQLite (a batch there would copy the table, dropping its
    # text-search trigger): columns with a default, and indexes.
    op.add_column(
        "message", sa.Column("tokens", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.add_column(
        "message",
        sa.Column("tokens_exact", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "message",
        sa.Column("tokens_through", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index("ix_message_branch_tokens", "message", ["branch_id", "tokens_through"])
    op.create_index(
        "ix_message_branch_system",
        "message",
        ["branch_id", "seq"],
        sqlite_where=sa.text("role = 'system'"),
        postgresql_where=sa.text("role = 'system'"),
    )
    op.create_table(
        "context_summary",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("upto_id", sa.Uuid(), nullable=False),
        sa.Column("upto_seq", sa.Integer(), nullable=False),
        sa.Column("covers", sa.JSON(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("turn_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_context_summary_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["upto_id"],
            ["message.id"],
            name=op.f("fk_context_summary_upto_id_message"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_context_summary")),
    )
    op.create_index(
        "ix_context_summary_conversation_id", "context_summary", ["conversation_id", "upto_seq"]
    )
    op.add_column("conversation", sa.Column("context", sa.JSON(), nullable=True))
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.add_column(sa.Column("context", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("request_body", sa.LargeBinary(), nullable=True))
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    m = _message.c
    update = (
        sa.update(_message)
        .where(m.id == sa.bindparam("m_id"))
        .values(
            tokens=sa.bindparam("m_tokens"),
            tokens_exact=sa.bindparam("m_exact"),
            tokens_through=sa.bindparam("m_through"),
        )
    )
    conversations = conn.execute(
        sa.select(_conversation.c.id).where(
            sa.exists().where(m.conversation_id == _conversation.c.id)
        )
    ).scalars()
    for conversation_id in list(conversations):
        through: dict[object, int] = {}
        after = (0, None)
        while True:
            query = sa.select(
                m.id, m.parent_id, m.seq, m.role, m.content, m.name, m.tool_calls,
                m.tool_call_id, m.usage, m.turn_id,
            ).where(m.conversation_id == conversation_id)  # fmt: skip
            if after[1] is not None:
                query = query.where(sa.tuple_(m.seq, m.id) > sa.tuple_(*after))
            rows = conn.execute(query.order_by(m.seq, m.id).limit(BATCH)).all()
            if not rows:
                break
            changes = []
            for row in rows:
                exact = reply_tokens(row.usage) if row.role == "assistant" else None
                size = exact if exact is not None else estimate(row._mapping)
                total = through.get(row.parent_id, 0) + size
                through[row.id] = total
                changes.append(
                    {"m_id": row.id, "m_tokens": size, "m_exact": exact is not None,
                     "m_through": total}
                )  # fmt: skip
            conn.execute(update, changes)
            after = (rows[-1].seq, rows[-1].id)


def downgrade() -> None:
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.drop_column("request_body")
        batch_op.drop_column("context")
    op.drop_index("ix_context_summary_conversation_id", table_name="context_summary")
    op.drop_table("context_summary")
    # In place (SQLite 3.35 and later): a batch copy would drop the table's text-search triggers.
    op.drop_column("conversation", "context")
    op.drop_index("ix_message_branch_system", table_name="message")
    op.drop_index("ix_message_branch_tokens", table_name="message")
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later): the table keeps its trigger.
    op.drop_column("message", "tokens_through")
    op.drop_column("message", "tokens_exact")
    op.drop_column("message", "tokens")
