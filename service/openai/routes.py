"""The routes of ``/openai/v1``: Responses and Conversations over the turn runner and the store.

A response is a turn: ``previous_response_id`` continues after that turn's reply (a branch, if
the conversation went on from it meanwhile), ``conversation`` continues at a conversation's head,
and neither starts a new conversation. ``store: false`` reads what it continues from and keeps
nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from litestar import Controller, Request, Response, Router, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from msgspec import UNSET

from service.errors import Conflict, NotFound
from service.events import KEEPALIVE
from service.idempotency import HEADER, idempotent, idempotent_stream, turn_result
from service.observability import observe_deletions
from service.openai.errors import OPENAI_EXCEPTION_HANDLERS
from service.openai.shapes import (
    OpenAIConversationCreate,
    OpenAIConversationUpdate,
    OpenAIItemsCreate,
    ResponseCreate,
    chat_params,
    conversation_object,
    input_messages,
    internal,
    invalid,
    item_list,
    message_items,
    response_resource,
    stored_messages,
    turn_context,
)
from service.openai.shapes import conversation_id as conversation_uuid
from service.openai.shapes import item_id as item_id_uuid
from service.openai.streaming import response_events
from service.routes.params import Caller
from service.schemas import ParentId, TurnCreate, TurnOut
from service.store import Deleter, Principal, Store
from service.store.messages import HISTORY_COLUMNS
from service.tables import utcnow
from service.turns import TurnRunner

Limit: TypeAlias = Annotated[
    int, QueryParameter(ge=1, le=100, description="How many items (1 to 100).")
]
Order: TypeAlias = Annotated[
    Literal["asc", "desc"], QueryParameter(description="Oldest first, or newest first.")
]
After: TypeAlias = Annotated[
    str | None, QueryParameter(max_length=200, description="List the items after this one.")
]
Include: TypeAlias = Annotated[
    list[str] | None, QueryParameter(description="Accepted; every item is complete already.")
]
ResponseId: TypeAlias = Annotated[str, PathParameter(description="A response id (`resp_…`).")]
ConversationId: TypeAlias = Annotated[
    str, PathParameter(description="A conversation id (`conv_…`).")
]
ItemId: TypeAlias = Annotated[str, PathParameter(description="An item id (`msg_…`, `fc_…`, …).")]
HISTORY_FIELDS = tuple(column.name for column in HISTORY_COLUMNS)
NO_CONVERSATION = uuid.UUID(int=0)


def response_ident(value: str) -> uuid.UUID:
    return internal(value, ("resp",), "response")


def acted_on(request: Request[Any, Any, Any], answer: Response[Any] | None) -> uuid.UUID | None:
    """The conversation a request acted on (its path's) or made (its answer's), if any."""
    named = request.path_params.get("conversation_id")
    if isinstance(named, str):
        return conversation_uuid(named)
    content = answer.content if answer is not None else None
    if isinstance(content, dict) and content.get("object") == "conversation":
        return conversation_uuid(content["id"])
    return None  # a response's: its turn ties the key to its conversation when it begins


async def replayed_events(
    runner: TurnRunner, turn: TurnOut
) -> AsyncIterator[ServerSentEventMessage]:
    """A stored response's events again, for a retried streamed request: live while its turn
    runs in this process, else once it ended (keep-alives while it runs elsewhere)."""
    async for feed in runner.feed(turn):
        if feed is None:
            yield KEEPALIVE
            continue
        begun: TurnOut = feed.started["turn"]
        async for event in response_events(feed, begun, stored=True, failed=ended_as(begun)):
            yield event


def ended_as(turn: TurnOut) -> Callable[[dict[str, Any]], TurnOut]:
    """The turn as a ``turn.failed`` event's data tell it ended."""

    def failed(data: dict[str, Any]) -> TurnOut:
        found = data.get("turn")
        if isinstance(found, TurnOut):
            return found
        error = {"code": data.get("code"), "detail": data.get("detail")}
        return msgspec.structs.replace(turn, status="failed", error=error, completed_at=utcnow())

    return failed


