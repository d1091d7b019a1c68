"""Context windows: what a truncated turn on a very long conversation costs, and how far the
size estimate is from the upstream's counting.

    .venv/bin/python benchmarks/context.py [--messages 100000] [--budget 128000] [--turns 20]
                                           [--databases sqlite,postgresql] [--samples 3000]

1. A turn under ``truncate`` to ``--budget`` tokens on a conversation of ``--messages``
   messages, against a turn under ``full`` on a conversation holding only the messages the
   truncated turn sent: the store's two transactions of a turn (``begin_turn`` and
   ``complete_turn``, with the reply the fake upstream gives), milliseconds per turn, median
   and p90 of ``--turns`` turns on each, alternated; then the same turns through the turn
   runner and the fake upstream over a socket (the upstream call included).
2. The estimate (``service.tokens.estimate``) against the fake upstream's count
   (``prompt_tokens`` of a request holding the one message, less the request's overhead) over
   ``--samples`` generated messages: English, German, Russian, Chinese, Japanese, Arabic,
   Python code, tool calls with JSON arguments, and image parts; and against xAI's documented
   count (``/v1/tokenize-text``: "Hello world!" is 3 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import database, machine, table
from service import fake_upstream
from service.fake_upstream import FakeUpstream
from service.migrate import upgrade
from service.schemas import TurnCreate, UserMessage
from service.store import Principal, Store, make_engine
from service.tokens import REQUEST_OVERHEAD, estimate
from service.turns import TurnRunner, upstream_body
from service.upstream import UpstreamClient

KEY = "bench-key"
ALICE = Principal(uuid.uuid4(), "alice", False)
WORDS = " ".join(f"word{i}" for i in range(60))


def long_history(size: int) -> list[dict[str, Any]]:
    """A system prompt, then user and assistant messages of ~60 words (~150 tokens each)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse. " + WORDS}]
    for i in range(1, size):
        role = "user" if i % 2 else "assistant"
        messages.append({"role": role, "content": f"message {i}: {WORDS}"})
    return messages


async def seed(store: Store, messages: list[dict[str, Any]], context: dict[str, Any]) -> uuid.UUID:
    conversation, _ = await store.create_conversation(
        "alice",
        title=None,
        model="grok-4",
        params={},
        metadata={},
        messages=messages[:2000],
        context=context,
    )
    for start in range(2000, len(messages), 2000):
        await store.append_messages("alice", conversation.id, messages[start : start + 2000])
    return conversation.id


async def store_turn(
    store: Store, upstream: UpstreamClient, cid: uuid.UUID, text: str
) -> tuple[float, Any]:
    """The store's part of a turn (its two transactions), in ms; the upstream call between
    them is made but not counted."""
    started = time.perf_counter()
    start = await store.begin_turn(
        "alice",
        cid,
        [{"role": "user", "content": text}],
        model=None,
        params=None,
        stream=False,
        lease=60,
    )
    first = time.perf_counter() - started
    attempted = await upstream.complete(upstream_body(start), conversation_id=str(cid))
    started = time.perf_counter()
    await store.complete_turn(start, attempted.reply, latency_ms=0, upstream_ms=0, attempts=1)
    return (first + time.perf_counter() - started) * 1000, start


async def compare(url: str, size: int, budget: int, turns: int) -> list[list[Any]]:
    store = Store(make_engine(url, pool_size=4))
    fake = FakeUpstream(api_keys=[KEY], reasoning=False)
    base = fake.start()
    rows: list[list[Any]] = []
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            upstream = UpstreamClient(http, base_url=base, api_key=KEY, timeout=60)
            started = time.perf_counter()
            policy = {"strategy": "truncate", "max_input_tokens": budget}
            long_id = await seed(store, long_history(size), policy)
            seeded = time.perf_counter() - started
            # What a truncated turn sends (before its input): the short conversation holds that.
            _, start = await store_turn(store, upstream, long_id, "how long is this")
            short_id = await seed(store, start.history[:-1], {"strategy": "full"})
            stored = {"truncate": size + 2, "full": len(start.history) - 1}
            sent: dict[str, int] = {}
            timings: dict[str, list[float]] = {"truncate": [], "full": []}
            for i in range(turns):
                for name, cid in (("truncate", long_id), ("full", short_id)):
                    ms, start = await store_turn(store, upstream, cid, f"question {i} {name}")
                    timings[name].append(ms)
                    sent[name] = len(start.history)
            runner = TurnRunner(store, upstream)
            runner_timings: dict[str, list[float]] = {"truncate": [], "full": []}
            for i in range(turns):
                for name, cid in (("truncate", long_id), ("full", short_id)):
                    request = TurnCreate(messages=[UserMessage(content=f"again {i} {name}")])
                    began = time.perf_counter()
                    await runner.run(ALICE, cid, request)
                    runner_timings[name].append((time.perf_counter() - began) * 1000)
            for name in ("truncate", "full"):
                store_ms, run_ms = sorted(timings[name]), sorted(runner_timings[name])
                rows.append(
                    [
                        name,
                        stored[name],
                        sent[name],
                        f"{statistics.median(store_ms):.2f}",
                        f"{store_ms[int(len(store_ms) * 0.9)]:.2f}",
                        f"{statistics.median(run_ms):.2f}",
                    ]
                )
            print(f"  (seeding {size:,} messages took {seeded:.0f} s)", file=sys.stderr)
    finally:
        fake.stop()
        await store.close()
    return rows


