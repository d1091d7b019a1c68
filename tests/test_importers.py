"""Importers: ChatGPT, Open WebUI and LibreChat exports to convstore transcripts (pure
functions)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from service import transcripts
from service.importers import (
    SOURCES,
    Converted,
    ImportFormatError,
    convert,
    from_chatgpt,
    from_librechat,
    from_openwebui,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "samples"
EXPORTED_AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SCHEMA = json.loads((ROOT / "service" / "transcript.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def load(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text("utf-8"))


def chatgpt_sample() -> Any:
    return load("chatgpt_conversations.json")


def openwebui_sample() -> Any:
    return load("openwebui_export.json")


def librechat_sample() -> Any:
    return load("librechat_export.json")


SAMPLES_OF = {
    "chatgpt": chatgpt_sample,
    "openwebui": openwebui_sample,
    "librechat": librechat_sample,
}


def assert_valid(result: Converted) -> None:
    """Every transcript passes the shipped JSON Schema and what an import checks besides (a
    line numbered 1..n; a tree's parents first, seqs after their parents', a head there)."""
    for transcript in result.transcripts:
        errors = [e.message for e in VALIDATOR.iter_errors(transcript)]
        assert errors == []
        assert list(transcripts.problems(transcript)) == []
        assert all(m["role"] != "tool" for m in transcript["messages"])


def active_path(transcript: dict[str, Any]) -> list[Any]:
    """The contents of the messages from the first to the head."""
    return [m["content"] for m in transcripts.active_path(transcript)]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# --------------------------------------------------------------------------- minimal builders


def gpt_message(role: str, content: Any, t: float | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": extra.pop("id", None),
        "author": {"role": role, "name": extra.pop("name", None), "metadata": {}},
        "create_time": t,
        "update_time": None,
        "content": content,
        "status": "finished_successfully",
        "end_turn": None,
        "weight": 1.0,
        "metadata": extra.pop("metadata", {}),
        "recipient": extra.pop("recipient", "all"),
    }
    message.update(extra)
    return message


def gpt_text(*parts: str) -> dict[str, Any]:
    return {"content_type": "text", "parts": list(parts)}


def gpt_conversation(*messages: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """A linear ChatGPT conversation: a root node without a message, then ``messages``."""
    ids = ["root"] + [f"n{i}" for i in range(1, len(messages) + 1)]
    mapping: dict[str, Any] = {}
    for i, node_id in enumerate(ids):
        message = None if i == 0 else messages[i - 1]
        if message is not None and message.get("id") is None:
            message["id"] = node_id
        mapping[node_id] = {
            "id": node_id,
            "message": message,
            "parent": ids[i - 1] if i else None,
            "children": [ids[i + 1]] if i + 1 < len(ids) else [],
        }
    conversation: dict[str, Any] = {
        "title": "Small talk",
        "create_time": 1700000000.0,
        "update_time": 1700000100.0,
        "mapping": mapping,
        "current_node": ids[-1],
        "conversation_id": "conv-1",
        "id": "conv-1",
        "default_model_slug": None,
    }
    conversation.update(extra)
    return conversation


def owui_message(
    mid: str, parent: str | None, role: str, content: Any, ts: int | None = 1717000010, **extra: Any
) -> dict[str, Any]:
    return {
        "id": mid,
        "parentId": parent,
        "childrenIds": [],
        "role": role,
        "content": content,
        "timestamp": ts,
        **extra,
    }


def owui_record(*messages: dict[str, Any], **chat_extra: Any) -> dict[str, Any]:
    """A linear Open WebUI chat record whose history ends at the last message."""
    chat: dict[str, Any] = {
        "id": "",
        "title": "Chat",
        "models": ["llama3.1:8b"],
        "params": {},
        "history": {
            "messages": {m["id"]: m for m in messages},
            "currentId": messages[-1]["id"] if messages else None,
        },
        "messages": list(messages),
        "tags": [],
        "timestamp": 1717000000000,
    }
    chat.update(chat_extra)
    return {
        "id": "chat-1",
        "user_id": "user-1",
        "title": "Chat",
        "chat": chat,
        "updated_at": 1717000600,
        "created_at": 1717000000,
        "share_id": None,
        "archived": False,
        "pinned": False,
        "meta": {},
        "folder_id": None,
    }


# --------------------------------------------------------------------------- ChatGPT sample


def test_chatgpt_sample_imports_the_whole_tree_with_the_current_branch_as_head() -> None:
    result = from_chatgpt(chatgpt_sample(), exported_at=EXPORTED_AT)

    assert_valid(result)
    assert len(result.transcripts) == 2
    lisbon, python = result.transcripts
    assert lisbon["format"] == "convstore.transcript"
    assert lisbon["version"] == 2
    assert lisbon["exported_at"] == "2026-11-28T12:00:00Z"
    assert lisbon["turns"] == []
    assert lisbon["conversation"] == {
        "id": "6561a2b0-0c4e-8003-9a47-7c2f1e0d4b11",
        "title": "Trip to Lisbon",
        "model": "gpt-4o",
        "params": {},
        "metadata": {
            "imported_from": "chatgpt",
            "source_id": "6561a2b0-0c4e-8003-9a47-7c2f1e0d4b11",
            "current_node": "a-3b",
            "source_message_ids": ["ctx-1", "u-1", "a-1", "u-2", "a-3a", "a-3b"],
        },
        "created_at": "2023-11-14T22:13:20Z",
        "updated_at": "2023-11-14T22:16:40.250000Z",
        "head_id": "a-3b",
    }
    assert lisbon["messages"] == [
        # The custom instructions; hidden in the export, but what the model was told.
        {"id": "ctx-1", "parent_id": None, "seq": 1, "role": "system",
         "content": "Answer concisely.", "created_at": "2023-11-14T22:13:20Z"},
        {"id": "u-1", "parent_id": "ctx-1", "seq": 2, "role": "user",
         "content": [image("file-service://file-Lx1tram"), text("What city is this?")],
         "created_at": "2023-11-14T22:13:30Z"},
        {"id": "a-1", "parent_id": "u-1", "seq": 3, "role": "assistant",
         "content": "That looks like Lisbon \u2014 the yellow tram is a giveaway.",
         "model": "gpt-4o", "created_at": "2023-11-14T22:13:35.500000Z"},
        {"id": "u-2", "parent_id": "a-1", "seq": 4, "role": "user",
         "content": "What's the weather there now?", "created_at": "2023-11-14T22:15:00Z"},
        # The first answer and the regenerated one (current_node, the head); the browsing
        # call and its result between the question and them are left out.
        {"id": "a-3a", "parent_id": "u-2", "seq": 5, "role": "assistant",
         "content": "It's 18 \u00b0C and sunny.", "model": "gpt-4o",
         "created_at": "2023-11-14T22:15:10Z"},
        {"id": "a-3b", "parent_id": "u-2", "seq": 5, "role": "assistant",
         "content": "Currently about 18 \u00b0C with clear skies.", "model": "gpt-4o",
         "created_at": "2023-11-14T22:15:30Z"},
    ]  # fmt: skip

    # A conversation without branches is a line, as before.
    assert python["version"] == 1
    assert python["conversation"]["title"] == "Reverse a string"
    # No default_model_slug: the last assistant message's model_slug.
    assert python["conversation"]["model"] == "o4-mini"
    assert python["conversation"]["created_at"] == "2024-03-09T16:00:00Z"
    assert python["conversation"]["updated_at"] == "2024-03-09T16:01:00Z"
    assert python["messages"] == [
        {"seq": 1, "role": "user", "content": "Write a Python function that reverses a string.",
         "created_at": "2024-03-09T16:00:01Z"},
        {"seq": 2, "role": "assistant",
         "content": "def reverse(s: str) -> str:\n    return s[::-1]",
         "model": "o4-mini", "created_at": "2024-03-09T16:00:05Z"},
        {"seq": 3, "role": "user", "content": "Thanks!", "created_at": "2024-03-09T16:00:50Z"},
        {"seq": 4, "role": "assistant", "content": "You're welcome.\nHappy coding!",
         "model": "o4-mini", "created_at": "2024-03-09T16:00:51Z"},
    ]  # fmt: skip

    assert result.skipped == [
        "conversation 'Trip to Lisbon': 1 hidden system message, 1 tool call and 1 tool message "
        "skipped",
        "conversation 'Reverse a string': 1 'thoughts' message skipped",
    ]


def test_chatgpt_follows_whichever_branch_is_current() -> None:
    data = chatgpt_sample()
    data[0]["current_node"] = "a-3a"
    lisbon = from_chatgpt(data).transcripts[0]
    assert lisbon["conversation"]["head_id"] == "a-3a"
    assert active_path(lisbon)[-1] == "It's 18 \u00b0C and sunny."
    assert len(lisbon["messages"]) == 6

    data[0]["current_node"] = "a-1"  # mid-conversation: the head is there, all is kept
    lisbon = from_chatgpt(data).transcripts[0]
    assert [m["role"] for m in transcripts.active_path(lisbon)] == ["system", "user", "assistant"]
    assert len(lisbon["messages"]) == 6
    assert lisbon["conversation"]["metadata"]["current_node"] == "a-1"

    data[0]["current_node"] = "t-2"  # a tool result, left out: its nearest kept ancestor
    assert from_chatgpt(data).transcripts[0]["conversation"]["head_id"] == "u-2"


def test_chatgpt_message_details() -> None:
    conversation = gpt_conversation(
        gpt_message("system", gpt_text("You are terse."), None),
        gpt_message("user", gpt_text("hi"), None, name="ann"),
        gpt_message("assistant", gpt_text("Hello", "there"), 1700000050.25,
                    metadata={"model_slug": "gpt-4o-mini"}),
        gpt_message("user", {"content_type": "multimodal_text", "parts": [
            "", {"content_type": "audio_transcription", "text": "what's this", "direction": "in"},
            {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://file_1"},
            {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-2",
             "width": 10, "height": 10},
        ]}, 1700000060),
        gpt_message("assistant", gpt_text("  "), 1700000061,
                    metadata={"model_slug": "gpt-4o-mini"}),
        gpt_message("user", {"content_type": "user_editable_context", "user_profile": "",
                             "user_instructions": ""}, None,
                    metadata={"is_visually_hidden_from_conversation": True}),
        gpt_message("user", gpt_text("secret"), 1700000070,
                    metadata={"is_visually_hidden_from_conversation": True}),
        gpt_message("critic", gpt_text("meh"), 1700000071),
        None,  # a node without a message is passed over silently
        conversation_id=None,
        id="only-id",
        title=None,
        update_time=None,
    )  # fmt: skip
    result = from_chatgpt([conversation], exported_at=EXPORTED_AT)
    assert_valid(result)
    (transcript,) = result.transcripts
    assert transcript["conversation"]["id"] == "only-id"
    assert transcript["conversation"]["title"] is None
    assert transcript["conversation"]["model"] == "gpt-4o-mini"
    assert transcript["conversation"]["updated_at"] == transcript["conversation"]["created_at"]
    assert transcript["messages"] == [
        {"seq": 1, "role": "system", "content": "You are terse.",
         "created_at": "2023-11-14T22:13:20Z"},
        {"seq": 2, "role": "user", "content": "hi", "name": "ann",
         "created_at": "2023-11-14T22:13:20Z"},
        {"seq": 3, "role": "assistant", "content": "Hello\nthere", "model": "gpt-4o-mini",
         "created_at": "2023-11-14T22:14:10.250000Z"},
        {"seq": 4, "role": "user",
         "content": [text("what's this"), image("file-service://file-2")],
         "created_at": "2023-11-14T22:14:20Z"},
    ]  # fmt: skip
    assert result.skipped == [
        "conversation 'only-id': 1 'audio_asset_pointer' part, 1 empty assistant message, "
        "1 empty custom-instructions message, 1 hidden user message and 1 'critic' role message "
        "skipped"
    ]


def test_chatgpt_user_profile_and_instructions_both_go_into_the_system_message() -> None:
    context = {
        "content_type": "user_editable_context",
        "user_profile": "I am a chemist.",
        "user_instructions": "Use SI units.",
    }
    conversation = gpt_conversation(
        gpt_message("user", context, metadata={"is_visually_hidden_from_conversation": True}),
        gpt_message("user", gpt_text("Boiling point of water?"), 1700000001),
    )
    (transcript,) = from_chatgpt([conversation]).transcripts
    assert transcript["messages"][0]["role"] == "system"
    assert transcript["messages"][0]["content"] == "I am a chemist.\n\nUse SI units."


def test_chatgpt_default_model_slug_wins_over_message_slugs() -> None:
    conversation = gpt_conversation(
        gpt_message("user", gpt_text("q"), 1700000001),
        gpt_message("assistant", gpt_text("a"), 1700000002, metadata={"model_slug": "o3"}),
        default_model_slug="gpt-4o",
    )
    (transcript,) = from_chatgpt([conversation]).transcripts
    assert transcript["conversation"]["model"] == "gpt-4o"
    assert transcript["messages"][1]["model"] == "o3"


def test_chatgpt_conversation_without_messages_is_skipped_with_a_note() -> None:
    empty = gpt_conversation(
        gpt_message(
            "system", gpt_text(""), metadata={"is_visually_hidden_from_conversation": True}
        ),
        title="Nothing here",
    )
    only_root = gpt_conversation(title="", conversation_id="conv-2")
    kept = gpt_conversation(gpt_message("user", gpt_text("hello"), 1700000001))
    result = from_chatgpt([empty, only_root, kept])
    assert [t["conversation"]["title"] for t in result.transcripts] == ["Small talk"]
    assert result.skipped == [
        "conversation 'Nothing here': 1 hidden system message skipped",
        "conversation 'Nothing here': skipped, no messages to import",
        "conversation 'conv-2': skipped, no messages to import",
    ]


def test_chatgpt_empty_file_gives_nothing() -> None:
    assert from_chatgpt([]) == Converted(transcripts=[], skipped=[])


def test_exported_at_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    (transcript,) = from_chatgpt([gpt_conversation(gpt_message("user", gpt_text("x")))]).transcripts
    stamp = transcript["exported_at"]
    assert stamp.endswith("Z")
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before <= moment <= datetime.now(UTC) + timedelta(seconds=1)


def test_chatgpt_cycle_in_parent_chain_is_reported() -> None:
    conversation = gpt_conversation(
        gpt_message("user", gpt_text("a"), 1700000001),
        gpt_message("assistant", gpt_text("b"), 1700000002),
    )
    conversation["mapping"]["n1"]["parent"] = "n2"  # n2 -> n1 -> n2 -> ...
    with pytest.raises(ImportFormatError, match=r"^conversation 1: .*'n\d'.*cycle"):
        from_chatgpt([conversation])


def test_chatgpt_self_parent_is_a_cycle() -> None:
    conversation = gpt_conversation(gpt_message("user", gpt_text("a"), 1700000001))
    conversation["mapping"]["n1"]["parent"] = "n1"
    with pytest.raises(ImportFormatError, match="cycle"):
        from_chatgpt([gpt_conversation(), conversation])


def _break(conversation: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with ``...`` delete) the item at a dotted path."""
    *parents, last = path.split(".")
    target: Any = conversation
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value


