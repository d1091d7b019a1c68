"""Turn throughput: turns per second through `convstore serve` with many conversations in flight.

    .venv/bin/python benchmarks/throughput.py [--duration 15] [--warmup 3] [--users 16,64]
                                              [--workers 1,2] [--fake-workers 1]
                                              [--databases sqlite,postgresql] [--pool-size 20]
                                              [--profile DIR] [--quiet-wait 60]

Each simulated user owns one conversation (a system message to start) and one keep-alive
connection (aiohttp's client, which costs about a third of httpx's CPU per request: the load
generator's CPU is taken from the cores the service runs on), and loops: POST a turn with one
user message, wait for the answer, repeat. After ``--warmup`` seconds, every answer that
arrives within the next ``--duration`` seconds is counted: turns per second, median and p95
latency, and the answers that were not 201, by status.

The fake upstream runs as its own process (``--fake-workers``). It is first measured alone, with
the same users, each sending its own growing history straight to it, so the reader can see that
it is not what limits the service. For every run the CPU time used by the service, the fake,
PostgreSQL and this load generator is printed per turn, from /proc: on a small machine they all
share the same cores. So is the share of the cores used by every other process ("others"); each
run first waits up to ``--quiet-wait`` seconds for the machine to be idle. The service's
``Server-Timing`` header (db, upstream, total) splits each turn's latency.

``--profile DIR`` records the service's processes with py-spy (``--gil``: Python CPU time only)
during each measured window (``DIR/<database>-w<workers>-u<users>.txt``, collapsed stacks;
py-spy must be installed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    UPSTREAM_KEY,
    database,
    database_name,
    fake_upstream,
    machine,
    server_timing,
    service,
    summary,
    table,
)
from benchmarks.procs import CORES, CpuMeter, add_quiet_wait, child_matching, wait_for_quiet

SYSTEM = "You are a concise assistant. Answer in one short paragraph."
WORDS = "please explain how the previous answer relates to the question about tides and moons"


def question(n: int) -> dict[str, str]:
    return {"role": "user", "content": f"Question {n}: {WORDS}"}


@dataclasses.dataclass
class Run:
    """What one measured window produced."""

    window: float
    latencies: list[float] = dataclasses.field(default_factory=list)  # ms, successful answers
    statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[int] = dataclasses.field(default_factory=list)  # messages per user at the end
    # Server-Timing of successful answers (db, upstream, total), when the server sends it.
    timings: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )

    @property
    def answers(self) -> int:
        return sum(self.statuses.values())

    def errors(self, ok: int) -> str:
        bad = {s: n for s, n in self.statuses.items() if s != str(ok)}
        if not self.answers:
            return "no answers"
        share = 100 * sum(bad.values()) / self.answers
        detail = " ".join(f"{s}:{n}" for s, n in sorted(bad.items()))
        return f"{share:.2f}%" + (f" ({detail})" if detail else "")

    def cpu_per(self, group: str) -> float:
        """CPU milliseconds per counted answer."""
        return 1000 * self.cpu.get(group, 0.0) / max(1, self.answers)

    def busy(self, *groups: str) -> str:
        """Share of the machine's cores used by ``groups``, in percent."""
        return f"{100 * sum(self.cpu.get(g, 0.0) for g in groups) / (self.window * CORES):.0f}%"

    def timing(self, name: str) -> float:
        return statistics.median(self.timings[name]) if self.timings.get(name) else float("nan")


# One request (n: the user's request number) -> its status and its Server-Timing, if any.
Step = Callable[[int], Awaitable[tuple[int, dict[str, float]]]]


async def drive(steps: list[Step], warmup: float, duration: float, ok: int, meter: CpuMeter) -> Run:
    """Run every user's loop; count the answers that arrive within the measured window."""
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    warm_end = clock() + warmup
    end = warm_end + duration
    run = Run(window=duration)

    async def user(step: Step) -> None:
        n = 0
        while clock() < end:
            n += 1
            started = clock()
            timing: dict[str, float] = {}
            try:
                code, timing = await step(n)
                status = str(code)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__
            finished = clock()
            if warm_end <= finished <= end:
                run.statuses[status] += 1
                if status == str(ok):
                    latency = (finished - started) * 1000
                    run.latencies.append(latency)
                    for name, value in timing.items():
                        run.timings[name].append(value)
                    if "total" in timing:
                        run.timings["outside"].append(latency - timing["total"])

    async def watch() -> None:
        await asyncio.sleep(max(0.0, warm_end - clock()))
        run.cpu = await meter.measure(end - clock())

    await asyncio.gather(watch(), *(user(s) for s in steps))
    return run


