"""The turn lane (service/routes/turn_lane.py): the common turn is answered by the lane, and
answered as the route handler answers it; every other request reaches the handler with its body
intact. On SQLite and PostgreSQL, against the fake upstream over a socket."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

from service.app import MAX_BODY_BYTES, create_app
from service.errors import NotFound
from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.routes.turn_lane import TurnLane
from service.settings import Settings

Client = httpx.AsyncClient
SYSTEM = {"role": "system", "content": "Be brief."}
QUESTION = {"role": "user", "content": "What is 2 + 2?"}
# Differ from one turn to the next whoever answers it.
VARYING = {"id", "conversation_id", "turn_id", "created_at", "completed_at", "latency_ms"}


async def conversation(client: Client, headers: dict[str, str]) -> str:
    created = await client.post(
        "/v1/conversations",
        json={"messages": [SYSTEM]},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    cid: str = created.json()["id"]
    return cid


def comparable(value: Any) -> Any:
    """``value`` without what differs between two turns (ids, times, latency)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def header_names(response: httpx.Response) -> list[str]:
    return sorted(k for k in response.headers if k not in ("date", "x-request-id"))


async def both_ways(
    client: Client, headers: dict[str, str], path_of: Any, body: dict[str, Any]
) -> tuple[httpx.Response, httpx.Response]:
    """The same turn answered by the lane, then by the handler (an Idempotency-Key sends it
    there, and changes nothing in a first answer)."""
    lane = await client.post(path_of(), json=body, headers=headers)
    handler = await client.post(
        path_of(), json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
    )
    return lane, handler


async def test_a_completed_turn_is_answered_alike(client: Client, alice: dict[str, str]) -> None:
    async def path() -> str:
        return f"/v1/conversations/{await conversation(client, alice)}/turns"

    paths = [await path(), await path()]
    lane, handler = await both_ways(client, alice, iter(paths).__next__, {"messages": [QUESTION]})
    assert lane.status_code == handler.status_code == 201, (lane.text, handler.text)
    assert header_names(lane) == header_names(handler)
    assert lane.headers["content-type"] == handler.headers["content-type"]
    assert lane.headers["server-timing"].startswith("db;dur=")
    assert comparable(lane.json()) == comparable(handler.json())
    assert lane.json()["reply"]["content"] == expected_reply([SYSTEM, QUESTION])


@pytest.mark.parametrize(
    "fault", [None, Fault(kind="status", status=400, times=3)], ids=["not-found", "upstream-400"]
)
async def test_a_refused_or_failed_turn_is_answered_alike(
    client: Client, alice: dict[str, str], upstream: FakeUpstream, fault: Fault | None
) -> None:
    unknown = f"/v1/conversations/{uuid.uuid4()}/turns"
    answers = []
    for idempotency in ({}, {"Idempotency-Key": uuid.uuid4().hex}):
        path = await conversation(client, alice) if fault else None
        if fault:
            upstream.push_fault(fault)
        answers.append(
            await client.post(
                f"/v1/conversations/{path}/turns" if path else unknown,
                json={"messages": [QUESTION]},
                headers={**alice, **idempotency},
            )
        )
        upstream.clear()
    lane, handler = answers
    assert lane.status_code == handler.status_code == (502 if fault else 404), lane.text
    assert header_names(lane) == header_names(handler)
    assert lane.headers["content-type"] == handler.headers["content-type"]
    assert lane.headers["content-type"].startswith("application/problem+json")
    problem = {k: v for k, v in lane.json().items() if k not in ("instance", "turn_id")}
    assert problem == {k: v for k, v in handler.json().items() if k not in ("instance", "turn_id")}


# ---- the lane itself, in the app's own event loop ---------------------------------------


