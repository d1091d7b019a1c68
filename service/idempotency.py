"""``Idempotency-Key``: a retried POST gets the first answer instead of acting twice.

Keys are scoped to the tenant and expire (24 h by default). The same key with a different
request answers 422; while the first request still runs, 409. A request that changed nothing
(it was refused before acting) releases its key, so the client may fix it and send it again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import msgspec
from litestar import Request, Response

from service.errors import BadRequest, Conflict, ServiceError
from service.schemas import ConversationOut, TurnResult
from service.store import OrphanedTurn, Principal
from service.turns import TurnRunner

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
TTL_SECONDS = 24 * 3600
# A body larger than this is fingerprinted in a worker thread (1 MiB: about 5 ms of work).
ON_LOOP_BYTES = 1024 * 1024

Answer = Response[Any]
# The conversation a request acted on, from the request and (once it succeeded) its answer.
ActedOn = Callable[[Request[Any, Any, Any], Answer | None], uuid.UUID | None]


def fingerprint(request: Request[Any, Any, Any], body: bytes) -> str:
    """What makes two requests "the same": method, path and the body's JSON value."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        canonical = body
    digest = hashlib.sha256(f"{request.method} {request.scope['path']}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def acted(error: ServiceError) -> bool:
    """Whether a request that ended in ``error`` still changed something (a failed turn)."""
    return "turn_id" in error.extra


def conversation_of(
    request: Request[Any, Any, Any], answer: Answer | None = None
) -> uuid.UUID | None:
    """The conversation a request acted on (its path's) or made (its answer's), if any."""
    named = request.path_params.get("conversation_id")
    if isinstance(named, uuid.UUID):
        return named
    content = answer.content if answer is not None else None
    return content.id if isinstance(content, ConversationOut) else None


async def idempotent(
    request: Request[Any, Any, Any],
    principal: Principal,
    runner: TurnRunner,
    run: Callable[[], Awaitable[Answer]],
    *,
    remember: Callable[[Answer], Any] | None = None,
    replay: Callable[[Any], Awaitable[Answer]] | None = None,
    recover: Callable[[uuid.UUID], Awaitable[Answer]] | None = None,
    acted_on: ActedOn = conversation_of,
) -> Answer:
    """Run ``run`` once per Idempotency-Key; a repeat gets the stored answer.

    An answer that is not JSON (a streamed turn) is stored as what ``remember`` makes of it,
    and a repeat gets what ``replay`` rebuilds from that. A turn whose server stopped before
    answering is answered by ``recover`` from the turn itself. The claim's lock is renewed
    while ``run`` runs, so a claim left by a server that stopped is free again within a lease.
    A stored answer is kept with the conversation ``acted_on`` names (deleting the
    conversation deletes it).
    """
    key = request.headers.get(HEADER)
    if key is None:
        return await run()
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    store = runner.store
    body = await request.body()
    if len(body) > ON_LOOP_BYTES:  # an import's: decoding and encoding it takes a while
        digest = await anyio.to_thread.run_sync(fingerprint, request, body)
    else:
        digest = fingerprint(request, body)
    stored = await store.claim_idempotency_key(
        principal.tenant, key, digest, lock=runner.lease, ttl=TTL_SECONDS
    )
    if isinstance(stored, OrphanedTurn):
        if recover is None:  # only turns leave orphans
            raise Conflict("This Idempotency-Key is held by a request that did not finish.")
        try:
            answer = await recover(stored.turn_id)
        except ServiceError as error:
            if acted(error):  # the turn ended: its answer is this key's from now on
                await store.finish_idempotency_key(
                    principal.tenant,
                    key,
                    error.status,
                    error.problem(instance=request.scope["path"]),
                    acted_on(request, None),
                )
            error.headers["idempotent-replayed"] = "true"
            raise
        answer.headers["idempotent-replayed"] = "true"
        return answer
    if stored is not None:
        if stored.status >= 400:  # raised again, for the router to render in its own shape
            failed = ServiceError.from_problem(stored.body)
            failed.headers["idempotent-replayed"] = "true"
            raise failed
        if replay is not None:
            answer = await replay(stored.body)
        else:
            answer = Response(stored.body, status_code=stored.status, media_type="application/json")
        answer.headers["idempotent-replayed"] = "true"
        return answer
    try:
        with runner.holding(principal.tenant, key):
            answer = await run()
    except ServiceError as error:
        if acted(error):
            await store.finish_idempotency_key(
                principal.tenant,
                key,
                error.status,
                error.problem(instance=request.scope["path"]),
                acted_on(request, None),
            )
        else:
            await store.release_idempotency_key(principal.tenant, key)
        raise
    except BaseException:
        await store.release_idempotency_key(principal.tenant, key)
        raise
    stored_body = remember(answer) if remember else msgspec.to_builtins(answer.content)
    await store.finish_idempotency_key(
        principal.tenant,
        key,
        answer.status_code or 200,
        stored_body,
        acted_on(request, answer),
    )
    return answer


async def idempotent_stream(
    request: Request[Any, Any, Any],
    principal: Principal,
    runner: TurnRunner,
    begin: Callable[[list[uuid.UUID]], Awaitable[Answer]],
    follow: Callable[[uuid.UUID], Awaitable[Answer]],
    *,
    acted_on: ActedOn = conversation_of,
) -> Answer:
    """``idempotent`` for a streamed turn: ``begin`` starts it (adding its id to the list it
    is given) and answers its stream; the key's answer is that turn, so a repeat, or a retry
    after its server stopped, gets ``follow`` of it: its events again, live while it runs."""
    started: list[uuid.UUID] = []
    return await idempotent(
        request,
        principal,
        runner,
        lambda: begin(started),
        remember=lambda _: {"stream_turn_id": str(started[0])},
        replay=lambda stored: follow(uuid.UUID(stored["stream_turn_id"])),
        recover=follow,
        acted_on=acted_on,
    )


async def turn_result(runner: TurnRunner, turn_id: uuid.UUID) -> TurnResult:
    """What the turn a key's request started answered, for a retry after its server stopped:
    its result, or its error raised; 409 ``idempotency_key_in_use`` while it still runs."""
    outcome = await runner.outcome(turn_id)
    if outcome is None:
        raise Conflict(
            "The first request with this Idempotency-Key is still running; retry later.",
            code="idempotency_key_in_use",
            headers={"retry-after": str(max(1, round(runner.lease / 4)))},
        )
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome
