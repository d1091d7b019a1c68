"""Branches: a conversation's messages form a tree with one active path.

Revision ID: a3f1c7e2b9d4
Revises: 6c2e9a4f1d37
Create Date: 2026-12-06 22:00:00+00:00

``message.id`` becomes the primary key; a message has ``parent_id`` and lies on a ``branch``
(its seq is its position on its path), the conversation knows its ``head_id`` (the last message
of the active path) and a turn its ``reply_id``. What is stored migrates as one line per
conversation: every message's parent is the message before it, all on one branch (whose id is
the conversation's), and the head is the last message.

On SQLite the message table is copied into its new shape, which drops the text-search trigger
on it: the trigger is made again. Downgrading keeps only each conversation's active path.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a3f1c7e2b9d4"
down_revision: str | None = "6c2e9a4f1d37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_text_search = importlib.import_module(
    "migrations.versions.2026_11_28_1720-5b1c0e7d9a31_text_search"
)
SQLITE_SEARCH_TRIGGER = _text_search.SQLITE[1]


def upgrade() -> None:
    op.create_table(
        "branch",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("parent_branch_id", sa.Uuid(), nullable=True),
        sa.Column("fork_seq", sa.Integer(), nullable=False),
        sa.CheckConstraint("fork_seq >= 0", name=op.f("ck_branch_fork_seq")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_branch_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_branch_id"],
            ["branch.id"],
            name=op.f("fk_branch_parent_branch_id_branch"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_branch")),
    )
    with op.batch_alter_table("branch", schema=None) as batch_op:
        batch_op.create_index("ix_branch_conversation_id", ["conversation_id"], unique=False)
        batch_op.create_index("ix_branch_parent_branch_id", ["parent_branch_id"], unique=False)
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("head_id", sa.Uuid(), nullable=True))
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reply_id", sa.Uuid(), nullable=True))
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("branch_id", sa.Uuid(), nullable=True))

    # Every conversation's messages are one line: one branch, each message after the one before.
    op.execute(
        "INSERT INTO branch (id, conversation_id, parent_branch_id, fork_seq) "
        "SELECT id, id, NULL, 0 FROM conversation "
        "WHERE EXISTS (SELECT 1 FROM message WHERE message.conversation_id = conversation.id)"
    )
    op.execute(
        "UPDATE message SET branch_id = conversation_id, parent_id = ("
        "SELECT before.id FROM message AS before "
        "WHERE before.conversation_id = message.conversation_id AND before.seq = message.seq - 1)"
    )
    op.execute(
        "UPDATE conversation SET head_id = ("
        "SELECT m.id FROM message AS m "
        "WHERE m.conversation_id = conversation.id AND m.seq = conversation.message_count)"
    )
    op.execute(
        "UPDATE turn SET reply_id = ("
        "SELECT m.id FROM message AS m "
        "WHERE m.conversation_id = turn.conversation_id AND m.seq = turn.reply_seq) "
        "WHERE reply_seq IS NOT NULL"
    )

    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_message_table()
        return
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.alter_column("branch_id", existing_type=sa.Uuid(), nullable=False)
        batch_op.drop_constraint("uq_message_id", type_="unique")
        batch_op.drop_constraint("pk_message", type_="primary")
        batch_op.create_primary_key("pk_message", ["id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_message_parent_id_message"),
            "message",
            ["parent_id"],
            ["id"],
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_message_branch_id_branch"),
            "branch",
            ["branch_id"],
            ["id"],
            ondelete="CASCADE",
        )
    _create_message_indexes()


def _create_message_indexes() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.create_index("uq_message_branch_seq", ["branch_id", "seq"], unique=True)
        batch_op.create_index(
            "ix_message_conversation_parent", ["conversation_id", "parent_id"], unique=False
        )
        batch_op.create_index("ix_message_parent_id", ["parent_id"], unique=False)


MESSAGE_COLUMNS = (
    "id, conversation_id, parent_id, branch_id, seq, role, content, name, tool_calls, "
    "tool_call_id, reasoning_content, model, finish_reason, usage, turn_id, created_at"
)


def _rebuild_sqlite_message_table() -> None:
    """SQLite changes a primary key by copying the table. Alembic's batch copy drops the old
    table last, and with foreign keys enforced that drop deletes its rows first, which would
    cascade to the copy through its new ``parent_id`` key: so the old table is renamed out of
    the way first, and dropped once nothing refers to it."""
    op.execute("ALTER TABLE message RENAME TO message_line")
    op.create_table(
        "message",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("branch_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.JSON(), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("tool_calls", sa.JSON(), nullable=True),
        sa.Column("tool_call_id", sa.String(length=200), nullable=True),
        sa.Column("reasoning_content", sa.Text(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("turn_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "role IN ('system', 'user', 'assistant', 'tool')", name=op.f("ck_message_role")
        ),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_message_seq_positive")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_message_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["message.id"],
            name=op.f("fk_message_parent_id_message"),
        ),
        sa.ForeignKeyConstraint(
            ["branch_id"],
            ["branch.id"],
            name=op.f("fk_message_branch_id_branch"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message")),
    )
    # Parents first (seq order), so that each row's parent is there when it arrives.
    op.execute(
        f"INSERT INTO message ({MESSAGE_COLUMNS}) "
        f"SELECT {MESSAGE_COLUMNS} FROM message_line ORDER BY conversation_id, seq"
    )
    op.execute("DROP TABLE message_line")  # and the text-search trigger that moved with it
    _create_message_indexes()
    op.execute(SQLITE_SEARCH_TRIGGER)


def downgrade() -> None:
    # A line per conversation again: the messages off each active path go.
    op.execute(
        "WITH RECURSIVE path (id, parent_id) AS ("
        "SELECT m.id, m.parent_id FROM message AS m JOIN conversation AS c ON m.id = c.head_id "
        "UNION ALL "
        "SELECT m.id, m.parent_id FROM message AS m JOIN path ON m.id = path.parent_id) "
        "DELETE FROM message WHERE id NOT IN (SELECT id FROM path)"
    )
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_index("ix_message_parent_id")
        batch_op.drop_index("ix_message_conversation_parent")
        batch_op.drop_index("uq_message_branch_seq")
        batch_op.drop_constraint(batch_op.f("fk_message_branch_id_branch"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_message_parent_id_message"), type_="foreignkey")
        batch_op.drop_constraint("pk_message", type_="primary")
        batch_op.create_primary_key("pk_message", ["conversation_id", "seq"])
        batch_op.create_unique_constraint(batch_op.f("uq_message_id"), ["id"])
        batch_op.drop_column("branch_id")
        batch_op.drop_column("parent_id")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS search_message_insert")
        op.execute(SQLITE_SEARCH_TRIGGER)
    with op.batch_alter_table("turn", schema=None) as batch_op:
        batch_op.drop_column("reply_id")
    if op.get_bind().dialect.name == "sqlite":
        # In place: a batch copy of the table would drop its text-search triggers.
        op.execute("ALTER TABLE conversation DROP COLUMN head_id")
    else:
        with op.batch_alter_table("conversation", schema=None) as batch_op:
            batch_op.drop_column("head_id")
    with op.batch_alter_table("branch", schema=None) as batch_op:
        batch_op.drop_index("ix_branch_parent_branch_id")
        batch_op.drop_index("ix_branch_conversation_id")
    op.drop_table("branch")
