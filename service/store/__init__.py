"""Every SQL statement of the service, by concern; each public method is one short transaction.

The store speaks in plain values and response Structs; it knows nothing of HTTP or the upstream.
"""

from __future__ import annotations

from service.schemas import Reply
from service.store.admin import AdminSessionStore, AdminStore
from service.store.engine import StoreBase, make_engine
from service.store.filters import ConversationFilter
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
    ReadBy,
    StoredAnswer,
)
from service.store.responses import ResponseStore
from service.store.retention import Deleter
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
    """The conversation store over one SQLAlchemy async engine (``TranscriptStore`` brings
    conversations, messages, deletions, retention and admin reads)."""


__all__ = [
    "Compaction",
    "ConversationFilter",
    "Deleter",
    "ExportRows",
    "ImportRows",
    "KeyRecord",
    "OrphanedTurn",
    "PathView",
    "Principal",
    "ReadBy",
    "Reply",
    "Store",
    "StoreBase",
    "StoredAnswer",
    "Summary",
    "TurnStart",
    "make_engine",
]
