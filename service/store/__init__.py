"""Every SQL statement of the service, by concern; each public method is one short transaction.

The store speaks in plain values and response Structs; it knows nothing of HTTP or the upstream.
"""

from __future__ import annotations

from service.schemas import Reply
from service.store.admin import AdminSessionStore, AdminStore, ConversationFilter
from service.store.engine import StoreBase, make_engine
from service.store.idempotency import IdempotencyStore
from service.store.keys import KeyStore
from service.store.messages import Compaction
from service.store.records import (
    ExportRows,
    ImportRows,
    KeyRecord,
    OrphanedTurn,
    PathView,
    Principal,
    StoredAnswer,
)
from service.store.responses import ResponseStore
from service.store.transcripts import TranscriptStore
from service.store.turns import Summary, TurnStart, TurnStore


class Store(
    KeyStore,
    TranscriptStore,
    TurnStore,
    AdminStore,
    AdminSessionStore,
    IdempotencyStore,
    ResponseStore,
):
    """The conversation store over one SQLAlchemy async engine."""


__all__ = [
    "Compaction",
    "ConversationFilter",
    "ExportRows",
    "ImportRows",
    "KeyRecord",
    "OrphanedTurn",
    "PathView",
    "Principal",
    "Reply",
    "Store",
    "StoreBase",
    "StoredAnswer",
    "Summary",
    "TurnStart",
    "make_engine",
]
