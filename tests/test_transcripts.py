"""Transcripts: export, schema, import, round trips, bulk export and fork, on both databases."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from strategies import conversations, trees

from service import transcripts

Client = httpx.AsyncClient
VALIDATOR = Draft202012Validator(
    transcripts.schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
)
IDENTITY_FIELDS = ("id", "turn_id")

RICH_HISTORY = [
    {"role": "system", "content": "Be exact."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Què és això? 🐈"},
            {
                "type": "image_url",
                "image_url": {"url": "https://x.invalid/a.png", "detail": "high"},
            },
        ],
        "name": "ann",
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "content": "a cat", "tool_call_id": "call_1"},
    {"role": "system", "content": "Answer in one word."},
]


async def create(client: Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/conversations", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def export(client: Client, headers: dict[str, str], cid: str) -> dict[str, Any]:
    response = await client.get(f"/v1/conversations/{cid}/export", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def comparable(transcript: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The parts of a transcript that an import keeps exactly (ids are new)."""
    conversation = {
        k: v for k, v in transcript["conversation"].items() if k not in ("id", "source_id")
    }
    messages = [
        {k: v for k, v in m.items() if k not in IDENTITY_FIELDS} for m in transcript["messages"]
    ]
    return conversation, messages


async def test_export_holds_everything_and_fits_the_schema(
    client: Client, alice: dict[str, str]
) -> None:
    conv = await create(
        client,
        alice,
        title="Rich",
        params={"temperature": 0.3},
        metadata={"k": ["v"]},
        messages=RICH_HISTORY,
    )
    turn = await client.post(f"/v1/conversations/{conv['id']}/turns", json={}, headers=alice)
    assert turn.status_code == 201, turn.text
    response = await client.get(f"/v1/conversations/{conv['id']}/export", headers=alice)
    assert response.headers["content-disposition"] == (
        f'attachment; filename="conversation-{conv["id"]}.json"'
    )
    transcript = response.json()
    assert list(VALIDATOR.iter_errors(transcript)) == []
    assert transcript["format"] == "convstore.transcript"
    assert transcript["version"] == 1
    assert transcript["conversation"]["title"] == "Rich"
    assert transcript["conversation"]["params"] == {"temperature": 0.3}
    assert transcript["conversation"]["metadata"] == {"k": ["v"]}
    assert [m["seq"] for m in transcript["messages"]] == [1, 2, 3, 4, 5, 6]
    for given_message, got in zip(RICH_HISTORY, transcript["messages"], strict=False):
        for field, value in given_message.items():
            assert got[field] == value
    reply = transcript["messages"][-1]
    assert reply["role"] == "assistant"
    assert reply["usage"]["total_tokens"] > 0
    assert reply["turn_id"] == turn.json()["turn"]["id"]
    (stored_turn,) = transcript["turns"]
    assert stored_turn["status"] == "completed"
    assert stored_turn["latency_ms"] >= 0
    assert stored_turn["usage"] == reply["usage"]

    markdown = await client.get(
        f"/v1/conversations/{conv['id']}/export", params={"format": "markdown"}, headers=alice
    )
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "# Rich" in markdown.text
    assert "Què és això? 🐈" in markdown.text
    assert "**tool call** `look`" in markdown.text

    schema = await client.get("/v1/transcripts/schema")
    assert schema.json()["title"].startswith("convstore transcript")


async def test_import_then_export_is_lossless(client: Client, alice: dict[str, str]) -> None:
    conv = await create(client, alice, title="Orig", messages=RICH_HISTORY, metadata={"a": 1})
    await client.post(f"/v1/conversations/{conv['id']}/turns", json={}, headers=alice)
    original = await export(client, alice, conv["id"])

    imported = await client.post("/v1/conversations/import", json=original, headers=alice)
    assert imported.status_code == 201, imported.text
    new_id = imported.json()["id"]
    assert new_id != conv["id"]
    assert imported.json()["source_id"] == conv["id"]
    assert imported.json()["message_count"] == len(original["messages"])
    again = await export(client, alice, new_id)
    assert comparable(again) == comparable(original)
    assert [t["status"] for t in again["turns"]] == [t["status"] for t in original["turns"]]
    # The reply still points at its (new) turn.
    assert again["messages"][-1]["turn_id"] == again["turns"][0]["id"]

    duplicate = await client.post("/v1/conversations/import", json=original, headers=alice)
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "already_imported"
    assert duplicate.json()["conversation_id"] == new_id

    # The imported conversation is a normal one: a turn continues it.
    more = await client.post(
        f"/v1/conversations/{new_id}/turns",
        json={"messages": [{"role": "user", "content": "and then?"}]},
        headers=alice,
    )
    assert more.status_code == 201, more.text
    assert more.json()["reply"]["seq"] == len(original["messages"]) + 2


