"""A turn: append the input and mark the turn running (transaction 1), ask the model with no
transaction open, then store the reply and complete the turn (transaction 2).

A turn, once its input is stored, always runs to its end in a task of its own: a client that
hangs up (or a streaming client that goes away) cannot cancel it. While it runs, this process
renews the turn's lease in the database; a turn whose lease runs out belonged to a process that
died, and the next writer to its conversation marks it failed (``abandoned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, overload

import msgspec

from service.errors import (
    NotFound,
    ServiceError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimedOut,
)
from service.observability import observe_turn
from service.ratelimit import TurnRateLimit
from service.schemas import MessageOut, TurnCreate, TurnOut, TurnResult, message_fields
from service.store import Store, TurnStart
from service.upstream import (
    Attempted,
    UpstreamClient,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from service.upstream import (
    UpstreamRateLimited as UpstreamRateLimitedError,
)

log = logging.getLogger("convstore.turns")

DEFAULT_RETRY_AFTER = 5
PURGE_EVERY = 600.0  # seconds between sweeps of expired idempotency keys
_encoder = msgspec.json.Encoder()


def upstream_body(start: TurnStart) -> dict[str, Any]:
    """The chat-completions request for a turn: the params, then what the service decides."""
    return {**start.params, "model": start.model, "messages": start.history}


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
        return UpstreamFailed(
            f"The model rejected the request ({exc.status}): {exc.message}", **extra
        )
    return UpstreamFailed(exc.message, **extra)


def sse(event: str, data: Any, event_id: int) -> bytes:
    """One server-sent event."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), _encoder.encode(data))


class TurnFeed:
    """The events of one running turn, kept so that followers can join (and re-join) at any
    point: each follower gets everything from the event it asks for, then follows live."""

    def __init__(self, turn_id: uuid.UUID) -> None:
        self.turn_id = turn_id
        # Encoded when first followed: most non-streamed turns are never followed.
        self.published: list[tuple[str, Any]] = []
        self.closed = False
        self._encoded: list[bytes] = []
        self._changed = asyncio.Condition()

    async def publish(self, event: str, data: Any) -> None:
        """Add an event; ``data`` must not change afterwards (it is encoded when followed)."""
        async with self._changed:
            self.published.append((event, data))
            self._changed.notify_all()

    def _events_from(self, position: int) -> list[bytes]:
        for event_id in range(len(self._encoded), len(self.published)):
            self._encoded.append(sse(*self.published[event_id], event_id))
        return self._encoded[position:]

    async def close(self) -> None:
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def follow(self, start: int = 0) -> AsyncIterator[bytes]:
        position = max(0, start)
        while True:
            seen = position

            def ready(seen: int = seen) -> bool:
                return self.closed or len(self.published) > seen

            async with self._changed:
                await self._changed.wait_for(ready)
                pending = self._events_from(position)
                closed = self.closed
            for event in pending:
                yield event
            position += len(pending)
            if closed and position >= len(self.published):
                return


