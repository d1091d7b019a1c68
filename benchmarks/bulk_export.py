"""Bulk export: messages per second and peak memory, for growing stores.

    .venv/bin/python benchmarks/bulk_export.py [--messages 100000] [--per-conversation 50]
                                               [--databases sqlite,postgresql]

Fills a fresh database, then exports every conversation as NDJSON transcripts twice: in
process (the same code `GET /v1/export` streams), measuring peak Python memory with
tracemalloc at a quarter, half and all of the store; and through `convstore serve` over HTTP,
measuring end-to-end throughput and the server's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import database, fake_upstream, machine, service, table
from service import transcripts
from service.migrate import upgrade
from service.store import ConversationFilter, Store, make_engine
from service.tables import conversation_table, message_table, utcnow, uuid7

TENANT = "bench"


async def fill(url: str, conversations: int, per_conversation: int) -> None:
    """Insert conversations directly, in large batches (this is set-up, not what is measured)."""
    engine = make_engine(url, pool_size=2)
    words = " ".join(f"w{i}" for i in range(40))
    async with engine.begin() as conn:
        for start in range(0, conversations, 200):
            convs: list[dict[str, Any]] = []
            messages: list[dict[str, Any]] = []
            for _ in range(min(200, conversations - start)):
                cid = uuid7()
                now = utcnow()
                convs.append(
                    {
                        "id": cid,
                        "tenant": TENANT,
                        "title": "bench",
                        "model": "grok-4",
                        "params": {},
                        "metadata": {},
                        "message_count": per_conversation,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                for seq in range(1, per_conversation + 1):
                    messages.append(
                        {
                            "id": uuid7(),
                            "conversation_id": cid,
                            "seq": seq,
                            "role": "user" if seq % 2 else "assistant",
                            "content": f"message {seq}: {words}",
                            "created_at": now,
                        }
                    )
            await conn.execute(conversation_table.insert(), convs)
            await conn.execute(message_table.insert(), messages)
    await engine.dispose()


async def export_in_process(
    url: str, limit: int | None, *, trace: bool
) -> tuple[int, float, float]:
    """(messages, seconds, peak MiB of Python allocations) for exporting up to ``limit``
    conversations. Tracing memory slows Python down, so time and memory come from two runs."""
    engine = make_engine(url, pool_size=2)
    store = Store(engine)
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    messages = conversations = 0
    async for rows in store.export_many(ConversationFilter(tenant=TENANT)):
        line = transcripts.encode(transcripts.build(rows)) + b"\n"
        assert line
        messages += len(rows.messages)
        conversations += 1
        if limit is not None and conversations >= limit:
            break
    seconds = time.perf_counter() - started
    peak = 0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    await engine.dispose()
    return messages, seconds, peak / 2**20


async def export_over_http(base: str, key: str) -> tuple[int, float, int]:
    started = time.perf_counter()
    lines = size = 0
    async with (
        httpx.AsyncClient(timeout=600) as client,
        client.stream(
            "GET", f"{base}/v1/export", headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line:
                lines += 1
                size += len(line)
    return lines, time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-conversation", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    conversations = args.messages // args.per_conversation
    print(f"machine: {machine()}")
    print(f"store: {conversations} conversations x {args.per_conversation} messages\n")
    rows = []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            with database(kind) as url:
                upgrade(url)
                asyncio.run(fill(url, conversations, args.per_conversation))
                for share in (4, 2, 1):
                    limit = conversations // share
                    messages, seconds, _ = asyncio.run(export_in_process(url, limit, trace=False))
                    _, _, peak = asyncio.run(export_in_process(url, limit, trace=True))
                    rows.append(
                        [
                            kind,
                            "in process",
                            messages,
                            seconds,
                            messages / seconds,
                            f"{peak:.1f} MiB peak Python heap",
                        ]
                    )
                with service(url, upstream) as (base, key):  # a key of tenant "bench"
                    lines, seconds, size = asyncio.run(export_over_http(base, key))
                    messages = lines * args.per_conversation
                    rows.append(
                        [
                            kind,
                            "HTTP /v1/export",
                            messages,
                            seconds,
                            messages / seconds,
                            f"{size / 2**20:.0f} MiB sent",
                        ]
                    )
    print(table(["database", "path", "messages", "seconds", "messages/s", "memory"], rows))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nthis process's peak RSS: {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
