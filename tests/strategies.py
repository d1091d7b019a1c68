"""Hypothesis strategies for stored messages and conversations: every role, text with any
character a JSON string can hold, content parts, names, tool calls, reasoning (readable and
encrypted) and null content."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

texts = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40
)
parts = st.lists(
    st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, texts),
        st.builds(
            lambda u, d: {"type": "image_url", "image_url": {"url": u, "detail": d}},
            st.sampled_from(["https://x.invalid/a.png", "data:image/png;base64,AAAA"]),
            st.sampled_from(["low", "high", "auto"]),
        ),
    ),
    min_size=1,
    max_size=3,
)
contents = st.one_of(texts, parts)
names = st.one_of(st.none(), st.text(st.characters(categories=("L", "N")), min_size=1, max_size=12))
tool_calls = st.lists(
    st.builds(
        lambda i, n, a: {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": n, "arguments": a},
        },
        st.integers(0, 10**6),
        st.sampled_from(["lookup", "search", "calc"]),
        texts,
    ),
    min_size=1,
    max_size=2,
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
    message: dict[str, Any] = {"role": role, "content": draw(contents)}
    name = draw(names)
    if name:
        message["name"] = name
    if role == "tool":
        message["tool_call_id"] = f"call_{draw(st.integers(0, 99))}"
    if role == "assistant":
        if draw(st.booleans()):
            message["tool_calls"] = draw(tool_calls)
            if draw(st.booleans()):
                message["content"] = None
        if draw(st.booleans()):
            message["reasoning_content"] = draw(texts)
        if draw(st.booleans()):
            # Kept and exported as given; only the Responses upstream is sent it.
            message["reasoning_encrypted_content"] = draw(texts)
    return message


# A frontend's ids for its end users: any text but NUL.
end_users = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    min_size=1,
    max_size=40,
)
conversation_fields = st.fixed_dictionaries(
    {
        "title": st.one_of(st.none(), texts),
        "params": st.fixed_dictionaries(
            {},
            optional={
                "temperature": st.one_of(st.integers(0, 2), st.floats(0, 2)),
                "top_p": st.one_of(st.just(1), st.floats(0, 1, exclude_min=True)),
                "seed": st.integers(-(2**31), 2**31),
                "vendor_option": st.one_of(
                    texts, st.integers(), st.floats(allow_nan=False, allow_infinity=False)
                ),
            },
        ),
        "metadata": st.dictionaries(
            texts, st.one_of(texts, st.integers(), st.booleans()), max_size=3
        ),
        "user": st.one_of(st.none(), end_users),
    }
)
conversations = st.builds(
    lambda fields, listed: {**fields, "messages": listed},
    conversation_fields,
    st.lists(messages(), max_size=12),
)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    """A version 2 transcript: messages with ids, each after a parent drawn among the ones
    before it (or none: another first message), seqs as positions on their paths, and a head."""
    count = draw(st.integers(1, 10))
    placed: list[dict[str, Any]] = []
    for index in range(count):
        parent = draw(st.integers(-1, index - 1)) if index else -1
        placed.append(
            {
                "id": f"m{index}",
                "parent_id": placed[parent]["id"] if parent >= 0 else None,
                "seq": placed[parent]["seq"] + 1 if parent >= 0 else 1,
                **draw(messages()),
            }
        )
    head = draw(st.integers(0, count - 1))
    return {
        "format": "convstore.transcript",
        "version": 2,
        "conversation": {
            "id": "tree",
            **draw(conversation_fields),
            "archived": draw(st.booleans()),
            "head_id": placed[head]["id"],
        },
        "messages": placed,
        "turns": [],
    }