CHATGPT_MALFORMED = [
    ("current_node", ..., r"^conversation 2: has no current_node$"),
    ("current_node", None, r"^conversation 2: current_node must be a string, got null$"),
    ("current_node", "nope", r"^conversation 2: current_node 'nope' is not in the mapping$"),
    ("mapping", ..., r"^conversation 2: has no mapping$"),
    ("mapping", [], r"^conversation 2: mapping must be an object, got a list$"),
    ("create_time", "yesterday", r"^conversation 2: create_time must be a number .*'yesterday'"),
    ("create_time", ..., r"^conversation 2: has no create_time$"),
    ("update_time", 1e300, r"^conversation 2: update_time is not a usable time"),
    ("title", 7, r"^conversation 2: title must be a string or null, got a number$"),
    ("mapping.n1.parent", "ghost",
     r"^conversation 2: mapping node 'n1': parent 'ghost' is not one of the mapping nodes$"),
    ("mapping.n1.parent", 5,
     r"^conversation 2: mapping node 'n1': parent must be a string or null, got a number$"),
    ("mapping.n2", "node", r"^conversation 2: mapping node 'n2' must be an object, got a string$"),
    ("mapping.n1.message", [], r"^conversation 2: mapping node 'n1': message must be an object"),
    ("mapping.n1.message.author", None,
     r"^conversation 2: mapping node 'n1': message.author must be an object, got null$"),
    ("mapping.n1.message.author.role", ..., r"message.author.role must be a string, got null$"),
    ("mapping.n1.message.content", ..., r"'n1': message.content must be an object, got null$"),
    ("mapping.n1.message.content.content_type", 3, r"content_type must be a string"),
    ("mapping.n1.message.content.parts", "hi", r"'n1': message.content.parts must be a list"),
    ("mapping.n1.message.content.parts", [None],
     r"'n1': message.content.parts\[0\] must be a string, got null$"),
    ("mapping.n1.message.create_time", True, r"'n1': create_time must be a number"),
    ("mapping.n1.message.metadata", [], r"'n1': message.metadata must be an object"),
    ("mapping.n2.message.content",
     {"content_type": "multimodal_text", "parts": [{"content_type": "image_asset_pointer"}]},
     r"'n2': message.content.parts\[0\].asset_pointer must be a non-empty string$"),
    ("mapping.n2.message.content", {"content_type": "multimodal_text", "parts": [3]},
     r"'n2': message.content.parts\[0\] \(a string or an object\) must be an object"),
    ("mapping.n2.message.content", {"content_type": "code"},
     r"'n2': message.content.text must be a string, got null$"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "pattern"), CHATGPT_MALFORMED)
