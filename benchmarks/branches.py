"""What branches cost: turns on a path that crosses many branches against a line of the same
depth, a regenerate deep in a conversation, and the storage of regenerations.

    .venv/bin/python benchmarks/branches.py [--pairs 30] [--databases sqlite,postgresql]
                                            [--depth 1000] [--branches 100] [--deep 10000]
                                            [--regenerations 100]

1. Turn overhead (a turn through convstore minus a direct call to the same fake upstream with
   the same history, as in turn_overhead.py) on a conversation whose active path of
   ``--depth`` messages crosses ``--branches`` branches (each forks ``depth / branches``
   messages below the one before, so the path is read from every one of them), against a
   line of the same depth. Their turns alternate pair by pair (which goes first alternates
   too), and both grow alike: the last table gives the median of the paired differences.
2. A regenerate (a turn after the last user message, with no messages) at depth ``--deep``,
   against a plain turn at the same depth.
3. ``--regenerations`` regenerations of the last reply of a ``--depth``-message conversation:
   the rows and bytes they add (tables and indexes), against the conversation itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

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
from benchmarks.turn_overhead import Target, history, pair, paired, seed
from service.store import make_engine

QUESTION = {"role": "user", "content": "And what follows from that?"}


async def post(client: httpx.AsyncClient, target: Target, path: str, body: Any) -> Any:
    answer = await client.post(
        f"{target.base}/v1/conversations{path}", json=body, headers=target.headers
    )
    answer.raise_for_status()
    return answer.json()


async def branched(client: httpx.AsyncClient, target: Target, depth: int, branches: int) -> str:
    """A conversation whose active path holds the messages of ``history(depth)`` and crosses
    ``branches`` branches, as if someone had edited a message and carried on from the edit
    that many times, each time ``depth // branches`` messages further down: each branch holds
    its stretch of the path, and one message the edit replaced."""
    messages = history(depth)
    step = depth // branches
    created = await post(client, target, "", {"messages": messages[:step]})
    cid: str = created["id"]
    path = [m["id"] for m in created["messages"]]
    for start in range(step, depth, step):
        replaced = {"role": messages[start]["role"], "content": "the text before the edit"}
        await post(client, target, f"/{cid}/messages", {"messages": [replaced]})
        edited = {"parent_id": path[-1], "messages": messages[start : start + step]}
        path += [m["id"] for m in (await post(client, target, f"/{cid}/messages", edited))["data"]]
    return cid


async def overheads(
    target: Target, upstream: str, depth: int, branches: int, pairs: int
) -> dict[str, dict[str, list[float]]]:
    """Turn overheads and database times on the branched conversation and on the line,
    alternating."""
    results: dict[str, dict[str, list[float]]] = {
        "branched": collections.defaultdict(list),
        "line": collections.defaultdict(list),
    }
    async with http_client() as client, http_client() as direct:
        conversations = {
            "branched": await branched(client, target, depth, branches),
            "line": await seed(client, target, depth),
        }
        sent = {kind: history(depth) for kind in conversations}
        for number in range(pairs + 3):
            order = list(conversations.items())
            if number % 2:
                order.reverse()
            for kind, cid in order:
                turn = await pair(client, direct, upstream, target, cid, sent[kind], QUESTION)
                sent[kind] += [QUESTION, {"role": "assistant", "content": turn.reply}]
                if number >= 3:  # after warm-up: pools, caches, prepared statements
                    results[kind]["overhead"].append(turn.service_ms - turn.direct_ms)
                    results[kind]["db"].append(turn.db_ms)
    return results


async def regenerations(
    target: Target, upstream: str, depth: int, pairs: int
) -> dict[str, dict[str, list[float]]]:
    """At ``depth``: a regenerate of the last reply, and a plain turn on a copy of the same
    conversation, alternating; overheads and database times in ms."""
    results: dict[str, dict[str, list[float]]] = {
        "regenerate": collections.defaultdict(list),
        "plain": collections.defaultdict(list),
    }
    async with http_client() as client, http_client() as direct:
        cid = await seed(client, target, depth)
        asked = await post(client, target, f"/{cid}/messages", {"messages": [QUESTION]})
        last_user = asked["data"][0]["id"]
        await post(client, target, f"/{cid}/turns", {})
        plain = (await post(client, target, f"/{cid}/fork", {"through_seq": depth}))["id"]
        sent = {"regenerate": [*history(depth), QUESTION], "plain": history(depth)}
        for number in range(pairs + 3):
            for kind in ["regenerate", "plain"][:: 1 if number % 2 else -1]:
                if kind == "regenerate":
                    turn = await pair(
                        client, direct, upstream, target, cid, sent[kind], None, parent_id=last_user
                    )
                else:
                    turn = await pair(client, direct, upstream, target, plain, sent[kind], QUESTION)
                    sent[kind] += [QUESTION, {"role": "assistant", "content": turn.reply}]
                if number >= 3:
                    results[kind]["overhead"].append(turn.service_ms - turn.direct_ms)
                    results[kind]["db"].append(turn.db_ms)
    return results


async def footprint(url: str) -> dict[str, int]:
    """Rows of the message and branch tables, and the bytes they take with their indexes."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = {}
            for name in ("message", "branch"):
                rows = await conn.execute(text(f"SELECT count(*) FROM {name}"))  # noqa: S608
                found[f"{name} rows"] = int(rows.scalar_one())
            if conn.dialect.name == "sqlite":
                size = await conn.execute(
                    text(
                        "SELECT sum(pgsize) FROM dbstat WHERE name IN "
                        "(SELECT name FROM sqlite_schema WHERE tbl_name IN ('message', 'branch'))"
                    )
                )
            else:
                size = await conn.execute(
                    text(
                        "SELECT pg_total_relation_size('message') "
                        "+ pg_total_relation_size('branch')"
                    )
                )
            found["bytes"] = int(size.scalar_one())
            return found
    finally:
        await engine.dispose()


