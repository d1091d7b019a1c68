"""The OpenAI-compatible surface (``/openai/v1``), driven over a socket by the official ``openai``
package and the OpenAI Agents SDK, on both databases. Every response object and stream event
is checked against the Open Responses specification's schemas (``tests/openresponses``)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest
from live import LiveServer

from service.app import create_app
from service.fake_upstream import FakeUpstream, Fault, expected_reply
from service.settings import Settings
from service.store import Store

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
    import uuid

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
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/openai/v1", api_key="not-a-key", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.responses.create(model="grok-4", input="x")

    # A response while another runs in the same conversation: 409.
    first = await create(client, model="grok-4", input="One")
    upstream.push_fault(Fault(kind="hang", delay=3))
    running = asyncio.create_task(
        client.responses.create(model="grok-4", input="Two", previous_response_id=first.id)
    )
    await asyncio.sleep(0.5)
    with pytest.raises(openai.ConflictError):
        await client.responses.create(model="grok-4", input="Three", previous_response_id=first.id)
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
