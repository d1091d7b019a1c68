"""Streaming latency: time to the first delta of a streamed turn through convstore versus time to
the first content chunk of a direct streamed call to the same fake upstream with the same
history, measured pair by pair, for several history lengths, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/streaming.py [--pairs 30] [--sizes 10,100,1000]
                                             [--databases sqlite,postgresql] [--quiet-wait 60]
                                             [--baseline PATH]

Service side: ``POST /v1/conversations/{id}/turns`` with ``"stream": true``, timed from sending
the request to the first ``message.delta`` event (and to ``turn.completed``). Direct side: ``POST
/v1/chat/completions`` with ``"stream": true`` and the same messages the service sends, timed to
the first chunk whose delta carries content (and to ``data: [DONE]``). Each pair uses a fresh
fork of a conversation holding the history, so every turn sees the same number of messages.
Prints tables in milliseconds.

``--baseline PATH`` also serves the code of another checkout, on a database of its own, and
alternates its pairs with this checkout's, as ``turn_overhead.py --baseline`` does; a last table
gives the median of the paired differences (this checkout minus the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    ROOT,
    UPSTREAM_KEY,
    database,
    database_name,
    fake_upstream,
    http_client,
    machine,
    service,
    summary,
    table,
)
from benchmarks.procs import CORES, CpuMeter, add_quiet_wait, wait_for_quiet
from benchmarks.turn_overhead import Target, history, paired_row, seed

WARMUP_PAIRS = 3


async def direct_stream(
    client: httpx.AsyncClient, upstream: str, body: dict[str, Any]
) -> tuple[float, float]:
    """(ms to the first content chunk, ms to [DONE]) of one streamed chat completion."""
    first = float("nan")
    # Encoded before the clock starts (the service encodes its own inside the measured turn).
    content = msgspec.json.encode(body)
    auth = {"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": "application/json"}
    started = time.perf_counter()
    async with client.stream(
        "POST", f"{upstream}/chat/completions", content=content, headers=auth
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            if first != first:  # still NaN: look for the first content
                chunk = json.loads(data)
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    first = (time.perf_counter() - started) * 1000
    return first, (time.perf_counter() - started) * 1000


async def service_stream(
    client: httpx.AsyncClient,
    cid: str,
    question: dict[str, Any],
    opened: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """(ms to the first message.delta event, ms to turn.completed) of one streamed turn;
    ``opened`` is called once the service has answered 201 and the stream has begun."""
    first = float("nan")
    failed = False
    started = time.perf_counter()
    async with client.stream(
        "POST", f"/v1/conversations/{cid}/turns", json={"messages": [question], "stream": True}
    ) as response:
        if response.status_code != 201:
            await response.aread()
            raise RuntimeError(f"turn answered {response.status_code}: {response.text}")
        if opened is not None:
            opened()
        async for line in response.aiter_lines():
            if failed and line.startswith("data:"):
                raise RuntimeError(f"a streamed turn failed: {line[5:].strip()}")
            if line == "event: message.delta" and first != first:
                first = (time.perf_counter() - started) * 1000
            elif line == "event: turn.failed":
                failed = True
            elif line == "event: turn.completed":
                break
    if failed:
        raise RuntimeError("a streamed turn failed")
    return first, (time.perf_counter() - started) * 1000


async def measure(
    targets: list[Target], upstream: str, size: int, pairs: int
) -> list[dict[str, list[float]]]:
    """Per target, each pair's times. With two targets, each pair of one is followed by a pair
    of the other, and which goes first alternates."""
    question = {"role": "user", "content": "And what follows from that?"}
    # What the service sends upstream for a streamed turn.
    body = {
        "model": "grok-4",
        "messages": [*history(size), question],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    results: list[dict[str, list[float]]] = [
        {
            k: []
            for k in ("direct", "service", "difference", "direct end", "service end", "end diff")
        }
        for _ in targets
    ]
    async with contextlib.AsyncExitStack() as stack:
        direct = await stack.enter_async_context(http_client())
        clients = [
            await stack.enter_async_context(http_client(base_url=t.base, headers=t.headers))
            for t in targets
        ]
        roots = [await seed(c, t, size) for c, t in zip(clients, targets, strict=True)]
        for pair in range(pairs + WARMUP_PAIRS):
            order = list(range(len(targets)))
            if pair % 2:
                order.reverse()
            for index in order:
                client = clients[index]
                fork = await client.post(f"/v1/conversations/{roots[index]}/fork", json={})
                fork.raise_for_status()
                cid = fork.json()["id"]
                direct_first, direct_end = await direct_stream(direct, upstream, body)
                service_first, service_end = await service_stream(client, cid, question)
                if pair < WARMUP_PAIRS:
                    continue  # warm-up: pools, caches, prepared statements
                r = results[index]
                r["direct"].append(direct_first)
                r["service"].append(service_first)
                r["difference"].append(service_first - direct_first)
                r["direct end"].append(direct_end)
                r["service end"].append(service_end)
                r["end diff"].append(service_end - direct_end)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    add_quiet_wait(parser, 60.0, "each size")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose code is measured alternately"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    codes = [("this checkout", ROOT)]
    if args.baseline:
        codes.append(("baseline", args.baseline.resolve()))
    code_column = ["code"] if args.baseline else []
    print(f"machine: {machine()}")
    print(f"pairs per size: {args.pairs} (after {WARMUP_PAIRS} warm-up pairs); times in ms\n")
    first_rows = []
    end_rows = []
    differences = []
    with fake_upstream() as upstream:
        for kind in args.databases.split(","):
            with contextlib.ExitStack() as stack:
                targets, names = [], []
                for code, root in codes:
                    url = stack.enter_context(database(kind))
                    base, key = stack.enter_context(service(url, upstream, root=root))
                    targets.append(Target(code, base, key))
                    names.append(database_name(url))
                for size in sizes:
                    wait_for_quiet(args.quiet_wait)
                    meter = CpuMeter(*names)
                    meter.start()
                    started = time.perf_counter()
                    results = asyncio.run(measure(targets, upstream, size, args.pairs))
                    others = meter.stop()["others"] / (time.perf_counter() - started) / CORES
                    for target, r in zip(targets, results, strict=True):
                        code = [target.code] if args.baseline else []
                        d, s, o = (
                            summary(r["direct"]),
                            summary(r["service"]),
                            summary(r["difference"]),
                        )
                        first_rows.append(
                            [
                                kind,
                                *code,
                                size,
                                d["median"],
                                d["p95"],
                                s["median"],
                                s["p95"],
                                o["median"],
                                o["p95"],
                                f"{100 * others:.0f}%",
                            ]
                        )
                        de, se, oe = (
                            summary(r["direct end"]),
                            summary(r["service end"]),
                            summary(r["end diff"]),
                        )
                        end_rows.append(
                            [kind, *code, size, de["median"], se["median"], oe["median"], oe["p95"]]
                        )
                    if args.baseline:
                        differences.append(
                            paired_row(kind, size, results, "difference", "end diff")
                        )
    print("time to first delta (direct: first content chunk; service: first message.delta):")
    print(
        table(
            [
                "database",
                *code_column,
                "messages",
                "direct median",
                "direct p95",
                "service median",
                "service p95",
                "difference median",
                "difference p95",
                "others",
            ],
            first_rows,
        )
    )
    print("(others: share of the cores used by other processes on the machine meanwhile)")
    print("\ntime to the end of the stream (direct: [DONE]; service: turn.completed):")
    print(
        table(
            [
                "database",
                *code_column,
                "messages",
                "direct median",
                "service median",
                "difference median",
                "difference p95",
            ],
            end_rows,
        )
    )
    if differences:
        print("\nthis checkout minus the baseline, median of back-to-back pairs (ms):")
        print(table(["database", "messages", "first delta", "end of stream"], differences))


if __name__ == "__main__":
    main()
