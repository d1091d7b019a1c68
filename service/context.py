"""Context windows: which strategy and budget a turn runs under, and the record of what the
model saw (``context`` on a turn).

A turn's ``context`` overrides its conversation's, which overrides the default ``full``. The
budget is the turn's ``max_input_tokens``, else the model's window (``service.tokens``), and
never more than the window. The record a turn keeps:

- ``strategy``, ``window`` and ``max_input_tokens`` (the budget it ran under);
- ``sent`` and ``dropped``: seq ranges ``[first, last]`` of the path (the reply's path), the
  input included in ``sent``; ``summarised`` with ``summary`` under ``compact``;
- ``estimated_input_tokens`` (the service's count, request overhead included) and
  ``upstream_input_tokens`` (the upstream's ``prompt_tokens``, once it answered);
- ``request_sha256``: the SHA-256 of the exact request body sent upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.tokens import estimate, window_of

STRATEGIES = ("full", "truncate", "compact")
CLEARLY_OVER = 1.5
"""An input estimated this many times the budget fails before it is sent (estimates lean high,
so one only a little over is sent, and the upstream's answer decides)."""
HELPFUL = {
    "full": ["truncate", "compact"],
    "truncate": ["compact"],
    "compact": ["truncate"],
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The strategy a turn runs under, the model's window and the budget of its input."""

    strategy: str
    window: int
    budget: int

    @property
    def windowed(self) -> bool:
        """Whether the history is cut to the budget (rather than sent whole)."""
        return self.strategy != "full"


def resolve(
    conversation: Any, turn: Any, model: str, windows: Mapping[str, int] | None = None
) -> Policy:
    """The policy of a turn: its own ``context`` (a dict, or None), else its conversation's,
    else ``full`` with the model's window."""
    chosen = turn if isinstance(turn, dict) else conversation
    chosen = chosen if isinstance(chosen, dict) else {}
    window = window_of(model, windows)
    cap = chosen.get("max_input_tokens")
    budget = min(cap, window) if isinstance(cap, int) and cap > 0 else window
    strategy = chosen.get("strategy")
    return Policy(strategy if strategy in STRATEGIES else "full", window, budget)


SUMMARY_PROMPT = (
    "You compress conversations. Summarise the conversation below for the assistant who "
    "continues it: keep facts, names, numbers, decisions, open questions and what the user "
    "wants; leave out pleasantries. Answer with the summary alone."
)
SUMMARY_PROMPT_TOKENS = estimate({"role": "system", "content": SUMMARY_PROMPT}) + 24
"""What the summarising request takes besides the messages it summarises: its instructions,
the transcript's message and headings, the request's overhead."""


def summary_reserve(budget: int) -> int:
    """Tokens kept for a summary under ``compact``: an eighth of the budget, 64 to 4,096."""
    return max(64, min(budget // 8, 4096))


def summary_message(content: str) -> dict[str, Any]:
    """A summary as the upstream receives it: a system message after the first ones."""
    return {"role": "system", "content": f"Summary of the earlier conversation:\n{content}"}


def summary_request(previous: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages of a summarising request: the instructions, then the previous summary and
    the messages since it as one transcript (so tool calls need no pairing)."""
    lines = [f"Summary so far:\n{previous}\n"] if previous else []
    for message in messages:
        text = message.get("content")
        if not isinstance(text, str):
            text = " ".join(
                str(p.get("text", "[image]" if p.get("type") == "image_url" else ""))
                for p in text or ()
                if isinstance(p, dict)
            )
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            text += f" [calls {function.get('name')}({function.get('arguments')})]"
        lines.append(f"{message['role']}: {text}")
    return [
        {"role": "system", "content": SUMMARY_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def gaps(last: int, covered: Iterable[list[int]]) -> list[list[int]]:
    """The seq ranges of 1..``last`` that no range of ``covered`` holds."""
    out, next_seq = [], 1
    for first, end in sorted(covered):
        if first > next_seq:
            out.append([next_seq, min(first - 1, last)])
        next_seq = max(next_seq, end + 1)
        if next_seq > last:
            break
    if next_seq <= last:
        out.append([next_seq, last])
    return [r for r in out if r[0] <= r[1]]


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Seqs in ascending order as ``[first, last]`` ranges of consecutive seqs."""
    out: list[list[int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def record(policy: Policy, **fields: Any) -> dict[str, Any]:
    """A turn's context record (see the module's docstring)."""
    return {
        "strategy": policy.strategy,
        "window": policy.window,
        "max_input_tokens": policy.budget,
        **fields,
    }


def request_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def overflow(
    estimated: int, policy: Policy, *, upstream: str | None = None, window: int | None = None
) -> dict[str, Any]:
    """The error of a turn whose input does not fit (422 ``context_length_exceeded``): the
    counts, and the strategies that would help. ``upstream``: the upstream's refusal, with the
    ``window`` it gives."""
    helpful = HELPFUL[policy.strategy]
    window = window or policy.window
    cause = f"The model refused it: {upstream} " if upstream else ""
    return {
        "status": 422,
        "code": "context_length_exceeded",
        "detail": (
            f"The input (about {estimated:,} tokens) does not fit the budget of "
            f"{policy.budget:,} tokens (the model's window is {window:,}) under the "
            f"`{policy.strategy}` strategy. {cause}The input is kept; set `context` "
            f'(on the turn or the conversation) to {{"strategy": "{helpful[0]}"}} to send '
            "what fits."
        ),
        "estimated_input_tokens": estimated,
        "max_input_tokens": policy.budget,
        "window": window,
        "strategy": policy.strategy,
        "helpful_strategies": helpful,
    }
