"""Many streamed turns at once: N turns (1,000 by default) streamed through one convstore server
process at the same time, while the fake upstream answers each with one content chunk a second
for 20 seconds (its ``pace`` fault), on SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.concurrent_streams [--streams 1000]
                                                      [--database sqlite,postgresql]
                                                      [--chunks 20] [--delay 1] [--messages 10]
                                                      [--timeout 300] [--quiet-wait 30]
                                                      [--rounds 1] [--baseline PATH]
                                                      [--logs DIR]

Each round first sends N streamed chat completions straight to the fake upstream, all at once,
then N streamed turns through the service (``POST /v1/conversations/{id}/turns`` with
``"stream": true``, each on a conversation of its own holding ``--messages`` messages), all at
once, after 40 unpaced streamed turns at once to warm the server up. Both sides use the same
client stack (``harness.http_client``), holding N connections. Prints:

- how many streams completed (``[DONE]``, ``turn.completed``), and why the others did not;
- the time to the first content (direct: first content chunk; service: first ``message.delta``),
  p50 and p95 of each side, and how much later the service's come (the difference of the two
  sides' percentiles), and how the service's first contents spread over windows of one reply's
  length (turns that wait for others to end come in waves);
- memory per open stream: the server process's resident memory while all N streams were open
  (the highest sample, taken every quarter second, while every turn had answered 201 and none
  had ended) minus its resident memory at rest just before, divided by N, in KB;
- CPU per stream: the CPU time the server process used over the burst divided by N, in ms, and
  beside it what PostgreSQL (the benchmark database's backends and the server's own processes),
  the fake upstream and this client used; the most connections the server held open to the fake
  at once; the share of the cores other processes used meanwhile;
- the servers' warnings and errors, counted, from their logs (kept in ``--logs``, by default a
  new temporary folder).

A server process, a client and a fake holding 1,000 connections each need more open files than
the usual soft limit of 1,024: the benchmark raises its own soft limit to the hard limit before
it starts the fake and the server, which inherit it (the server raises its own too).

``--baseline PATH`` also serves the code of another checkout (say, ``git worktree add
/tmp/before <commit>``) on a database of its own; every round runs the burst against both, the
order alternating from round to round, as ``turn_overhead.py --baseline`` alternates its pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    ROOT,
    database,
    database_name,
    fake_upstream,
    http_client,
    machine,
    percentile,
    service,
    table,
)
from benchmarks.procs import (
    CORES,
    CpuMeter,
    add_quiet_wait,
    children_matching,
    cmdline,
    connections_to,
    cpu_seconds,
    rss_bytes,
    wait_for_quiet,
)
from benchmarks.streaming import direct_stream, service_stream
from benchmarks.turn_overhead import Target, history, seed
from service.server import raise_open_files_limit

QUESTION = {"role": "user", "content": "And what follows from that?"}
WARMUP_TURNS = 40  # at once, not paced: twice the database pool the harness gives the server
SAMPLE_EVERY = 0.25  # seconds between samples of the server's memory
SEEDING = 16  # conversations created at once before a burst
HUNG = "seconds a burst may take before its unfinished streams are counted as hung"


@dataclass
class Burst:
    """What one burst of N streams measured, on one side (direct or through the service)."""

    streams: int
    first: list[float] = field(default_factory=list)  # ms to the first content, per stream
    end: list[float] = field(default_factory=list)  # ms to the end, per completed stream
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    idle_rss: int = 0
    open_rss: int | None = None  # None: the N streams were never all open at once
    peak_rss: int = 0
    upstream_connections: int = 0  # the most the server held open to the fake upstream at once
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group
    seconds: float = 0.0  # how long the burst took

    @property
    def completed(self) -> int:
        return len(self.end)


async def settle(
    streams: list[Awaitable[tuple[float, float]]], seconds: float, burst: Burst
) -> None:
    """Run ``streams`` at once for up to ``seconds``; file each one's times, or why it
    did not complete, in ``burst``."""
    tasks = [asyncio.ensure_future(s) for s in streams]
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task in pending:
            burst.failures[f"not ended after {seconds:g} s"] += 1
        elif (error := task.exception()) is not None:
            burst.failures[f"{type(error).__name__}: {error}"[:200]] += 1
        else:
            first, end = task.result()
            burst.first.append(first)
            burst.end.append(end)


async def pace(upstream: str, times: int, args: Any) -> None:
    """Make the fake upstream answer its next ``times`` requests slowly (a ``pace`` fault)."""
    fault = {"kind": "pace", "delay": args.delay, "chunks": args.chunks, "times": times}
    async with http_client() as control:
        pushed = await control.post(f"{upstream.removesuffix('/v1')}/_fake/faults", json=fault)
        pushed.raise_for_status()


async def direct_burst(upstream: str, args: Any) -> Burst:
    """N streamed chat completions straight to the fake upstream, all at once."""
    n = args.streams
    burst = Burst(n)
    body = {
        "model": "grok-4",
        "messages": [*history(args.messages), QUESTION],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http_client(connections=n) as direct:
        await pace(upstream, n, args)
        await settle([direct_stream(direct, upstream, body) for _ in range(n)], args.timeout, burst)
    return burst


def server_pid(target: Target) -> int:
    """The process serving ``target`` (the harness serves it with one worker)."""
    port = target.base.rsplit(":", 1)[1]
    return next(p for p in children_matching("service.cli") if f" --port {port} " in cmdline(p))


async def service_burst(target: Target, upstream: str, db: str | None, args: Any) -> Burst:
    """N streamed turns through the service, all at once, each on a conversation of its own;
    the server's memory at rest and while all are open, and the CPU the burst used."""
    n = args.streams
    burst = Burst(n)
    pid = server_pid(target)
    fake_port = int(upstream.rsplit(":", 1)[1].split("/", 1)[0])
    async with http_client(
        connections=n + SEEDING, base_url=target.base, headers=target.headers
    ) as client:
        gate = asyncio.Semaphore(SEEDING)

        async def conversation() -> str:
            async with gate:
                return await seed(client, target, args.messages)

        cids = await asyncio.gather(*(conversation() for _ in range(n + WARMUP_TURNS)))
        # Warm-up: pools (database, upstream) opened, caches filled, statements prepared.
        warm = Burst(WARMUP_TURNS)
        await settle([service_stream(client, cid, QUESTION) for cid in cids[n:]], 60, warm)
        burst.failures.update({f"(warm-up) {why}": k for why, k in warm.failures.items()})
        await asyncio.sleep(1)
        burst.idle_rss = rss_bytes(pid)
        await pace(upstream, n, args)

        open_streams: set[str] = set()  # turns answered 201 and not ended yet

        async def turn(cid: str) -> tuple[float, float]:
            try:
                return await service_stream(client, cid, QUESTION, partial(open_streams.add, cid))
            finally:
                open_streams.discard(cid)

        async def sample() -> None:
            while True:
                await asyncio.sleep(SAMPLE_EVERY)
                rss = rss_bytes(pid)
                burst.peak_rss = max(burst.peak_rss, rss)
                if len(open_streams) == n:
                    burst.open_rss = max(burst.open_rss or 0, rss)
                held = connections_to(fake_port)
                burst.upstream_connections = max(burst.upstream_connections, held)
                meter.sample()

        meter = CpuMeter(db)
        meter.start()
        started = time.perf_counter()
        cpu_before = cpu_seconds(pid)
        sampler = asyncio.create_task(sample())
        try:
            await settle([turn(cid) for cid in cids[:n]], args.timeout, burst)
        finally:
            sampler.cancel()
        burst.cpu = meter.stop()
        burst.seconds = time.perf_counter() - started
        burst.cpu["server"] = cpu_seconds(pid) - cpu_before
    return burst


