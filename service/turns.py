"""A turn: append the input and mark the turn running (transaction 1), ask the model with no
transaction open, then store the reply and complete the turn (transaction 2).

A turn, once its input is stored, always runs to its end in a task of its own: a client that
hangs up (or a streaming client that goes away) cannot cancel it. Every turn ends, completed or
failed, and its followers see the end: any failure after it started (the upstream's, the
database's while storing the reply, this server's shutdown) marks it failed with what happened,
publishes ``turn.failed`` and is logged. While it runs, this process renews the turn's lease in
the database; a turn whose lease runs out belonged to a server that died, and whoever next
looks at it (a writer to its conversation, a follower, an idempotent retry) marks it failed
(``abandoned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import msgspec
from litestar.response import ServerSentEventMessage
from msgspec import UNSET
from sqlalchemy.exc import DBAPIError

from service.context import (
    CLEARLY_OVER,
    overflow,
    request_sha256,
    summary_message,
    summary_request,
)
from service.errors import Conflict, NotFound, ServiceError, database_unavailable
from service.events import KEEPALIVE, KEEPALIVE_SECONDS, Position, TurnFeed, text_after
from service.observability import observe_turn
from service.ratelimit import TurnRateLimit
from service.schemas import (
    KEPT_PARAMS,
    MessageOut,
    Replayed,
    Reply,
    TurnCreate,
    TurnOut,
    TurnResult,
    message_fields,
)
from service.store import Compaction, Principal, Store, TurnStart
from service.tables import uuid7
from service.tokens import MESSAGE_OVERHEAD
from service.upstream import (
    Attempted,
    UpstreamClient,
    UpstreamContextExceeded,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
)

log = logging.getLogger("convstore.turns")

DEFAULT_RETRY_AFTER = 5
PURGE_EVERY = 600.0  # seconds between sweeps of expired idempotency keys
POLL_SECONDS = 0.5  # how often a follower of a turn running elsewhere looks at it again
RECORD_ATTEMPTS = 3  # tries to record a turn's failure before leaving it to its lease
UPSTREAM_STATUS = {"upstream_timeout": 504, "upstream_rate_limited": 429}
# What a 422 ``context_length_exceeded`` tells besides its detail (``service.context.overflow``).
OVERFLOW_FIELDS = (
    "estimated_input_tokens",
    "upstream_input_tokens",
    "max_input_tokens",
    "window",
    "strategy",
    "helpful_strategies",
)


def upstream_body(start: TurnStart) -> dict[str, Any]:
    """The chat-completions request for a turn: the params, then what the service decides."""
    return chat_body(start.params, start.model, start.history)


def chat_body(params: dict[str, Any], model: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat-completions request for ``history``: the params (without those only kept, the
    instructions among them put first in the messages), then the model and the messages."""
    kept = params.get(KEPT_PARAMS)
    if kept is None:
        return {**params, "model": model, "messages": history}
    sent = {name: value for name, value in params.items() if name != KEPT_PARAMS}
    instructions = kept.get("instructions") if isinstance(kept, dict) else None
    if instructions:
        history = [{"role": "system", "content": instructions}, *history]
    return {**sent, "model": model, "messages": history}


def upstream_failure(exc: UpstreamError) -> dict[str, Any]:
    """The error stored in a turn the upstream failed, with the status its caller gets."""
    error = exc.as_dict()
    error["status"] = UPSTREAM_STATUS.get(exc.code, 502)
    if isinstance(exc, UpstreamRejected) and exc.status is not None:
        error["detail"] = f"The model rejected the request ({exc.status}): {exc.message}"
    elif isinstance(exc, UpstreamRateLimited):
        error["detail"] = f"The model is rate limited: {exc.message}"
    return error


def turn_error(turn_id: uuid.UUID, error: dict[str, Any]) -> ServiceError:
    """The answer a caller gets for a turn that failed with ``error`` (as stored in the turn)."""
    extra: dict[str, Any] = {"turn_id": str(turn_id)}
    for name in ("upstream_status", *OVERFLOW_FIELDS):
        if error.get(name) is not None:
            extra[name] = error[name]
    headers: dict[str, str] = {}
    status = int(error.get("status") or 502)
    if status in (429, 503):
        retry_after = error.get("retry_after") or DEFAULT_RETRY_AFTER
        headers["retry-after"] = str(max(1, round(retry_after)))
    answer = ServiceError(
        str(error.get("detail") or "The turn failed."),
        code=str(error.get("code") or "upstream_error"),
        headers=headers,
        **extra,
    )
    answer.status = status
    return answer