def _transcript(messages: list[dict[str, Any]], **conversation: Any) -> dict[str, Any]:
    return {
        "format": "convstore.transcript",
        "version": 1,
        "conversation": {"id": "src-1", **conversation},
        "messages": messages,
        "turns": [],
    }


GOOD = {"seq": 1, "role": "user", "content": "hi"}
TREE = {"id": "a", "parent_id": None, "seq": 1, "role": "user", "content": "hi"}


def _tree(messages: list[dict[str, Any]], **conversation: Any) -> dict[str, Any]:
    return {**_transcript(messages, **conversation), "version": 2}


SUMMARY = {"id": "s1", "upto_seq": 1, "covers": [[1, 1]], "content": "They said hi.", "tokens": 9}


def _summarised(transcript: dict[str, Any], **summary: Any) -> dict[str, Any]:
    """The transcript with one context summary (``SUMMARY`` with the given fields)."""
    return {**transcript, "summaries": [{**SUMMARY, **summary}]}


@pytest.mark.parametrize(
    ("transcript", "where"),
    [
        ({**_transcript([GOOD]), "format": "other"}, "$.format"),
        ({**_transcript([GOOD]), "version": 2}, "$.version"),
        (_transcript([{**GOOD, "role": "wizard"}]), "$.messages[0].role"),
        (_transcript([GOOD, {**GOOD, "seq": 3}]), "$.messages[1].seq"),
        (_transcript([GOOD, GOOD]), "$.messages[1].seq"),
        (_transcript([{**GOOD, "seq": "1"}]), "$.messages[0].seq"),
        (_transcript([{**GOOD, "content": 5}]), "$.messages[0].content"),
        (_transcript([{"seq": 1, "role": "tool", "content": "x"}]), "$.messages[0]"),
        (_transcript([{**GOOD, "turn_id": "nope"}]), "$.messages[0].turn_id"),
        (_transcript([{**GOOD, "created_at": "yesterday"}]), "$.messages[0].created_at"),
        ({**_transcript([GOOD]), "exported_at": "2024-01-01T12:99:00Z"}, "$.exported_at"),
        (_transcript([GOOD], title=7), "$.conversation.title"),
        ({"format": "convstore.transcript", "version": 1}, "$"),
        ([1, 2], "$"),
        # Version 2: trees.
        (_tree([GOOD]), "$.version"),
        (_tree([TREE, GOOD]), "$.version"),
        (_transcript([{**GOOD, "parent_id": None}]), "$.messages[0]"),
        (_transcript([GOOD], head_id="a"), "$.conversation"),
        (_tree([TREE, TREE]), "$.messages[1].id"),
        (_tree([{**TREE, "id": "b", "parent_id": "a", "seq": 2}, TREE]), "$.messages[0].parent_id"),
        (_tree([TREE, {**TREE, "id": "b", "parent_id": "a"}]), "$.messages[1].seq"),
        (_tree([{**TREE, "seq": 2}]), "$.messages[0].seq"),
        (_tree([TREE], head_id="zz"), "$.conversation.head_id"),
        (_tree([{**TREE, "id": ""}]), "$.messages[0].id"),
        # Context summaries.
        (_summarised(_transcript([GOOD]), upto_id="a"), "$.summaries[0]"),
        (_summarised(_tree([TREE])), "$.summaries[0]"),
        (_summarised(_transcript([GOOD]), upto_seq=2), "$.summaries[0].upto_seq"),
        (_summarised(_transcript([GOOD]), covers=[[1, 2]]), "$.summaries[0].covers[0]"),
        (_summarised(_transcript([GOOD]), covers=[[1]]), "$.summaries[0].covers[0]"),
        (_summarised(_transcript([GOOD]), turn_id="nope"), "$.summaries[0].turn_id"),
        (_summarised(_transcript([GOOD]), content="a\u0000b"), "$.summaries[0].content"),
        (_summarised(_transcript([GOOD]), created_at="soon"), "$.summaries[0].created_at"),
        (_summarised(_tree([TREE]), upto_id="zz"), "$.summaries[0].upto_id"),
        (
            _summarised(
                _tree([TREE, {**TREE, "id": "b", "parent_id": "a", "seq": 2}]),
                upto_id="a",
                upto_seq=2,
            ),
            "$.summaries[0].upto_seq",
        ),
        (
            {**_transcript([GOOD]), "summaries": [SUMMARY, SUMMARY]},
            "$.summaries[1].id",
        ),
        ({**_transcript([GOOD]), "summaries": [{"id": "s", "upto_seq": 1}]}, "$.summaries[0]"),
    ],
)
async def test_invalid_transcripts_say_what_and_where_and_store_nothing(
    client: Client, alice: dict[str, str], transcript: Any, where: str
) -> None:
    response = await client.post("/v1/conversations/import", json=transcript, headers=alice)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_transcript"
    assert any(e["path"].startswith(where) for e in problem["errors"]), problem["errors"]
    assert (await client.get("/v1/conversations", headers=alice)).json()["data"] == []


