"""Context windows against the fake upstream enforcing a small window as xAI does, on SQLite
and PostgreSQL: message sizes, the strategies, the record of what the model saw."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from live import LiveServer
from test_turns import new_conversation, stored_messages, turn

from service.app import create_app
from service.fake_upstream import FakeUpstream
from service.settings import Settings
from service.store import Store
from service.tokens import MESSAGE_OVERHEAD, estimate

Client = httpx.AsyncClient
WINDOW = 400  # the fake's window in these tests: a few dozen short messages


@pytest.fixture
def small(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream refusing prompts over ``WINDOW`` tokens, as xAI refuses them."""
    upstream.context_window = WINDOW
    yield upstream
    upstream.context_window = None


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def sent_messages(upstream: FakeUpstream) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = upstream.requests[-1]["body"]["messages"]
    return messages


def fake_count(message: dict[str, Any]) -> int:
    """How the fake upstream counts a message of text: a token a word, and the overhead."""
    return MESSAGE_OVERHEAD + len(str(message["content"]).split())


async def test_messages_know_their_size_estimated_then_exact(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(
        client, alice, messages=[{"role": "system", "content": "Be brief."}]
    )
    first = await turn(client, alice, cid, messages=[{"role": "user", "content": "hello there"}])
    assert first.status_code == 201, first.text
    reply = first.json()["reply"]
    # A reply's size is the upstream's count of it, plus the template's overhead.
    assert reply["tokens"] == reply["usage"]["completion_tokens"] + MESSAGE_OVERHEAD
    assert reply["tokens_exact"] is True
    second = await turn(
        client, alice, cid, messages=[{"role": "user", "content": "one two three four"}]
    )
    assert second.status_code == 201, second.text
    stored = await stored_messages(client, alice, cid)
    system, question, _, follow_up, _ = stored
    # Before any count: the estimate (characters by script, and the overhead).
    assert system["tokens"] == estimate({"role": "system", "content": "Be brief."})
    assert system["tokens_exact"] is False
    assert question["tokens_exact"] is False
    # The second input's size: this request's count beyond the first's and its reply's,
    # which is exactly how the fake counts it.
    assert follow_up["tokens"] == fake_count(follow_up) == 8
    assert follow_up["tokens_exact"] is True
    context = second.json()["turn"]["context"]
    assert context["strategy"] == "full"
    assert context["sent"] == [[1, 4]]
    assert context["dropped"] == []
    assert context["upstream_input_tokens"] == second.json()["reply"]["usage"]["prompt_tokens"]
    body = upstream.requests[-1]["body"]
    assert context["request_sha256"] == hashlib.sha256(msgspec.json.encode(body)).hexdigest()


async def test_truncate_keeps_every_turn_within_the_window(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    cid = await new_conversation(
        client,
        alice,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": "Answer in English."},
        ],
        context={"strategy": "truncate", "max_input_tokens": WINDOW},
    )
    for i in range(40):
        answered = await turn(
            client, alice, cid, messages=[{"role": "user", "content": words(12, f"q{i}-")}]
        )
        assert answered.status_code == 201, answered.text
        context = answered.json()["turn"]["context"]
        sent = sent_messages(small)
        # Both system messages always, the newest message last, never a tool message first.
        assert [m["content"] for m in sent[:2]] == ["You are terse.", "Answer in English."]
        assert sent[-1]["content"] == words(12, f"q{i}-")
        assert context["strategy"] == "truncate"
        assert context["upstream_input_tokens"] <= WINDOW
        assert context["estimated_input_tokens"] <= context["max_input_tokens"]
    # The conversation grew far past the window: the oldest exchanges were dropped.
    assert context["dropped"][0][0] == 3
    assert context["sent"][0] == [1, 2]
    stored = await stored_messages(client, alice, cid)
    assert len(stored) == 82  # nothing stored was lost
    total = sum(m["tokens"] for m in stored)
    assert total > 3 * WINDOW


async def test_full_fails_with_context_length_exceeded_and_keeps_the_input(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, messages=[{"role": "system", "content": "Hi."}])
    failed = None
    for i in range(40):
        answered = await turn(
            client, alice, cid, messages=[{"role": "user", "content": words(12, f"q{i}-")}]
        )
        if answered.status_code != 201:
            failed = answered
            break
    assert failed is not None
    assert failed.status_code == 422, failed.text
    problem = failed.json()
    assert problem["code"] == "context_length_exceeded"
    assert problem["strategy"] == "full"
    assert problem["helpful_strategies"] == ["truncate", "compact"]
    assert problem["estimated_input_tokens"] > 0
    assert problem["window"] > 0
    assert "truncate" in problem["detail"]
    stored = await stored_messages(client, alice, cid)
    assert stored[-1]["content"] == words(12, f"q{i}-")  # the input is kept
    assert stored[-1]["role"] == "user"
    stored_turn = (
        await client.get(f"/v1/conversations/{cid}/turns/{problem['turn_id']}", headers=alice)
    ).json()
    assert stored_turn["status"] == "failed"
    assert stored_turn["error"]["code"] == "context_length_exceeded"
    # The same conversation goes on with a turn that truncates.
    retried = await turn(
        client, alice, cid, context={"strategy": "truncate", "max_input_tokens": WINDOW}
    )
    assert retried.status_code == 201, retried.text
    assert retried.json()["turn"]["context"]["dropped"]


async def test_an_upstream_refusal_for_length_is_context_length_exceeded(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    """An input the estimate thinks fits, refused by the upstream: the same 422, with the
    upstream's own count."""
    cid = await new_conversation(client, alice)
    # Words the fake counts one token each, the estimate far fewer (single letters).
    text = " ".join("a" for _ in range(WINDOW))
    answered = await turn(
        client,
        alice,
        cid,
        messages=[{"role": "user", "content": text}],
        context={"strategy": "full", "max_input_tokens": 1000},
    )
    assert answered.status_code == 422, answered.text
    problem = answered.json()
    assert problem["code"] == "context_length_exceeded"
    assert problem["upstream_input_tokens"] > WINDOW
    assert problem["upstream_status"] == 400
    assert small.calls >= 1


async def test_truncate_never_splits_a_tool_call_from_its_results(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Use tools."}]
    for i in range(30):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "' + words(6, "a") + '"}'},
        }
        messages += [
            {"role": "user", "content": words(8, f"u{i}-")},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": words(10, f"r{i}-")},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": words(10, f"s{i}-")},
        ]
    cid = await new_conversation(client, alice, messages=messages)
    for budget in range(150, 390, 7):
        answered = await turn(
            client,
            alice,
            cid,
            messages=[{"role": "user", "content": "go on"}],
            context={"strategy": "truncate", "max_input_tokens": budget},
        )
        assert answered.status_code == 201, answered.text
        sent = sent_messages(small)
        assert sent[0]["role"] == "system"
        assert sent[1]["role"] != "tool"
        calls = {c["id"] for m in sent if m.get("tool_calls") for c in m["tool_calls"]}
        for m in sent:
            if m["role"] == "tool":
                assert m["tool_call_id"] in calls
        assert answered.json()["turn"]["context"]["estimated_input_tokens"] <= budget


