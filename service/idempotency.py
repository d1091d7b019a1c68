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
from service.schemas import ConversationOut
from service.store import OrphanedTurn, Principal
from service.turns import TurnRunner

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
TTL_SECONDS = 24 * 3600
# A body larger than this is fingerprinted in a worker thread (1 MiB: about 5 ms of work).
ON_LOOP_BYTES = 1024 * 1024

Answer = Response[Any]


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


async def idempotent(
    request: Request[Any, Any, Any],
    principal: Principal,
    runner: TurnRunner,
    run: Callable[[], Awaitable[Answer]],
    *,
    remember: Callable[[Answer], Any] | None = None,
    replay: Callable[[Any], Awaitable[Answer]] | None = None,
    recover: Callable[[uuid.UUID], Awaitable[Answer]] | None = None,
) -> Answer:
    """Run ``run`` once per Idempotency-Key; a repeat gets the stored answer.

    An answer that is not JSON (a streamed turn) is stored as what ``remember`` makes of it,
    and a repeat gets what ``replay`` rebuilds from that. A turn whose server stopped before
    answering is answered by ``recover`` from the turn itself. The claim's lock is renewed
    while ``run`` runs, so a claim left by a server that stopped is free again within a lease.
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
                    conversation_of(request),
                )
            error.headers["idempotent-replayed"] = "true"
            raise
        answer.headers["idempotent-replayed"] = "true"
        return answer
    if stored is not None:
        if replay is not None and stored.status < 400:
            answer = await replay(stored.body)
        else:
            media_type = "application/problem+json" if stored.status >= 400 else "application/json"
            answer = Response(stored.body, status_code=stored.status, media_type=media_type)
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
                conversation_of(request),
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
        conversation_of(request, answer),
    )
    return answer


def conversation_of(
    request: Request[Any, Any, Any], answer: Answer | None = None
) -> uuid.UUID | None:
    """The conversation a request acted on (its path's) or made (its answer's), if any."""
    named = request.path_params.get("conversation_id")
    if isinstance(named, uuid.UUID):
        return named
    content = answer.content if answer is not None else None
    return content.id if isinstance(content, ConversationOut) else None