def test_chatgpt_malformed_conversations_are_reported(path: str, value: Any, pattern: str) -> None:
    good = gpt_conversation(gpt_message("user", gpt_text("ok"), 1700000001))
    bad = gpt_conversation(
        gpt_message("user", gpt_text("question"), 1700000001),
        gpt_message("assistant", gpt_text("answer"), 1700000002),
    )
    _break(bad, path, value)
    with pytest.raises(ImportFormatError, match=pattern):
        from_chatgpt([good, bad])


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"mapping": {}}, r"^conversations.json: the top level must be a list, got an object$"),
        (None, r"^conversations.json: the top level must be a list, got null$"),
        ("[]", r"must be a list, got a string$"),
        ([[]], r"^conversation 1: the conversation must be an object, got a list$"),
        ([{}], r"^conversation 1: has no conversation_id or id"),
        ([{"conversation_id": "", "id": 5}], r"^conversation 1: has no conversation_id or id"),
    ],
)
def test_chatgpt_malformed_files_are_reported(data: Any, pattern: str) -> None:
    with pytest.raises(ImportFormatError, match=pattern):
        from_chatgpt(data)


# --------------------------------------------------------------------------- Open WebUI sample


def test_openwebui_sample_imports_the_whole_tree_with_the_current_branch_as_head() -> None:
    result = from_openwebui(openwebui_sample(), exported_at=EXPORTED_AT)

    assert_valid(result)
    assert len(result.transcripts) == 2
    sourdough, plant = result.transcripts
    assert sourdough["version"] == 2
    assert sourdough["exported_at"] == "2026-11-28T12:00:00Z"
    assert sourdough["turns"] == []
    assert sourdough["conversation"] == {
        "id": "3f1c9a2e-5b7d-4c11-9e0a-2d6b8f4a1c01",
        "title": "Sourdough starter",
        "model": "llama3.1:8b",
        "params": {"temperature": 0.7, "seed": 42},
        "metadata": {
            "imported_from": "openwebui",
            "source_id": "3f1c9a2e-5b7d-4c11-9e0a-2d6b8f4a1c01",
            "current_id": "a2b",
            "source_message_ids": [None, "u1", "a1", "u2", "a2a", "a2b"],
            "models": ["llama3.1:8b"],
            "openwebui_params": {"num_ctx": 4096, "system": "You are a friendly baker."},
            "tags": ["baking"],
            "user_id": "7d0e4c2a-1111-4a2b-8c3d-000000000001",
            "pinned": True,
        },
        "created_at": "2024-05-29T16:26:40Z",
        "updated_at": "2024-05-29T16:36:40Z",
        "head_id": "a2b",
    }
    assert sourdough["messages"] == [
        # The chat's system prompt (params.system), as Open WebUI sent it to the model: above
        # every first message.
        {"id": "system", "parent_id": None, "seq": 1, "role": "system",
         "content": "You are a friendly baker.", "created_at": "2024-05-29T16:26:40Z"},
        {"id": "u1", "parent_id": "system", "seq": 2, "role": "user",
         "content": "How do I feed a sourdough starter?", "created_at": "2024-05-29T16:26:50Z"},
        {"id": "a1", "parent_id": "u1", "seq": 3, "role": "assistant",
         "content": "Discard half, then feed it equal weights of flour and water.",
         "model": "llama3.1:8b", "created_at": "2024-05-29T16:27:00Z"},
        {"id": "u2", "parent_id": "a1", "seq": 4, "role": "user", "content": "How often?",
         "created_at": "2024-05-29T16:28:20Z"},
        # The first answer and the regenerated one (currentId, the head).
        {"id": "a2a", "parent_id": "u2", "seq": 5, "role": "assistant", "content": "Every day.",
         "model": "llama3.1:8b", "created_at": "2024-05-29T16:28:30Z"},
        {"id": "a2b", "parent_id": "u2", "seq": 5, "role": "assistant",
         "content": "Once a day at room temperature, or weekly if it lives in the fridge.",
         "model": "llama3.1:8b", "created_at": "2024-05-29T16:28:50Z"},
    ]  # fmt: skip

    assert plant["version"] == 1
    assert plant["conversation"]["title"] == "Identify this plant"
    assert plant["conversation"]["model"] == "gpt-4o"
    assert plant["conversation"]["params"] == {}
    assert plant["conversation"]["created_at"] == "2024-06-10T06:13:20Z"
    assert plant["conversation"]["updated_at"] == "2024-06-10T06:14:11Z"
    assert plant["messages"] == [
        {"seq": 1, "role": "user",
         "content": [text("What plant is this?"), image("data:image/png;base64,iVBORw0KGgo=")],
         "created_at": "2024-06-10T06:13:25Z"},
        {"seq": 2, "role": "assistant", "content": "It looks like a Monstera deliciosa.",
         "model": "gpt-4o", "created_at": "2024-06-10T06:13:32Z"},
        {"seq": 3, "role": "user", "content": "Is it toxic to cats?",
         "created_at": "2024-06-10T06:14:10Z"},
    ]  # fmt: skip

    assert result.skipped == [
        "conversation 'Identify this plant': 1 'file' attachment and 1 empty assistant message "
        "skipped"
    ]