def client(users: int, **kwargs: Any) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=users + 16, max_keepalive_connections=users + 16)
    return httpx.AsyncClient(limits=limits, timeout=120, **kwargs)


async def fake_alone(
    upstream: str,
    users: int,
    warmup: float,
    duration: float,
    *,
    start: list[dict[str, Any]] | None = None,
    meter: CpuMeter | None = None,
) -> Run:
    """The fake upstream alone: each user sends its own growing history, as the service would
    (or any chat-completions API at ``upstream`` that takes the fake's key, such as a proxy in
    front of it). Each history begins as ``start`` (a system message by default)."""
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    histories: list[list[dict[str, Any]]] = []
    url = f"{upstream}/chat/completions"
    connector = aiohttp.TCPConnector(limit=users)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        def user() -> Step:
            messages = list(start or [{"role": "system", "content": SYSTEM}])
            histories.append(messages)

            async def step(n: int) -> tuple[int, dict[str, float]]:
                body = {"model": "grok-4", "messages": [*messages, question(n)]}
                async with session.post(url, data=encode(body), headers=JSON) as answer:
                    status, data = answer.status, await answer.read()
                if status == 200:
                    reply = msgspec.json.decode(data)["choices"][0]["message"]["content"]
                    messages.extend([question(n), {"role": "assistant", "content": reply}])
                return status, {}

            return step

        run = await drive(
            [user() for _ in range(users)], warmup, duration, 200, meter or CpuMeter()
        )
    run.history = [len(h) for h in histories]
    return run


async def through_service(
    base: str,
    key: str,
    users: int,
    warmup: float,
    duration: float,
    database: str | None,
    *,
    start: list[dict[str, Any]] | None = None,
) -> Run:
    """Each user takes turns on a conversation of its own, which begins as ``start`` (a system
    message by default; 1,000 messages at the most)."""
    headers = {"Authorization": f"Bearer {key}"}
    first = start or [{"role": "system", "content": SYSTEM}]
    async with client(users, base_url=base, headers=headers) as http:
        conversations = []
        for _ in range(users):
            created = await http.post("/v1/conversations", json={"messages": first})
            created.raise_for_status()
            conversations.append(created.json()["id"])

        connector = aiohttp.TCPConnector(limit=users)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

            def user(cid: str) -> Step:
                url = f"{base}/v1/conversations/{cid}/turns"

                async def step(n: int) -> tuple[int, dict[str, float]]:
                    body = encode({"messages": [question(n)]})
                    async with session.post(url, data=body, headers=JSON) as answer:
                        await answer.read()
                        return answer.status, server_timing(answer.headers.get("server-timing"))

                return step

            meter = CpuMeter(database)
            run = await drive([user(c) for c in conversations], warmup, duration, 201, meter)
        for cid in conversations:
            got = await http.get(f"/v1/conversations/{cid}")
            run.history.append(got.json()["message_count"])
    return run


encode = msgspec.json.Encoder().encode
JSON = {"content-type": "application/json"}


