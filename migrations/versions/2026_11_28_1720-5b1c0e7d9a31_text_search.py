"""Text search over titles and message content: PostgreSQL full-text (GIN), SQLite FTS5.

Revision ID: 5b1c0e7d9a31
Revises: 2a6e2fde17b0
Create Date: 2026-11-28 17:20:00+00:00

The search objects are not in the models' metadata (Alembic cannot describe them), so
migrations/env.py leaves every object whose name starts with ``search_`` out of comparisons.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b1c0e7d9a31"
down_revision: str | None = "2a6e2fde17b0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION search_content_text(content json) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE json_typeof(content)
    WHEN 'string' THEN content #>> '{}'
    WHEN 'array' THEN (
      SELECT coalesce(string_agg(part ->> 'text', ' '), '')
      FROM json_array_elements(content) AS part
      WHERE json_typeof(part) = 'object' AND part ->> 'type' = 'text')
    ELSE '' END
$$
"""

# SQLite: one FTS5 row per message (and one per title), found again through the conversation
# id, which is indexed as a token so that deleting a conversation's rows uses the index.
SQLITE_CONTENT_TEXT = """
CASE json_type(NEW.content)
  WHEN 'text' THEN json_extract(NEW.content, '$')
  WHEN 'array' THEN (
    SELECT coalesce(group_concat(json_extract(value, '$.text'), ' '), '')
    FROM json_each(NEW.content)
    WHERE json_type(value) = 'object' AND json_extract(value, '$.type') = 'text')
  ELSE '' END
"""

SQLITE = [
    "CREATE VIRTUAL TABLE search_text USING fts5("
    "body, conv, kind UNINDEXED, tokenize = 'unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER search_message_insert AFTER INSERT ON message BEGIN
        INSERT INTO search_text (body, conv, kind)
        VALUES ({SQLITE_CONTENT_TEXT}, NEW.conversation_id, 'message');
    END""",
    """CREATE TRIGGER search_conversation_insert AFTER INSERT ON conversation BEGIN
        INSERT INTO search_text (body, conv, kind)
        VALUES (coalesce(NEW.title, ''), NEW.id, 'title');
    END""",
    """CREATE TRIGGER search_conversation_title AFTER UPDATE OF title ON conversation BEGIN
        DELETE FROM search_text WHERE rowid IN (
            SELECT rowid FROM search_text
            WHERE search_text MATCH 'conv : "' || OLD.id || '"' AND kind = 'title');
        INSERT INTO search_text (body, conv, kind)
        VALUES (coalesce(NEW.title, ''), NEW.id, 'title');
    END""",
    """CREATE TRIGGER search_conversation_delete AFTER DELETE ON conversation BEGIN
        DELETE FROM search_text WHERE rowid IN (
            SELECT rowid FROM search_text WHERE search_text MATCH 'conv : "' || OLD.id || '"');
    END""",
    # Index what was stored before this revision.
    f"""INSERT INTO search_text (body, conv, kind)
        SELECT {SQLITE_CONTENT_TEXT.replace("NEW.", "message.")}, conversation_id, 'message'
        FROM message""",
    """INSERT INTO search_text (body, conv, kind)
        SELECT coalesce(title, ''), id, 'title' FROM conversation""",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(
            "CREATE INDEX search_message_content ON message "
            "USING gin (to_tsvector('simple', search_content_text(content)))"
        )
        op.execute(
            "CREATE INDEX search_conversation_title ON conversation "
            "USING gin (to_tsvector('simple', coalesce(title, '')))"
        )
        return
    for statement in SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS search_conversation_title")
        op.execute("DROP INDEX IF EXISTS search_message_content")
        op.execute("DROP FUNCTION IF EXISTS search_content_text(json)")
        return
    for trigger in (
        "search_message_insert",
        "search_conversation_insert",
        "search_conversation_title",
        "search_conversation_delete",
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS search_text")
