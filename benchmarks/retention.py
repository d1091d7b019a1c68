"""Retention: the sweeper deleting many expired conversations while turns run.

    .venv/bin/python benchmarks/retention.py [--conversations 100000] [--workers 4]
                                             [--before 15] [--databases sqlite,postgresql]

Fills a fresh database (migrated, so SQLite's FTS5 triggers and PostgreSQL's GIN indexes are
there) with ``--conversations`` small conversations created 400 days ago, bulk-inserted: a user
message and a reply on one branch, and a completed turn, each. `convstore serve` runs against
it (its own sweeper runs too, with retention off: it leaves these alone), with the fake
upstream. ``--workers`` clients each run turns one after another (20 in a conversation, then
a new one, so histories stay short): first for ``--before`` seconds, then while a sweeper in
this process (another process sharing the database, as a second server would be) deletes every
old conversation with ``CONVSTORE_RETENTION_DAYS=365``, in its batches. Prints turn latency
(p50, p99) before and during the sweep, and the sweep's rate of deletion.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    database,
    fake_upstream,
    http_client,
    machine,
    percentile,
    service,
    table,
)
from service.migrate import upgrade
from service.retention import RetentionSweeper
from service.store import Store, make_engine
from service.tables import (
    branch_table,
    conversation_table,
    message_table,
    turn_table,
    uuid7,
)

CHUNK = 2000
QUESTION = {"role": "user", "content": "What is the next step?"}
# Turns a client runs in one conversation before it starts another: histories stay short, so
# turn latency depends on the sweep, not on how long the benchmark has run.
TURNS_PER_CONVERSATION = 20


async def fill(url: str, conversations: int) -> float:
    """Bulk-insert the old conversations; seconds taken."""
    engine = make_engine(url, pool_size=1)
    created = datetime.now(UTC) - timedelta(days=400)
    started = time.perf_counter()
    for start in range(0, conversations, CHUNK):
        convs, branches, messages, turns = [], [], [], []
        for i in range(start, min(start + CHUNK, conversations)):
            cid, question, answer, turn = uuid7(), uuid7(), uuid7(), uuid7()
            convs.append(
                {
                    "id": cid,
                    "tenant": f"tenant-{i % 50}",
                    "title": f"Old conversation {i}",
                    "model": "grok-4",
                    "params": {},
                    "metadata": {},
                    "head_id": answer,
                    "message_count": 2,
                    "created_at": created,
                    "updated_at": created,
                }
            )
            branches.append({"id": cid, "conversation_id": cid, "fork_seq": 0})
            common = {"conversation_id": cid, "branch_id": cid, "created_at": created}
            messages.append(
                {**common, "id": question, "parent_id": None, "seq": 1, "role": "user",
                 "content": f"question number {i}", "turn_id": None}
            )  # fmt: skip
            messages.append(
                {**common, "id": answer, "parent_id": question, "seq": 2, "role": "assistant",
                 "content": f"answer number {i}", "turn_id": turn}
            )  # fmt: skip
            turns.append(
                {
                    "id": turn,
                    "conversation_id": cid,
                    "status": "completed",
                    "model": "grok-4",
                    "params": {},
                    "stream": False,
                    "attempts": 1,
                    "created_at": created,
                    "completed_at": created,
                    "deadline_at": created,
                    "reply_seq": 2,
                    "reply_id": answer,
                }
            )
        async with engine.begin() as conn:
            await conn.execute(conversation_table.insert(), convs)
            await conn.execute(branch_table.insert(), branches)
            await conn.execute(turn_table.insert(), turns)
            await conn.execute(message_table.insert(), messages)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
    await engine.dispose()
    return time.perf_counter() - started


async def turns_until(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], done: asyncio.Event
) -> list[float]:
    """Turns one after another (``TURNS_PER_CONVERSATION`` to a new conversation) until
    ``done``; their latencies (ms)."""
    latencies: list[float] = []
    while not done.is_set():
        made = await client.post(f"{base}/v1/conversations", json={}, headers=headers)
        made.raise_for_status()
        turns = f"{base}/v1/conversations/{made.json()['id']}/turns"
        for _ in range(TURNS_PER_CONVERSATION):
            if done.is_set():
                break
            started = time.perf_counter()
            answer = await client.post(turns, json={"messages": [QUESTION]}, headers=headers)
            answer.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def phase(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], workers: int, work: Any
) -> tuple[list[float], Any]:
    """Turns from ``workers`` clients while ``work`` runs; latencies and its result."""
    done = asyncio.Event()
    runners = [
        asyncio.create_task(turns_until(client, base, headers, done)) for _ in range(workers)
    ]
    try:
        result = await work
    finally:
        done.set()
    latencies = [ms for found in await asyncio.gather(*runners) for ms in found]
    return latencies, result


async def measure(url: str, base: str, key: str, args: argparse.Namespace) -> list[list[Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    store = Store(make_engine(url, pool_size=2))
    async with http_client(args.workers * 2) as client:
        before, _ = await phase(client, base, headers, args.workers, asyncio.sleep(args.before))
        sweeper = RetentionSweeper(store, retention_days=365)

        async def sweep() -> tuple[float, Any]:
            started = time.perf_counter()
            counts = await sweeper.sweep()
            return time.perf_counter() - started, counts

        during, (seconds, counts) = await phase(client, base, headers, args.workers, sweep())
    await store.engine.dispose()
    rows = []
    for name, latencies in (("before", before), ("during the sweep", during)):
        rows.append(
            [
                name,
                len(latencies),
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
                max(latencies),
            ]
        )
    print(
        f"  swept {counts.conversations:,} conversations ({counts.messages:,} messages, "
        f"{counts.turns:,} turns) in {counts.batches} batches, {seconds:.1f} s: "
        f"{counts.conversations / seconds:,.0f} conversations/s, "
        f"{counts.messages / seconds:,.0f} messages/s"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--before", type=float, default=15.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.conversations:,} expired conversations; {args.workers} clients running turns")
    with fake_upstream() as upstream_url:
        for kind in args.databases.split(","):
            with database(kind) as url:
                upgrade(url)
                print(f"{kind}: filled in {asyncio.run(fill(url, args.conversations)):.1f} s")
                with service(url, upstream_url) as (base, key):
                    rows = asyncio.run(measure(url, base, key, args))
            print(table(["turns", "count", "p50 ms", "p99 ms", "max ms"], rows))
            print()


if __name__ == "__main__":
    main()