def run_async(coroutine: Awaitable[Run]) -> Run:
    """Run the load generator on uvloop when it is installed: it keeps the client's own CPU
    cost, which competes with the service for the same cores, as low as possible."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]


@contextlib.contextmanager
def profiled(folder: str | None, name: str, warmup: float, duration: float) -> Iterator[None]:
    """py-spy over the service's process tree for the measured window, if asked for."""
    if folder is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pid = child_matching("service.cli")
    Path(folder).mkdir(parents=True, exist_ok=True)
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        "100",
        "--gil",
        "--format",
        "raw",
        "--duration",
        str(round(duration)),
        "--output",
        str(Path(folder) / f"{name}.txt"),
    ]

    def start() -> subprocess.Popen[bytes]:
        time.sleep(warmup)
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    holder: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: holder.append(start()))
    thread.start()
    try:
        yield
    finally:
        thread.join()
        holder[0].wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--users", default="16,64", help="conversations in flight")
    parser.add_argument("--workers", default="1,2", help="`convstore serve --workers` values")
    parser.add_argument("--fake-workers", type=int, default=1)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pool-size", type=int, default=20, help="CONVSTORE_DB_POOL_SIZE")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the service into DIR")
    add_quiet_wait(parser, 60.0, "each run")
    args = parser.parse_args()
    users = [int(u) for u in args.users.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    print(f"machine: {machine()}")
    print(
        f"window: {args.duration:g} s measured after {args.warmup:g} s of warm-up; "
        f"fake upstream: {args.fake_workers} worker(s); DB pool: {args.pool_size} (+ as many "
        "overflow) per service process; latencies in ms\n"
    )
    fake_rows = []
    rows = []
    where = []
    with fake_upstream(workers=args.fake_workers) as upstream:
        for count in users:
            wait_for_quiet(args.quiet_wait)
            r = run_async(fake_alone(upstream, count, args.warmup, args.duration))
            s = summary(r.latencies)
            fake_rows.append(
                [
                    args.fake_workers,
                    count,
                    len(r.latencies) / r.window,
                    s["median"],
                    s["p95"],
                    r.errors(200),
                    max(r.history),
                    r.cpu_per("fake"),
                    1000 / r.cpu_per("fake") if r.cpu_per("fake") else float("nan"),
                    r.cpu_per("client"),
                    r.busy("others"),
                ]
            )
        print("the fake upstream alone (direct POST /v1/chat/completions, same users):")
        print(
            table(
                [
                    "fake workers",
                    "users",
                    "req/s",
                    "median",
                    "p95",
                    "errors",
                    "history at end",
                    "fake CPU ms/req",
                    "fake req per CPU-s",
                    "client CPU ms/req",
                    "others",
                ],
                fake_rows,
            ),
            flush=True,
        )
        for kind in args.databases.split(","):
            for count_workers in workers:
                with (
                    database(kind) as url,
                    service(url, upstream, workers=count_workers, pool_size=args.pool_size) as (
                        base,
                        key,
                    ),
                ):
                    for count in users:
                        name = f"{kind}-w{count_workers}-u{count}"
                        wait_for_quiet(args.quiet_wait)
                        with profiled(args.profile, name, args.warmup, args.duration):
                            r = run_async(
                                through_service(
                                    base,
                                    key,
                                    count,
                                    args.warmup,
                                    args.duration,
                                    database_name(url),
                                )
                            )
                        s = summary(r.latencies)
                        rows.append(
                            [
                                kind,
                                count_workers,
                                count,
                                len(r.latencies) / r.window,
                                s["median"],
                                s["p95"],
                                r.errors(201),
                                max(r.history),
                            ]
                        )
                        where.append(
                            [
                                kind,
                                count_workers,
                                count,
                                r.timing("db"),
                                r.timing("upstream"),
                                r.timing("outside"),
                                r.cpu_per("service"),
                                r.cpu_per("fake"),
                                r.cpu_per("postgres"),
                                r.cpu_per("client"),
                                r.busy("service", "fake", "postgres", "client"),
                                r.busy("others"),
                            ]
                        )
    print("\nturns through `convstore serve` (POST /v1/conversations/{id}/turns):")
    print(
        table(
            [
                "database",
                "workers",
                "users",
                "turns/s",
                "median",
                "p95",
                "errors",
                "history at end",
            ],
            rows,
        )
    )
    print(
        "\nwhere a turn's time goes: medians of the server's Server-Timing (db: its two "
        "transactions; upstream: the model call; outside: client latency minus the server's "
        "total), then CPU ms per turn by process group, and how busy the machine's cores were "
        "with this benchmark's processes (ours) and everything else (others):"
    )
    print(
        table(
            [
                "database",
                "workers",
                "users",
                "db",
                "upstream",
                "outside",
                "CPU service",
                "CPU fake",
                "CPU postgres",
                "CPU client",
                "cores: ours",
                "others",
            ],
            where,
        )
    )
    print(
        "\nhistory at end: messages in the longest conversation when the run stopped (each turn "
        "adds two, so later turns send longer histories)."
    )


if __name__ == "__main__":
    main()