def failed_event(turn: TurnOut) -> dict[str, Any]:
    """The ``turn.failed`` event of a failed turn: its problem, and the turn."""
    return {**turn_error(turn.id, turn.error or {}).problem(), "turn": turn}


@dataclass
class _Failure(Exception):
    """How a turn failed: what its caller is told, and what the turn records."""

    error: dict[str, Any]
    attempts: int = 1
    upstream_ms: int | None = None
    reply: Reply | None = None
    context: dict[str, Any] | None = None  # the turn's context record, if it changed


class TurnRunner:
    """Runs turns against one store and one upstream client, and keeps the leases of this
    process's work (running turns, idempotency claims) alive."""

    def __init__(
        self,
        store: Store,
        upstream: UpstreamClient,
        *,
        lease: float = 60.0,
        keepalive: float = KEEPALIVE_SECONDS,
        rate_limit: TurnRateLimit | None = None,
        windows: Mapping[str, int] | None = None,
        keep_requests: bool = False,
        compaction_model: str | None = None,
    ) -> None:
        self.store = store
        self.windows = windows
        self.keep_requests = keep_requests
        self.compaction_model = compaction_model
        self.upstream = upstream
        self.lease = lease
        self.keepalive = keepalive
        self.rate_limit = rate_limit or TurnRateLimit()
        self.feeds: dict[uuid.UUID, TurnFeed] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.claims: set[tuple[str, str]] = set()
        self._renewer: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing the leases of this process's running turns and claims."""
        self._renewer = asyncio.create_task(self._renew_leases())

    async def stop(self, grace: float = 30.0, *, until: Callable[[], bool] | None = None) -> None:
        """Let running turns finish for up to ``grace`` seconds (or until ``until()`` says to
        hurry); then end those still running as failed (``interrupted``), and stop renewing
        leases."""
        deadline = time.monotonic() + grace
        while self.tasks and time.monotonic() < deadline and not (until and until()):
            await asyncio.wait(set(self.tasks), timeout=0.1)
        unfinished = set(self.tasks)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=10)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _renew_leases(self) -> None:
        next_purge = time.monotonic()
        while True:
            await asyncio.sleep(self.lease / 4)
            running, claims = list(self.feeds), list(self.claims)
            try:
                if running:
                    await self.store.renew_leases(running, self.lease)
                if claims:
                    await self.store.renew_idempotency_keys(claims, self.lease)
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY
                    await self.store.purge_idempotency_keys()
            except Exception:
                log.exception("could not renew the leases of %d running turns", len(running))

    @contextlib.contextmanager
    def holding(self, tenant: str, key: str) -> Iterator[None]:
        """Keep an idempotency claim's lock alive while its request runs."""
        self.claims.add((tenant, key))
        try:
            yield
        finally:
            self.claims.discard((tenant, key))

    # ---- turns --------------------------------------------------------------------------

    async def begin(
        self,
        caller: Principal,
        conversation_id: uuid.UUID,
        request: TurnCreate,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[TurnFeed, asyncio.Task[TurnResult], Timing]:
        """Start a turn: its input stored, its model call running in a task of its own.

        Errors before the turn starts (404, 409, 422, 429) are raised here; nothing is stored.
        """
        timing = Timing(started=time.perf_counter())
        self.rate_limit.check(caller)
        start = await self.store.begin_turn(
            caller.tenant,
            conversation_id,
            [message_fields(m) for m in request.messages],
            parent_id=request.parent_id,
            model=request.model or None,
            params=request.params or None,
            stream=request.stream,
            lease=self.lease,
            idempotency_key=idempotency_key,
            context=None if request.context is UNSET else msgspec.to_builtins(request.context),
            windows=self.windows,
        )
        timing.db_ms += _ms_since(timing.started, exact=True)
        feed = TurnFeed(
            start.turn.id,
            {"turn": start.turn, "messages": start.appended},
            keepalive=self.keepalive,
        )
        self.feeds[start.turn.id] = feed
        task = asyncio.create_task(self._finish(start, feed, timing, stream=request.stream))
        self.tasks.add(task)

        def done(t: asyncio.Task[TurnResult]) -> None:
            self.tasks.discard(t)
            self.feeds.pop(start.turn.id, None)
            if not t.cancelled():
                t.exception()  # retrieved: a failure is answered, not "never retrieved"

        task.add_done_callback(done)
        return feed, task, timing

    async def run(
        self,
        caller: Principal,
        conversation_id: uuid.UUID,
        request: TurnCreate,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[TurnResult, Timing]:
        """Run one turn to its end; the stored turn and reply, and where the time went."""
        _, task, timing = await self.begin(
            caller, conversation_id, request, idempotency_key=idempotency_key
        )
        # Shielded: a client that hangs up must not cancel a turn whose input is stored.
        result = await asyncio.shield(task)
        timing.total_ms = _ms_since(timing.started, exact=True)
        return result, timing

    async def _finish(
        self, start: TurnStart, feed: TurnFeed, timing: Timing, *, stream: bool
    ) -> TurnResult:
        turn = start.turn
        upstream_started = time.perf_counter()
        try:
            try:
                compaction = start.seen.compaction
                if compaction is not None and compaction.summary is None:
                    start = await self._compact(start, compaction)
                estimated, policy = start.seen.estimated, start.policy
                if estimated > policy.budget * CLEARLY_OVER:
                    raise _Failure(overflow(estimated, policy), attempts=0)
                attempted = await self._ask(start, feed, stream=stream)
            except UpstreamError as exc:
                raise self._upstream_failure(start, exc, upstream_started) from exc
            stored_at = time.perf_counter()
            timing.upstream_ms = (stored_at - upstream_started) * 1000
            stored = await self._store_reply(start, attempted, timing)
            timing.db_ms += _ms_since(stored_at, exact=True)
        except _Failure as failure:
            failed = await self._record_failure(start, failure)
            self._observe(start, failed.error["code"], upstream_ms=failure.upstream_ms)
            feed.end("turn.failed", failed_event(failed))
            raise turn_error(turn.id, failed.error) from None
        except asyncio.CancelledError:
            # Only this server's shutdown cancels a turn (stop()): say so, and stop quietly.
            stopped = _Failure(
                {
                    "status": 503,
                    "code": "interrupted",
                    "detail": "The server stopped before the turn finished; its input is "
                    "stored. Send the turn again with no messages to retry.",
                }
            )
            failed = await self._record_failure(start, stopped)
            self._observe(start, "interrupted", upstream_ms=None)
            feed.end("turn.failed", failed_event(failed))
            raise
        except Exception:
            log.exception("turn %s stopped on an unexpected error", turn.id)
            broken = _Failure(
                {
                    "status": 500,
                    "code": "internal_error",
                    "detail": "The turn stopped on an unexpected error; it has been logged.",
                }
            )
            failed = await self._record_failure(start, broken)
            self._observe(start, "internal_error", upstream_ms=None)
            feed.end("turn.failed", failed_event(failed))
            raise turn_error(turn.id, failed.error) from None
        if stored is None:
            error = NotFound("The conversation was deleted while the model was answering.")
            self._observe(start, error.code, upstream_ms=round(timing.upstream_ms))
            feed.end("turn.failed", {**error.problem(), "turn_id": str(turn.id)})
            raise error
        completed, reply = stored
        self._observe(start, "completed", upstream_ms=round(timing.upstream_ms), reply=reply)
        feed.end("turn.completed", {"turn": completed, "reply": reply})
        return TurnResult(turn=completed, reply=reply)

    async def _ask(self, start: TurnStart, feed: TurnFeed, *, stream: bool) -> Attempted:
        body = upstream_body(start)
        conversation_id = str(start.turn.conversation_id)
        if not stream:
            return await self.upstream.complete(body, conversation_id=conversation_id)

        async def relay(delta: dict[str, str]) -> None:
            feed.delta(delta)

        return await self.upstream.stream(body, conversation_id=conversation_id, on_delta=relay)

    async def _compact(self, start: TurnStart, compaction: Compaction) -> TurnStart:
        """Have the model summarise what the turn's history leaves out (with the previous
        summary, if any), store the summary and the summarising turn, and put the summary in
        the history after the system messages. An upstream failure fails the turn."""
        model = self.compaction_model or start.model
        previous = compaction.previous.content if compaction.previous is not None else None
        body = {
            "model": model,
            "messages": summary_request(previous, compaction.messages),
            "max_completion_tokens": compaction.reserve - MESSAGE_OVERHEAD,
        }
        began = time.perf_counter()
        attempted = await self.upstream.complete(
            body, conversation_id=str(start.turn.conversation_id)
        )
        summary = await self.store.record_compaction(
            start,
            compaction,
            attempted.reply,
            model=model,
            params={"max_completion_tokens": body["max_completion_tokens"]},
            attempts=attempted.attempts,
            latency_ms=_ms_since(began),
            request_sha256=request_sha256(attempted.sent),
        )
        history = list(start.history)
        history.insert(compaction.at, summary_message(summary.content))
        estimated = start.seen.estimated - compaction.reserve + summary.tokens
        context = {
            **(start.turn.context or {}),
            "summary_id": str(summary.id),
            "estimated_input_tokens": estimated,
        }
        return dataclasses.replace(
            start,
            history=history,
            turn=msgspec.structs.replace(start.turn, context=context),
            seen=dataclasses.replace(start.seen, estimated=estimated),
        )

    def _upstream_failure(
        self, start: TurnStart, exc: UpstreamError, upstream_started: float
    ) -> _Failure:
        """How a turn fails when the upstream gave no answer; a refusal for length is a 422
        ``context_length_exceeded`` that says which strategy would help."""
        more: dict[str, Any] = {"request_sha256": request_sha256(exc.sent)} if exc.sent else {}
        error = upstream_failure(exc)
        if isinstance(exc, UpstreamContextExceeded):
            error = {
                **overflow(
                    start.seen.estimated, start.policy, upstream=exc.message, window=exc.window
                ),
                "upstream_status": exc.status,
                "attempts": exc.attempts,
            }
            if exc.counted is not None:
                error["upstream_input_tokens"] = more["upstream_input_tokens"] = exc.counted
        context = {**(start.turn.context or {}), **more}
        return _Failure(error, exc.attempts, _ms_since(upstream_started), context=context)

    async def _store_reply(
        self, start: TurnStart, attempted: Attempted, timing: Timing
    ) -> tuple[TurnOut, MessageOut] | None:
        try:
            return await self.store.complete_turn(
                start,
                attempted.reply,
                latency_ms=_ms_since(timing.started),
                upstream_ms=round(timing.upstream_ms),
                attempts=attempted.attempts,
                request_sha256=request_sha256(attempted.sent),
                request_body=attempted.sent if self.keep_requests else None,
            )
        except Exception as exc:
            log.exception("turn %s: the model's reply could not be stored", start.turn.id)
            unavailable = database_unavailable(exc)
            error: dict[str, Any] = {
                "status": 503 if unavailable else 500,
                "code": "reply_not_stored",
                "detail": "The model answered, but its reply could not be stored"
                + (
                    ": the database is unavailable or full. The reply is kept in this turn."
                    if unavailable
                    else ". The reply is kept in this turn; the error has been logged."
                ),
            }
            if isinstance(exc, DBAPIError) and unavailable:
                error["retry_after"] = DEFAULT_RETRY_AFTER
            raise _Failure(
                error, attempted.attempts, round(timing.upstream_ms), attempted.reply
            ) from exc

    async def _record_failure(self, start: TurnStart, failure: _Failure) -> TurnOut:
        """Mark the turn failed, keeping the model's reply in it if there was one. If the
        database cannot take that, try without the reply, then give up and leave the turn to
        its lease (it will be called abandoned): the caller and followers are told either way.
        """
        error = dict(failure.error)
        if failure.reply is not None:
            error["reply"] = {
                k: v for k, v in _reply_fields(failure.reply).items() if v is not None
            }
        log.warning("turn %s failed (%s): %s", start.turn.id, error["code"], error["detail"])
        latency_ms = round((time.time() - start.turn.created_at.timestamp()) * 1000)
        attempts_left = RECORD_ATTEMPTS
        while attempts_left:
            attempts_left -= 1
            try:
                failed = await self.store.fail_turn(
                    start.turn.id,
                    error,
                    latency_ms=latency_ms,
                    upstream_ms=failure.upstream_ms,
                    attempts=failure.attempts,
                    context=failure.context,
                )
            except Exception:
                log.exception("turn %s: its failure could not be recorded", start.turn.id)
                error.pop("reply", None)
                if attempts_left:
                    await asyncio.sleep(0.2)
                continue
            if failed is not None:
                return failed
            break  # no longer running: deleted with its conversation, or called abandoned
        return TurnOut(
            **{
                **_turn_fields(start.turn),
                "status": "failed",
                "error": error,
                "latency_ms": latency_ms,
            }
        )

    def _observe(
        self,
        start: TurnStart,
        outcome: str,
        *,
        upstream_ms: int | None,
        reply: MessageOut | None = None,
    ) -> None:
        observe_turn(
            outcome,
            seconds=time.time() - start.turn.created_at.timestamp(),
            upstream_seconds=None if upstream_ms is None else upstream_ms / 1000,
            model=start.model,
            usage=reply.usage if reply is not None else None,
        )

    async def answer(
        self,
        caller: Principal,
        *,
        model: str,
        params: dict[str, Any],
        history: list[dict[str, Any]],
        stream: bool,
        conversation_id: uuid.UUID | None = None,
    ) -> tuple[TurnFeed, asyncio.Task[Reply]]:
        """A model call that stores nothing (a response with ``store: false``): ``history``
        and ``params`` sent as a turn's would be, the answer told to the feed's followers
        (``turn.completed`` with the reply, or ``turn.failed`` with the problem) and returned
        by the task. ``conversation_id`` (the conversation it continues, if any) goes upstream
        for its prompt cache."""
        self.rate_limit.check(caller)
        answer_id = uuid7()
        feed = TurnFeed(answer_id, None, keepalive=self.keepalive)
        body = chat_body(params, model, history)
        routed = str(conversation_id or answer_id)
        started = time.time()

        async def relay(delta: dict[str, str]) -> None:
            feed.delta(delta)

        async def run() -> Reply:
            try:
                if stream:
                    attempted = await self.upstream.stream(
                        body, conversation_id=routed, on_delta=relay
                    )
                else:
                    attempted = await self.upstream.complete(body, conversation_id=routed)
            except UpstreamError as exc:
                elapsed = time.time() - started
                observe_turn(
                    exc.code, seconds=elapsed, upstream_seconds=elapsed, model=model, usage=None
                )
                error = turn_error(answer_id, upstream_failure(exc))
                feed.end("turn.failed", error.problem())
                raise error from None
            reply = attempted.reply
            elapsed = time.time() - started
            observe_turn(
                "completed",
                seconds=elapsed,
                upstream_seconds=elapsed,
                model=model,
                usage=reply.usage,
            )
            feed.end("turn.completed", {"reply": reply})
            return reply

        task = asyncio.create_task(run())
        self.tasks.add(task)

        def done(t: asyncio.Task[Reply]) -> None:
            self.tasks.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: a failure is answered, not "never retrieved"

        task.add_done_callback(done)
        return feed, task

    async def replay(
        self, caller: Principal, conversation_id: uuid.UUID, turn_id: uuid.UUID
    ) -> Replayed:
        """Send a turn's kept request body upstream again, byte for byte, and answer the new
        reply beside the stored one; nothing is stored. 409 ``request_not_kept`` if the body
        was not kept (``CONVSTORE_KEEP_REQUESTS`` off when the turn ran)."""
        self.rate_limit.check(caller)
        turn, body = await self.store.kept_request(caller.tenant, conversation_id, turn_id)
        if body is None:
            raise Conflict(
                "This turn's request body was not kept: turns keep it while "
                "CONVSTORE_KEEP_REQUESTS is on.",
                code="request_not_kept",
            )
        stored = None
        if turn.reply_id is not None:
            stored = await self.store.get_message(conversation_id, turn.reply_id)
        decoded = msgspec.json.decode(body)
        routed = str(conversation_id)
        try:
            if isinstance(decoded, dict) and decoded.get("stream") is True:

                async def ignore(delta: dict[str, str]) -> None:
                    return None

                attempted = await self.upstream.stream(
                    decoded, conversation_id=routed, on_delta=ignore, raw=body
                )
            else:
                attempted = await self.upstream.complete(decoded, conversation_id=routed, raw=body)
        except UpstreamError as exc:
            raise turn_error(turn.id, upstream_failure(exc)) from None
        digest = request_sha256(attempted.sent)
        recorded = (turn.context or {}).get("request_sha256")
        return Replayed(turn, stored, attempted.reply, digest, digest == recorded)

    # ---- following ----------------------------------------------------------------------

    async def follow(
        self, turn: TurnOut, after: Position | None
    ) -> AsyncIterator[ServerSentEventMessage]:
        """A turn's events after ``after`` (see ``service.events``), from its ``feed``, with a
        keep-alive comment while it runs in another process."""
        async for feed in self.feed(turn):
            if feed is None:
                yield KEEPALIVE
                continue
            async for event in feed.follow(after):
                yield event

    async def feed(self, turn: TurnOut) -> AsyncIterator[TurnFeed | None]:
        """A turn's feed, yielded once: the live one if the turn runs in this process (or comes
        to: an idempotent retry may land where it runs); otherwise, once it ended, one rebuilt
        from the database. While it runs in another process, None every ``keepalive`` seconds
        (time for a keep-alive), and the turn is marked abandoned if its lease runs out."""
        quiet_since = time.monotonic()
        settled: TurnOut | None = turn
        while (feed := self.feeds.get(turn.id)) is None:
            if settled is None or settled.status != "running":
                yield await self.ended_feed(turn, settled)
                return
            if time.monotonic() - quiet_since >= self.keepalive:
                quiet_since = time.monotonic()
                yield None
            await asyncio.sleep(POLL_SECONDS)
            settled = await self.store.settled_turn(turn.id)
        yield feed

    async def ended_feed(self, turn: TurnOut, settled: TurnOut | None) -> TurnFeed:
        """The feed of a turn that ended (``settled``, None if its conversation was deleted
        meanwhile), rebuilt from what is stored: the reply's text as one delta, then the
        terminal event."""
        if settled is None:
            feed = TurnFeed(turn.id, {"turn": turn, "messages": []})
            gone = NotFound("The conversation was deleted while the model was answering.")
            feed.end("turn.failed", {**gone.problem(), "turn_id": str(turn.id)})
            return feed
        feed = TurnFeed(settled.id, {"turn": settled, "messages": []})
        if settled.status == "completed" and settled.reply_id is not None:
            reply = await self.store.get_message(settled.conversation_id, settled.reply_id)
            if reply is not None:
                content = reply.content if isinstance(reply.content, str) else ""
                _add_text(feed, reply.reasoning_content, content)
                feed.end("turn.completed", {"turn": settled, "reply": reply})
                return feed
        error = settled.error if isinstance(settled.error, dict) else {}
        kept = error.get("reply") or {}
        _add_text(
            feed,
            error.get("partial_reasoning_content") or kept.get("reasoning_content"),
            error.get("partial_content") or kept.get("content"),
        )
        feed.end("turn.failed", failed_event(settled))
        return feed

    async def outcome(self, turn_id: uuid.UUID) -> TurnResult | ServiceError | None:
        """What a finished turn answered (its result, or its error); None while it runs."""
        turn = await self.store.settled_turn(turn_id)
        if turn is None:
            return NotFound("The conversation was deleted while the model was answering.")
        if turn.status == "running":
            return None
        if turn.status == "completed" and turn.reply_id is not None:
            reply = await self.store.get_message(turn.conversation_id, turn.reply_id)
            if reply is not None:
                return TurnResult(turn=turn, reply=reply)
        return turn_error(turn.id, turn.error or {})


def _add_text(feed: TurnFeed, reasoning: Any, content: Any) -> None:
    """A stored reply's text (what of it is text) as one delta of ``feed``."""
    delta = text_after(
        reasoning if isinstance(reasoning, str) else "",
        content if isinstance(content, str) else "",
        Position(),
    )
    if delta:
        feed.delta(delta)


def _reply_fields(reply: Reply) -> dict[str, Any]:
    return {
        "content": reply.content,
        "reasoning_content": reply.reasoning_content,
        "reasoning_encrypted_content": reply.reasoning_encrypted_content,
        "tool_calls": reply.tool_calls,
        "finish_reason": reply.finish_reason,
        "usage": reply.usage,
        "model": reply.model,
    }


def _turn_fields(turn: TurnOut) -> dict[str, Any]:
    return {f: getattr(turn, f) for f in turn.__struct_fields__}


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
