"""A chained Responses turn against a native one: ``POST /openai/v1/responses`` with
``previous_response_id`` (the newest response of its conversation) beside ``POST
/v1/conversations/{id}/turns`` on a conversation of the same history, pair by pair, on SQLite and
PostgreSQL.

    .venv/bin/python benchmarks/responses_overhead.py [--pairs 30] [--sizes 10,100]
                                                      [--databases sqlite,postgresql]

Both conversations start from the same seeded history and grow by the same two messages a pair;
which of the two goes first alternates. The upstream is the fake one, as its own process. Prints
the medians and 95th percentiles of each (milliseconds) and the median of the paired
differences (chained minus native): the cost of the OpenAI-compatible surface on top of a turn
(finding the previous response, translating the request and the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    database,
    fake_upstream,
    http_client,
    machine,
    service,
    summary,
    table,
)
from benchmarks.turn_overhead import Target, history, seed


async def timed(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], key: str
) -> tuple[float, Any]:
    started = time.perf_counter()
    answer = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    elapsed = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    return elapsed, answer.json()


async def respond(
    client: httpx.AsyncClient, base: str, key: str, question: str, previous: str
) -> tuple[float, str]:
    """A response chained to ``previous``: its time, and its id (the next one's previous)."""
    body = {"model": "grok-4", "input": question, "previous_response_id": previous}
    ms, answer = await timed(client, f"{base}/openai/v1/responses", body, key)
    return ms, str(answer["id"])


async def measure(base: str, key: str, size: int, pairs: int) -> dict[str, list[float]]:
    target = Target("this", base, key)
    results: dict[str, list[float]] = {"native": [], "chained": [], "difference": []}
    async with http_client() as client:
        native = await seed(client, target, size)
        chained = await seed(client, target, size)
        conversation = f"conv_{chained.replace('-', '')}"
        begin = {"model": "grok-4", "input": "Begin.", "conversation": conversation}
        _, first = await timed(client, f"{base}/openai/v1/responses", begin, key)
        native_url = f"{base}/v1/conversations/{native}/turns"
        await timed(client, native_url, {"messages": [{"role": "user", "content": "Begin."}]}, key)
        previous = first["id"]
        for number in range(pairs + 3):
            question = f"And what follows from step {number}?"
            turn = {"messages": [{"role": "user", "content": question}]}
            if number % 2:
                chained_ms, previous = await respond(client, base, key, question, previous)
                native_ms, _ = await timed(client, native_url, turn, key)
            else:
                native_ms, _ = await timed(client, native_url, turn, key)
                chained_ms, previous = await respond(client, base, key, question, previous)
            if number < 3:
                continue  # warm-up: pools, caches, prepared statements
            results["native"].append(native_ms)
            results["chained"].append(chained_ms)
            results["difference"].append(chained_ms - native_ms)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"pairs per size: {args.pairs} (after 3 warm-up pairs); times in ms\n")
    rows = []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            with database(kind) as url, service(url, upstream) as (base, key):
                for size in (int(s) for s in args.sizes.split(",")):
                    assert len(history(size)) == size
                    found = asyncio.run(measure(base, key, size, args.pairs))
                    native, chained = summary(found["native"]), summary(found["chained"])
                    rows.append(
                        [
                            kind,
                            size,
                            native["median"],
                            native["p95"],
                            chained["median"],
                            chained["p95"],
                            statistics.median(found["difference"]),
                        ]
                    )
    headers = ["database", "messages", "native", "p95", "chained", "p95", "chained - native"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
