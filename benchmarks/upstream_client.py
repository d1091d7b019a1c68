"""CPU per upstream call, the way the service makes it (``UpstreamClient.complete``), over two
stacks: httpx over its default transport (httpcore, h11), and httpx over aiohttp
(httpx-aiohttp, the client ``service.app.make_http_client`` builds); against the fake upstream
running as its own process.

    .venv/bin/python benchmarks/upstream_client.py [--calls 1000] [--messages 100] [--rounds 2]

Each call is a chat completion with a history of ``--messages`` messages, given as encoded JSON
as the service gives it, one call at a time; the table gives the median latency and the CPU time
this process spent per call (building the request, sending it, reading and parsing the answer),
for each stack, in alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import UPSTREAM_KEY, fake_upstream, machine, table
from benchmarks.turn_overhead import history
from service.app import make_http_client
from service.settings import Settings
from service.upstream import UpstreamClient

# Each: how to build the client, as the service would (same limits and timeouts).
STACKS: dict[str, Callable[[Settings], httpx.AsyncClient]] = {
    "httpx, default transport (httpcore, h11)": lambda settings: httpx.AsyncClient(
        timeout=httpx.Timeout(60, connect=settings.upstream_connect_timeout),
        limits=httpx.Limits(max_connections=settings.upstream_max_connections),
    ),
    "httpx over aiohttp (httpx-aiohttp, the service's)": make_http_client,
}


async def measure(
    upstream: str, make: Callable[[Settings], httpx.AsyncClient], calls: int, messages: int
) -> tuple[float, float]:
    """(median ms, CPU ms per call) for ``calls`` sequential calls after a warm-up."""
    body = {"model": "grok-4", "messages": msgspec.Raw(msgspec.json.encode(history(messages)))}
    settings = Settings(upstream_url=upstream, upstream_timeout=60)
    async with make(settings) as http:
        client = UpstreamClient(http, base_url=upstream, api_key=UPSTREAM_KEY, timeout=60)
        for _ in range(50):
            await client.complete(body, conversation_id="bench")
        latencies = []
        cpu = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            await client.complete(body, conversation_id="bench")
            latencies.append((time.perf_counter() - started) * 1000)
        cpu = time.process_time() - cpu
    return statistics.median(latencies), cpu / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.calls} sequential calls per round, {args.messages} messages each\n")
    rows = []
    with fake_upstream() as upstream:
        for number in range(1, args.rounds + 1):
            for name, make in STACKS.items():
                median, cpu = asyncio.run(measure(upstream, make, args.calls, args.messages))
                rows.append([number, name, median, cpu])
    print(table(["round", "stack", "median ms", "CPU ms per call"], rows))


if __name__ == "__main__":
    main()
