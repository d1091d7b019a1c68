"""API keys: bearer authentication, tenants and the admin guard.

Keys are random, so a SHA-256 hash is enough to store them safely; the key itself is shown once.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from service.errors import Forbidden, Unauthorized
from service.store import Principal, Store

CACHE_TTL = 5.0
CACHE_MAX = 10_000
# Where a request keeps its caller once looked up (its own state, not the app's).
_PRINCIPAL = "principal"


class KeyCache:
    """Recently seen keys, for a few seconds: a revoked key stops working within ``ttl``."""

    def __init__(self, ttl: float = CACHE_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def principal(self, store: Store, key: str) -> Principal | None:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await store.authenticate(key)
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[key] = (now + self.ttl, principal)
        return principal


def bearer_token(authorization: str) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header's value, or None."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def bearer_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    key = bearer_token(connection.headers.get("authorization", ""))
    if key is None:
        raise Unauthorized(
            "Send an API key as `Authorization: Bearer <key>`.",
            headers={"www-authenticate": "Bearer"},
        )
    return key


async def provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller behind the request's bearer key (looked up once per request); 401 if there
    is none or it is not valid."""
    principal: Principal | None = request.state.get(_PRINCIPAL)
    if principal is None:
        state = request.app.state
        cache: KeyCache = state.key_cache
        principal = await cache.principal(state.store, bearer_key(request))
        if principal is None:
            raise Unauthorized(
                "This API key is unknown or revoked.", headers={"www-authenticate": "Bearer"}
            )
        request.state[_PRINCIPAL] = principal
    return principal


async def provide_admin(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """Like ``provide_principal``, and 403 unless the key is an admin key."""
    principal = await provide_principal(request)
    if not principal.is_admin:
        raise Forbidden("This route needs an admin key.")
    return principal


async def authenticate(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The guard of every route: a handler that asks for the caller (``principal``) or an admin
    (``admin``) has the key checked before anything else. Litestar reads and decodes the body
    before it resolves dependencies, so without this a request with no valid key and a bad
    body would be told about its body (422) rather than its key (401, or 403)."""
    asks = handler.parsed_fn_signature.parameters
    if "admin" in asks:
        await provide_admin(connection)
    elif "principal" in asks:
        await provide_principal(connection)
