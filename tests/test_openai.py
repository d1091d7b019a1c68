"""The OpenAI-compatible surface (``/openai/v1``), driven over a socket by the official ``openai``
package and the OpenAI Agents SDK, on both databases. Every response object and stream event
is checked against the Open Responses specification's schemas (``tests/openresponses``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import openai
import pydantic
import pytest
from live import LiveServer
from test_turn_endings import wait_for_call

from service.app import create_app
from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.settings import Settings
from service.store import Reply, Store, TurnStart

SPEC = json.loads((Path(__file__).parent / "openresponses" / "openapi.json").read_text())


def conforms(schema: str, value: Any) -> None:
    """Raise unless ``value`` fits the Open Responses schema ``schema``."""
    jsonschema.Draft202012Validator({**SPEC, "$ref": f"#/components/schemas/{schema}"}).validate(
        value
    )


@pytest.fixture
def server(settings: Settings, store: Store) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings, retry_backoff=0.01)) as live:
        yield live


@pytest.fixture
async def key(store: Store) -> str:
    _, key = await store.create_key("alice")
    return key


@pytest.fixture
async def client(server: LiveServer, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/openai/v1", api_key=key, max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
async def http(server: LiveServer, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A plain client of the service (both surfaces), as tenant alice."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as plain:
        yield plain


async def create(client: openai.AsyncOpenAI, **options: Any) -> Any:
    """``responses.create``, its raw answer checked against the specification."""
    raw = await client.responses.with_raw_response.create(**options)
    conforms("ResponseResource", raw.http_response.json())
    return raw.parse()


async def retrieve(client: openai.AsyncOpenAI, response_id: str) -> Any:
    raw = await client.responses.with_raw_response.retrieve(response_id)
    conforms("ResponseResource", raw.http_response.json())
    return raw.parse()


async def sse(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, each checked against the specification."""
    events = []
    async with http.stream("POST", "/openai/v1/responses", json={**body, "stream": True}) as got:
        assert got.status_code == 200
        assert got.headers["content-type"].startswith("text/event-stream")
        assert (got.headers["cache-control"], got.headers["x-accel-buffering"]) == (
            "no-cache",
            "no",
        )
        async for line in got.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                conforms("StreamingEvent", event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def uuid_of(ident: str) -> str:
    """The convstore id behind an OpenAI-style id (``conv_<hex>``)."""
    return str(uuid.UUID(hex=ident.split("_")[1][:32]))


async def test_a_response_continues_with_previous_response_id(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    first = await create(client, model="grok-4", input="Hello there", instructions="Be brief.")
    sent = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    assert upstream.requests[-1]["body"]["messages"] == sent
    assert first.id.startswith("resp_")
    assert first.status == "completed"
    assert first.output_text == expected_reply(sent)
    assert first.instructions == "Be brief."
    assert first.usage is not None
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert first.usage.output_tokens_details.reasoning_tokens > 0  # grok-4 reasons unseen

    second = await create(client, model="grok-4", input="And again", previous_response_id=first.id)
    # The instructions were for the first response only.
    history = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And again"},
    ]
    assert upstream.requests[-1]["body"]["messages"] == history
    assert second.output_text == expected_reply(history)
    assert second.previous_response_id == first.id
    assert second.instructions is None

    got = await retrieve(client, second.id)
    assert got.output_text == second.output_text
    assert got.previous_response_id == first.id
    items = await client.responses.input_items.list(second.id, order="asc")
    assert [(i.type, i.role) for i in items.data] == [  # type: ignore[union-attr]
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert items.data[1].id == first.output[-1].id  # the first reply, by the same id
    page = await client.responses.input_items.list(second.id, limit=2)  # newest first
    assert [i.id for i in page.data] == [items.data[2].id, items.data[1].id]
    assert page.has_more
    rest = await client.responses.input_items.list(second.id, limit=2, after=page.data[-1].id)
    assert [i.id for i in rest.data] == [items.data[0].id]
    assert not rest.has_more

    # The same conversation, through /v1.
    conversation = first.conversation.id  # type: ignore[union-attr]
    assert second.conversation.id == conversation  # type: ignore[index]
    messages = (await http.get(f"/v1/conversations/{uuid_of(conversation)}/messages")).json()
    assert [m["content"] for m in messages["data"]] == [h["content"] for h in history] + [
        second.output_text
    ]


async def test_an_older_previous_response_makes_a_branch(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    first = await create(client, model="grok-4", input="Name a colour")
    await create(client, model="grok-4", input="Another", previous_response_id=first.id)
    branch = await create(
        client, model="grok-4", input="A warmer one", previous_response_id=first.id
    )
    history = [
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "A warmer one"},
    ]
    assert upstream.requests[-1]["body"]["messages"] == history
    assert branch.output_text == expected_reply(history)
    conversation = uuid_of(branch.conversation.id)  # type: ignore[index]
    path = (await http.get(f"/v1/conversations/{conversation}/messages")).json()["data"]
    assert [m["content"] for m in path] == [h["content"] for h in history] + [branch.output_text]
    assert (path[2]["sibling_count"], path[2]["sibling_index"]) == (2, 2)
    # Nothing was copied: the branch holds only its own two messages.
    listed = (await http.get(f"/v1/conversations/{conversation}")).json()
    assert listed["message_count"] == 4


async def test_a_response_in_a_conversation(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    conversation = await client.conversations.create(
        items=[{"type": "message", "role": "system", "content": "You are terse."}],
        metadata={"topic": "demo"},
    )
    assert conversation.id.startswith("conv_")
    answer = await create(client, model="grok-4", input="Hi", conversation=conversation.id)
    again = await create(client, model="grok-4", input="More", conversation=conversation.id)
    assert upstream.requests[-1]["body"]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": answer.output_text},
        {"role": "user", "content": "More"},
    ]
    items = await client.conversations.items.list(conversation.id, order="asc")
    assert [i.id for i in items.data][-1] == again.output[-1].id
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(
            model="grok-4",
            input="Both",
            conversation=conversation.id,
            previous_response_id=answer.id,
        )
    assert refused.value.param == "previous_response_id"
    # A conversation made through /v1 reads through this surface, and the other way round.
    made = await http.post(
        "/v1/conversations", json={"messages": [{"role": "user", "content": "from v1"}]}
    )
    items = await client.conversations.items.list(f"conv_{made.json()['id'].replace('-', '')}")
    assert [i.content[0].text for i in items.data] == ["from v1"]  # type: ignore[union-attr]
    seen = await http.get(f"/v1/conversations/{uuid_of(conversation.id)}")
    assert seen.json()["metadata"] == {"topic": "demo"}


async def test_streaming_with_the_sdk_and_the_specification(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    stream = await client.responses.create(model="grok-3-mini", input="Stream this", stream=True)
    kinds, text, reasoning, final = [], "", "", None
    async for event in stream:
        kinds.append(type(event).__name__)
        if isinstance(event, openai.types.responses.ResponseTextDeltaEvent):
            text += event.delta
        if event.type == "response.reasoning.delta":
            reasoning += event.delta  # type: ignore[union-attr]
        if isinstance(event, openai.types.responses.ResponseCompletedEvent):
            final = event.response
    assert kinds[:2] == ["ResponseCreatedEvent", "ResponseInProgressEvent"]
    assert "ResponseOutputItemAddedEvent" in kinds
    assert "ResponseContentPartAddedEvent" in kinds
    assert "ResponseTextDoneEvent" in kinds
    assert "ResponseOutputItemDoneEvent" in kinds
    assert kinds[-1] == "ResponseCompletedEvent"
    assert final is not None
    assert text == final.output_text
    assert reasoning == "Thinking about: Stream this"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    stored = await retrieve(client, final.id)
    assert stored.output_text == text

    # The SDK's stream helper puts the same events together into the same response.
    async with client.responses.stream(model="grok-3-mini", input="Helper") as helped:
        done = await helped.get_final_response()
    assert done.output_text.startswith("echo: Helper")

    events = await sse(http, {"model": "grok-3-mini", "input": "Raw events"})
    names = [e["type"] for e in events]
    assert names[0] == "response.created"
    assert names[-1] == "response.completed"
    assert "response.reasoning.delta" in names
    assert "response.output_text.delta" in names
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == events[-1]["response"]["output"][-1]["content"][0]["text"]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    },
    "strict": True,
}


async def test_a_function_call_round_trip(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    called = await create(
        client, model="grok-4", input="Please use tool for Paris", tools=[WEATHER]
    )
    (call,) = called.output
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == (
        "get_weather",
        {"q": "Please use tool for Paris"},
    )
    sent = upstream.requests[-1]["body"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]
    answered = await create(
        client,
        model="grok-4",
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    messages = upstream.requests[-1]["body"]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call.call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert answered.output_text.startswith("echo: Please use tool for Paris")
    items = await client.responses.input_items.list(answered.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]

    # Streamed: the call's arguments as delta and done events.
    events = await sse(
        http,
        {"model": "grok-4", "input": "use tool now", "tools": [WEATHER], "tool_choice": "required"},
    )
    names = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in names
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert json.loads(done["arguments"]) == {"q": "use tool now"}
    assert events[-1]["response"]["output"][0]["type"] == "function_call"


class City(pydantic.BaseModel):
    name: str
    population: int


async def test_a_json_schema_answer(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    parsed = await client.responses.parse(model="grok-4", input="A city", text_format=City)
    assert parsed.output_parsed == City(name=expected_reply_text(upstream), population=0)
    sent = upstream.requests[-1]["body"]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"]["required"] == ["name", "population"]
    got = await retrieve(client, parsed.id)
    assert got.text.format.type == "json_schema"  # type: ignore[union-attr]


def expected_reply_text(upstream: FakeUpstream) -> str:
    return expected_reply(upstream.requests[-1]["body"]["messages"])


async def test_store_false_keeps_nothing(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    alone = await create(client, model="grok-4", input="Forget me", store=False)
    assert alone.output_text == expected_reply([{"role": "user", "content": "Forget me"}])
    assert alone.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(alone.id)
    assert (await http.get("/v1/conversations")).json()["data"] == []

    kept = await create(client, model="grok-4", input="Remember me")
    follow = await create(
        client, model="grok-4", input="Just asking", previous_response_id=kept.id, store=False
    )
    assert upstream.requests[-1]["body"]["messages"][-1] == {
        "role": "user",
        "content": "Just asking",
    }
    assert len(upstream.requests[-1]["body"]["messages"]) == 3
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(follow.id)
    conversation = uuid_of(kept.conversation.id)  # type: ignore[index]
    assert (await http.get(f"/v1/conversations/{conversation}")).json()["message_count"] == 2

    events = await sse(http, {"model": "grok-4", "input": "Stream, forget", "store": False})
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["store"] is False
    assert (await http.get("/v1/conversations")).json()["data"][0]["id"] == conversation


async def test_delete_a_response(client: openai.AsyncOpenAI) -> None:
    first = await create(client, model="grok-4", input="One")
    second = await create(client, model="grok-4", input="Two", previous_response_id=first.id)
    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)
    assert (await retrieve(client, first.id)).output_text == first.output_text
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(second.id)


async def test_conversations_and_items(client: openai.AsyncOpenAI) -> None:
    made = await client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "first"}], metadata={"a": "1"}
    )
    got = await client.conversations.retrieve(made.id)
    assert (got.id, got.metadata) == (made.id, {"a": "1"})
    changed = await client.conversations.update(made.id, metadata={"a": "2"})
    assert changed.metadata == {"a": "2"}
    added = await client.conversations.items.create(
        made.id,
        items=[
            {"type": "message", "role": "assistant", "content": "second"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "3"}]},
        ],
    )
    assert [i.role for i in added.data] == ["assistant", "user"]  # type: ignore[union-attr]
    newest = await client.conversations.items.list(made.id, limit=2)
    assert [i.id for i in newest.data] == [added.data[1].id, added.data[0].id]
    assert newest.has_more
    one = await client.conversations.items.retrieve(added.data[0].id, conversation_id=made.id)
    assert one.content[0].text == "second"  # type: ignore[union-attr]
    after = await client.conversations.items.delete(added.data[1].id, conversation_id=made.id)
    assert after.id == made.id
    left = await client.conversations.items.list(made.id, order="asc")
    assert [i.content[0].text for i in left.data] == ["first", "second"]  # type: ignore[union-attr]
    deleted = await client.conversations.delete(made.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(made.id)


async def test_every_error_class(
    client: openai.AsyncOpenAI, server: LiveServer, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    async def shape(method: str, path: str, **options: Any) -> dict[str, Any]:
        answer = await http.request(method, f"/openai/v1{path}", **options)
        body = answer.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return {"status": answer.status_code, **body["error"]}

    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_0123456789abcdef0123456789abcdef")
    assert (await shape("GET", "/responses/nonsense"))["status"] == 404
    with pytest.raises(openai.BadRequestError) as hosted:
        await client.responses.create(
            model="grok-4", input="Find", tools=[{"type": "file_search", "vector_store_ids": []}]
        )
    assert hosted.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="grok-4", input="x", tools=[{"type": "web_search"}])
    refused = await shape("POST", "/responses", json={"model": "grok-4", "input": "x", "bogus": 1})
    assert (refused["status"], refused["param"], refused["type"]) == (
        400,
        "bogus",
        "invalid_request_error",
    )
    wrong = await shape("POST", "/responses", json={"input": [{"role": "robot", "content": "x"}]})
    assert (wrong["status"], wrong["param"]) == (400, "input[0].role")
    # xAI's documented ranges, under the Responses API's names for them.
    hot = await shape("POST", "/responses", json={"input": "x", "temperature": 3})
    assert (hot["status"], hot["param"]) == (400, "temperature")
    assert hot["message"] == "Invalid 'temperature': Expected `float` <= 2.0.", hot
    long = await shape("POST", "/responses", json={"input": "x", "max_output_tokens": -1})
    assert (long["status"], long["param"]) == (400, "max_output_tokens"), long
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/openai/v1", api_key="not-a-key", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.responses.create(model="grok-4", input="x")

    # A response while another runs in the same conversation: 409.
    first = await create(client, model="grok-4", input="One")
    upstream.push_fault(Fault(kind="hang"))
    running = asyncio.create_task(
        client.responses.create(model="grok-4", input="Two", previous_response_id=first.id)
    )
    await wait_for_call(upstream, upstream.calls + 1)
    with pytest.raises(openai.ConflictError):
        await client.responses.create(model="grok-4", input="Three", previous_response_id=first.id)
    upstream.release()
    await running

    upstream.push_fault(Fault(kind="status", status=429, retry_after=0, times=10))
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="grok-4", input="Busy?")
    upstream.clear()
    upstream.push_fault(Fault(kind="status", status=500, times=10))
    with pytest.raises(openai.InternalServerError) as broken:
        await client.responses.create(model="grok-4", input="Broken?")
    assert broken.value.status_code == 502
    upstream.clear()
    # A failed stream ends with response.failed.
    upstream.push_fault(Fault(kind="status", status=500, times=10))
    events = await sse(http, {"model": "grok-4", "input": "Fail"})
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "upstream_error"
    upstream.clear()
    # /v1 keeps its problem documents.
    problem = await http.get("/v1/conversations/0191e6a0-0000-7000-8000-000000000000")
    assert problem.headers["content-type"] == "application/problem+json"


