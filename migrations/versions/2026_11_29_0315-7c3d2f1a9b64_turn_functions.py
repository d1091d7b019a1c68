"""PostgreSQL: a turn's two transactions as two functions, one round trip each.

Revision ID: 7c3d2f1a9b64
Revises: 5cf8dcf87a1b
Create Date: 2026-11-29 03:15:00+00:00

Each function runs as one statement in its own transaction. Inside a VOLATILE PL/pgSQL function
every statement takes a fresh snapshot, so the statements that follow the conversation's row lock
see everything committed before it was granted: the running-turn check and the history read are
as safe as in separate statements, without a client round trip between them. An error raised in
a function rolls back all it did. SQLite runs the same steps from Python (service/store.py).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7c3d2f1a9b64"
down_revision: str | None = "5cf8dcf87a1b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One stored message as the upstream receives it, as JSON text: role and content, plus the tool
# fields it has (service/store.py's _HISTORY_ENTRY writes the same for SQLite).
HISTORY_ENTRY = """'{"role":' || to_json(role) || ',"content":' || coalesce(text(content), 'null')
    || CASE WHEN name IS NULL THEN '' ELSE ',"name":' || to_json(name) END
    || CASE WHEN tool_calls IS NULL OR text(tool_calls) = 'null' THEN ''
            ELSE ',"tool_calls":' || text(tool_calls) END
    || CASE WHEN tool_call_id IS NULL THEN ''
            ELSE ',"tool_call_id":' || to_json(tool_call_id) END
    || '}'"""

HISTORY = f"""
CREATE OR REPLACE FUNCTION convstore_history(p_conversation_id uuid, p_after_seq integer)
RETURNS TABLE (seq integer, entry text) LANGUAGE sql STABLE
-- From the primary key's index, already in seq order (a bitmap scan needs a sort, which spills
-- to disk for long histories: 4 MB at 10,000 messages), and kept in memory until returned.
SET enable_bitmapscan = off
SET work_mem = '64MB'
AS $$
    SELECT seq, {HISTORY_ENTRY}
    FROM message WHERE conversation_id = p_conversation_id AND seq > p_after_seq ORDER BY seq
$$
"""

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
AS $$
DECLARE
    added integer := cardinality(p_ids);
    running record;
BEGIN
    -- Bumping the counter reserves the new messages' seqs and locks the conversation.
    UPDATE conversation AS c
    SET message_count = c.message_count + added, updated_at = p_now
    WHERE c.id = p_conversation_id AND c.tenant = p_tenant
    RETURNING c.message_count, c.model, c.params INTO o_message_count, o_model, o_params;
    IF NOT FOUND THEN
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
        SELECT h.seq, h.entry, NULL::integer, NULL::text, NULL::text
        FROM convstore_history(p_conversation_id, p_after_seq) AS h;
END
$$
"""

COMPLETE_TURN = """
CREATE OR REPLACE FUNCTION convstore_complete_turn(
    p_turn_id uuid, p_conversation_id uuid, p_now timestamptz, p_usage json,
    p_finish_reason text, p_latency_ms integer, p_upstream_ms integer, p_attempts integer,
    p_message_id uuid, p_content json, p_tool_calls json, p_reasoning text, p_model text
) RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    seq_taken integer;
BEGIN
    -- Taking the next seq locks the conversation, as every writer does first.
    UPDATE conversation SET message_count = message_count + 1, updated_at = p_now
    WHERE id = p_conversation_id RETURNING message_count INTO seq_taken;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE turn SET status = 'completed', usage = p_usage, finish_reason = p_finish_reason,
        latency_ms = p_latency_ms, upstream_ms = p_upstream_ms, attempts = p_attempts,
        reply_seq = seq_taken, completed_at = p_now
    WHERE id = p_turn_id AND status = 'running';
    IF NOT FOUND THEN
        -- Rolls back the seq taken above.
        RAISE EXCEPTION 'the turn is not running' USING ERRCODE = 'CV410';
    END IF;
    INSERT INTO message (id, conversation_id, seq, role, content, name, tool_calls,
                         tool_call_id, reasoning_content, model, finish_reason, usage, turn_id,
                         created_at)
    VALUES (p_message_id, p_conversation_id, seq_taken, 'assistant', p_content, NULL,
            p_tool_calls, NULL, p_reasoning, p_model, p_finish_reason, p_usage, p_turn_id,
            p_now);
    RETURN seq_taken;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(HISTORY)
        op.execute(BEGIN_TURN)
        op.execute(COMPLETE_TURN)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION convstore_complete_turn")
        op.execute("DROP FUNCTION convstore_begin_turn")
        op.execute("DROP FUNCTION convstore_history")
