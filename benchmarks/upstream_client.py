"""CPU per upstream call, the way the service makes it (``UpstreamClient.complete``), over
three stacks: httpx over its default transport (httpcore, h11), httpx over the service's own
transport (service/netio.py), and that transport's ``fetch`` without httpx's request and
response objects (what the service uses for a non-streamed turn); against the fake upstream
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
from service.netio import UpstreamTransport
from service.upstream import UpstreamClient

LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
# Each: the transport under the client, and whether the client calls it directly.
STACKS: dict[str, tuple[Callable[[], httpx.AsyncBaseTransport], bool]] = {
    "httpx, default transport (httpcore, h11)": (
        lambda: httpx.AsyncHTTPTransport(limits=LIMITS),
        False,
    ),
    "httpx, service/netio.py transport": (lambda: UpstreamTransport(limits=LIMITS), False),
    "service/netio.py fetch (the service's)": (lambda: UpstreamTransport(limits=LIMITS), True),
}


async def measure(
    upstream: str,
    make: Callable[[], httpx.AsyncBaseTransport],
    direct: bool,
    calls: int,
    messages: int,
) -> tuple[float, float]:
    """(median ms, CPU ms per call) for ``calls`` sequential calls after a warm-up."""
    body = {"model": "grok-4", "messages": msgspec.Raw(msgspec.json.encode(history(messages)))}
    transport = make()
    async with httpx.AsyncClient(transport=transport, timeout=60) as http:
        client = UpstreamClient(
            http,
            base_url=upstream,
            api_key=UPSTREAM_KEY,
            timeout=60,
            direct=transport if direct and isinstance(transport, UpstreamTransport) else None,
        )
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
            for name, (make, direct) in STACKS.items():
                median, cpu = asyncio.run(
                    measure(upstream, make, direct, args.calls, args.messages)
                )
                rows.append([number, name, median, cpu])
    print(table(["round", "stack", "median ms", "CPU ms per call"], rows))


if __name__ == "__main__":
    main()
