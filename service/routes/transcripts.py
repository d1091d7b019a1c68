"""Transcripts: export, import, bulk export and fork (``/v1``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath, FromQuery, JSONBody, RawBody
from litestar.response import Stream

from service import transcripts
from service.idempotency import idempotent
from service.imports import Importer
from service.routes.params import (
    Caller,
    ConversationFilters,
    ConversationId,
    provide_conversation_filters,
)
from service.schemas import ConversationOut, ForkCreate, ImportSummary
from service.store import ConversationFilter, ReadBy, Store

MAX_IMPORT_BYTES = 64 * 1024 * 1024
NDJSON = "application/x-ndjson"


def attachment(name: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{name}"'}


async def ndjson(
    store: Store, filters: ConversationFilter, read_by: ReadBy | None
) -> AsyncIterator[bytes]:
    """One transcript per line, read in keyset batches so memory stays flat."""
    async for rows in store.export_many(filters, read_by=read_by):
        yield transcripts.encode(transcripts.build(rows)) + b"\n"


def export_stream(
    store: Store, filters: ConversationFilter, name: str, *, read_by: ReadBy | None = None
) -> Stream:
    """The NDJSON export as a download; with ``read_by`` (an admin's), each conversation's
    read is recorded before it is sent."""
    return Stream(ndjson(store, filters, read_by), media_type=NDJSON, headers=attachment(name))


class TranscriptController(Controller):
    path = "/v1"
    tags = ("transcripts",)

    @get(
        "/conversations/{conversation_id:uuid}/export",
        summary="Export a conversation as a JSON transcript (or Markdown)",
        response_description="The transcript, as a download",
    )
    async def export_conversation(
        self,
        conversation_id: ConversationId,
        principal: Caller,
        state: State,
        format: FromQuery[Literal["json", "markdown"]] = "json",
    ) -> Response[bytes]:
        """The versioned JSON transcript of one conversation; ``?format=markdown`` for people."""
        rows = await state.store.export_one(principal.tenant, conversation_id)
        transcript = transcripts.build(rows)
        if format == "markdown":
            return Response(
                transcripts.markdown(transcript).encode(),
                media_type="text/markdown; charset=utf-8",
                headers=attachment(f"conversation-{conversation_id}.md"),
            )
        return Response(
            transcripts.encode(transcript),
            media_type="application/json",
            headers=attachment(f"conversation-{conversation_id}.json"),
        )

    @post(
        "/conversations/import",
        status_code=201,
        summary="Import a transcript as a new conversation",
        request_max_body_size=MAX_IMPORT_BYTES,
    )
    async def import_transcript(
        self, request: Request[Any, Any, Any], body: RawBody, principal: Caller, state: State
    ) -> Response[ConversationOut]:
        """A transcript in, a new conversation out (new ids, same content). Invalid transcripts,
        and transcripts past an import limit, are refused with every problem and where it is;
        nothing is stored. A transcript this tenant already imported answers 409
        ``already_imported`` naming the conversation. The body is read off the event loop."""
        importer: Importer = state.importer

        async def run() -> Response[Any]:
            created = await importer.transcript(principal.tenant, body)
            return Response(created, status_code=201)

        return await idempotent(request, principal, state.turns, run)

    @post(
        "/conversations/import/{source:str}",
        status_code=201,
        summary="Import conversations exported by ChatGPT, Open WebUI or LibreChat",
        request_max_body_size=MAX_IMPORT_BYTES,
    )
    async def import_other(
        self, source: FromPath[str], body: RawBody, principal: Caller, state: State
    ) -> ImportSummary:
        """``source`` is ``chatgpt`` (its ``conversations.json``), ``openwebui`` (its JSON chat
        export) or ``librechat`` (its JSON conversation export). Each conversation becomes a new
        one with every branch, its current branch as the head; conversations imported before
        are listed in ``already_imported``, so the same file can be sent again, and
        conversations past an import limit are listed in ``refused`` with their problems while
        the others are imported."""
        importer: Importer = state.importer
        return await importer.export(principal.tenant, source, body)

    @get(
        "/export",
        summary="Export every conversation of the tenant as NDJSON transcripts",
        response_description="application/x-ndjson: one transcript per line, streamed",
        dependencies={"filters": Provide(provide_conversation_filters)},
    )
    async def export_all(self, filters: ConversationFilters, state: State) -> Stream:
        """Every conversation of the caller's tenant, oldest first, one transcript per line,
        filtered as the list is (``user``, ``archived``, ``q``, ``metadata.<key>``).
        Streamed with constant memory, whatever the number of conversations."""
        return export_stream(state.store, filters, "conversations.ndjson")

    @post(
        "/conversations/{conversation_id:uuid}/fork",
        status_code=201,
        summary="Fork a conversation: a copy of its history up to a message",
    )
    async def fork(
        self,
        conversation_id: ConversationId,
        principal: Caller,
        state: State,
        data: JSONBody[ForkCreate | None] = None,
    ) -> ConversationOut:
        """A new conversation holding a copy of messages 1..``through_seq`` (default: all),
        recording where it came from (``forked_from_id``, ``forked_through_seq``)."""
        through = data.through_seq if data is not None else None
        conversation: ConversationOut = await state.store.fork(
            principal.tenant, conversation_id, through
        )
        return conversation

    @get(
        "/transcripts/schema",
        summary="The JSON Schema of a transcript",
        media_type="application/schema+json",
    )
    async def transcript_schema(self) -> dict[str, Any]:
        """The schema every export follows and every import is checked against (no key)."""
        return transcripts.schema()
