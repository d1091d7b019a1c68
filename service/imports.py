"""Imports: a transcript, or another tool's export, in; new conversations out.

An import's body may be 64 MiB. Reading it (decoding the JSON, checking it against the schema,
converting another tool's format, making the rows) is CPU work on Python values, so it runs in a
worker thread while the event loop goes on serving other requests. Each server process runs at
most ``IMPORTS_AT_ONCE`` imports at a time; the others wait for a place, so a burst of big imports
holds that many worker threads and that much memory at the most. The store then writes each
conversation in one transaction, in batches of rows (``TranscriptStore.import_conversation``).

While an import runs, the garbage collector's full collections wait (:class:`FullCollections`):
an import makes a million objects, and each full collection would walk them all while holding
the interpreter's lock, stopping the event loop for as long (0.2 to 0.7 s each, and ever more
often as the import grows).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from service import importers, transcripts
from service.errors import Conflict, ValidationFailed
from service.schemas import ConversationOut, ImportProblem, ImportSummary, RefusedImport
from service.store import ImportRows, Store

IMPORTS_AT_ONCE = 2

_T = TypeVar("_T")


class FullCollections:
    """Defers the garbage collector's full collections while any import runs in this process.

    Young collections go on (they walk only objects made since the last one), so cyclic garbage
    is still found; what survives them waits for the first full collection after the last
    import, when the import's objects are gone and the walk is short again."""

    DEFERRED = 1_000_000  # young collections between full ones: none during an import

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._imports = 0
        self._thresholds = gc.get_threshold()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        with self._lock:
            if self._imports == 0:
                self._thresholds = gc.get_threshold()
                young, middle, _ = self._thresholds
                gc.set_threshold(young, middle, self.DEFERRED)
            self._imports += 1
        try:
            yield
        finally:
            with self._lock:
                self._imports -= 1
                if self._imports == 0:
                    gc.set_threshold(*self._thresholds)


_FULL_COLLECTIONS = FullCollections()  # the collector is the process's: so is this


class Importer:
    """Imports for one store, at most ``at_once`` at a time in this process. Made inside a
    running event loop (the app's lifespan, or the command line's)."""

    def __init__(self, store: Store, *, default_model: str, at_once: int = IMPORTS_AT_ONCE):
        self.store = store
        self.default_model = default_model
        self._places = anyio.CapacityLimiter(at_once)

    async def _off_loop(self, work: Callable[..., _T], *args: Any) -> _T:
        return await anyio.to_thread.run_sync(functools.partial(work, *args))

    async def transcript(self, tenant: str, body: bytes) -> ConversationOut:
        """Store a transcript (the JSON text ``body``) as a new conversation of ``tenant``.

        Raises 400 if ``body`` is not JSON, 422 ``invalid_transcript`` listing what is wrong
        (an import limit among them), or 409 ``already_imported`` naming the conversation if
        this tenant imported the same source before. Nothing is stored then.
        """
        async with self._places:
            with _FULL_COLLECTIONS.deferred():
                rows = await self._off_loop(self._read_transcript, body)
                return await self.store.import_conversation(tenant, rows)

    def _read_transcript(self, body: bytes) -> ImportRows:
        return transcripts.prepare(transcripts.decode(body), default_model=self.default_model)

    async def export(self, tenant: str, source: str, body: bytes) -> ImportSummary:
        """Store each conversation of another tool's export file (``source`` is one of
        ``importers.SOURCES``) as a new conversation of ``tenant``, each in a transaction of its
        own. Conversations imported before are listed, not imported again, so the same file can
        be sent again; one that is invalid once converted (an import limit, a NUL character) is
        refused with its problems while the others are imported.

        Raises 400 if ``body`` is not JSON and 422 for an unknown source or a file that is not
        that tool's export (nothing is stored then).
        """
        if source not in importers.SOURCES:
            raise ValidationFailed(
                f"Unknown source {source!r}: use one of {', '.join(importers.SOURCES)}."
            )
        created: list[ConversationOut] = []
        already: list[str] = []
        async with self._places:
            with _FULL_COLLECTIONS.deferred():
                ready, refused, skipped = await self._off_loop(self._read_export, source, body)
                for rows in ready:
                    try:
                        created.append(await self.store.import_conversation(tenant, rows))
                    except Conflict:  # imported before: the same file can be sent again
                        already.append(rows.conversation["source_id"])
                del ready  # let their objects go before full collections are made again
        return ImportSummary(created, already, skipped, refused)

    def _read_export(
        self, source: str, body: bytes
    ) -> tuple[list[ImportRows], list[RefusedImport], list[str]]:
        try:
            converted = importers.convert(cast(importers.Source, source), transcripts.decode(body))
        except importers.ImportFormatError as exc:
            raise ValidationFailed(f"Not a {source} export: {exc}") from None
        ready: list[ImportRows] = []
        refused: list[RefusedImport] = []
        for transcript in converted.transcripts:
            transcript = importers.prepared(source, transcript)
            try:
                ready.append(transcripts.prepare(transcript, default_model=self.default_model))
            except ValidationFailed as exc:
                conversation = transcript["conversation"]
                refused.append(
                    RefusedImport(
                        source_id=conversation["id"],
                        title=conversation.get("title"),
                        detail=exc.detail,
                        problems=[ImportProblem(**p) for p in exc.extra["errors"]],
                        problem_count=exc.extra["error_count"],
                    )
                )
        return ready, refused, converted.skipped
