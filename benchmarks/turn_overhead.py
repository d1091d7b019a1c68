"""Per-turn overhead: a turn through convstore minus a direct call to the same fake upstream with
the same history, measured pair by pair, for several history lengths, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/turn_overhead.py [--pairs 30] [--sizes 10,100,1000,10000]
                                                 [--databases sqlite,postgresql]
                                                 [--baseline PATH]

Each pair is a direct call to the fake upstream with the history a turn sends, then that turn
through the service, on a fresh copy of the conversation (nothing of it cached in the service);
then a second pair, a repeat turn on the same conversation (its history so far is cached by the
service process). The direct calls use the service's own HTTP client stack. Prints a table
(milliseconds) and the per-message slope of the first-turn overhead.

``--baseline PATH`` also serves the code of another checkout (say, ``git worktree add
/tmp/before <commit>``), on a database of its own, and alternates its pairs with this
checkout's: a small machine's speed drifts by a fifth over minutes, so two runs one after the
other compare the machine as much as the code. A last table gives the median of the paired
differences (this checkout minus the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    ROOT,
    UPSTREAM_KEY,
    database,
    fake_upstream,
    http_client,
    machine,
    server_timing,
    service,
    summary,
    table,
)


@dataclass(frozen=True)
class Target:
    """One running service: which code it runs, where, and a key of its tenant."""

    code: str
    base: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def history(size: int) -> list[dict[str, Any]]:
    """A realistic history: a system prompt, then user and assistant messages of ~60 words."""
    words = " ".join(f"word{i}" for i in range(60))
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse. " + words}]
    for i in range(1, size):
        role = "user" if i % 2 else "assistant"
        messages.append({"role": role, "content": f"message {i}: {words}"})
    return messages


async def seed(client: httpx.AsyncClient, target: Target, size: int) -> str:
    messages = history(size)
    created = await client.post(
        f"{target.base}/v1/conversations",
        json={"messages": messages[:1000]},
        headers=target.headers,
    )
    created.raise_for_status()
    cid: str = created.json()["id"]
    for start in range(1000, len(messages), 1000):
        (
            await client.post(
                f"{target.base}/v1/conversations/{cid}/messages",
                json={"messages": messages[start : start + 1000]},
                headers=target.headers,
            )
        ).raise_for_status()
    return cid


async def timed_chat(
    client: httpx.AsyncClient,
    base: str,
    messages: list[dict[str, Any]],
    key: str = UPSTREAM_KEY,
    model: str = "grok-4",
) -> float:
    """One chat completion (not streamed) at ``base`` (the fake upstream's ``/v1``, or any
    OpenAI-compatible API), in ms."""
    # Encoded before the clock starts (the service encodes its own inside the measured turn).
    body = msgspec.json.encode({"model": model, "messages": messages})
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    answer = await client.post(f"{base}/chat/completions", content=body, headers=auth)
    elapsed = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    return elapsed


class Pair(NamedTuple):
    """A direct call and the turn after it, in ms; the reply; the turn's database time (its
    Server-Timing ``db``: both transactions)."""

    direct_ms: float
    service_ms: float
    reply: str
    db_ms: float


async def pair(
    client: httpx.AsyncClient,
    direct: httpx.AsyncClient,
    upstream: str,
    target: Target,
    cid: str,
    history_before: list[dict[str, Any]],
    question: dict[str, Any] | None,
    *,
    parent_id: str | None = None,
) -> Pair:
    """A direct call with the history the turn will send, then the turn (with ``question``,
    if any, after ``parent_id``, if given)."""
    asked = [question] if question else []
    direct_ms = await timed_chat(direct, upstream, [*history_before, *asked])
    started = time.perf_counter()
    turn = await client.post(
        f"{target.base}/v1/conversations/{cid}/turns",
        json={"messages": asked, **({"parent_id": parent_id} if parent_id else {})},
        headers=target.headers,
    )
    service_ms = (time.perf_counter() - started) * 1000
    turn.raise_for_status()
    db_ms = server_timing(turn.headers.get("server-timing")).get("db", float("nan"))
    return Pair(direct_ms, service_ms, turn.json()["reply"]["content"], db_ms)


async def measure(
    targets: list[Target], upstream: str, size: int, pairs: int
) -> list[dict[str, list[float]]]:
    """Per pair and target: a new copy of the conversation (nothing of it cached in the
    service), its first turn (``first``), then a second turn on it (``repeat``: the history read
    so far is cached). With two targets, each pair of one is followed by a pair of the other,
    and which goes first alternates."""
    question = {"role": "user", "content": "And what follows from that?"}
    again = {"role": "user", "content": "And after that?"}
    stored = history(size)
    results: list[dict[str, list[float]]] = [collections.defaultdict(list) for _ in targets]
    async with http_client() as client, http_client() as direct:
        roots = [await seed(client, target, size) for target in targets]
        for number in range(pairs + 3):
            order = list(enumerate(targets))
            if number % 2:
                order.reverse()
            for index, target in order:
                # A fresh copy of the same history for every pair, so each turn sees `size`
                # messages.
                fork = await client.post(
                    f"{target.base}/v1/conversations/{roots[index]}/fork",
                    json={},
                    headers=target.headers,
                )
                fork.raise_for_status()
                cid = fork.json()["id"]
                direct_ms, service_ms, reply, _ = await pair(
                    client, direct, upstream, target, cid, stored, question
                )
                answered = [*stored, question, {"role": "assistant", "content": reply}]
                direct2_ms, service2_ms, _, _ = await pair(
                    client, direct, upstream, target, cid, answered, again
                )
                if number < 3:
                    continue  # warm-up: pools, caches, prepared statements
                result = results[index]
                result["direct"].append(direct_ms)
                result["service"].append(service_ms)
                result["first"].append(service_ms - direct_ms)
                result["repeat"].append(service2_ms - direct2_ms)
    return results


def paired(this: list[float], baseline: list[float]) -> float:
    """The median of the differences of pairs measured back to back."""
    return statistics.median(a - b for a, b in zip(this, baseline, strict=True))


def paired_row(
    kind: str, size: int, results: list[dict[str, list[float]]], *keys: str
) -> list[Any]:
    """A row of the paired differences: for each of ``keys``, this checkout minus the baseline."""
    this, before = results
    return [kind, size, *(paired(this[key], before[key]) for key in keys)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose code is measured alternately"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    codes = [("this checkout", ROOT)]
    if args.baseline:
        codes.append(("baseline", args.baseline.resolve()))
    print(f"machine: {machine()}")
    print(f"pairs per size: {args.pairs} (after 3 warm-up pairs); times in ms\n")
    rows, slopes, differences = [], [], []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            with contextlib.ExitStack() as stack:
                targets = []
                for code, root in codes:
                    url = stack.enter_context(database(kind))
                    base, key = stack.enter_context(service(url, upstream, root=root))
                    targets.append(Target(code, base, key))
                medians: list[list[float]] = [[] for _ in targets]
                for size in sizes:
                    results = asyncio.run(measure(targets, upstream, size, args.pairs))
                    for index, (target, r) in enumerate(zip(targets, results, strict=True)):
                        o, s, d = summary(r["first"]), summary(r["service"]), summary(r["direct"])
                        again = summary(r["repeat"])
                        medians[index].append(o["median"])
                        first = [d["median"], s["median"], o["median"], o["p95"]]
                        code = [target.code] if args.baseline else []
                        rows.append([kind, *code, size, *first, again["median"], again["p95"]])
                    if args.baseline:
                        differences.append(paired_row(kind, size, results, "first", "repeat"))
                if len(sizes) > 1:
                    for target, line in zip(targets, medians, strict=True):
                        slope = statistics.linear_regression(sizes, line).slope
                        code = [target.code] if args.baseline else []
                        slopes.append([kind, *code, slope * 1000])
    code_header = ["code"] if args.baseline else []
    print(
        table(
            [
                "database",
                *code_header,
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
        print(table(["database", *code_header, "overhead per 1,000 messages (ms)"], slopes))
    if differences:
        print("\nthis checkout minus the baseline, median of back-to-back pairs (ms):")
        print(table(["database", "messages", "first turn", "repeat turn"], differences))


if __name__ == "__main__":
    main()