class ResponseController(Controller):
    path = "/responses"
    tags = ("openai",)

    @post(
        "/",
        status_code=200,
        summary="Create a response (a turn), as OpenAI's Responses API does",
        response_description="The response object, or with `stream: true` a text/event-stream "
        "of the Responses events (response.created … response.completed)",
    )
    async def create_response(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ResponseCreate],
        principal: Caller,
        state: State,
    ) -> Response[dict[str, Any]]:
        """Continue after ``previous_response_id`` (any earlier response: an older one makes
        a branch), at the head of ``conversation``, or in a new conversation; ``instructions``
        go first for this response only; ``store: false`` keeps nothing. With an
        ``Idempotency-Key``, a retry gets the first answer (a streamed one: the same turn's
        events) instead of asking the model again."""
        store: Store = state.store
        runner: TurnRunner = state.turns
        key = request.headers.get(HEADER)
        if key is not None and data.store is False:
            raise invalid(
                "`store: false` keeps nothing, so it cannot keep the answer an Idempotency-Key "
                "would return; send one or the other.",
                "store",
            )

        async def run(started: list[uuid.UUID] | None = None) -> Response[Any]:
            return await create_response(
                data, principal, store, runner, state, idempotency_key=key, started=started
            )

        if data.stream:

            async def follow(turn_id: uuid.UUID) -> Response[Any]:
                turn, _ = await store.response_turn(principal.tenant, turn_id)
                return ServerSentEvent(replayed_events(runner, turn))

            return await idempotent_stream(
                request, principal, runner, run, follow, acted_on=acted_on
            )

        async def recover(turn_id: uuid.UUID) -> Response[Any]:
            result = await turn_result(runner, turn_id)
            return Response(response_resource(result.turn, result.reply, stored=True))

        return await idempotent(request, principal, runner, run, recover=recover, acted_on=acted_on)

    @get("/{response_id:str}", summary="Get a response")
    async def get_response(
        self, response_id: ResponseId, principal: Caller, state: State
    ) -> dict[str, Any]:
        turn, reply = await state.store.response_turn(principal.tenant, response_ident(response_id))
        return response_resource(turn, reply, stored=True)

    @delete(
        "/{response_id:str}",
        status_code=200,
        summary="Delete a response: its reply (and what follows it) and its turn",
    )
    async def delete_response(
        self, response_id: ResponseId, principal: Caller, state: State
    ) -> dict[str, Any]:
        store: Store = state.store
        turn, reply = await store.response_turn(principal.tenant, response_ident(response_id))
        if turn.status == "running":
            raise Conflict(
                "The response is still running; wait for it to finish.", code="turn_in_progress"
            )
        if reply is not None:
            await store.delete_message(principal.tenant, turn.conversation_id, reply.id)
        await store.delete_turn(turn.id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    @get(
        "/{response_id:str}/input_items",
        summary="List a response's input: the path of messages its reply follows",
    )
    async def list_input_items(
        self,
        response_id: ResponseId,
        principal: Caller,
        state: State,
        page: NamedDependency[ItemPage],
    ) -> dict[str, Any]:
        store: Store = state.store
        turn, reply = await store.response_turn(principal.tenant, response_ident(response_id))
        head = reply.parent_id if reply is not None else None
        return await items_page(store, principal.tenant, turn.conversation_id, head, page)


async def create_response(
    data: ResponseCreate,
    principal: Principal,
    store: Store,
    runner: TurnRunner,
    state: State,
    *,
    idempotency_key: str | None = None,
    started: list[uuid.UUID] | None = None,
) -> Response[Any]:
    """A response: its turn begun (its id added to ``started``) and answered, or streamed."""
    if data.previous_response_id is not None and data.conversation is not None:
        raise invalid(
            "Give `previous_response_id` or `conversation`, not both.", "previous_response_id"
        )
    messages = input_messages(data.input)
    params = chat_params(data)
    stream = bool(data.stream)
    parent: ParentId = UNSET
    conversation: uuid.UUID | None = None
    if data.previous_response_id is not None:
        try:
            previous, reply = await store.response_turn(
                principal.tenant, response_ident(data.previous_response_id)
            )
        except NotFound as exc:
            raise NotFound(exc.detail, param="previous_response_id") from None
        if previous.status == "running":
            raise Conflict(
                "The previous response is still running; wait for it to finish.",
                code="turn_in_progress",
                param="previous_response_id",
            )
        if reply is None:
            raise invalid(
                "The previous response failed; continue from one that completed.",
                "previous_response_id",
            )
        conversation, parent = previous.conversation_id, reply.id
    elif data.conversation is not None:
        conversation = conversation_uuid(data.conversation)
    if data.store is False:
        return await unstored_response(
            data, principal, store, runner, state, messages, params, conversation, parent
        )
    created = conversation is None
    if conversation is None:
        if not messages:
            raise invalid("Give the `input` to answer.", "input")
        new, _ = await store.create_conversation(
            principal.tenant,
            title=None,
            model=data.model or state.settings.default_model,
            params={},
            metadata={},
            messages=[],
        )
        conversation = new.id
    request = TurnCreate(
        messages=messages,
        parent_id=parent,
        stream=stream,
        model=data.model or UNSET,
        context=turn_context(data),
    )
    request.params = params  # set after validation: it holds the kept params, reserved for us
    try:
        feed, task, _ = await runner.begin(
            principal, conversation, request, idempotency_key=idempotency_key
        )
    except BaseException:
        if created:  # nothing was asked: the conversation made for it goes too
            await store.delete_conversation(
                principal.tenant,
                conversation,
                Deleter("tenant", principal.key_id, "made for a response that did not start"),
            )
        raise
    turn: TurnOut = feed.started["turn"]
    if started is not None:
        started.append(turn.id)
    if stream:
        return ServerSentEvent(response_events(feed, turn, stored=True, failed=ended_as(turn)))
    # Shielded: a client that hangs up must not cancel a turn whose input is stored.
    result = await asyncio.shield(task)
    return Response(response_resource(result.turn, result.reply, stored=True), status_code=200)


async def unstored_response(
    data: ResponseCreate,
    principal: Principal,
    store: Store,
    runner: TurnRunner,
    state: State,
    messages: list[Any],
    params: dict[str, Any],
    conversation: uuid.UUID | None,
    parent: ParentId,
) -> Response[Any]:
    """A response that keeps nothing: the history it continues is read, the input and the
    reply are not written."""
    model = data.model or state.settings.default_model
    history: list[dict[str, Any]] = []
    if conversation is not None:
        found = await store.get_conversation(principal.tenant, conversation)
        model = data.model or found.model
        params = {**found.params, **params}
        head = parent if isinstance(parent, uuid.UUID) else found.head_id
        if head is not None:
            history = await store.history(head)
    for message in stored_messages(messages):
        history.append({k: message[k] for k in HISTORY_FIELDS if message.get(k) is not None})
    if not history:
        raise invalid("Give the `input` to answer.", "input")
    stream = bool(data.stream)
    feed, task = await runner.answer(
        principal,
        model=model,
        params=params,
        history=history,
        stream=stream,
        conversation_id=conversation,
    )
    turn = TurnOut(
        id=feed.turn_id,
        conversation_id=conversation or NO_CONVERSATION,
        status="running",
        model=model,
        params=params,
        usage=None,
        finish_reason=None,
        error=None,
        latency_ms=None,
        created_at=utcnow(),
        completed_at=None,
    )
    if stream:
        return ServerSentEvent(response_events(feed, turn, stored=False, failed=ended_as(turn)))
    reply = await task
    done = msgspec.structs.replace(turn, status="completed", completed_at=utcnow())
    return Response(response_resource(done, reply, stored=False), status_code=200)


@dataclass(frozen=True, slots=True)
class ItemPage:
    """Which page of a list of items: ``limit`` items after the item ``after``, in ``order``."""

    limit: int
    order: str
    after: str | None


async def provide_item_page(
    limit: Limit = 20, order: Order = "desc", after: After = None, include: Include = None
) -> ItemPage:
    return ItemPage(limit, order, after)


async def items_page(
    store: Store,
    tenant: str,
    conversation: uuid.UUID,
    head: uuid.UUID | None,
    page: ItemPage,
) -> dict[str, Any]:
    """A page of the items of the path ending at ``head`` (None: the active path), after the
    item ``page.after``. Pages are read by messages (an assistant's reply may make several
    items)."""
    limit, after, descending = page.limit, page.after, page.order == "desc"
    seq = None
    if after is not None:
        anchor = await store.find_message(tenant, conversation, item_id_uuid(after))
        seq = anchor.seq
    # Two more messages than items asked: all of the first one's items may be skipped, and
    # one more tells whether there are more.
    messages = await store.path_from(
        tenant, conversation, head=head, seq=seq, descending=descending, limit=limit + 2
    )
    items: list[dict[str, Any]] = []
    for message in messages:
        made = message_items(message)
        items.extend(reversed(made) if descending else made)
    if after is not None:
        ids = [item["id"] for item in items]
        if after in ids:
            items = items[ids.index(after) + 1 :]
    return item_list(items[:limit], len(items) > limit)


class ConversationController(Controller):
    path = "/conversations"
    tags = ("openai",)

    @post("/", status_code=200, summary="Create a conversation, as OpenAI's Conversations API")
    async def create_conversation(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[OpenAIConversationCreate],
        principal: Caller,
        state: State,
    ) -> Response[dict[str, Any]]:
        store: Store = state.store
        messages = input_messages(data.items or [], "items")

        async def run() -> Response[Any]:
            conversation, _ = await store.create_conversation(
                principal.tenant,
                title=None,
                model=state.settings.default_model,
                params={},
                metadata=data.metadata or {},
                messages=stored_messages(messages),
            )
            return Response(
                conversation_object(conversation.id, conversation.created_at, conversation.metadata)
            )

        return await idempotent(request, principal, state.turns, run, acted_on=acted_on)

    @get("/{conversation_id:str}", summary="Get a conversation")
    async def get_conversation(
        self, conversation_id: ConversationId, principal: Caller, state: State
    ) -> dict[str, Any]:
        found = await state.store.get_conversation(
            principal.tenant, conversation_uuid(conversation_id)
        )
        return conversation_object(found.id, found.created_at, found.metadata)

    @post("/{conversation_id:str}", status_code=200, summary="Change a conversation's metadata")
    async def update_conversation(
        self,
        conversation_id: ConversationId,
        data: JSONBody[OpenAIConversationUpdate],
        principal: Caller,
        state: State,
    ) -> dict[str, Any]:
        found = await state.store.update_conversation(
            principal.tenant, conversation_uuid(conversation_id), {"metadata": data.metadata}
        )
        return conversation_object(found.id, found.created_at, found.metadata)

    @delete("/{conversation_id:str}", status_code=200, summary="Delete a conversation")
    async def delete_conversation(
        self, conversation_id: ConversationId, principal: Caller, state: State
    ) -> dict[str, Any]:
        receipt = await state.store.delete_conversation(
            principal.tenant,
            conversation_uuid(conversation_id),
            Deleter("tenant", principal.key_id),
        )
        observe_deletions("tenant", [receipt])
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @get("/{conversation_id:str}/items", summary="List a conversation's items (its active path)")
    async def list_items(
        self,
        conversation_id: ConversationId,
        principal: Caller,
        state: State,
        page: NamedDependency[ItemPage],
    ) -> dict[str, Any]:
        ident = conversation_uuid(conversation_id)
        return await items_page(state.store, principal.tenant, ident, None, page)

    @post(
        "/{conversation_id:str}/items",
        status_code=200,
        summary="Add items to a conversation (after its head), without asking the model",
    )
    async def create_items(
        self,
        request: Request[Any, Any, Any],
        conversation_id: ConversationId,
        data: JSONBody[OpenAIItemsCreate],
        principal: Caller,
        state: State,
        include: Include = None,
    ) -> Response[dict[str, Any]]:
        messages = input_messages(data.items, "items")
        if not messages:
            raise invalid("Give at least one message, function call or function output.", "items")
        ident = conversation_uuid(conversation_id)

        async def run() -> Response[Any]:
            appended = await state.store.append_messages(
                principal.tenant, ident, stored_messages(messages)
            )
            return Response(item_list([item for m in appended for item in message_items(m)], False))

        return await idempotent(request, principal, state.turns, run, acted_on=acted_on)

    @get("/{conversation_id:str}/items/{item_id:str}", summary="Get an item")
    async def get_item(
        self, conversation_id: ConversationId, item_id: ItemId, principal: Caller, state: State
    ) -> dict[str, Any]:
        message = await state.store.find_message(
            principal.tenant, conversation_uuid(conversation_id), item_id_uuid(item_id)
        )
        for item in message_items(message):
            if item["id"] == item_id:
                return item
        raise NotFound("No item has this id in this conversation.")

    @delete(
        "/{conversation_id:str}/items/{item_id:str}",
        status_code=200,
        summary="Delete an item: its message, and every message after it on its branch",
    )
    async def delete_item(
        self, conversation_id: ConversationId, item_id: ItemId, principal: Caller, state: State
    ) -> dict[str, Any]:
        store: Store = state.store
        ident = conversation_uuid(conversation_id)
        message = await store.find_message(principal.tenant, ident, item_id_uuid(item_id))
        await store.delete_message(principal.tenant, ident, message.id)
        found = await store.get_conversation(principal.tenant, ident)
        return conversation_object(found.id, found.created_at, found.metadata)


def openai_router() -> Router:
    """Everything under ``/openai/v1``, with errors in OpenAI's shape."""
    return Router(
        "/openai/v1",
        route_handlers=[ResponseController, ConversationController],
        dependencies={"page": Provide(provide_item_page)},
        exception_handlers=OPENAI_EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
