"""A turn: append the input and mark the turn running (transaction 1), ask the model with no
transaction open, then store the reply and complete the turn (transaction 2)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from service.errors import (
    NotFound,
    ServiceError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimedOut,
)
from service.schemas import TurnCreate, TurnResult, message_fields
from service.store import Store, TurnStart
from service.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamRateLimited as UpstreamRateLimitedError,
    UpstreamRejected,
    UpstreamTimeout,
)

log = logging.getLogger("convstore.turns")

DEFAULT_RETRY_AFTER = 5


def upstream_body(start: TurnStart, *, stream: bool = False) -> dict[str, Any]:
    """The chat-completions request for a turn: the params, then what the service decides."""
    body: dict[str, Any] = {**start.params, "model": start.model, "messages": start.history}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def service_error(exc: UpstreamError, turn_id: uuid.UUID) -> ServiceError:
    """The answer a caller gets for an upstream failure, naming the failed turn."""
    extra: dict[str, Any] = {"turn_id": str(turn_id)}
    if exc.status is not None:
        extra["upstream_status"] = exc.status
    if isinstance(exc, UpstreamTimeout):
        return UpstreamTimedOut(exc.message, **extra)
    if isinstance(exc, UpstreamRateLimitedError):
        retry_after = round(exc.retry_after) if exc.retry_after else DEFAULT_RETRY_AFTER
        return UpstreamRateLimited(
            f"The model is rate limited: {exc.message}",
            headers={"retry-after": str(max(1, retry_after))},
            **extra,
        )
    if isinstance(exc, UpstreamRejected):
        return UpstreamFailed(f"The model rejected the request ({exc.status}): {exc.message}",
                              **extra)
    return UpstreamFailed(exc.message, **extra)


class TurnRunner:
    """Runs turns against one store and one upstream client."""

    def __init__(self, store: Store, upstream: UpstreamClient) -> None:
        self.store = store
        self.upstream = upstream

    async def run(self, tenant: str, conversation_id: uuid.UUID, request: TurnCreate) -> TurnResult:
        """Run one non-streamed turn to its end and return the stored turn and reply."""
        started = time.perf_counter()
        start = await self.store.begin_turn(
            tenant,
            conversation_id,
            [message_fields(m) for m in request.messages],
            model=request.model or None,
            params=request.params or None,
            stream=False,
        )
        # Shielded: a client that hangs up must not cancel a turn whose input is stored.
        return await asyncio.shield(self._finish(start, started))

    async def _finish(self, start: TurnStart, started: float) -> TurnResult:
        turn_id = start.turn.id
        upstream_started = time.perf_counter()
        try:
            attempted = await self.upstream.complete(
                upstream_body(start), conversation_id=str(start.turn.conversation_id)
            )
        except UpstreamError as exc:
            await self.store.fail_turn(
                turn_id,
                exc.as_dict(),
                latency_ms=_ms_since(started),
                upstream_ms=_ms_since(upstream_started),
                attempts=exc.attempts,
            )
            log.warning("turn %s failed: %s", turn_id, exc.message)
            raise service_error(exc, turn_id) from None
        except BaseException:
            await self.store.fail_turn(
                turn_id,
                {"code": "internal_error", "detail": "The turn stopped on an unexpected error."},
                latency_ms=_ms_since(started),
                upstream_ms=None,
                attempts=1,
            )
            raise
        upstream_ms = _ms_since(upstream_started)
        stored = await self.store.complete_turn(
            turn_id,
            attempted.reply,
            latency_ms=_ms_since(started),
            upstream_ms=upstream_ms,
            attempts=attempted.attempts,
        )
        if stored is None:
            raise NotFound("The conversation was deleted while the model was answering.")
        turn, reply = stored
        return TurnResult(turn=turn, reply=reply)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
