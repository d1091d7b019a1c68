"""Parameter types shared by the routes, declared the explicit way Litestar asks for."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeAlias

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from service.errors import BadRequest
from service.schemas import NO_NUL
from service.store import ConversationFilter, Principal

ConversationId: TypeAlias = Annotated[uuid.UUID, PathParameter(description="A conversation id.")]
TurnId: TypeAlias = Annotated[uuid.UUID, PathParameter(description="A turn id.")]
MessageId: TypeAlias = Annotated[uuid.UUID, PathParameter(description="A message id.")]
Head: TypeAlias = Annotated[
    uuid.UUID | None,
    QueryParameter(description="List the path ending at this message instead of the head."),
]
Limit: TypeAlias = Annotated[
    int, QueryParameter(ge=1, le=100, description="Page size (at most 100).")
]
Cursor: TypeAlias = Annotated[
    str | None,
    QueryParameter(max_length=512, description="`next_cursor` of the previous page."),
]
# The caller, from the bearer key (any key; admin routes ask for `admin`, an admin key).
Caller: TypeAlias = NamedDependency[Principal]
Admin: TypeAlias = NamedDependency[Principal]
Query: TypeAlias = Annotated[
    str | None,
    QueryParameter(
        max_length=500, pattern=NO_NUL, description="Words to find in titles or message content."
    ),
]
EndUserFilter: TypeAlias = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Only the conversations of this end user (their `user`).",
    ),
]
Archived: TypeAlias = Annotated[
    bool | None,
    QueryParameter(description="Only archived conversations (true), or only the others (false)."),
]

METADATA_PREFIX = "metadata."
MAX_METADATA_FILTERS = 10


def metadata_filters(request: Request[Any, Any, Any]) -> tuple[tuple[str, str], ...]:
    """The ``metadata.<key>=<value>`` query parameters, as (key, value) pairs; 400 for an
    empty or overlong key or value, a key given twice, or more than ten of them."""
    pairs: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith(METADATA_PREFIX):
            continue
        key = name.removeprefix(METADATA_PREFIX)
        if not 1 <= len(key) <= 200 or "\x00" in key:
            raise BadRequest("`metadata.<key>` takes a key of 1 to 200 characters.")
        if len(value) > 1_000 or "\x00" in value:
            raise BadRequest(f"`{name}` takes a value of at most 1,000 characters.")
        if key in pairs:
            raise BadRequest(f"`{name}` is given twice.")
        pairs[key] = value
    if len(pairs) > MAX_METADATA_FILTERS:
        raise BadRequest(f"At most {MAX_METADATA_FILTERS} `metadata.<key>` filters.")
    return tuple(pairs.items())


async def provide_conversation_filters(
    principal: Caller,
    request: Request[Any, Any, Any],
    state: State,
    user: EndUserFilter = None,
    archived: Archived = None,
    q: Query = None,
) -> ConversationFilter:
    """The filters of a tenant's list or export: ``user``, ``archived``, ``q``, and
    ``metadata.<key>=<value>`` (each key with exactly this string value). It takes the key
    first, so that a request without one is a 401 whatever its parameters."""
    return ConversationFilter(
        tenant=principal.tenant,
        user=user,
        archived=archived,
        q=q,
        metadata=metadata_filters(request),
        dialect=state.store.dialect,
    )


ConversationFilters: TypeAlias = NamedDependency[ConversationFilter]
OfConversation: TypeAlias = Annotated[
    uuid.UUID | None, QueryParameter(description="Only this conversation's.")
]
# The reason an admin gives for reading or deleting a conversation (``X-Admin-Reason``).
AdminReason: TypeAlias = NamedDependency[str | None]