async def test_bulk_export_streams_only_the_tenants_conversations(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    ids = [
        (
            await create(
                client, alice, title=f"a{i}", messages=[{"role": "user", "content": f"m{i}"}]
            )
        )["id"]
        for i in range(5)
    ]
    await create(client, bob, title="bob's")
    response = await client.get("/v1/export", headers=alice)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [t["conversation"]["id"] for t in lines] == ids
    for transcript in lines:
        assert list(VALIDATOR.iter_errors(transcript)) == []
    assert lines[2]["messages"][0]["content"] == "m2"


async def test_bulk_export_pages_through_many_batches(
    client: Client, alice: dict[str, str], store: Any
) -> None:
    from service.store import ConversationFilter

    for i in range(7):
        await store.create_conversation(
            "alice",
            title=f"c{i}",
            model="m",
            params={},
            metadata={},
            messages=[{"role": "user", "content": str(i)}],
        )
    seen = [
        rows.conversation.title
        async for rows in store.export_many(ConversationFilter(tenant="alice"), batch_size=2)
    ]
    assert seen == [f"c{i}" for i in range(7)]


async def test_fork_copies_history_up_to_a_message(
    client: Client, alice: dict[str, str], bob: dict[str, str]
) -> None:
    conv = await create(
        client,
        alice,
        title="Root",
        params={"top_p": 0.5},
        messages=[{"role": "user", "content": f"m{i}"} for i in range(1, 6)],
    )
    cid = conv["id"]
    fork = await client.post(
        f"/v1/conversations/{cid}/fork", json={"through_seq": 3}, headers=alice
    )
    assert fork.status_code == 201, fork.text
    forked = fork.json()
    assert forked["forked_from_id"] == cid
    assert forked["forked_through_seq"] == 3
    assert forked["message_count"] == 3
    assert forked["title"] == "Root"
    assert forked["params"] == {"top_p": 0.5}
    messages = (
        await client.get(f"/v1/conversations/{forked['id']}/messages", headers=alice)
    ).json()["data"]
    assert [(m["seq"], m["content"]) for m in messages] == [(1, "m1"), (2, "m2"), (3, "m3")]
    # The fork goes its own way; the original is untouched.
    await client.post(
        f"/v1/conversations/{forked['id']}/messages",
        json={"messages": [{"role": "user", "content": "new"}]},
        headers=alice,
    )
    original = (await client.get(f"/v1/conversations/{cid}", headers=alice)).json()
    assert original["message_count"] == 5

    whole = await client.post(f"/v1/conversations/{cid}/fork", headers=alice)
    assert whole.status_code == 201
    assert whole.json()["message_count"] == 5
    too_far = await client.post(
        f"/v1/conversations/{cid}/fork", json={"through_seq": 9}, headers=alice
    )
    assert too_far.status_code == 422
    assert (await client.post(f"/v1/conversations/{cid}/fork", headers=bob)).status_code == 404
    exported = await export(client, alice, forked["id"])
    assert exported["conversation"]["forked_from"] == {"conversation_id": cid, "through_seq": 3}


# ---- the round trip, over generated conversations ---------------------------------------


# Any unicode but NUL, which no text may hold (the API refuses it: see test_conversations).
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=conversations)
async def test_round_trip_property(
    client: Client, alice: dict[str, str], body: dict[str, Any]
) -> None:
    created = await client.post("/v1/conversations", json=body, headers=alice)
    assert created.status_code == 201, created.text
    original = await export(client, alice, created.json()["id"])
    assert list(VALIDATOR.iter_errors(original)) == []
    derived = ("seq", "created_at", "tokens", "tokens_exact")
    stored = [{k: v for k, v in m.items() if k not in derived} for m in original["messages"]]
    assert stored == body["messages"]

    imported = await client.post("/v1/conversations/import", json=original, headers=alice)
    assert imported.status_code == 201, imported.text
    again = await export(client, alice, imported.json()["id"])
    assert comparable(again) == comparable(original)