def test_openwebui_follows_whichever_branch_is_current() -> None:
    data = openwebui_sample()
    data[0]["chat"]["history"]["currentId"] = "a2a"
    sourdough = from_openwebui(data).transcripts[0]
    assert sourdough["conversation"]["head_id"] == "a2a"
    assert active_path(sourdough)[-1] == "Every day."
    # chat.messages (the display list) is ignored when there is a history.
    assert len(sourdough["messages"]) == 6


def test_openwebui_accepts_a_single_record_and_a_bare_chat() -> None:
    record = openwebui_sample()[0]
    from_list = from_openwebui([record], exported_at=EXPORTED_AT)
    from_record = from_openwebui(copy.deepcopy(record), exported_at=EXPORTED_AT)
    assert from_record == from_list

    bare = copy.deepcopy(record["chat"])
    bare["id"] = "bare-1"
    (transcript,) = from_openwebui(bare, exported_at=EXPORTED_AT).transcripts
    assert transcript["conversation"]["id"] == "bare-1"
    assert transcript["conversation"]["title"] == "Sourdough starter"
    # No record: the chat's millisecond timestamp is the creation time.
    assert transcript["conversation"]["created_at"] == "2024-05-29T16:26:40.123000Z"
    assert transcript["messages"][0]["created_at"] == "2024-05-29T16:26:40.123000Z"
    assert transcript["messages"][1:] == from_list.transcripts[0]["messages"][1:]