async def test_an_agent_with_a_function_tool_over_a_conversations_session(
    server: LiveServer, key: str, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import Agent, Runner, function_tool, set_tracing_disabled
    from agents.memory import OpenAIConversationsSession
    from agents.models.openai_responses import OpenAIResponsesModel

    set_tracing_disabled(True)
    looked_up: list[str] = []

    @function_tool
    def get_weather(q: str) -> str:
        """The weather in a city."""
        looked_up.append(q)
        return "sunny"

    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/openai/v1", api_key=key, max_retries=0
    ) as sdk:
        agent = Agent(
            name="Weather",
            instructions="Answer with the weather.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="grok-4", openai_client=sdk),
        )
        session = OpenAIConversationsSession(openai_client=sdk)
        result = await Runner.run(agent, "Please use tool: Paris", session=session)
        assert looked_up == ["Please use tool: Paris"]
        assert result.final_output.startswith("echo: Please use tool: Paris")
        items = await session.get_items()
        assert [i.get("type") for i in items] == [
            "message",
            "function_call",
            "function_call_output",
            "message",
        ]
        again = await Runner.run(agent, "And tomorrow?", session=session)
        assert again.final_output.startswith("echo: And tomorrow?")
        sent = upstream.requests[-1]["body"]["messages"]
        assert sent[0] == {"role": "system", "content": "Answer with the weather."}
        assert [m["role"] for m in sent[1:]] == ["user", "assistant", "tool", "assistant", "user"]
    assert os.environ["OPENAI_AGENTS_DISABLE_TRACING"] == "1"