async def test_policy_on_the_conversation_is_patched_and_exported(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, context={"strategy": "truncate"})
    got = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert got["context"] == {"strategy": "truncate", "max_input_tokens": None}
    patched = await client.patch(
        f"/v1/conversations/{cid}",
        json={"context": {"strategy": "full", "max_input_tokens": 5000}},
        headers=alice,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["context"] == {"strategy": "full", "max_input_tokens": 5000}
    bad = await client.patch(
        f"/v1/conversations/{cid}", json={"context": {"strategy": "everything"}}, headers=alice
    )
    assert bad.status_code in (400, 422)
    assert bad.headers["content-type"].startswith("application/problem+json")
    answered = await turn(client, alice, cid, messages=[{"role": "user", "content": "hi"}])
    assert answered.json()["turn"]["context"]["max_input_tokens"] == 5000
    exported = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    assert exported["conversation"]["context"] == {"strategy": "full", "max_input_tokens": 5000}
    assert exported["turns"][0]["context"] == answered.json()["turn"]["context"]
    assert exported["messages"][-1]["tokens_exact"] is True
    exported["conversation"]["id"] = "elsewhere"
    imported = await client.post("/v1/conversations/import", json=exported, headers=alice)
    assert imported.status_code == 201, imported.text
    new_id = imported.json()["id"]
    again = (await client.get(f"/v1/conversations/{new_id}/export", headers=alice)).json()
    assert again["conversation"]["context"] == exported["conversation"]["context"]
    assert again["turns"][0]["context"] == exported["turns"][0]["context"]
    assert [m["tokens"] for m in again["messages"]] == [m["tokens"] for m in exported["messages"]]


async def test_openai_truncation_auto_truncates(
    settings: Settings, store: Store, small: FakeUpstream
) -> None:
    """``truncation: "auto"`` on /openai/v1 is the ``truncate`` strategy (the service told the
    model's window by ``CONVSTORE_MODEL_WINDOWS``); ``disabled`` fails as ``full`` does."""
    windowed = dataclasses.replace(settings, model_windows={"grok-4": WINDOW})
    _, key = await store.create_key("alice")
    with LiveServer(create_app(windowed, retry_backoff=0.01)) as live:
        async with openai.AsyncOpenAI(
            base_url=f"{live.url}/openai/v1", api_key=key, max_retries=0
        ) as sdk:
            previous = None
            for i in range(30):
                response = await sdk.responses.create(
                    model="grok-4",
                    input=words(12, f"q{i}-"),
                    instructions="Be terse.",
                    previous_response_id=previous,
                    truncation="auto",
                )
                assert response.status == "completed"
                assert response.truncation == "auto"
                previous = response.id
            sent = sent_messages(small)
            assert sent[0] == {"role": "system", "content": "Be terse."}
            assert len(sent) < 2 * 30
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.responses.create(
                    model="grok-4",
                    input="more",
                    previous_response_id=previous,
                    truncation="disabled",
                )
            # As OpenAI answers an input too long: 400 with the code.
            assert refused.value.code == "context_length_exceeded"


async def test_replay_sends_the_same_bytes_and_stores_nothing(
    settings: Settings, store: Store, upstream: FakeUpstream
) -> None:
    kept = dataclasses.replace(settings, keep_requests=True)
    _, key = await store.create_key("alice")
    alice = {"Authorization": f"Bearer {key}"}
    with LiveServer(create_app(kept, retry_backoff=0.01)) as live:
        async with httpx.AsyncClient(base_url=live.url, headers=alice, timeout=30) as client:
            cid = await new_conversation(
                client, alice, messages=[{"role": "system", "content": "Be brief."}]
            )
            for stream in (False, True):
                answered = await turn(
                    client,
                    alice,
                    cid,
                    messages=[{"role": "user", "content": f"tell me more {stream}"}],
                    stream=stream,
                )
                assert answered.status_code in (200, 201), answered.text
            turns = await stored_turns(client, alice, cid)
            before = await stored_messages(client, alice, cid)
            for stored_turn in turns:
                sent = upstream.calls
                replayed = await client.post(
                    f"/v1/conversations/{cid}/turns/{stored_turn['id']}/replay"
                )
                assert replayed.status_code == 200, replayed.text
                answer = replayed.json()
                assert upstream.calls == sent + 1
                assert answer["same_request"] is True
                assert answer["request_sha256"] == stored_turn["context"]["request_sha256"]
                assert answer["replayed"]["content"] == answer["stored"]["content"]
                assert answer["turn"]["id"] == stored_turn["id"]
            assert await stored_messages(client, alice, cid) == before  # nothing stored


async def stored_turns(client: Client, headers: dict[str, str], cid: str) -> list[Any]:
    exported = (await client.get(f"/v1/conversations/{cid}/export", headers=headers)).json()
    turns: list[Any] = exported["turns"]
    return turns


async def test_replay_of_a_turn_whose_request_was_not_kept(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice)
    answered = await turn(client, alice, cid, messages=[{"role": "user", "content": "hi"}])
    turn_id = answered.json()["turn"]["id"]
    refused = await client.post(f"/v1/conversations/{cid}/turns/{turn_id}/replay", headers=alice)
    assert refused.status_code == 409
    assert refused.json()["code"] == "request_not_kept"
    missing = await client.post(f"/v1/conversations/{cid}/turns/{cid}/replay", headers=alice)
    assert missing.status_code == 404


async def test_compact_summarises_the_oldest_part_and_reuses_the_summary(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    cid = await new_conversation(
        client,
        alice,
        messages=[{"role": "system", "content": "You are terse."}],
        context={"strategy": "compact", "max_input_tokens": WINDOW},
    )
    compactions = summarised_from = 0
    for i in range(40):
        before = small.calls
        answered = await turn(
            client, alice, cid, messages=[{"role": "user", "content": words(12, f"q{i}-")}]
        )
        assert answered.status_code == 201, answered.text
        context = answered.json()["turn"]["context"]
        sent = sent_messages(small)
        assert sent[0] == {"role": "system", "content": "You are terse."}
        assert sent[-1]["content"] == words(12, f"q{i}-")
        assert context["upstream_input_tokens"] <= WINDOW
        if small.calls == before + 2:  # a summarising call, then the turn's
            compactions += 1
            summarising = small.requests[-2]["body"]
            assert summarising["messages"][0]["role"] == "system"
            if compactions > 1:  # a later compaction summarises the previous summary too
                assert "Summary so far:" in summarising["messages"][1]["content"]
        if "summary_id" in context:
            assert sent[1]["role"] == "system"
            assert sent[1]["content"].startswith("Summary of the earlier conversation:")
            # Each summary covers the previous one's range and more (the oldest dropped).
            first_summarised = context["summarised"][0][0]
            assert first_summarised == summarised_from or summarised_from == 0
            summarised_from = first_summarised
            # Summarised and sent cover the path (bar what was dropped), never overlapping.
            covered = {s for a, b in context["summarised"] for s in range(a, b + 1)}
            shipped = {s for a, b in context["sent"] for s in range(a, b + 1)}
            assert not covered & shipped
    assert compactions >= 2
    reused = [t for t in await stored_turns(client, alice, cid) if t["context"]]
    summarising_turns = [t for t in reused if t["context"].get("purpose") == "compaction"]
    assert len(summarising_turns) == compactions
    for t in summarising_turns:
        assert t["status"] == "completed"
        assert t["usage"]["completion_tokens"] > 0
    with_summary = [t for t in reused if t["context"].get("summary_id")]
    # More turns sent a summary than there were summaries made: they were re-used.
    assert len(with_summary) - len(summarising_turns) > len(summarising_turns)
    stored = await stored_messages(client, alice, cid)
    assert len(stored) == 81  # the originals stay
