"""Per-turn overhead: a turn through convstore minus a direct call to the same fake upstream with
the same history, measured pair by pair, for several history lengths, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/turn_overhead.py [--pairs 30] [--sizes 10,100,1000,10000]
                                                 [--databases sqlite,postgresql]

Each pair is a direct call to the fake upstream with the history a turn sends, then that turn
through the service, on a fresh copy of the conversation (nothing of it cached in the service);
then a second pair, a repeat turn on the same conversation (its history so far is cached by the
service process). The direct calls use the service's own HTTP client stack. Prints a table
(milliseconds) and the per-message slope of the first-turn overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    UPSTREAM_KEY,
    database,
    fake_upstream,
    http_client,
    machine,
    service,
    summary,
    table,
)


def history(size: int) -> list[dict[str, Any]]:
    """A realistic history: a system prompt, then user and assistant messages of ~60 words."""
    words = " ".join(f"word{i}" for i in range(60))
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse. " + words}]
    for i in range(1, size):
        role = "user" if i % 2 else "assistant"
        messages.append({"role": role, "content": f"message {i}: {words}"})
    return messages


async def seed(client: httpx.AsyncClient, headers: dict[str, str], size: int) -> str:
    messages = history(size)
    created = await client.post(
        "/v1/conversations", json={"messages": messages[:1000]}, headers=headers
    )
    created.raise_for_status()
    cid: str = created.json()["id"]
    for start in range(1000, len(messages), 1000):
        (
            await client.post(
                f"/v1/conversations/{cid}/messages",
                json={"messages": messages[start : start + 1000]},
                headers=headers,
            )
        ).raise_for_status()
    return cid


async def pair(
    client: httpx.AsyncClient,
    direct: httpx.AsyncClient,
    upstream: str,
    cid: str,
    history_before: list[dict[str, Any]],
    question: dict[str, Any],
    headers: dict[str, str],
) -> tuple[float, float, str]:
    """A direct call with the history the turn will send, then the turn: both in ms, and the
    reply's content."""
    # Encoded before the clock starts (the service encodes its own inside the measured turn).
    body = msgspec.json.encode({"model": "grok-4", "messages": [*history_before, question]})
    auth = {"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": "application/json"}
    started = time.perf_counter()
    answer = await direct.post(f"{upstream}/chat/completions", content=body, headers=auth)
    direct_ms = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    started = time.perf_counter()
    turn = await client.post(
        f"/v1/conversations/{cid}/turns", json={"messages": [question]}, headers=headers
    )
    service_ms = (time.perf_counter() - started) * 1000
    turn.raise_for_status()
    return direct_ms, service_ms, turn.json()["reply"]["content"]


async def measure(
    base: str, key: str, upstream: str, size: int, pairs: int
) -> dict[str, list[float]]:
    """Per pair: a new copy of the conversation (nothing of it cached in the service), its first
    turn (``first``), then a second turn on it (``repeat``: the history read so far is cached)."""
    headers = {"Authorization": f"Bearer {key}"}
    question = {"role": "user", "content": "And what follows from that?"}
    again = {"role": "user", "content": "And after that?"}
    stored = history(size)
    results: dict[str, list[float]] = collections.defaultdict(list)
    async with http_client(base_url=base) as client, http_client() as direct:
        root = await seed(client, headers, size)
        for number in range(pairs + 3):
            # A fresh copy of the same history for every pair, so each turn sees `size` messages.
            fork = await client.post(f"/v1/conversations/{root}/fork", json={}, headers=headers)
            fork.raise_for_status()
            cid = fork.json()["id"]
            direct_ms, service_ms, reply = await pair(
                client, direct, upstream, cid, stored, question, headers
            )
            answered = [*stored, question, {"role": "assistant", "content": reply}]
            direct2_ms, service2_ms, _ = await pair(
                client, direct, upstream, cid, answered, again, headers
            )
            if number < 3:
                continue  # warm-up: pools, caches, prepared statements
            results["direct"].append(direct_ms)
            results["service"].append(service_ms)
            results["first"].append(service_ms - direct_ms)
            results["repeat"].append(service2_ms - direct2_ms)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {machine()}")
    print(f"pairs per size: {args.pairs} (after 3 warm-up pairs); times in ms\n")
    rows = []
    slopes = []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            with database(kind) as url, service(url, upstream) as (base, key):
                medians = []
                for size in sizes:
                    r = asyncio.run(measure(base, key, upstream, size, args.pairs))
                    o, s, d = summary(r["first"]), summary(r["service"]), summary(r["direct"])
                    again = summary(r["repeat"])
                    medians.append(o["median"])
                    first = [d["median"], s["median"], o["median"], o["p95"]]
                    rows.append([kind, size, *first, again["median"], again["p95"]])
                if len(sizes) > 1:
                    slope = statistics.linear_regression(sizes, medians).slope
                    slopes.append([kind, slope * 1000])
    print(
        table(
            [
                "database",
                "messages",
                "direct median",
                "service median",
                "overhead median",
                "overhead p95",
                "repeat turn: overhead median",
                "p95",
            ],
            rows,
        )
    )
    if slopes:
        print()
        print(table(["database", "overhead per 1,000 messages (ms)"], slopes))


if __name__ == "__main__":
    main()
