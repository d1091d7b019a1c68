"""Text search forgets deleted messages on SQLite too.

Revision ID: f3c9a1e7b2d8
Revises: e4b7a9c2d5f6
Create Date: 2026-12-07 09:00:00+00:00

SQLite's FTS5 index (``search_text``) kept one row per message, found again only through its
conversation, so deleting one message (and those below it) left its words there: a search still
found the conversation by them. Each row now also names its message (``msg``, indexed as a
token, so that a deletion finds its row through the index), and a trigger removes a message's
row when the message is deleted. An FTS5 table takes no new column, so it is made again and
filled from what is stored (one pass over the messages). The conversation and message tables
are not touched. PostgreSQL needs nothing: its index is on the message rows themselves.
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "f3c9a1e7b2d8"
down_revision: str | None = "e4b7a9c2d5f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_text_search = importlib.import_module(
    "migrations.versions.2026_11_28_1720-5b1c0e7d9a31_text_search"
)
CONTENT_TEXT = _text_search.SQLITE_CONTENT_TEXT
TRIGGERS = (
    "search_message_insert",
    "search_message_delete",
    "search_conversation_insert",
    "search_conversation_title",
    "search_conversation_delete",
)

SQLITE = [
    "CREATE VIRTUAL TABLE search_text USING fts5("
    "body, conv, kind UNINDEXED, msg, tokenize = 'unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER search_message_insert AFTER INSERT ON message BEGIN
        INSERT INTO search_text (body, conv, kind, msg)
        VALUES ({CONTENT_TEXT}, NEW.conversation_id, 'message', NEW.id);
    END""",
    """CREATE TRIGGER search_message_delete AFTER DELETE ON message BEGIN
        DELETE FROM search_text WHERE rowid IN (
            SELECT rowid FROM search_text WHERE search_text MATCH 'msg : "' || OLD.id || '"');
    END""",
    # Titles as before (their rows name no message).
    *_text_search.SQLITE[2:5],
    f"""INSERT INTO search_text (body, conv, kind, msg)
        SELECT {CONTENT_TEXT.replace("NEW.", "message.")}, conversation_id, 'message', id
        FROM message""",
    _text_search.SQLITE[6],
]


def _drop_search() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS search_text")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _drop_search()
    for statement in SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _drop_search()
    for statement in _text_search.SQLITE:
        op.execute(statement)