def log_summary(log: Path) -> list[tuple[int, str]]:
    """The server's warnings and errors in ``log``, counted by level and message."""
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") not in (None, "debug", "info"):
                exception = (entry.get("exception") or "").strip().rsplit("\n", 1)[-1]
                message = f"{entry['level']}: {entry.get('message', '')} {exception}"
                counts[message.strip()[:300]] += 1
    return [(count, message) for message, count in counts.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000, help="streams at once (N)")
    parser.add_argument(
        "--database",
        default="sqlite,postgresql",
        help="sqlite, postgresql, or both separated by a comma",
    )
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per reply")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between chunks")
    parser.add_argument("--messages", type=int, default=10, help="history per conversation")
    parser.add_argument("--timeout", type=float, default=300.0, help=HUNG)
    add_quiet_wait(parser, 30.0, "each burst")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--logs", type=Path, help="folder for the servers' logs (default: a new temporary one)"
    )
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose code is measured alternately"
    )
    args = parser.parse_args()
    kinds = args.database.split(",")
    if not set(kinds) <= {"sqlite", "postgresql"}:
        parser.error("--database takes sqlite, postgresql or both")
    files = raise_open_files_limit()
    wanted = 2 * args.streams + 256  # the service's burst and the conversations' seeding
    if files < wanted:
        sys.exit(
            f"{args.streams} streams need about {wanted} open files; the limit is {files}. "
            "Raise the hard limit (ulimit -Hn, or LimitNOFILE) and run again."
        )
    codes = [("this checkout", ROOT)]
    if args.baseline:
        codes.append(("baseline", args.baseline.resolve()))
    code_column = ["code"] if args.baseline else []
    logs = args.logs or Path(tempfile.mkdtemp(prefix="convstore-streams-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(
        f"{args.streams} streams at once, each {args.chunks} content chunks {args.delay:g} s "
        f"apart; conversations of {args.messages} messages; open files allowed: {files}\n"
    )
    first_rows, end_rows, cost_rows, spread, failures = [], [], [], [], []
    with fake_upstream() as upstream:
        for kind in kinds:
            with contextlib.ExitStack() as stack:
                targets = []
                for code, root in codes:
                    url = stack.enter_context(database(kind))
                    log = logs / f"{kind}-{code.replace(' ', '-')}.log"
                    base, key = stack.enter_context(service(url, upstream, root=root, log=log))
                    targets.append((Target(code, base, key), database_name(url)))
                for number in range(args.rounds):
                    order = targets[::-1] if number % 2 else targets
                    for target, db in order:
                        wait_for_quiet(args.quiet_wait)
                        direct = asyncio.run(direct_burst(upstream, args))
                        wait_for_quiet(args.quiet_wait)
                        turns = asyncio.run(service_burst(target, upstream, db, args))
                        code = [target.code] if args.baseline else []
                        first_rows.append([kind, *code, *first_row(direct, turns)])
                        end_rows.append([kind, *code, *end_row(direct, turns)])
                        cost_rows.append([kind, *code, *cost_row(turns)])
                        spread.append([kind, *code, waves(turns, args.chunks * args.delay)])
                        for side, burst in (("direct", direct), ("service", turns)):
                            failures += [
                                [kind, *code, side, count, why]
                                for why, count in burst.failures.most_common()
                            ]
    print("streams completed, and time to the first content (ms):")
    print(
        table(
            [
                "database",
                *code_column,
                "completed: direct",
                "service",
                "first: direct p50",
                "direct p95",
                "service p50",
                "service p95",
                "later by: p50",
                "p95",
            ],
            first_rows,
        )
    )
    print("(later by: the service's percentile minus the direct one)")
    window = args.chunks * args.delay
    print(f"\nthe service's streams by when their first content came, in {window:g}-s windows:")
    print(table(["database", *code_column, "streams"], spread))
    print("\ntime to the end of the stream (ms; direct: [DONE]; service: turn.completed):")
    print(
        table(
            ["database", *code_column, "direct p50", "direct p95", "service p50", "service p95"],
            end_rows,
        )
    )
    print("\nwhat a stream costs the server (and, per stream, what the others used):")
    print(
        table(
            [
                "database",
                *code_column,
                "RSS at rest (MB)",
                "RSS all open (MB)",
                "KB per open stream",
                "server CPU ms/stream",
                "postgres ms",
                "fake ms",
                "client ms",
                "upstream connections",
                "others",
            ],
            cost_rows,
        )
    )
    print(
        "(RSS all open: '-' if the streams were never all open at once, with the peak in "
        "brackets; upstream connections: the most the server held open to the fake at once; "
        "others: share of the cores used by processes outside this benchmark meanwhile)"
    )
    if failures:
        print("\nstreams that did not complete:")
        print(table(["database", *code_column, "side", "streams", "why"], failures))
    print(f"\nthe servers' logs: {logs}")
    for log in sorted(logs.glob("*.log")):
        for count, message in log_summary(log)[:10]:
            print(f"  {log.name}: {count} x {message}")


def waves(burst: Burst, seconds: float) -> str:
    """How many first contents came in each window of ``seconds`` after the requests."""
    counts = collections.Counter(int(ms / 1000 // seconds) for ms in burst.first if ms == ms)
    return (
        ", ".join(
            f"{w * seconds:g}-{(w + 1) * seconds:g} s: {counts[w]}" for w in range(max(counts) + 1)
        )
        if counts
        else "-"
    )


def first_row(direct: Burst, turns: Burst) -> list[Any]:
    d50, d95 = percentile(direct.first, 0.5), percentile(direct.first, 0.95)
    s50, s95 = percentile(turns.first, 0.5), percentile(turns.first, 0.95)
    done = [f"{direct.completed}/{direct.streams}", f"{turns.completed}/{turns.streams}"]
    return [*done, d50, d95, s50, s95, s50 - d50, s95 - d95]


def end_row(direct: Burst, turns: Burst) -> list[Any]:
    return [
        percentile(direct.end, 0.5),
        percentile(direct.end, 0.95),
        percentile(turns.end, 0.5),
        percentile(turns.end, 0.95),
    ]


def cost_row(turns: Burst) -> list[Any]:
    n = turns.streams
    mb = 1024 * 1024
    if turns.open_rss is None:
        opened: Any = f"- ({turns.peak_rss / mb:.1f})"
        per_stream: Any = "-"
    else:
        opened = turns.open_rss / mb
        per_stream = (turns.open_rss - turns.idle_rss) / 1024 / n
    per = {k: 1000 * v / n for k, v in turns.cpu.items()}
    return [
        turns.idle_rss / mb,
        opened,
        per_stream,
        per["server"],
        per["postgres"],
        per["fake"],
        per["client"],
        turns.upstream_connections,
        f"{100 * turns.cpu['others'] / turns.seconds / CORES:.0f}%",
    ]


if __name__ == "__main__":
    main()