# ---- Idempotency-Key ------------------------------------------------------------------------


async def messages_of(http: httpx.AsyncClient, conversation: str) -> list[dict[str, Any]]:
    page = await http.get(f"/v1/conversations/{uuid_of(conversation)}/messages?limit=100")
    assert page.status_code == 200, page.text
    data: list[dict[str, Any]] = page.json()["data"]
    return data


async def conversation_count(http: httpx.AsyncClient) -> int:
    return len((await http.get("/v1/conversations")).json()["data"])


async def test_an_idempotent_response_asks_the_model_once(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, store: Store, upstream: FakeUpstream
) -> None:
    # The SDK sends no Idempotency-Key of its own for responses; a caller gives one.
    once = {"Idempotency-Key": "resp-1"}
    first = await client.responses.with_raw_response.create(
        model="grok-4", input="Only once", extra_headers=once
    )
    again = await client.responses.with_raw_response.create(
        model="grok-4", input="Only once", extra_headers=once
    )
    assert again.http_response.json() == first.http_response.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    conforms("ResponseResource", again.http_response.json())
    assert upstream.calls == 1
    made = first.parse()
    assert made.conversation is not None
    roles = [m["role"] for m in await messages_of(http, made.conversation.id)]
    assert roles == ["user", "assistant"]
    assert await conversation_count(http) == 1

    # The same key with another body: refused in OpenAI's shape, and nothing is done.
    with pytest.raises(openai.BadRequestError) as reused:
        await client.responses.create(model="grok-4", input="Something else", extra_headers=once)
    assert reused.value.code == "idempotency_key_reused"
    assert upstream.calls == 1
    assert await conversation_count(http) == 1

    # Keys belong to the tenant: another tenant's same key is its own.
    _, bob = await store.create_key("bob")
    other = await http.post(
        "/openai/v1/responses",
        json={"model": "grok-4", "input": "Only once"},
        headers={**once, "Authorization": f"Bearer {bob}"},
    )
    assert other.status_code == 200, other.text
    assert other.json()["id"] != made.id
    assert upstream.calls == 2

    # A key continuing a conversation: one more exchange, however often it is sent.
    follow = {"model": "grok-4", "input": "Then?", "previous_response_id": made.id}
    answers = [
        await http.post("/openai/v1/responses", json=follow, headers={"Idempotency-Key": "resp-2"})
        for _ in range(2)
    ]
    assert answers[0].json() == answers[1].json()
    assert upstream.calls == 3
    assert len(await messages_of(http, made.conversation.id)) == 4