def test_openwebui_without_history_uses_chat_messages_in_order() -> None:
    record = owui_record(
        owui_message("m1", None, "user", "first", 1717000001),
        owui_message("m2", "m1", "assistant", "second", 1717000002, model="qwen2.5"),
    )
    del record["chat"]["history"]
    record["chat"]["models"] = []
    result = from_openwebui([record])
    assert_valid(result)
    (transcript,) = result.transcripts
    assert [(m["role"], m["content"]) for m in transcript["messages"]] == [
        ("user", "first"),
        ("assistant", "second"),
    ]
    # No chat.models: the last assistant message's model.
    assert transcript["conversation"]["model"] == "qwen2.5"
    assert transcript["messages"][1]["model"] == "qwen2.5"


def test_openwebui_timestamps_params_and_roles() -> None:
    record = owui_record(
        owui_message("m1", None, "system", "Be brief.", 1717000001000),  # milliseconds
        owui_message("m2", "m1", "user", "hi", None),  # no timestamp: the chat's creation
        owui_message("m3", "m2", "tool", "ignored", 1717000003),
        owui_message("m4", "m3", "assistant", "hello", 1717000004, model="llama3.1:8b"),
        params={
            "temperature": 0.2,
            "top_p": 1,
            "max_tokens": 256,
            "seed": None,
            "stop": ["\n\n"],
            "num_ctx": 2048,
            "system": "",
        },
    )
    record["created_at"] = 1717000000000  # milliseconds too
    record["updated_at"] = 1717000600
    result = from_openwebui([record])
    assert_valid(result)
    (transcript,) = result.transcripts
    conversation = transcript["conversation"]
    assert conversation["created_at"] == "2024-05-29T16:26:40Z"
    assert conversation["updated_at"] == "2024-05-29T16:36:40Z"
    assert conversation["params"] == {"temperature": 0.2, "top_p": 1, "max_tokens": 256}
    assert conversation["metadata"]["openwebui_params"] == {
        "stop": ["\n\n"],
        "num_ctx": 2048,
        "system": "",
    }
    assert transcript["messages"] == [
        {"seq": 1, "role": "system", "content": "Be brief.", "created_at": "2024-05-29T16:26:41Z"},
        {"seq": 2, "role": "user", "content": "hi", "created_at": "2024-05-29T16:26:40Z"},
        {"seq": 3, "role": "assistant", "content": "hello", "model": "llama3.1:8b",
         "created_at": "2024-05-29T16:26:44Z"},
    ]  # fmt: skip
    assert result.skipped == ["conversation 'Chat': 1 'tool' role message skipped"]