async def test_import_from_other_tools_over_the_api(
    client: Client, alice: dict[str, str], project_root: Any
) -> None:
    for source, sample in (
        ("chatgpt", "chatgpt_conversations.json"),
        ("openwebui", "openwebui_export.json"),
        ("librechat", "librechat_export.json"),
    ):
        data = json.loads((project_root / "tests" / "samples" / sample).read_text())
        first = await client.post(f"/v1/conversations/import/{source}", json=data, headers=alice)
        assert first.status_code == 201, first.text
        created = first.json()["data"]
        assert created
        for conversation in created:
            assert conversation["source_id"].startswith(f"{source}:")
            assert conversation["model"] == "grok-4"  # the other tool's model is not an xAI one
            assert conversation["metadata"]["imported_from"] == source
            exported = await export(client, alice, conversation["id"])
            assert list(VALIDATOR.iter_errors(exported)) == []
            assert exported["messages"]
        again = await client.post(f"/v1/conversations/import/{source}", json=data, headers=alice)
        assert again.status_code == 201
        assert again.json()["data"] == []
        assert sorted(again.json()["already_imported"]) == sorted(c["source_id"] for c in created)
    bad = await client.post(
        "/v1/conversations/import/chatgpt", json={"not": "a list"}, headers=alice
    )
    assert bad.status_code == 422
    assert "chatgpt" in bad.json()["detail"]
    unknown = await client.post("/v1/conversations/import/othertool", json=[], headers=alice)
    assert unknown.status_code == 422


# ---- trees (version 2) ------------------------------------------------------------------


def shape(transcript: dict[str, Any]) -> tuple[Any, ...]:
    """What an import keeps of a transcript, version 1 or 2, with each message's parent and the
    head as positions in the list: ids are new, and a tree that is one line exports as a line."""
    conversation, messages = comparable(transcript)
    conversation.pop("head_id", None)
    # Sizes in tokens are the store's (an estimate where the transcript gives none).
    derived = ("parent_id", "created_at", "tokens", "tokens_exact")
    kept = [{k: v for k, v in m.items() if k not in derived} for m in messages]
    if transcript["version"] == 1:
        return conversation, kept, list(range(-1, len(messages) - 1)), len(messages) - 1
    position = {m["id"]: index for index, m in enumerate(transcript["messages"])}
    parents = [position.get(m["parent_id"], -1) for m in transcript["messages"]]
    return conversation, kept, parents, position[transcript["conversation"]["head_id"]]


def in_export_order(transcript: dict[str, Any]) -> dict[str, Any]:
    """A generated transcript with its messages in the order an export lists them: by seq, then
    in the order they were made (an import makes them in the transcript's order)."""
    ordered = sorted(enumerate(transcript["messages"]), key=lambda pair: (pair[1]["seq"], pair[0]))
    return {**transcript, "messages": [m for _, m in ordered]}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=trees())