# ---- the estimate's error -------------------------------------------------------------------

TEXTS = {
    "english": "the quick brown fox jumps over the lazy dog while we talk about databases and "
    "context windows in long conversations",
    "german": "Größere Kontextfenster ändern nichts daran, dass Gespräche irgendwann über "
    "die Grenze wachsen; übermäßig lange Verläufe kürzen wir",
    "russian": "Длинные разговоры рано или поздно выходят за пределы окна контекста модели, "
    "и тогда старые сообщения нужно отбросить",
    "chinese": "长对话迟早会超出模型的上下文窗口 这时需要丢弃最早的消息 或者把它们总结成摘要",
    "japanese": "長い会話はいずれモデルのコンテキストウィンドウを超えるので "
    "古いメッセージを要約します",
    "arabic": "المحادثات الطويلة تتجاوز في النهاية نافذة السياق الخاصة بالنموذج "
    "لذلك نحذف الرسائل القديمة",
    "code": "def window(messages, budget):\n    total = 0\n    for m in reversed(messages):\n"
    "        total += len(m['content']) // 4\n        if total > budget:\n            break\n"
    "    return {'sent': messages[-3:], 'ok': total <= budget}\n",
}


def sample_message(rng: random.Random) -> tuple[str, dict[str, Any]]:
    kind = rng.choice([*TEXTS, "tool_call", "image"])
    if kind in TEXTS:
        spaced = kind not in ("chinese", "japanese")
        units = TEXTS[kind].split(" ") if spaced else list(TEXTS[kind].replace(" ", ""))
        picked = [rng.choice(units) for _ in range(rng.randint(3, 40 * rng.randint(1, 6)))]
        text = (" " if spaced else "").join(picked)
        return kind, {"role": rng.choice(["user", "assistant"]), "content": text}
    if kind == "tool_call":
        arguments = json.dumps(
            {
                "query": " ".join(rng.sample(TEXTS["english"].split(), 6)),
                "limit": rng.randint(1, 99),
            }
        )
        call = {"id": f"call_{rng.randint(0, 10**8)}", "type": "function"}
        call["function"] = {"name": "search_docs", "arguments": arguments}  # type: ignore[assignment]
        return kind, {"role": "assistant", "content": None, "tool_calls": [call]}
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
    ]
    return kind, {"role": "user", "content": parts}


def estimate_error(samples: int) -> list[list[Any]]:
    rng = random.Random(18)
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for _ in range(samples):
        kind, message = sample_message(rng)
        text, images, _ = fake_upstream._count_prompt({"messages": [message]})
        counted = text + images - REQUEST_OVERHEAD
        by_kind.setdefault(kind, []).append((estimate(message), counted))
    rows = []
    everything = [pair for pairs in by_kind.values() for pair in pairs]
    for kind, pairs in [*sorted(by_kind.items()), ("all", everything)]:
        ratios = sorted(e / c for e, c in pairs)
        under = sum(1 for e, c in pairs if e < c) / len(pairs)
        rows.append(
            [
                kind,
                len(pairs),
                f"{statistics.mean(c for _, c in pairs):.0f}",
                f"{statistics.mean(e for e, _ in pairs):.0f}",
                f"{statistics.median(ratios):.2f}",
                f"{ratios[0]:.2f}-{ratios[-1]:.2f}",
                f"{under:.0%}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=128_000)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for kind in args.databases.split(","):
        with database(kind) as url:
            upgrade(url)
            rows = asyncio.run(compare(url, args.messages, args.budget, args.turns))
        print(f"\n{kind}: a turn under truncate ({args.budget:,} tokens) vs full, ms")
        print(
            table(
                [
                    "strategy",
                    "messages stored",
                    "messages sent",
                    "store p50",
                    "store p90",
                    "turn p50",
                ],
                rows,
            )
        )
    print(f"\nestimate vs the fake upstream's count, {args.samples:,} messages")
    print(
        table(
            ["kind", "n", "fake mean", "estimate mean", "ratio p50", "ratio range", "under"],
            estimate_error(args.samples),
        )
    )
    hello = estimate({"role": "user", "content": "Hello world!"}) - 4
    print(f'\nxAI tokenize-text: "Hello world!" is 3 tokens; the estimate of its text: {hello}')


if __name__ == "__main__":
    main()
