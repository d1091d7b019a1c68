"""Parameter types shared by the routes, declared the explicit way Litestar asks for."""

from __future__ import annotations

import uuid
from typing import Annotated, TypeAlias

from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from service.store import Principal

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
OfConversation: TypeAlias = Annotated[
    uuid.UUID | None, QueryParameter(description="Only this conversation's.")
]
# The reason an admin gives for reading or deleting a conversation (``X-Admin-Reason``).
AdminReason: TypeAlias = NamedDependency[str | None]
