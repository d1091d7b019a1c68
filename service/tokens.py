"""Sizes in tokens: a message's estimated size, a reply's size from the upstream's usage, and
the models' context windows.

Grok's tokenizer is its own and is not published (``/v1/tokenize-text`` counts one text per
call, over the network), so a message's size is estimated when it is stored, by characters per
script, and replaced by the upstream's count where its usage tells it. The estimate leans high
on purpose: a history cut to fit by the estimate then fits the model too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

MESSAGE_OVERHEAD = 4
"""Chat-template tokens around each message (its role and separators)."""
REQUEST_OVERHEAD = 3
"""Chat-template tokens of a request as a whole."""
IMAGE_TOKENS = 256
"""An image part, flat: xAI documents no formula, and the count does not depend on the URL."""
TOOL_CALL_OVERHEAD = 4
"""Per tool call: its id, type and the structure around name and arguments."""

# Characters per token, by script: ASCII text about 4 (xAI's tokenize-text splits "Hello
# world!" into 3 tokens: 12 characters), ASCII punctuation about 2 (code and JSON are dense
# with it), other alphabets (accented Latin, Cyrillic, Greek, Arabic, Devanagari...) about 2.5;
# a CJK character (Han, kana, Hangul) a token; a character outside the BMP (emoji) 2 tokens.
_ASCII_PER_TOKEN = 4.0
_PUNCT_TOKENS = 0.5
_ALPHABET_TOKENS = 0.4
_CJK_TOKENS = 1.0
_ASTRAL_TOKENS = 2.0
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_ASTRAL = re.compile(r"[\U00010000-\U0010ffff]")
_encoder = msgspec.json.Encoder()

DEFAULT_WINDOW = 131_072
"""The window of a model the table does not know: the smallest of xAI's current models."""
MODEL_WINDOWS: Mapping[str, int] = {
    # xAI's documented windows (neither /v1/models nor /v1/language-models reports them).
    **dict.fromkeys(("grok-4-0709", "grok-4", "grok-4-latest"), 256_000),
    **dict.fromkeys(("grok-code-fast-1", "grok-code-fast", "grok-code-fast-1-0825"), 256_000),
    **dict.fromkeys(
        ("grok-3", "grok-3-latest", "grok-3-beta", "grok-3-mini", "grok-3-mini-latest"),
        131_072,
    ),
    "grok-3-mini-beta": 131_072,
    **dict.fromkeys(
        (
            "grok-4-fast",
            "grok-4-fast-reasoning",
            "grok-4-fast-non-reasoning",
            "grok-4-1-fast",
            "grok-4-1-fast-reasoning",
            "grok-4-1-fast-non-reasoning",
        ),
        2_000_000,
    ),
    **dict.fromkeys(
        (
            "grok-4.20-0309-reasoning",
            "grok-4.20-0309-non-reasoning",
            "grok-4.3",
            "grok-4.3-latest",
            "grok-latest",
        ),
        1_000_000,
    ),
    **dict.fromkeys(("grok-4.5", "grok-4.6"), 500_000),
    "grok-build-0.1": 256_000,
}
"""Context windows in tokens by model name (aliases included); ``CONVSTORE_MODEL_WINDOWS``
changes or adds entries."""


def text_tokens(text: str) -> float:
    """The estimated tokens of a text (fractional: a message rounds up once)."""
    if not text:
        return 0.0
    punct = len(_PUNCT.findall(text))
    if text.isascii():
        return (len(text) - punct) / _ASCII_PER_TOKEN + punct * _PUNCT_TOKENS
    ascii_chars = len(text.encode("ascii", "ignore"))
    cjk = len(_CJK.findall(text))
    astral = len(_ASTRAL.findall(text))
    alphabet = len(text) - ascii_chars - cjk - astral
    return (
        (ascii_chars - punct) / _ASCII_PER_TOKEN
        + punct * _PUNCT_TOKENS
        + alphabet * _ALPHABET_TOKENS
        + cjk * _CJK_TOKENS
        + astral * _ASTRAL_TOKENS
    )


def _content_tokens(content: Any) -> float:
    if isinstance(content, str):
        return text_tokens(content)
    if not isinstance(content, list):
        return 0.0
    tokens = 0.0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            tokens += text_tokens(str(part.get("text", "")))
        elif kind == "image_url":
            tokens += IMAGE_TOKENS
        else:  # a file part: counted by its JSON
            tokens += text_tokens(_encoder.encode(part).decode())
    return tokens


def estimate(message: Mapping[str, Any]) -> int:
    """A message's estimated size in tokens as the upstream receives it: its content by
    characters per script, image parts flat, its tool calls' names and arguments, its name,
    and the template's overhead. At least ``MESSAGE_OVERHEAD``."""
    tokens = _content_tokens(message.get("content"))
    for call in message.get("tool_calls") or ():
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        tokens += TOOL_CALL_OVERHEAD + text_tokens(str(function.get("name", "")))
        tokens += text_tokens(str(function.get("arguments", "")))
    for field in ("name", "tool_call_id"):
        value = message.get(field)
        if isinstance(value, str):
            tokens += 1 + text_tokens(value)
    return MESSAGE_OVERHEAD + math.ceil(tokens)


def reply_tokens(usage: Any) -> int | None:
    """A reply's size as a later request's input, from its usage: the completion tokens (not
    the reasoning, which is not sent back) and the template's overhead; None without usage."""
    if not isinstance(usage, dict):
        return None
    completion = usage.get("completion_tokens")
    if not isinstance(completion, int) or isinstance(completion, bool) or completion < 0:
        return None
    return completion + MESSAGE_OVERHEAD


def prompt_tokens(usage: Any) -> int | None:
    """The input tokens the upstream counted for a request, from its usage."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    if not isinstance(prompt, int) or isinstance(prompt, bool) or prompt < 0:
        return None
    return prompt


def window_of(model: str, windows: Mapping[str, int] | None = None) -> int:
    """The context window of ``model`` in tokens (``DEFAULT_WINDOW`` if unknown)."""
    table = MODEL_WINDOWS if windows is None else windows
    return table.get(model, DEFAULT_WINDOW)
