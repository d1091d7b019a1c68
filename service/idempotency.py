"""``Idempotency-Key``: a retried POST gets the first answer instead of acting twice.

Keys are scoped to the tenant and expire (24 h by default). The same key with a different
request answers 422; while the first request still runs, 409. A request that changed nothing
(it was refused before acting) releases its key, so the client may fix it and send it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response

from service.errors import BadRequest, ServiceError
from service.store import Principal, Store

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
TTL_SECONDS = 24 * 3600
# A claim left running longer than this is taken to belong to a process that died.
LOCK_SECONDS = 2 * 3600

Answer = Response[Any]


def fingerprint(request: Request[Any, Any, Any], body: bytes) -> str:
    """What makes two requests "the same": method, path and the body's JSON value."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        canonical = body
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def acted(error: ServiceError) -> bool:
    """Whether a request that ended in ``error`` still changed something (a failed turn)."""
    return "turn_id" in error.extra


async def idempotent(
    request: Request[Any, Any, Any],
    principal: Principal,
    store: Store,
    run: Callable[[], Awaitable[Answer]],
    *,
    remember: Callable[[Answer], Any] | None = None,
    replay: Callable[[Any], Awaitable[Answer]] | None = None,
) -> Answer:
    """Run ``run`` once per Idempotency-Key; a repeat gets the stored answer.

    An answer that is not JSON (a streamed turn) is stored as what ``remember`` makes of it,
    and a repeat gets what ``replay`` rebuilds from that.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return await run()
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    body = await request.body()
    stored = await store.claim_idempotency_key(
        principal.tenant, key, fingerprint(request, body), lock=LOCK_SECONDS, ttl=TTL_SECONDS
    )
    if stored is not None:
        if replay is not None and stored.status < 400:
            answer = await replay(stored.body)
        else:
            media_type = "application/problem+json" if stored.status >= 400 else "application/json"
            answer = Response(stored.body, status_code=stored.status, media_type=media_type)
        answer.headers["idempotent-replayed"] = "true"
        return answer
    try:
        answer = await run()
    except ServiceError as error:
        if acted(error):
            await store.finish_idempotency_key(
                principal.tenant, key, error.status, error.problem(instance=request.url.path)
            )
        else:
            await store.release_idempotency_key(principal.tenant, key)
        raise
    except BaseException:
        await store.release_idempotency_key(principal.tenant, key)
        raise
    stored_body = remember(answer) if remember else msgspec.to_builtins(answer.content)
    await store.finish_idempotency_key(
        principal.tenant, key, answer.status_code or 200, stored_body
    )
    return answer