async def test_tree_round_trip_property(
    client: Client, alice: dict[str, str], tree: dict[str, Any]
) -> None:
    assert list(VALIDATOR.iter_errors(tree)) == []
    tree["conversation"]["id"] = f"tree-{uuid.uuid4()}"  # examples share the database
    imported = await client.post("/v1/conversations/import", json=tree, headers=alice)
    assert imported.status_code == 201, imported.text
    first = await export(client, alice, imported.json()["id"])
    assert list(VALIDATOR.iter_errors(first)) == []
    made, got = shape(in_export_order(tree)), shape(first)
    assert got[1:] == made[1:]
    assert {k: got[0][k] for k in ("title", "params", "metadata")} == {
        k: made[0][k] for k in ("title", "params", "metadata")
    }
    # The head's path is the active path, as listed by the API.
    path = (
        await client.get(f"/v1/conversations/{imported.json()['id']}/messages", headers=alice)
    ).json()["data"]
    expected, at = [], got[3]
    while at >= 0:
        expected.append(got[1][at]["content"])
        at = got[2][at]
    assert [m["content"] for m in path] == expected[::-1]

    again = await client.post(
        "/v1/conversations/import",
        json={**first, "conversation": {**first["conversation"], "id": f"again-{uuid.uuid4()}"}},
        headers=alice,
    )
    assert again.status_code == 201, again.text
    second = await export(client, alice, again.json()["id"])
    assert shape(second)[1:] == shape(first)[1:]
    assert [m["created_at"] for m in second["messages"]] == [
        m["created_at"] for m in first["messages"]
    ]


async def test_a_branched_conversation_exports_as_a_tree(
    client: Client, alice: dict[str, str]
) -> None:
    conv = await create(client, alice, title="T", messages=RICH_HISTORY[:2])
    cid, (system, asked) = conv["id"], conv["messages"]
    await client.post(f"/v1/conversations/{cid}/turns", json={}, headers=alice)
    regenerated = await client.post(
        f"/v1/conversations/{cid}/turns", json={"parent_id": asked["id"]}, headers=alice
    )
    reply = regenerated.json()["reply"]
    transcript = await export(client, alice, cid)
    assert list(VALIDATOR.iter_errors(transcript)) == []
    assert transcript["version"] == 2
    assert transcript["conversation"]["head_id"] == reply["id"]
    assert [(m["id"], m["parent_id"], m["seq"]) for m in transcript["messages"]] == [
        (system["id"], None, 1),
        (asked["id"], system["id"], 2),
        (transcript["messages"][2]["id"], asked["id"], 3),
        (reply["id"], asked["id"], 3),
    ]
    markdown = await client.get(
        f"/v1/conversations/{cid}/export", params={"format": "markdown"}, headers=alice
    )
    assert "- messages: 3" in markdown.text
    assert "- on other branches: 1 messages" in markdown.text
    assert markdown.text.count(reply["content"]) == 1  # the two replies say the same
    # Once the other branch is deleted, the conversation is a line and exports as before.
    other = transcript["messages"][2]["id"]
    await client.delete(f"/v1/conversations/{cid}/messages/{other}", headers=alice)
    line = await export(client, alice, cid)
    assert line["version"] == 1
    assert "head_id" not in line["conversation"]
    assert all("id" not in m and "parent_id" not in m for m in line["messages"])


async def test_imported_trees_keep_every_branch_with_the_current_one_as_head(
    client: Client, alice: dict[str, str], project_root: Any
) -> None:
    for source, sample, last in (
        ("chatgpt", "chatgpt_conversations.json", "Currently about 18 \u00b0C with clear skies."),
        (
            "openwebui",
            "openwebui_export.json",
            "Once a day at room temperature, or weekly if it lives in the fridge.",
        ),
        (
            "librechat",
            "librechat_export.json",
            "Start at 60 to 62 % and add a spoonful more if the dough feels stiff.",
        ),
    ):
        data = json.loads((project_root / "tests" / "samples" / sample).read_text())
        created = await client.post(f"/v1/conversations/import/{source}", json=data, headers=alice)
        assert created.status_code == 201, created.text
        cid = created.json()["data"][0]["id"]
        path = (await client.get(f"/v1/conversations/{cid}/messages", headers=alice)).json()
        assert path["data"][-1]["content"] == last
        assert (path["data"][-1]["sibling_index"], path["data"][-1]["sibling_count"]) == (2, 2)
        siblings = await client.get(
            f"/v1/conversations/{cid}/messages/{path['data'][-1]['id']}/siblings", headers=alice
        )
        assert len(siblings.json()["data"]) == 2
        exported = await export(client, alice, cid)
        assert exported["version"] == 2
        assert exported["conversation"]["head_id"] == path["data"][-1]["id"]


