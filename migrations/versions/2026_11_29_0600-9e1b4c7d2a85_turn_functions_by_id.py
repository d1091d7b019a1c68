"""PostgreSQL: cheaper turn functions and text-search expression.

Revision ID: 9e1b4c7d2a85
Revises: 7c3d2f1a9b64
Create Date: 2026-11-29 06:00:00+00:00

- ``convstore_begin_turn`` finds the conversation by its primary key alone and checks the tenant
  on the row it locked. With both in one WHERE clause, a plan made while the table's statistics
  were stale (a PL/pgSQL plan is made once per session) could walk the tenant's index through
  every conversation of the tenant, a cost that grew with the tenant.
- It reads the history itself instead of through ``convstore_history``, whose result was
  materialised once more on the way out (``convstore_history`` stays, for a full read).
- ``search_content_text``, the expression the message text index is built on and so computed
  for every stored message, is PL/pgSQL: a SQL function with a sub-select is not inlined, and
  runs its query from scratch on every call (a single-row insert cost 106 µs, now 61 µs). It
  returns the same text for every input, so the index needs no rebuild.
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "9e1b4c7d2a85"
down_revision: str | None = "7c3d2f1a9b64"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_previous = importlib.import_module(
    "migrations.versions.2026_11_29_0315-7c3d2f1a9b64_turn_functions"
)
_search = importlib.import_module("migrations.versions.2026_11_28_1720-5b1c0e7d9a31_text_search")

SEARCH_CONTENT_TEXT = """
CREATE OR REPLACE FUNCTION search_content_text(content json) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE json_typeof(content)
        WHEN 'string' THEN RETURN content #>> '{}';
        WHEN 'array' THEN RETURN (
            SELECT coalesce(string_agg(part ->> 'text', ' '), '')
            FROM json_array_elements(content) AS part
            WHERE json_typeof(part) = 'object' AND part ->> 'type' = 'text');
        ELSE RETURN '';
    END CASE;
END
$$
"""

# As before, but for the lock taken by id alone and the history read in place (HISTORY_ENTRY is
# the message-to-JSON expression of the previous revision).
BEGIN_TURN = """
CREATE OR REPLACE FUNCTION convstore_begin_turn(
    p_conversation_id uuid, p_tenant text, p_now timestamptz, p_deadline timestamptz,
    p_turn_id uuid, p_model text, p_params json, p_base_params text, p_stream boolean,
    p_ids uuid[], p_roles text[], p_contents text[], p_names text[], p_tool_calls text[],
    p_tool_call_ids text[], p_reasoning text[], p_models text[], p_finish_reasons text[],
    p_usages text[], p_created timestamptz[], p_after_seq integer,
    OUT o_seq integer, OUT o_entry text, OUT o_message_count integer, OUT o_model text,
    OUT o_params text
) RETURNS SETOF record LANGUAGE plpgsql VOLATILE
-- The returned rows are kept in memory (taken only as a history needs it), not spilled to disk.
SET work_mem = '64MB'
SET enable_bitmapscan = off
AS $$
DECLARE
    added integer := cardinality(p_ids);
    running record;
    owner text;
BEGIN
    -- Bumping the counter reserves the new messages' seqs and locks the conversation.
    UPDATE conversation AS c
    SET message_count = c.message_count + added, updated_at = p_now
    WHERE c.id = p_conversation_id
    RETURNING c.message_count, c.model, c.params, c.tenant
    INTO o_message_count, o_model, o_params, owner;
    IF NOT FOUND OR owner IS DISTINCT FROM p_tenant THEN  -- raising rolls the update back
        RAISE EXCEPTION 'no conversation has this id' USING ERRCODE = 'CV404';
    END IF;
    IF o_message_count = 0 THEN
        RAISE EXCEPTION 'the conversation has no messages' USING ERRCODE = 'CV422';
    END IF;
    IF p_params IS NOT NULL THEN
        -- The caller merged the turn's params over the conversation's params as it last saw
        -- them (JSON objects are merged in Python: jsonb would refuse some strings, and
        -- reorder keys). If it saw none, or other ones, it is told the current ones.
        IF p_base_params IS DISTINCT FROM o_params THEN
            RAISE EXCEPTION 'the conversation''s params are needed'
                USING ERRCODE = 'CV412', DETAIL = o_params;
        END IF;
        o_params := p_params::text;
    END IF;
    SELECT t.id, t.deadline_at INTO running
    FROM turn AS t WHERE t.conversation_id = p_conversation_id AND t.status = 'running';
    IF FOUND THEN
        IF running.deadline_at > p_now THEN
            RAISE EXCEPTION 'a turn is running' USING ERRCODE = 'CV409', DETAIL = running.id::text;
        END IF;
        -- The process that ran it died: free the conversation and say why.
        UPDATE turn SET status = 'failed', completed_at = p_now,
            error = '{"code":"abandoned","detail":"The server running this turn stopped."}'
        WHERE id = running.id;
    END IF;
    INSERT INTO message (id, conversation_id, seq, role, content, name, tool_calls,
                         tool_call_id, reasoning_content, model, finish_reason, usage, turn_id,
                         created_at)
    SELECT m.id, p_conversation_id, o_message_count - added + m.n, m.role, m.content::json,
           m.name, m.tool_calls::json, m.tool_call_id, m.reasoning_content, m.model,
           m.finish_reason, m.usage::json, NULL, m.created_at
    FROM unnest(p_ids, p_roles, p_contents, p_names, p_tool_calls, p_tool_call_ids,
                p_reasoning, p_models, p_finish_reasons, p_usages, p_created)
         WITH ORDINALITY AS m(id, role, content, name, tool_calls, tool_call_id,
                              reasoning_content, model, finish_reason, usage, created_at, n);
    o_model := coalesce(p_model, o_model);
    INSERT INTO turn (id, conversation_id, status, model, params, stream, attempts, created_at,
                      deadline_at)
    VALUES (p_turn_id, p_conversation_id, 'running', o_model, o_params::json, p_stream, 0, p_now,
            p_deadline);
    -- First a row with the conversation's counter and the turn's model and params, then one
    -- row per message after p_after_seq (the caller has the ones before), in seq order, the
    -- new messages included.
    o_seq := 0;
    RETURN NEXT;
    RETURN QUERY
        SELECT m.seq, HISTORY_ENTRY, NULL::integer, NULL::text, NULL::text
        FROM message AS m
        WHERE m.conversation_id = p_conversation_id AND m.seq > p_after_seq ORDER BY m.seq;
END
$$
""".replace("HISTORY_ENTRY", _previous.HISTORY_ENTRY)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BEGIN_TURN)
        op.execute(SEARCH_CONTENT_TEXT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_previous.BEGIN_TURN)
        op.execute(_search.PG_FUNCTION)