def test_openwebui_empty_chat_is_skipped_with_a_note() -> None:
    empty = owui_record()
    empty["title"] = "New Chat"
    result = from_openwebui([empty])
    assert result.transcripts == []
    assert result.skipped == ["conversation 'New Chat': skipped, no messages to import"]


def test_openwebui_cycle_in_parent_chain_is_reported() -> None:
    record = owui_record(
        owui_message("m1", "m3", "user", "a"),
        owui_message("m2", "m1", "assistant", "b"),
        owui_message("m3", "m2", "user", "c"),
    )
    with pytest.raises(ImportFormatError, match=r"^conversation 1: message 'm\d': .*cycle"):
        from_openwebui([record])


OPENWEBUI_MALFORMED = [
    ("chat", [], r"^conversation 2: chat must be an object, got a list$"),
    ("id", ..., r"^conversation 2: has no id"),
    ("title", ["x"], r"^conversation 2: title must be a string or null, got a list$"),
    ("created_at", "today", r"^conversation 2: created_at must be a number .*'today'"),
    ("updated_at", float("nan"), r"^conversation 2: updated_at is not a usable time: nan$"),
    ("updated_at", 10**400, r"^conversation 2: updated_at is not a usable time: 1000+\.\.\.$"),
    ("chat.models", "gpt-4o", r"^conversation 2: chat.models must be a list, got a string$"),
    ("chat.models", [None], r"^conversation 2: chat.models must be a list of non-empty strings$"),
    ("chat.params", [], r"^conversation 2: chat.params must be an object, got a list$"),
    ("chat.history", "h", r"^conversation 2: chat.history must be an object, got a string$"),
    ("chat.history.currentId", 3, r"chat.history.currentId must be a string, got a number$"),
    ("chat.history.currentId", "zz",
     r"^conversation 2: chat.history.currentId 'zz' is not in chat.history.messages$"),
    ("chat.history.messages", [], r"chat.history.messages must be an object, got a list$"),
    ("chat.history.messages.m2.parentId", "ghost",
     r"^conversation 2: message 'm2': parentId 'ghost' is not one of the messages$"),
    ("chat.history.messages.m1", None, r"^conversation 2: message 'm1' must be an object"),
    ("chat.history.messages.m1.role", ..., r"^conversation 2: message 'm1': role must be a"),
    ("chat.history.messages.m1.content", ["x"],
     r"^conversation 2: message 'm1': content must be a string, got a list$"),
    ("chat.history.messages.m1.timestamp", "noon", r"'m1': timestamp must be a number"),
    ("chat.history.messages.m1.files", {}, r"'m1': files must be a list, got an object$"),
    ("chat.history.messages.m1.files", [{"type": "image"}],
     r"'m1': files\[0\].url must be a non-empty string$"),
    ("chat.history.messages.m2.model", 4, r"'m2': model must be a string or null"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "pattern"), OPENWEBUI_MALFORMED)
def test_openwebui_malformed_chats_are_reported(path: str, value: Any, pattern: str) -> None:
    good = owui_record(owui_message("m1", None, "user", "ok"))
    bad = owui_record(
        owui_message("m1", None, "user", "question"),
        owui_message("m2", "m1", "assistant", "answer", model="llama3.1:8b"),
    )
    _break(bad, path, value)
    with pytest.raises(ImportFormatError, match=pattern):
        from_openwebui([good, bad])


def test_openwebui_absurd_timestamp_is_reported() -> None:
    record = owui_record(owui_message("m1", None, "user", "hi"))
    record["updated_at"] = 10**5000  # too long even to print
    with pytest.raises(ImportFormatError, match=r"updated_at is not a usable time: a very large"):
        from_openwebui(record)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (None, r"^Open WebUI export: the top level \(a list or an object\) must be a list"),
        ("chats", r"must be a list, got a string$"),
        ([1], r"^conversation 1: the chat must be an object, got a number$"),
        ({"title": "x"}, r"^conversation 1: has neither chat nor history/messages$"),
        ([{"chat": {"messages": []}}], r"^conversation 1: has no id"),
        ([{"id": "c", "chat": {"messages": [], "history": None}}], r"has no created_at"),
        ([{"id": "c", "chat": {"messages": ["hi"]}, "created_at": 1}],
         r"^conversation 1: chat.messages\[0\] must be an object, got a string$"),
    ],
)  # fmt: skip
def test_openwebui_malformed_files_are_reported(data: Any, pattern: str) -> None:
    with pytest.raises(ImportFormatError, match=pattern):
        from_openwebui(data)