class TurnRunner:
    """Runs turns against one store and one upstream client, and keeps their leases alive."""

    def __init__(
        self,
        store: Store,
        upstream: UpstreamClient,
        *,
        lease: float = 60.0,
        rate_limit: TurnRateLimit | None = None,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.lease = lease
        self.rate_limit = rate_limit or TurnRateLimit(0)
        self.feeds: dict[uuid.UUID, TurnFeed] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing the leases of this process's running turns."""
        self._renewer = asyncio.create_task(self._renew_leases())

    async def stop(self, grace: float = 30.0) -> None:
        """Let running turns finish (up to ``grace`` seconds), then stop renewing leases."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _renew_leases(self) -> None:
        next_purge = time.monotonic()
        while True:
            await asyncio.sleep(self.lease / 4)
            running = list(self.feeds)
            try:
                if running:
                    await self.store.renew_leases(running, self.lease)
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY
                    await self.store.purge_idempotency_keys()
            except Exception:
                log.exception("could not renew the leases of %d running turns", len(running))

    # ---- turns --------------------------------------------------------------------------

    async def _begin(
        self, tenant: str, conversation_id: uuid.UUID, request: TurnCreate
    ) -> TurnStart:
        self.rate_limit.check(tenant)
        return await self.store.begin_turn(
            tenant,
            conversation_id,
            [message_fields(m) for m in request.messages],
            model=request.model or None,
            params=request.params or None,
            stream=request.stream,
            lease=self.lease,
        )

    async def run(
        self, tenant: str, conversation_id: uuid.UUID, request: TurnCreate
    ) -> tuple[TurnResult, Timing]:
        """Run one turn to its end; the stored turn and reply, and where the time went."""
        timing = Timing(started=time.perf_counter())
        start = await self._begin(tenant, conversation_id, request)
        timing.db_ms += _ms_since(timing.started, exact=True)
        feed = TurnFeed(start.turn.id)
        # Followers of a non-streamed turn (GET …/events) get the same events as a stream.
        await feed.publish("turn.started", {"turn": start.turn, "messages": start.appended})
        task = self._spawn(start, feed, timing, stream=False)
        # Shielded: a client that hangs up must not cancel a turn whose input is stored.
        result: TurnResult = await asyncio.shield(task)
        timing.total_ms = _ms_since(timing.started, exact=True)
        return result, timing

    async def run_streamed(
        self, tenant: str, conversation_id: uuid.UUID, request: TurnCreate
    ) -> TurnFeed:
        """Start a streamed turn; its events are followed through the returned feed.

        Errors before the turn starts (404, 409, 422) are raised here, as plain answers.
        """
        timing = Timing(started=time.perf_counter())
        start = await self._begin(tenant, conversation_id, request)
        timing.db_ms += _ms_since(timing.started, exact=True)
        feed = TurnFeed(start.turn.id)
        await feed.publish("turn.started", {"turn": start.turn, "messages": start.appended})
        task = self._spawn(start, feed, timing, stream=True)
        # Retrieve the outcome so a failure is not reported as "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return feed

    def feed(self, turn_id: uuid.UUID) -> TurnFeed | None:
        """The live feed of a turn running in this process, if any."""
        return self.feeds.get(turn_id)

    def _spawn(
        self, start: TurnStart, feed: TurnFeed, timing: Timing, *, stream: bool
    ) -> asyncio.Task[TurnResult]:
        self.feeds[start.turn.id] = feed
        task = asyncio.create_task(self._finish(start, feed, timing, stream=stream))
        self.tasks.add(task)

        def done(t: asyncio.Task[TurnResult]) -> None:
            self.tasks.discard(t)
            self.feeds.pop(start.turn.id, None)

        task.add_done_callback(done)
        return task

    async def _finish(
        self, start: TurnStart, feed: TurnFeed, timing: Timing, *, stream: bool
    ) -> TurnResult:
        turn_id = start.turn.id
        started = timing.started
        upstream_started = time.perf_counter()
        try:
            attempted = await self._ask(start, feed, stream=stream)
        except UpstreamError as exc:
            upstream_ms = _ms_since(upstream_started)
            failed = await self.store.fail_turn(
                turn_id,
                exc.as_dict(),
                latency_ms=_ms_since(started),
                upstream_ms=upstream_ms,
                attempts=exc.attempts,
            )
            log.warning("turn %s failed: %s", turn_id, exc.message)
            error = service_error(exc, turn_id)
            observe_turn(
                error.code,
                seconds=time.perf_counter() - started,
                upstream_seconds=upstream_ms / 1000,
                model=start.model,
                usage=None,
            )
            await feed.publish("turn.failed", {**error.problem(), "turn": failed})
            await feed.close()
            raise error from None
        except BaseException:
            observe_turn(
                "internal_error",
                seconds=time.perf_counter() - started,
                upstream_seconds=None,
                model=start.model,
                usage=None,
            )
            await self.store.fail_turn(
                turn_id,
                {"code": "internal_error", "detail": "The turn stopped on an unexpected error."},
                latency_ms=_ms_since(started),
                upstream_ms=None,
                attempts=1,
            )
            await feed.publish(
                "turn.failed",
                {
                    "status": 500,
                    "code": "internal_error",
                    "title": "Internal Server Error",
                    "detail": "The turn stopped on an unexpected error.",
                    "turn_id": str(turn_id),
                },
            )
            await feed.close()
            raise
        stored_at = time.perf_counter()
        timing.upstream_ms = (stored_at - upstream_started) * 1000
        stored = await self.store.complete_turn(
            start.turn,
            attempted.reply,
            latency_ms=_ms_since(started),
            upstream_ms=round(timing.upstream_ms),
            attempts=attempted.attempts,
        )
        timing.db_ms += _ms_since(stored_at, exact=True)
        observe_turn(
            "completed" if stored else "not_found",
            seconds=time.perf_counter() - started,
            upstream_seconds=timing.upstream_ms / 1000,
            model=attempted.reply.model,
            usage=attempted.reply.usage,
        )
        if stored is None:
            error = NotFound("The conversation was deleted while the model was answering.")
            await feed.publish("turn.failed", {**error.problem(), "turn_id": str(turn_id)})
            await feed.close()
            raise error
        turn, reply = stored
        await feed.publish("turn.completed", {"turn": turn, "reply": reply})
        await feed.close()
        return TurnResult(turn=turn, reply=reply)

    async def _ask(self, start: TurnStart, feed: TurnFeed, *, stream: bool) -> Attempted:
        body = upstream_body(start)
        conversation_id = str(start.turn.conversation_id)
        if not stream:
            return await self.upstream.complete(body, conversation_id=conversation_id)

        async def relay(delta: dict[str, str]) -> None:
            await feed.publish("message.delta", delta)

        return await self.upstream.stream(body, conversation_id=conversation_id, on_delta=relay)


def replay(turn: TurnOut, reply: MessageOut | None) -> list[bytes]:
    """The events of a finished turn, rebuilt from the database for a late follower."""
    events: list[bytes] = [sse("turn.started", {"turn": turn, "messages": []}, 0)]
    if turn.status == "completed" and reply is not None:
        delta: dict[str, str] = {}
        if reply.reasoning_content:
            delta["reasoning_content"] = reply.reasoning_content
        if isinstance(reply.content, str) and reply.content:
            delta["content"] = reply.content
        if delta:
            events.append(sse("message.delta", delta, len(events)))
        events.append(sse("turn.completed", {"turn": turn, "reply": reply}, len(events)))
    else:
        error = turn.error if isinstance(turn.error, dict) else {}
        events.append(sse("turn.failed", {**error, "turn": turn}, len(events)))
    return events


@dataclass
class Timing:
    """Where a turn's time went, for the ``Server-Timing`` header (milliseconds)."""

    started: float
    db_ms: float = 0.0
    upstream_ms: float = 0.0
    total_ms: float = 0.0

    def header(self) -> str:
        return (
            f"db;dur={self.db_ms:.2f}, upstream;dur={self.upstream_ms:.2f}, "
            f"total;dur={self.total_ms:.2f}"
        )


@overload
def _ms_since(started: float) -> int: ...
@overload
def _ms_since(started: float, *, exact: Literal[True]) -> float: ...
def _ms_since(started: float, *, exact: bool = False) -> float:
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed if exact else round(elapsed)