async def test_an_idempotent_response_still_running_is_409(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.push_fault(Fault(kind="slow", delay=1))
    once = {"Idempotency-Key": "slow-1"}
    first = asyncio.create_task(
        client.responses.create(model="grok-4", input="Take your time", extra_headers=once)
    )
    for _ in range(200):
        if upstream.calls:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(openai.ConflictError) as running:
        await client.responses.create(model="grok-4", input="Take your time", extra_headers=once)
    assert running.value.code == "idempotency_key_in_use"
    assert int(running.value.response.headers["retry-after"]) >= 1
    assert set(running.value.response.json()["error"]) == {"message", "type", "param", "code"}
    done = await first
    assert done.status == "completed"
    replayed = await client.responses.create(
        model="grok-4", input="Take your time", extra_headers=once
    )
    assert replayed.id == done.id
    assert upstream.calls == 1


async def test_an_idempotent_failed_response_answers_its_error_again(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.push_fault(Fault(kind="status", status=400))
    body = {"model": "grok-4", "input": "Doomed"}
    once = {"Idempotency-Key": "doomed"}
    first = await http.post("/openai/v1/responses", json=body, headers=once)
    again = await http.post("/openai/v1/responses", json=body, headers=once)
    assert first.status_code == again.status_code == 502
    assert again.json() == first.json()
    assert set(again.json()["error"]) == {"message", "type", "param", "code"}
    assert again.json()["error"]["code"] == "upstream_error"
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    assert upstream.calls == 1
    # The input stays, as for any failed turn; it was not sent twice.
    listed = (await http.get("/v1/conversations")).json()["data"]
    assert [c["message_count"] for c in listed] == [1]


async def test_an_idempotent_streamed_response_is_streamed_again(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = {"model": "grok-3-mini", "input": "Stream once", "stream": True}
    once = {"Idempotency-Key": "stream-1"}

    async def events() -> list[dict[str, Any]]:
        got = []
        async with http.stream("POST", "/openai/v1/responses", json=body, headers=once) as sent:
            assert sent.status_code == 200
            async for line in sent.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    conforms("StreamingEvent", event)
                    got.append(event)
        return got

    first, again = await events(), await events()
    assert upstream.calls == 1
    assert first[-1]["type"] == again[-1]["type"] == "response.completed"
    assert again[-1]["response"] == first[-1]["response"]
    assert again[0]["response"]["id"] == first[0]["response"]["id"]

    def text(stream: list[dict[str, Any]], kind: str) -> str:
        return "".join(e["delta"] for e in stream if e["type"] == kind)

    for kind in ("response.output_text.delta", "response.reasoning.delta"):
        assert text(again, kind) == text(first, kind) != ""
    conversation = first[-1]["response"]["conversation"]["id"]
    assert len(await messages_of(http, conversation)) == 2


async def test_an_idempotent_response_whose_server_stopped(
    http: httpx.AsyncClient, store: Store, upstream: FakeUpstream
) -> None:
    """A key claimed by a server that stopped after its turn began: a retry answers that turn
    (409 while it may still run; its outcome once it ended), never runs it again."""
    made = (await http.post("/v1/conversations", json={})).json()["id"]
    conversation = f"conv_{uuid.UUID(made).hex}"

    async def orphan(key: str, body: dict[str, Any]) -> TurnStart:
        canonical = msgspec.json.encode(body, order="sorted")
        digest = hashlib.sha256(b"POST /openai/v1/responses\n" + canonical).hexdigest()
        assert await store.claim_idempotency_key("alice", key, digest, lock=0, ttl=60) is None
        return await store.begin_turn(
            "alice",
            uuid.UUID(made),
            [{"role": "user", "content": body["input"]}],
            model=None,
            params=None,
            stream=bool(body.get("stream")),
            lease=60,
            idempotency_key=key,
        )

    plain = {"model": "grok-4", "input": "Lost server", "conversation": conversation}
    start = await orphan("lost-1", plain)
    retried = await http.post(
        "/openai/v1/responses", json=plain, headers={"Idempotency-Key": "lost-1"}
    )
    assert retried.status_code == 409, retried.text
    assert retried.json()["error"]["code"] == "idempotency_key_in_use"
    reply = Reply(content="answered elsewhere", model="grok-4", finish_reason="stop")
    assert await store.complete_turn(start, reply, latency_ms=1, upstream_ms=1, attempts=1)
    retried = await http.post(
        "/openai/v1/responses", json=plain, headers={"Idempotency-Key": "lost-1"}
    )
    assert retried.status_code == 200, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    conforms("ResponseResource", retried.json())
    assert retried.json()["id"] == f"resp_{start.turn.id.hex}"
    assert retried.json()["output"][-1]["content"][0]["text"] == "answered elsewhere"

    streamed = {
        "model": "grok-4",
        "input": "Lost stream",
        "conversation": conversation,
        "stream": True,
    }
    start = await orphan("lost-2", streamed)
    reply = Reply(content="streamed elsewhere", model="grok-4", finish_reason="stop")
    assert await store.complete_turn(start, reply, latency_ms=1, upstream_ms=1, attempts=1)
    events = []
    async with http.stream(
        "POST", "/openai/v1/responses", json=streamed, headers={"Idempotency-Key": "lost-2"}
    ) as sent:
        assert sent.status_code == 200
        async for line in sent.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    for event in events:
        conforms("StreamingEvent", event)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["id"] == f"resp_{start.turn.id.hex}"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "streamed elsewhere"
    assert upstream.calls == 0


async def test_idempotent_conversations_and_items(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    create = {
        "items": [{"type": "message", "role": "user", "content": "hi"}],
        "metadata": {"a": "1"},
    }
    made = [
        await http.post("/openai/v1/conversations", json=create, headers={"Idempotency-Key": "c-1"})
        for _ in range(2)
    ]
    assert made[0].json() == made[1].json()
    assert made[1].headers["idempotent-replayed"] == "true"
    assert await conversation_count(http) == 1
    conversation = made[0].json()["id"]
    items = {"items": [{"type": "message", "role": "assistant", "content": "hello"}]}
    added = [
        await client.conversations.items.with_raw_response.create(
            conversation, extra_headers={"Idempotency-Key": "i-1"}, **items
        )
        for _ in range(2)
    ]
    assert added[0].http_response.json() == added[1].http_response.json()
    assert [m["content"] for m in await messages_of(http, conversation)] == ["hi", "hello"]
    reused = await http.post(
        f"/openai/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "assistant", "content": "other"}]},
        headers={"Idempotency-Key": "i-1"},
    )
    assert reused.status_code == 400
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    # Deleting the conversation deletes the answers kept for its keys: the key acts anew.
    await client.conversations.delete(conversation)
    anew = await http.post(
        "/openai/v1/conversations", json=create, headers={"Idempotency-Key": "c-1"}
    )
    assert anew.status_code == 200
    assert "idempotent-replayed" not in anew.headers
    assert anew.json()["id"] != conversation


async def test_a_response_answer_kept_for_a_key_goes_with_its_conversation(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = {"model": "grok-4", "input": "Keep me"}
    first = await http.post("/openai/v1/responses", json=body, headers={"Idempotency-Key": "k"})
    conversation = first.json()["conversation"]["id"]
    assert (await http.delete(f"/openai/v1/conversations/{conversation}")).status_code == 200
    anew = await http.post("/openai/v1/responses", json=body, headers={"Idempotency-Key": "k"})
    assert anew.status_code == 200
    assert anew.json()["id"] != first.json()["id"]
    assert upstream.calls == 2


async def test_store_false_refuses_an_idempotency_key(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    refused = await http.post(
        "/openai/v1/responses",
        json={"model": "grok-4", "input": "Forget me", "store": False},
        headers={"Idempotency-Key": "nothing-kept"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "store"
    assert upstream.calls == 0
    # Nothing was claimed: the key serves a request that keeps its answer.
    kept = await http.post(
        "/openai/v1/responses",
        json={"model": "grok-4", "input": "Forget me"},
        headers={"Idempotency-Key": "nothing-kept"},
    )
    assert kept.status_code == 200, kept.text


async def test_the_openapi_document_names_the_idempotency_key(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/schema/openapi.json")).json()["paths"]
    for path in ("/responses", "/conversations", "/conversations/{conversation_id}/items"):
        operation = paths[f"/openai/v1{path}"]["post"]
        assert "Idempotency-Key" in [p["name"] for p in operation.get("parameters", [])], path
        assert "409" in operation["responses"]
    update = paths["/openai/v1/conversations/{conversation_id}"]["post"]
    assert "Idempotency-Key" not in [p["name"] for p in update.get("parameters", [])]


async def test_metadata_is_kept_with_the_response_and_never_sent_upstream(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    tags = {"ticket": "T-1", "lang": "en"}
    made = await create(client, model="grok-4", input="Tagged", metadata=tags)
    assert made.metadata == tags
    assert "metadata" not in upstream.requests[-1]["body"]
    assert (await retrieve(client, made.id)).metadata == tags
    assert made.conversation is not None
    conversation = await http.get(f"/v1/conversations/{uuid_of(made.conversation.id)}")
    assert conversation.json()["metadata"] == {}  # the response's, not the conversation's
    turn = await http.get(
        f"/v1/conversations/{uuid_of(made.conversation.id)}/turns/{uuid_of(made.id)}"
    )
    assert turn.json()["params"]["response"]["metadata"] == tags
    later = await create(client, model="grok-4", input="Untagged", previous_response_id=made.id)
    assert later.metadata == {}
    events = await sse(http, {"model": "grok-4", "input": "Streamed", "metadata": tags})
    assert "metadata" not in upstream.requests[-1]["body"]
    assert events[0]["response"]["metadata"] == events[-1]["response"]["metadata"] == tags
    too_many = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="grok-4", input="x", metadata=too_many)
    assert refused.value.param == "metadata"
    paths = (await http.get("/schema/openapi.json")).json()["components"]["schemas"]
    described = paths["ResponseCreate"]["properties"]["metadata"]["description"]
    assert "Never sent upstream" in described