# --------------------------------------------------------------------------- both


# --------------------------------------------------------------------------- LibreChat


def test_librechat_nested_export_imports_the_whole_tree_with_the_newest_leaf_as_head() -> None:
    result = from_librechat(librechat_sample(), exported_at=EXPORTED_AT)
    assert_valid(result)
    (bread,) = result.transcripts
    assert bread["version"] == 2
    assert bread["exported_at"] == "2026-11-28T12:00:00Z"
    ids = [f"b1d0c9e2-000{i}-4a6f-8e2d-3c4b5a69780{i}" for i in range(8)]
    assert bread["conversation"] == {
        "id": "8e2f5a10-4c3b-4d7e-9a61-0b5c2e7d9f01",
        "title": "Bread flour or all-purpose?",
        "model": "gpt-4o",
        "params": {"temperature": 0.6, "top_p": 1},
        "metadata": {
            "imported_from": "librechat",
            "source_id": "8e2f5a10-4c3b-4d7e-9a61-0b5c2e7d9f01",
            "endpoint": "openAI",
            "librechat_options": {
                "chatGptLabel": "Baker",
                "presence_penalty": 0,
                "frequency_penalty": 0,
                "resendFiles": True,
                "imageDetail": "auto",
                "endpoint": "openAI",
            },
            "source_message_ids": [None, *ids[1:7]],
        },
        "created_at": "2024-06-02T12:00:05.120000Z",
        "updated_at": "2024-06-02T12:02:10.500000Z",
        # The newest leaf: the second answer to "How much water then?".
        "head_id": ids[5],
    }
    assert bread["messages"] == [
        # The conversation's instructions (options.promptPrefix), above every first message.
        {"id": "system", "parent_id": None, "seq": 1, "role": "system",
         "content": "You are a patient home-baking coach.",
         "created_at": "2024-06-02T12:00:05.120000Z"},
        {"id": ids[1], "parent_id": "system", "seq": 2, "role": "user",
         "content": "Can I use all-purpose flour for a sandwich loaf?",
         "created_at": "2024-06-02T12:00:05.120000Z"},
        {"id": ids[2], "parent_id": ids[1], "seq": 3, "role": "assistant",
         "content": "Yes. The loaf will be a little softer and rise a little less than with "
         "bread flour.", "model": "gpt-4o", "created_at": "2024-06-02T12:00:09.380000Z"},
        {"id": ids[3], "parent_id": ids[2], "seq": 4, "role": "user",
         "content": "How much water then?", "created_at": "2024-06-02T12:01:30Z"},
        {"id": ids[4], "parent_id": ids[3], "seq": 5, "role": "assistant",
         "content": "About 62 % of the flour's weight.", "model": "gpt-4o",
         "created_at": "2024-06-02T12:01:33.250000Z"},
        {"id": ids[5], "parent_id": ids[3], "seq": 5, "role": "assistant",
         "content": "Start at 60 to 62 % and add a spoonful more if the dough feels stiff.",
         "model": "gpt-4o", "created_at": "2024-06-02T12:02:10.500000Z"},
        # Another question after the first answer; its reply failed (error) and is left out.
        {"id": ids[6], "parent_id": ids[2], "seq": 4, "role": "user",
         "content": "And for rolls?", "created_at": "2024-06-02T12:01:50Z"},
    ]  # fmt: skip
    assert result.skipped == [
        "conversation 'Bread flour or all-purpose?': 1 failed assistant message skipped"
    ]


def test_librechat_flat_export_with_content_parts_and_two_first_messages() -> None:
    result = from_librechat(load("librechat_flat_export.json"), exported_at=EXPORTED_AT)
    assert_valid(result)
    (moon,) = result.transcripts
    ids = [f"d2e3f4a5-000{i}-4b7c-9d8e-1f2a3b4c5d0{i}" for i in range(5)]
    assert moon["conversation"]["params"] == {"temperature": 1, "max_tokens": 800}
    assert moon["conversation"]["model"] == "o3-mini"
    assert moon["conversation"]["head_id"] == ids[4]
    assert moon["messages"] == [
        {"id": ids[1], "parent_id": None, "seq": 1, "role": "user",
         "content": "Why does the moon have phases?", "created_at": "2025-01-14T13:10:00Z"},
        # Newer exports hold content parts: the text, and the model's thinking.
        {"id": ids[2], "parent_id": ids[1], "seq": 2, "role": "assistant",
         "content": "We see different parts of its sunlit half as it orbits us.",
         "reasoning_content": "Phases come from the sun-lit half seen at different angles.",
         "model": "o3-mini", "created_at": "2025-01-14T13:10:04.250000Z"},
        # The first question, edited: a second first message.
        {"id": ids[3], "parent_id": None, "seq": 1, "role": "user",
         "content": "Why does the moon have phases? Explain it to a child.",
         "created_at": "2025-01-14T13:12:30Z"},
        {"id": ids[4], "parent_id": ids[3], "seq": 2, "role": "assistant",
         "content": "The moon is a ball lit by a torch, the sun; we walk around and see more "
         "or less of its bright side.", "model": "o3-mini",
         "created_at": "2025-01-14T13:12:33.900000Z"},
    ]  # fmt: skip
    assert result.skipped == ["conversation 'Moon phases': 1 'tool_call' part skipped"]


