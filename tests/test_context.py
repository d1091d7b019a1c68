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
from jsonschema import Draft202012Validator
from live import LiveServer
from test_turns import new_conversation, stored_messages, turn

from service import transcripts
from service.app import create_app
from service.fake_upstream import FakeUpstream
from service.settings import Settings, SettingsError
from service.store import Store
from service.tokens import MESSAGE_OVERHEAD, estimate
from service.web import context_text

Client = httpx.AsyncClient
WINDOW = 400  # the fake's window in these tests: a few dozen short messages
TRANSCRIPT = Draft202012Validator(transcripts.schema())


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


async def test_truncate_on_a_branch_measures_that_branch(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    """The path is what is measured: a turn on a branch sends (and cuts) the branch's path,
    never the messages of the line it forked from."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be terse."}]
    for i in range(30):
        messages += [
            {"role": "user", "content": words(10, f"main{i}-")},
            {"role": "assistant", "content": words(10, f"reply{i}-")},
        ]
    cid = await new_conversation(
        client, alice, messages=messages, context={"strategy": "truncate", "max_input_tokens": 300}
    )
    stored = await stored_messages(client, alice, cid)
    fork_after = stored[20]  # the assistant message at seq 21
    for i in range(6):
        answered = await turn(
            client,
            alice,
            cid,
            messages=[{"role": "user", "content": words(10, f"branch{i}-")}],
            **({"parent_id": fork_after["id"]} if i == 0 else {}),
        )
        assert answered.status_code == 201, answered.text
        sent = sent_messages(small)
        texts = " ".join(str(m["content"]) for m in sent)
        # Past the fork, the other line.
        assert "main10-" not in texts
        assert "reply10-" not in texts
        assert sent[0]["content"] == "Be terse."
        context = answered.json()["turn"]["context"]
        assert context["dropped"]  # the branch's path is long enough to be cut
        assert context["sent"][-1][1] == answered.json()["turn"]["reply_seq"] - 1


async def test_every_insert_path_fills_sizes(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, messages=[{"role": "system", "content": "Count."}])
    appended = await client.post(
        f"/v1/conversations/{cid}/messages",
        json={
            "messages": [
                {"role": "user", "content": "\u4f60\u597d\u4e16\u754c"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/a"}},
                    ],
                },
            ]
        },
        headers=alice,
    )
    assert appended.status_code == 201, appended.text
    chinese, image = appended.json()["data"]
    assert chinese["tokens"] == MESSAGE_OVERHEAD + 4  # a token a CJK character
    assert image["tokens"] >= MESSAGE_OVERHEAD + 256  # an image part, flat
    answered = await turn(client, alice, cid)
    assert answered.status_code == 201, answered.text
    original = await stored_messages(client, alice, cid)
    forked = await client.post(f"/v1/conversations/{cid}/fork", headers=alice)
    copy = await stored_messages(client, alice, forked.json()["id"])
    sizes = [(m["tokens"], m["tokens_exact"]) for m in original]
    assert [(m["tokens"], m["tokens_exact"]) for m in copy] == sizes
    exported = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    for message in exported["messages"]:
        del message["tokens"], message["tokens_exact"]
    exported["conversation"]["id"] = "without-sizes"
    imported = await client.post("/v1/conversations/import", json=exported, headers=alice)
    again = await stored_messages(client, alice, imported.json()["id"])
    # Without sizes in the transcript, each is estimated (the reply's count is lost with them).
    assert [m["tokens"] for m in again[:3]] == [m["tokens"] for m in original[:3]]
    assert not any(m["tokens_exact"] for m in again)


def test_the_estimate_by_script_and_part() -> None:
    english = estimate({"role": "user", "content": "Hello world!"})
    assert english - MESSAGE_OVERHEAD == 4  # xAI counts 3; the estimate leans high
    assert estimate({"role": "user", "content": ""}) == MESSAGE_OVERHEAD
    cjk = estimate({"role": "user", "content": "\u4f60" * 100})
    latin = estimate({"role": "user", "content": "a" * 100})
    cyrillic = estimate({"role": "user", "content": "\u0436" * 100})
    assert latin < cyrillic < cjk
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": 1}'}}
    assert estimate({"role": "assistant", "content": None, "tool_calls": [call]}) > 8


def test_the_admin_page_line_of_what_the_model_saw() -> None:
    line = context_text(
        {
            "strategy": "compact",
            "sent": [[1, 1], [40, 42]],
            "dropped": [[2, 9]],
            "summarised": [[10, 39]],
            "summary_id": "x",
            "estimated_input_tokens": 1200,
            "upstream_input_tokens": 1100,
            "max_input_tokens": 4000,
            "request_sha256": "ab" * 32,
        }
    )
    assert line == (
        "compact; sent 1, 40-42; dropped 2-9; summarised 10-39; "
        "~1,200 tokens estimated, 1,100 counted of 4,000; request sha256 abababababababab…"
    )
    assert context_text(None) is None


def test_model_windows_setting() -> None:
    settings = Settings.from_env({"CONVSTORE_MODEL_WINDOWS": '{"grok-4": 1000, "mine": 64}'})
    assert settings.model_windows["grok-4"] == 1000
    assert settings.model_windows["mine"] == 64
    assert settings.model_windows["grok-3"] == 131_072
    for bad in ("[1]", '{"grok-4": 0}', '{"grok-4": "big"}', "nope"):
        with pytest.raises(SettingsError, match="CONVSTORE_MODEL_WINDOWS"):
            Settings.from_env({"CONVSTORE_MODEL_WINDOWS": bad})


async def test_a_first_turn_under_truncate_records_its_input(
    client: Client, alice: dict[str, str], upstream: FakeUpstream
) -> None:
    cid = await new_conversation(client, alice, context={"strategy": "truncate"})
    answered = await turn(
        client,
        alice,
        cid,
        messages=[{"role": "system", "content": "Hi."}, {"role": "user", "content": "Hello"}],
    )
    assert answered.status_code == 201, answered.text
    context = answered.json()["turn"]["context"]
    assert context["sent"] == [[1, 2]]
    assert context["dropped"] == []
    assert context["window"] == 256_000  # grok-4's


async def compacted_conversation(client: Client, alice: dict[str, str], small: FakeUpstream) -> str:
    """A conversation under ``compact`` whose turns went on until the first compaction."""
    cid = await new_conversation(
        client,
        alice,
        messages=[{"role": "system", "content": "You are terse."}],
        context={"strategy": "compact", "max_input_tokens": WINDOW},
    )
    for i in range(40):
        before = small.calls
        answered = await turn(
            client, alice, cid, messages=[{"role": "user", "content": words(12, f"q{i}-")}]
        )
        assert answered.status_code == 201, answered.text
        if small.calls == before + 2:  # the first compaction: a summarising call, the turn's
            break
    else:
        pytest.fail("no compaction happened")
    return cid


async def next_turns_alike(
    client: Client, alice: dict[str, str], small: FakeUpstream, cid: str, other_id: str
) -> tuple[httpx.Response, httpx.Response, list[dict[str, Any]]]:
    """The same next turn on ``cid`` and on ``other_id`` (a copy of it): one upstream call
    each, with the same messages. Both answers, and the messages sent."""
    question = [{"role": "user", "content": words(12, "next-")}]
    before = small.calls
    again = await turn(client, alice, cid, messages=question)
    assert again.status_code == 201, again.text
    sent = sent_messages(small)
    moved_on = await turn(client, alice, other_id, messages=question)
    assert moved_on.status_code == 201, moved_on.text
    assert small.calls == before + 2
    assert sent_messages(small) == sent
    return again, moved_on, sent


@pytest.mark.parametrize("branched", [False, True], ids=["line", "tree"])
async def test_summaries_survive_export_and_import(
    client: Client, alice: dict[str, str], small: FakeUpstream, branched: bool
) -> None:
    """A transcript holds the conversation's summaries: imported, the conversation sends them
    as the original does instead of summarising again. One without them (an older transcript)
    still imports, and its conversation summarises again."""
    cid = await compacted_conversation(client, alice, small)
    if branched:  # a sibling of the second message; the head stays on the main line
        stored = await stored_messages(client, alice, cid)
        aside = await client.post(
            f"/v1/conversations/{cid}/messages",
            json={"messages": [{"role": "user", "content": "aside"}], "parent_id": stored[0]["id"]},
            headers=alice,
        )
        assert aside.status_code == 201, aside.text
        back = await client.patch(
            f"/v1/conversations/{cid}", json={"head_id": stored[-1]["id"]}, headers=alice
        )
        assert back.status_code == 200, back.text

    original = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()
    assert original["version"] == (2 if branched else 1)
    assert list(TRANSCRIPT.iter_errors(original)) == []
    (summary,) = original["summaries"]
    (summarising,) = [t for t in original["turns"] if t["context"].get("purpose") == "compaction"]
    assert summary["turn_id"] == summarising["id"]
    assert summarising["context"]["summary_id"] == summary["id"]
    assert summary["covers"] == summarising["context"]["summarised"]
    sent_summary = sent_messages(small)[1]["content"]
    assert sent_summary == f"Summary of the earlier conversation:\n{summary['content']}"
    markdown = await client.get(
        f"/v1/conversations/{cid}/export", params={"format": "markdown"}, headers=alice
    )
    shown = markdown.text.split(f"## {summary['upto_seq'] + 1}. ")[0]  # after the last it covers
    assert shown.count("<details><summary>context summary of messages ") == 1
    assert summary["content"] in shown.split(f"## {summary['upto_seq']}. ")[1]

    imported = await client.post("/v1/conversations/import", json=original, headers=alice)
    assert imported.status_code == 201, imported.text
    copy_id = imported.json()["id"]
    copy = (await client.get(f"/v1/conversations/{copy_id}/export", headers=alice)).json()
    (copied,) = copy["summaries"]
    new_ids = ("id", "upto_id", "turn_id")
    assert {k: v for k, v in copied.items() if k not in new_ids} == {
        k: v for k, v in summary.items() if k not in new_ids
    }
    assert copied["id"] != summary["id"]
    (copied_turn,) = [t for t in copy["turns"] if t["context"].get("purpose") == "compaction"]
    assert copied["turn_id"] == copied_turn["id"] != summarising["id"]
    assert copied_turn["context"]["summary_id"] == copied["id"]
    if branched:
        upto = {m["id"]: m for m in copy["messages"]}[copied["upto_id"]]
        assert upto["seq"] == copied["upto_seq"]
        was = {m["id"]: m for m in original["messages"]}[summary["upto_id"]]
        assert upto["content"] == was["content"]

    # The next turn of each: one upstream call, the same request, the summary in it.
    again, moved_on, sent = await next_turns_alike(client, alice, small, cid, copy_id)
    assert sent[1]["content"] == sent_summary
    context = moved_on.json()["turn"]["context"]
    assert context["summary_id"] == copied["id"]
    for field in ("summarised", "sent", "dropped"):
        assert context[field] == again.json()["turn"]["context"][field]

    older = {k: v for k, v in original.items() if k != "summaries"}
    older["conversation"] = {**original["conversation"], "id": "an-older-export"}
    assert list(TRANSCRIPT.iter_errors(older)) == []
    imported = await client.post("/v1/conversations/import", json=older, headers=alice)
    assert imported.status_code == 201, imported.text
    assert (
        "summaries"
        not in (
            await client.get(f"/v1/conversations/{imported.json()['id']}/export", headers=alice)
        ).json()
    )
    before = small.calls
    question = [{"role": "user", "content": words(12, "next-")}]
    summarised_again = await turn(client, alice, imported.json()["id"], messages=question)
    assert summarised_again.status_code == 201, summarised_again.text
    assert small.calls == before + 2


async def test_a_fork_keeps_the_summaries_of_what_it_copies(
    client: Client, alice: dict[str, str], small: FakeUpstream
) -> None:
    """A fork copies the summaries made up to the messages it copies: its next turn sends the
    summary as the source's does, without summarising again. A fork that stops before a
    summary's last message has none of it."""
    cid = await compacted_conversation(client, alice, small)
    (summary,) = (await client.get(f"/v1/conversations/{cid}/export", headers=alice)).json()[
        "summaries"
    ]

    forked = await client.post(f"/v1/conversations/{cid}/fork", json={}, headers=alice)
    assert forked.status_code == 201, forked.text
    fork_id = forked.json()["id"]
    copy = (await client.get(f"/v1/conversations/{fork_id}/export", headers=alice)).json()
    assert list(TRANSCRIPT.iter_errors(copy)) == []
    (copied,) = copy["summaries"]
    assert copied["id"] != summary["id"]
    assert copied.get("turn_id") is None  # the summarising turn stays with the source
    assert {k: copied[k] for k in ("upto_seq", "covers", "content", "tokens")} == {
        k: summary[k] for k in ("upto_seq", "covers", "content", "tokens")
    }
    _, moved_on, _ = await next_turns_alike(client, alice, small, cid, fork_id)
    assert moved_on.json()["turn"]["context"]["summary_id"] == copied["id"]

    short = await client.post(
        f"/v1/conversations/{cid}/fork",
        json={"through_seq": summary["upto_seq"] - 1},
        headers=alice,
    )
    assert short.status_code == 201, short.text
    cut = await client.get(f"/v1/conversations/{short.json()['id']}/export", headers=alice)
    assert cut.json().get("summaries", []) == []
