"""CPU per upstream call: httpx over its default transport (httpcore, h11) and over the
service's own (service/netio.py), against the fake upstream running as its own process.

    .venv/bin/python benchmarks/upstream_client.py [--calls 1000] [--messages 100] [--rounds 2]

Each call is a chat completion with a history of ``--messages`` messages, sent with the body
encoded beforehand, one call at a time; the table gives the median latency and the CPU time this
process spent per call, for each transport, in alternating rounds.
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

LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
TRANSPORTS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    "httpx default (httpcore, h11)": lambda: httpx.AsyncHTTPTransport(limits=LIMITS),
    "service/netio.py (httptools)": lambda: UpstreamTransport(limits=LIMITS),
}


async def measure(
    upstream: str, make: Callable[[], httpx.AsyncBaseTransport], calls: int, messages: int
) -> tuple[float, float]:
    """(median ms, CPU ms per call) for ``calls`` sequential calls after a warm-up."""
    body = msgspec.json.encode({"model": "grok-4", "messages": history(messages)})
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": "application/json"}
    url = f"{upstream}/chat/completions"
    async with httpx.AsyncClient(transport=make(), timeout=60) as http:
        for _ in range(50):
            (await http.post(url, content=body, headers=headers)).raise_for_status()
        latencies = []
        cpu = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            response = await http.post(url, content=body, headers=headers)
            response.json()
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
            for name, make in TRANSPORTS.items():
                median, cpu = asyncio.run(measure(upstream, make, args.calls, args.messages))
                rows.append([number, name, median, cpu])
    print(table(["round", "transport", "median ms", "CPU ms per call"], rows))


if __name__ == "__main__":
    main()
