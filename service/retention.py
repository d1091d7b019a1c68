"""Retention: the sweeper that deletes expired conversations, in every server process.

Each sweep deletes batches (``Store.sweep_expired``: one short transaction each, at most
``SWEEP_CONVERSATIONS`` conversations, ``SQLITE_CONVERSATIONS`` on SQLite, and about
``SWEEP_MESSAGES`` messages) until none is left. It is background work: after each batch it
rests at least as long as the batch held its locks, so it never takes more than half of the
database's time from turns; on SQLite at least ``SQLITE_PAUSE``, the longest sleep of
SQLite's busy handler, so that a turn waiting for the write lock finds it free. Each batch is
logged and counted (``convstore_deleted_total{by="retention"}``). Processes sharing a database
never delete the same conversation twice (see ``sweep_expired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

from service.observability import observe_deletions
from service.store import Store
from service.store.retention import SWEEP_CONVERSATIONS, SWEEP_MESSAGES

log = logging.getLogger("convstore.retention")

SWEEP_EVERY = 60.0  # seconds between sweeps (each process, with some jitter)
BATCH_PAUSE = 0.01  # the least rest between batches, in seconds
# SQLite's write lock has no queue: a writer waiting for it sleeps up to 100 ms between tries,
# so batches there are smaller (about 40 ms of the lock) and the lock is left free that long.
SQLITE_CONVERSATIONS = 25
SQLITE_PAUSE = 0.1


@dataclass
class SweepCounts:
    """What one sweep deleted."""

    conversations: int = 0
    messages: int = 0
    turns: int = 0
    batches: int = 0


class RetentionSweeper:
    """Deletes expired conversations: now (``sweep``) or every ``every`` seconds (``start``)."""

    def __init__(
        self,
        store: Store,
        *,
        retention_days: int = 0,
        every: float = SWEEP_EVERY,
        conversations: int | None = None,
        messages: int = SWEEP_MESSAGES,
        pause: float | None = None,
    ) -> None:
        sqlite = store.dialect == "sqlite"
        self.store = store
        self.retention_days = retention_days
        self.every = every
        default = SQLITE_CONVERSATIONS if sqlite else SWEEP_CONVERSATIONS
        self.conversations = conversations or default
        self.messages = messages
        self.pause = (SQLITE_PAUSE if sqlite else BATCH_PAUSE) if pause is None else pause
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> SweepCounts:
        """Delete batches of expired conversations until none is left (or another process
        holds the rest); what was deleted."""
        counts = SweepCounts()
        while True:
            batch = await self.store.sweep_expired(
                retention_days=self.retention_days,
                conversations=self.conversations,
                messages=self.messages,
            )
            receipts = batch.receipts
            if not receipts:
                return counts
            messages = sum(r.message_count for r in receipts)
            turns = sum(r.turn_count for r in receipts)
            counts.batches += 1
            counts.conversations += len(receipts)
            counts.messages += messages
            counts.turns += turns
            observe_deletions("retention", receipts)
            log.info(
                "retention deleted %d conversations (%d messages, %d turns)",
                len(receipts),
                messages,
                turns,
                extra={
                    "fields": {
                        "conversations": len(receipts),
                        "messages": messages,
                        "turns": turns,
                        "duration_ms": round(batch.seconds * 1000, 2),
                    }
                },
            )
            await asyncio.sleep(max(self.pause, batch.seconds))

    def start(self) -> None:
        """Sweep every ``every`` seconds (the first sweep a random part of that after start, so
        that processes started together do not sweep together)."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await asyncio.sleep(random.uniform(0, self.every))
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("the retention sweep failed; it runs again in %.0f s", self.every)
            await asyncio.sleep(self.every * random.uniform(0.9, 1.1))