async def test_a_forks_origin_survives_export_and_import(
    client: Client, alice: dict[str, str]
) -> None:
    conv = await create(client, alice, messages=[{"role": "user", "content": "m"}] * 3)
    fork = await client.post(
        f"/v1/conversations/{conv['id']}/fork", json={"through_seq": 2}, headers=alice
    )
    assert fork.status_code == 201, fork.text
    original = await export(client, alice, fork.json()["id"])
    assert original["conversation"]["forked_from"] == {
        "conversation_id": conv["id"],
        "through_seq": 2,
    }
    imported = await client.post("/v1/conversations/import", json=original, headers=alice)
    assert imported.status_code == 201, imported.text
    assert imported.json()["forked_from_id"] == conv["id"]
    assert imported.json()["forked_through_seq"] == 2
    again = await export(client, alice, imported.json()["id"])
    assert again["conversation"]["forked_from"] == original["conversation"]["forked_from"]
    assert comparable(again) == comparable(original)

    not_an_id = {**original, "conversation": {**original["conversation"], "id": "other"}}
    not_an_id["conversation"]["forked_from"] = {"conversation_id": "nope", "through_seq": 2}
    refused = await client.post("/v1/conversations/import", json=not_an_id, headers=alice)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["path"] == "$.conversation.forked_from.conversation_id"


def test_the_schema_states_the_import_limits() -> None:
    from service.schemas import MAX_CONTENT_CHARS

    schema = transcripts.schema()
    assert transcripts.MAX_IMPORT_CHARS == MAX_CONTENT_CHARS
    assert schema["properties"]["messages"]["maxItems"] == transcripts.MAX_IMPORT_MESSAGES
    assert schema["properties"]["turns"]["maxItems"] == transcripts.MAX_IMPORT_MESSAGES
    defs = schema["$defs"]
    text_part = defs["part"]["allOf"][0]["then"]["properties"]["text"]
    for limited in (
        defs["contentValue"],
        text_part,
        defs["message"]["properties"]["reasoning_content"],
        defs["toolCall"]["properties"]["function"]["properties"]["arguments"],
    ):
        assert limited["maxLength"] == transcripts.MAX_IMPORT_CHARS


@pytest.mark.parametrize("version", [1, 2])
async def test_a_transcripts_summaries_import_and_export_again(
    client: Client, alice: dict[str, str], version: int
) -> None:
    """A transcript with summaries (either version) fits the schema, imports, and exports with
    them again: new ids, the same seqs, covered ranges, text and size."""
    if version == 1:
        given = _summarised(_transcript([GOOD, {**GOOD, "seq": 2, "content": "again"}]))
    else:
        second = {**TREE, "id": "b", "parent_id": "a", "seq": 2, "content": "again"}
        given = _summarised(_tree([TREE, second], head_id="b"), upto_id="a")
    given["summaries"][0]["created_at"] = "2026-01-02T03:04:05Z"
    assert list(VALIDATOR.iter_errors(given)) == []
    assert list(VALIDATOR.iter_errors({k: v for k, v in given.items() if k != "summaries"})) == []
    imported = await client.post("/v1/conversations/import", json=given, headers=alice)
    assert imported.status_code == 201, imported.text
    exported = await export(client, alice, imported.json()["id"])
    assert list(VALIDATOR.iter_errors(exported)) == []
    (summary,) = exported["summaries"]
    assert summary["id"] != "s1"
    assert "turn_id" not in summary
    assert (summary["upto_seq"], summary["covers"], summary["content"], summary["tokens"]) == (
        1,
        [[1, 1]],
        "They said hi.",
        9,
    )
    assert summary["created_at"].startswith("2026-01-02T03:04:05")
    assert exported["messages"][0]["content"] == "hi"
