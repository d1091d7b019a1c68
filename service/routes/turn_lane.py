"""The turn lane: the common turn answered without the route handler's request and response
machinery.

A turn is the request every user sends again and again, and everything the service adds to the
model call is paid on each one. Litestar's handler machinery (the signature model, dependency
injection, the ``Request`` and ``Response`` objects) costs about 0.3 ms a turn, a tenth of the
service's overhead at 100 messages (``benchmarks/turn_overhead.py --baseline``). This middleware,
on the turn route alone, answers the common case itself: a turn that is not streamed, sent
without an ``Idempotency-Key``, by a known key, with a body that decodes exactly as a
``TurnCreate``. Anything else goes on untouched, its body replayed as it came, to the route
handler (``TurnController.create_turn``), which stays the reference for streams, idempotent
requests, missing or unknown keys, and bodies too large or not valid.

The lane runs inside Litestar's routing and error handling: the conversation id is the one the
router parsed, and an error the turn raises (404, 409, 429, 502…) is rendered by the app's
exception handlers, as for any route.
"""

from __future__ import annotations

import collections
import math
import uuid
from typing import Any, cast

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.serialization import encode_json
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from service.auth import KeyCache, bearer_token
from service.schemas import TurnCreate
from service.store import Principal, Store
from service.turns import TurnRunner

JSON_HEADERS = [(b"content-type", b"application/json")]


class TurnLane:
    """ASGI middleware of the turn route (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app  # the route handler, for every request the lane does not answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await _caller(scope)
        route: HTTPRouteHandler = cast(HTTPRouteHandler, scope["route_handler"])
        limit = route.resolve_request_max_body_size() or math.inf
        if principal is None or _announced_length(scope) > limit:
            await self.app(scope, receive, send)
            return
        received, body = await _read_body(receive, limit)
        data = _turn(body)
        if data is None:
            await self.app(scope, _replaying(received, receive), send)
            return
        turns: TurnRunner = Litestar.from_scope(scope).state.turns
        conversation_id = cast(uuid.UUID, scope["path_params"]["conversation_id"])  # parsed
        result, timing = await turns.run(principal.tenant, conversation_id, data)
        content = encode_json(result)  # as the handler's Response renders it
        headers = [
            *JSON_HEADERS,
            (b"content-length", str(len(content)).encode()),
            (b"server-timing", timing.header().encode()),
        ]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})


async def _caller(scope: Scope) -> Principal | None:
    """The caller, if the request names a known key and no Idempotency-Key; else None."""
    authorization: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            return None
        if name == b"authorization" and authorization is None:
            authorization = value
    key = bearer_token(authorization.decode("latin-1")) if authorization else None
    if key is None:
        return None
    state = Litestar.from_scope(scope).state
    cache: KeyCache = state.key_cache
    store: Store = state.store
    return await cache.principal(store, key)


def _announced_length(scope: Scope) -> float:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return math.inf  # the handler says what is wrong with it
    return 0


async def _read_body(receive: Receive, limit: float) -> tuple[list[ReceiveMessage], bytes | None]:
    """The messages read, and the body they carry; None if it is longer than ``limit`` or the
    client left before the end (what was read is then replayed to the handler)."""
    received: list[ReceiveMessage] = []
    size = 0
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return received, None
        size += len(message.get("body", b""))
        if size > limit:
            return received, None
        if not message.get("more_body", False):
            break
    chunks = [cast(dict[str, Any], m).get("body", b"") for m in received]
    return received, chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _turn(body: bytes | None) -> TurnCreate | None:
    """The body as a non-streamed turn. None for anything the handler answers itself: a
    streamed turn, or a body that is not exactly a turn (the handler, which converts values
    more leniently, either accepts it or says why not)."""
    if body is None:
        return None
    try:
        data = msgspec.json.decode(body, type=TurnCreate)
    except msgspec.DecodeError:  # ValidationError included
        return None
    return None if data.stream else data


def _replaying(received: list[ReceiveMessage], receive: Receive) -> Receive:
    """A receive that gives back the messages already read, then reads on."""
    pending = collections.deque(received)

    async def replay() -> ReceiveMessage:
        return pending.popleft() if pending else await receive()

    return cast(Receive, replay)


__all__ = ["TurnLane"]