def test_librechat_takes_a_list_and_a_line_is_a_line() -> None:
    line = {
        "conversationId": "line-1",
        "messages": [
            {"messageId": "q", "parentMessageId": None, "isCreatedByUser": True, "text": "hi"},
            {"messageId": "r", "parentMessageId": "q", "isCreatedByUser": False, "text": "yo"},
        ],
    }
    result = from_librechat([line, librechat_sample()], exported_at=EXPORTED_AT)
    assert_valid(result)
    first, second = result.transcripts
    assert first["version"] == 1
    assert [(m["role"], m["content"]) for m in first["messages"]] == [
        ("user", "hi"),
        ("assistant", "yo"),
    ]
    # No message has a time: the export's.
    assert first["conversation"]["created_at"] == "2026-11-28T12:00:00Z"
    assert second["version"] == 2


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda c: c.pop("conversationId"), r"^conversation 1: has no conversationId"),
        (lambda c: c.update(messages={}), r"^conversation 1: messages must be a list, got an"),
        (
            lambda c: c["messages"][0].pop("messageId"),
            r"^conversation 1: messages\[0\]: messageId must be a non-empty string$",
        ),
        (
            lambda c: c["messages"][0]["children"][0].update(
                messageId=c["messages"][0]["messageId"]
            ),
            r"^conversation 1: message '.*' appears twice$",
        ),
        (
            lambda c: c["messages"][0].update(createdAt="yesterday"),
            r"^conversation 1: message '.*': createdAt is not an ISO 8601 time: 'yesterday'$",
        ),
        (
            lambda c: c["messages"][0].update(isCreatedByUser="yes"),
            r"^conversation 1: message '.*': isCreatedByUser must be a boolean, got a string$",
        ),
        (
            lambda c: c["messages"].append(
                {"messageId": "x", "parentMessageId": "nowhere", "text": "lost"}
            ),
            r"^conversation 1: message 'x': parentMessageId 'nowhere' is not one of the messages$",
        ),
        (
            lambda c: c["messages"].extend(
                [
                    {"messageId": "x", "parentMessageId": "y", "text": "a"},
                    {"messageId": "y", "parentMessageId": "x", "text": "b"},
                ]
            ),
            r"^conversation 1: message 'x': the parentMessageId chain from 'x' is a cycle$",
        ),
    ],
)
def test_librechat_malformed_conversations_are_reported(change: Any, pattern: str) -> None:
    data = librechat_sample()
    change(data)
    with pytest.raises(ImportFormatError, match=pattern):
        from_librechat(data)


def test_convert_dispatches_by_source() -> None:
    assert SOURCES == ("chatgpt", "openwebui", "librechat")
    assert convert("librechat", librechat_sample(), exported_at=EXPORTED_AT) == from_librechat(
        librechat_sample(), exported_at=EXPORTED_AT
    )
    assert convert("chatgpt", chatgpt_sample(), exported_at=EXPORTED_AT) == from_chatgpt(
        chatgpt_sample(), exported_at=EXPORTED_AT
    )
    assert convert("openwebui", openwebui_sample(), exported_at=EXPORTED_AT) == from_openwebui(
        openwebui_sample(), exported_at=EXPORTED_AT
    )
    with pytest.raises(ValueError, match="unknown import source 'claude'") as caught:
        convert("claude", [])  # type: ignore[arg-type]
    assert not isinstance(caught.value, ImportFormatError)


def test_import_format_error_is_a_value_error() -> None:
    assert issubclass(ImportFormatError, ValueError)


def test_inputs_are_not_modified() -> None:
    for source, sample in SAMPLES_OF.items():
        data = sample()
        before = copy.deepcopy(data)
        result = convert(source, data)  # type: ignore[arg-type]
        assert data == before
        # Nor do transcripts share structure with the input.
        result.transcripts[0]["conversation"]["metadata"]["imported_from"] = "x"
        assert data == before


def _locations(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _locations(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _locations(item, (*path, index))


WRONG_VALUES: list[Any] = [None, 0, -1.5, True, "x", [], {}, [None], {"x": None}]


@pytest.mark.parametrize("source", SOURCES)
def test_any_wrong_value_anywhere_gives_a_result_or_an_import_format_error(source: str) -> None:
    """Replace every value in the sample, one at a time, with values of other types: the
    converter either copes or raises ImportFormatError (never KeyError, TypeError, ...)."""
    sample = SAMPLES_OF[source]()
    for location in _locations(sample):
        if not location:
            continue
        for wrong in WRONG_VALUES:
            data = copy.deepcopy(sample)
            target = data
            for key in location[:-1]:
                target = target[key]
            target[location[-1]] = copy.deepcopy(wrong)
            try:
                result = convert(source, data)  # type: ignore[arg-type]
            except ImportFormatError as error:
                message = str(error)
            else:
                assert_valid(result)
                continue
            assert re.match(r"conversation \d+: \S", message), message