class Handler:
    """The next app after the lane (the route handler), recording what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Litestar]:
    """The app after its startup, in this event loop (entered and left by one task)."""
    app = create_app(settings, retry_backoff=0.01)
    async with app.lifespan():
        yield app


def turn_scope(
    app: Litestar, conversation_id: uuid.UUID, headers: dict[str, str], length: int | None
) -> Scope:
    route = next(r for r in app.routes if isinstance(r, HTTPRoute) and r.path.endswith("/turns"))
    handler, _ = route.route_handler_map["POST"]
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    return {  # type: ignore[typeddict-item]
        "type": "http",
        "method": "POST",
        "path": f"/v1/conversations/{conversation_id}/turns",
        "headers": raw,
        "query_string": b"",
        "path_params": {"conversation_id": conversation_id},
        "litestar_app": app,
        "app": app,
        "route_handler": handler,
    }


async def through_lane(
    app: Litestar,
    conversation_id: uuid.UUID,
    headers: dict[str, str],
    chunks: list[bytes],
    *,
    length: int | None = None,
) -> tuple[Handler, list[Message]]:
    handler = Handler()
    messages: list[Message] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = turn_scope(app, conversation_id, headers, length)
    await TurnLane(handler)(scope, receive, send)  # type: ignore[arg-type]
    return handler, sent


async def new_conversation_id(app: Litestar, tenant: str) -> uuid.UUID:
    created, _ = await app.state.store.create_conversation(
        tenant,
        title=None,
        model="grok-4",
        params={},
        metadata={},
        messages=[SYSTEM],
    )
    conversation_id: uuid.UUID = created.id
    return conversation_id


async def test_the_lane_answers_a_plain_turn_itself(
    settings: Settings, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    body = json.dumps({"messages": [QUESTION]}).encode()
    async with running(settings) as app:
        cid = await new_conversation_id(app, "alice")
        # The body may come in pieces.
        handler, sent = await through_lane(app, cid, alice, [body[:7], body[7:]])
    assert handler.bodies == []
    assert sent[0]["status"] == 201
    reply = json.loads(sent[1]["body"])["reply"]
    assert reply["content"] == expected_reply([SYSTEM, QUESTION])
    assert upstream.requests[-1]["body"]["messages"][-1] == QUESTION


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, {"messages": [QUESTION], "stream": True}),
        ({"Idempotency-Key": "k-1"}, {"messages": [QUESTION]}),
        ({"Authorization": "Bearer not-a-key"}, {"messages": [QUESTION]}),
        ({"Authorization": "Basic YWxpY2U6"}, {"messages": [QUESTION]}),
        ({}, {"messages": [{"role": "robot", "content": "x"}]}),
        ({}, {"messages": [QUESTION], "stream": "true"}),  # the handler converts it
        ({}, {"messages": [QUESTION], "surprise": 1}),
        ({}, "not a turn"),
    ],
    ids=[
        "streamed",
        "idempotency-key",
        "unknown-key",
        "not-bearer",
        "invalid-role",
        "lenient-value",
        "unknown-field",
        "not-an-object",
    ],
)
async def test_anything_else_reaches_the_handler_with_its_body(
    settings: Settings, alice: dict[str, str], headers: dict[str, str], body: Any
) -> None:
    raw = json.dumps(body).encode()
    async with running(settings) as app:
        cid = await new_conversation_id(app, "alice")
        handler, sent = await through_lane(app, cid, {**alice, **headers}, [raw[:5], raw[5:]])
        stored, _ = await app.state.store.list_messages(
            "alice", cid, limit=10, cursor=None, descending=False
        )
    assert handler.bodies == [raw]
    assert [m.get("status") for m in sent] == [299, None]
    assert len(stored) == 1  # the lane stored nothing


async def test_bodies_not_json_or_too_large_reach_the_handler(
    settings: Settings, alice: dict[str, str]
) -> None:
    chunk = b" " * (MAX_BODY_BYTES // 2 + 1)
    async with running(settings) as app:
        cid = await new_conversation_id(app, "alice")
        not_json, _ = await through_lane(app, cid, alice, [b"{not json"])
        # Announced too large: the handler refuses it before anything is read.
        announced, _ = await through_lane(app, cid, alice, [b"{}"], length=MAX_BODY_BYTES + 1)
        # Larger than announced: the lane stops reading past the limit, the handler reads on.
        streamed, _ = await through_lane(app, cid, alice, [chunk, chunk, b"{}"], length=10)
    assert not_json.bodies == [b"{not json"]
    assert announced.bodies == [b"{}"]
    assert streamed.bodies == [chunk + chunk + b"{}"]


async def test_the_lane_raises_what_the_turn_raises(
    settings: Settings, alice: dict[str, str]
) -> None:
    body = json.dumps({"messages": [QUESTION]}).encode()
    async with running(settings) as app:
        with pytest.raises(NotFound):  # rendered by the app's exception handlers
            await through_lane(app, uuid.uuid4(), alice, [body])