async def storage(
    target: Target, url: str, depth: int, regenerations: int
) -> tuple[dict[str, int], dict[str, int]]:
    """What a ``depth``-message conversation adds, and what ``regenerations`` regenerations
    of its last reply add."""
    async with http_client() as client:
        empty = await footprint(url)
        cid = await seed(client, target, depth - 2)
        last_user = (await post(client, target, f"/{cid}/messages", {"messages": [QUESTION]}))[
            "data"
        ][0]["id"]
        await post(client, target, f"/{cid}/turns", {})
        seeded = await footprint(url)
        for _ in range(regenerations):
            await post(client, target, f"/{cid}/turns", {"parent_id": last_user})
        regenerated = await footprint(url)
    grown = {k: seeded[k] - empty[k] for k in seeded}
    added = {k: regenerated[k] - seeded[k] for k in seeded}
    return grown, added


def compared(
    kind: str, baseline: dict[str, list[float]], other: dict[str, list[float]]
) -> list[Any]:
    """A table row: each side's overhead (median, p95) and database time (median), then the
    median of their paired overhead differences and its share of the baseline's median."""
    row: list[Any] = [kind]
    for side in (baseline, other):
        overhead = summary(side["overhead"])
        row += [overhead["median"], overhead["p95"], statistics.median(side["db"])]
    difference = paired(other["overhead"], baseline["overhead"])
    share = 100 * difference / statistics.median(baseline["overhead"])
    return [*row, difference, f"{share:+.1f}%"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--branches", type=int, default=100)
    parser.add_argument("--deep", type=int, default=10_000)
    parser.add_argument("--regenerations", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"pairs: {args.pairs} (after 3 warm-up pairs); times in ms\n")
    turn_rows, regenerate_rows, storage_rows = [], [], []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            with database(kind) as url, service(url, upstream) as (base, key):
                target = Target("this checkout", base, key)
                found = asyncio.run(
                    overheads(target, upstream, args.depth, args.branches, args.pairs)
                )
                turn_rows.append(compared(kind, found["line"], found["branched"]))
                found = asyncio.run(regenerations(target, upstream, args.deep, args.pairs))
                regenerate_rows.append(compared(kind, found["plain"], found["regenerate"]))
                grown, added = asyncio.run(storage(target, url, args.depth, args.regenerations))
                per_message = grown["bytes"] / grown["message rows"]
                storage_rows.append(
                    [
                        kind,
                        grown["message rows"],
                        grown["bytes"],
                        added["message rows"],
                        added["branch rows"],
                        added["bytes"],
                        f"{added['bytes'] / per_message:.0f}",
                    ]
                )
    headers = ["database", "overhead median", "p95", "db median"]
    print(
        f"1. turn overhead at depth {args.depth}: a line, then a path across {args.branches} "
        "branches; last, the median of their paired differences and its share of the line's"
    )
    print(table([*headers, *headers[1:], "paired difference", "share"], turn_rows))
    print(f"\n2. at depth {args.deep}: a plain turn, then a regenerate of the last reply")
    print(table([*headers, *headers[1:], "paired difference", "share"], regenerate_rows))
    print(
        f"\n3. storage: a {args.depth}-message conversation, then {args.regenerations} "
        "regenerations of its last reply (message and branch tables with their indexes)"
    )
    print(
        table(
            [
                "database",
                "conversation: messages",
                "bytes",
                "regenerations: messages",
                "branches",
                "bytes",
                "conversation's messages' worth",
            ],
            storage_rows,
        )
    )


if __name__ == "__main__":
    main()
